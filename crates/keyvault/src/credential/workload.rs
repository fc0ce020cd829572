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

    fn federated_token(&self) -> Result<Zeroizing<String>, Error> {
        match &self.source {
            AssertionSource::Token(t) => Ok(t.clone()),
            AssertionSource::File { path, state } => {
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(cached) = st.as_ref() {
                    if cached.modified == modified
                        && modified.is_some()
                        && cached.read_at.elapsed() < TOKEN_FILE_REREAD
                    {
                        return Ok(cached.token.clone());
                    }
                }
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Error::CredentialUnavailable {
                        credential: self.describe(),
                        reason: format!("cannot read federated token file {}", path.display()),
                        source: Some(std::sync::Arc::new(e)),
                    }
                })?);
                let token = Zeroizing::new(text.trim().to_string());
                if token.is_empty() {
                    return Err(Error::CredentialUnavailable {
                        credential: self.describe(),
                        reason: "federated token file is empty".into(),
                        source: None,
                    });
                }
                tracing::debug!(path = %path.display(), "read federated token file");
                *st = Some(FileToken {
                    token: token.clone(),
                    modified,
                    read_at: Instant::now(),
                });
                Ok(token)
            }
        }
    }
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
            let assertion = self.federated_token()?;
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
