//! Workload identity federation: a federated token file or a handed-in service-account token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use zeroize::Zeroizing;

use super::{
    normalize_authority, pick_tenant, request_token_with_assertion, token_endpoint, AccessToken,
    BoxFuture, TokenCredential,
};
use crate::error::Error;
use crate::transport::Transport;

enum AssertionSource {
    File {
        path: PathBuf,
        state: Mutex<Option<FileToken>>,
    },
    Token(Zeroizing<String>),
}

struct FileToken {
    token: Zeroizing<String>,
    modified: Option<SystemTime>,
    read_at: Instant,
}

/// How long a federated token read from a file is reused when its mtime does not change.
pub const TOKEN_FILE_REREAD: Duration = Duration::from_secs(300);

/// Workload identity federation: exchanges a Kubernetes service-account token (audience
/// `api://AzureADTokenExchange`) for an Entra token.
pub struct WorkloadIdentityCredential {
    authority_host: String,
    tenant: String,
    client_id: String,
    source: AssertionSource,
    transport: Transport,
}

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = match &self.source {
            AssertionSource::File { path, .. } => format!("file {}", path.display()),
            AssertionSource::Token(_) => "handed-in token <redacted>".into(),
        };
        f.debug_struct("WorkloadIdentityCredential")
            .field("authority_host", &self.authority_host)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("source", &src)
            .finish()
    }
}

impl WorkloadIdentityCredential {
    /// Reads the federated token from `path` (re-read when the file changes, and at least every
    /// [`TOKEN_FILE_REREAD`]; kubelet rotates it).
    pub fn from_token_file(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        path: &Path,
    ) -> Self {
        Self {
            authority_host: normalize_authority(authority_host),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            source: AssertionSource::File {
                path: path.to_path_buf(),
                state: Mutex::new(None),
            },
            transport: Transport::shared_default(),
        }
    }

    /// Uses a token handed in by the caller (the CSI driver's `serviceAccount.tokens`).
    pub fn from_token(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        token: impl Into<String>,
    ) -> Self {
        Self {
            authority_host: normalize_authority(authority_host),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            source: AssertionSource::Token(Zeroizing::new(token.into())),
            transport: Transport::shared_default(),
        }
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The federated token: the handed-in one, or the file's (re-read when its mtime changes
    /// or after [`TOKEN_FILE_REREAD`]). File I/O runs on the blocking pool, never on an async
    /// worker, and reads at most [`MAX_TOKEN_FILE`] bytes of a regular file.
    async fn federated_token(&self) -> Result<Zeroizing<String>, Error> {
        let (path, state) = match &self.source {
            AssertionSource::Token(t) => return Ok(t.clone()),
            AssertionSource::File { path, state } => (path, state),
        };
        let blocking = |f: Box<dyn FnOnce() -> std::io::Result<FileRead> + Send>| async move {
            tokio::task::spawn_blocking(f)
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        let p = path.clone();
        let modified = match blocking(Box::new(move || {
            Ok(FileRead::Modified(
                std::fs::metadata(&p).and_then(|m| m.modified()).ok(),
            ))
        }))
        .await
        {
            Ok(FileRead::Modified(m)) => m,
            _ => None,
        };
        {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cached) = st.as_ref() {
                if cached.modified == modified
                    && modified.is_some()
                    && cached.read_at.elapsed() < TOKEN_FILE_REREAD
                {
                    return Ok(cached.token.clone());
                }
            }
        }
        let p = path.clone();
        let text = match blocking(Box::new(move || read_token_file(&p).map(FileRead::Text))).await {
            Ok(FileRead::Text(t)) => t,
            Ok(FileRead::Modified(_)) => Zeroizing::new(String::new()),
            Err(e) => {
                return Err(Error::CredentialUnavailable {
                    credential: self.describe(),
                    reason: format!("cannot read federated token file {}", path.display()),
                    source: Some(std::sync::Arc::new(e)),
                })
            }
        };
        let token = Zeroizing::new(text.trim().to_string());
        if token.is_empty() {
            return Err(Error::CredentialUnavailable {
                credential: self.describe(),
                reason: "federated token file is empty".into(),
                source: None,
            });
        }
        tracing::debug!(path = %path.display(), "read federated token file");
        *state.lock().unwrap_or_else(|p| p.into_inner()) = Some(FileToken {
            token: token.clone(),
            modified,
            read_at: Instant::now(),
        });
        Ok(token)
    }
}

enum FileRead {
    Modified(Option<SystemTime>),
    Text(Zeroizing<String>),
}

/// Largest federated token file read (service account tokens are a few KB).
pub const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Reads a regular file of at most [`MAX_TOKEN_FILE`] bytes (a FIFO or a device is refused
/// instead of blocking or reading without end).
fn read_token_file(path: &Path) -> std::io::Result<Zeroizing<String>> {
    use std::io::Read;
    // Checked before opening too: opening a FIFO for reading blocks until a writer appears.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_TOKEN_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_TOKEN_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_TOKEN_FILE} bytes"
        )));
    }
    let text = std::str::from_utf8(&buf)
        .map_err(|_| std::io::Error::other("not UTF-8 text"))?
        .to_string();
    Ok(Zeroizing::new(text))
}

impl TokenCredential for WorkloadIdentityCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let d = self.describe();
            let tenant = pick_tenant(&d, &self.tenant, tenant)?;
            let url = token_endpoint(&self.authority_host, &tenant)?;
            let assertion = self.federated_token().await?;
            request_token_with_assertion(
                &self.transport,
                &d,
                url,
                &self.client_id,
                &assertion,
                scope,
            )
            .await
        })
    }

    fn describe(&self) -> String {
        match &self.source {
            AssertionSource::File { path, .. } => format!(
                "workload identity credential for app {} (token file {})",
                self.client_id,
                path.display()
            ),
            AssertionSource::Token(_) => format!(
                "workload identity credential for app {} (service account token)",
                self.client_id
            ),
        }
    }
}
