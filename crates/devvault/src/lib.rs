//! `kvbridge dev-vault`: an Azure Key Vault + Entra ID compatible HTTPS server for local
//! development and tests. See `docs/dev-vault.md` for the contract.

pub mod api;
pub mod clock;
pub mod entra;
pub mod error;
pub mod eventgrid;
pub mod faults;
pub mod ids;
pub mod seed;
pub mod server;
pub mod state;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::oneshot;

pub use faults::FaultConfig;

/// The vault served when a seed declares none.
pub const DEFAULT_VAULT: &str = "dev";

#[derive(Debug, thiserror::Error)]
pub enum DevVaultError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Seed(#[from] seed::SeedError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("token signing key {path}: {detail}")]
    SigningKey { path: PathBuf, detail: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid fault configuration: {0}")]
    Faults(String),
    #[error("cannot write {path}: {source}")]
    Ready {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How to start a dev vault.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub seed: Option<PathBuf>,
    /// Fixed resource for the 401 challenge (default: derived from the request host).
    pub resource: Option<String>,
    pub token_lifetime_secs: i64,
    pub faults: FaultConfig,
}

impl Options {
    pub fn new(listen: SocketAddr, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            state_dir: state_dir.into(),
            seed: None,
            resource: None,
            token_lifetime_secs: 3599,
            faults: FaultConfig::default(),
        }
    }
}

/// What a started dev vault tells its users (also written to `STATE/ready.json`).
#[derive(Debug, Clone, Serialize)]
pub struct ReadyInfo {
    pub url: String,
    pub listen: String,
    pub port: u16,
    pub ca: PathBuf,
    /// An Azure SDK for Go cloud environment file pointing at this dev vault (for a
    /// SecretProviderClass `cloudEnvFileName`, or the provider's default cloud file).
    pub cloud_env_file: PathBuf,
    pub tenant: String,
    pub vaults: std::collections::BTreeMap<String, String>,
    pub default_vault: String,
    pub pid: u32,
}

/// A running dev vault.
pub struct Running {
    pub addr: SocketAddr,
    pub info: ReadyInfo,
    pub app: Arc<server::App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// Event Grid deliveries.
    events: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Serves until the task ends (it ends only after [`Running::stop`] or a panic).
    pub async fn wait(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
        self.events.abort();
    }
}

fn load_signer(path: &Path) -> Result<token::Signer, DevVaultError> {
    let err = |detail: String| DevVaultError::SigningKey {
        path: path.to_path_buf(),
        detail,
    };
    let der = match std::fs::read_to_string(path) {
        Ok(text) => {
            let bundle = pki::parse_pem_bundle(&text).map_err(|e| err(e.to_string()))?;
            let key = bundle
                .key
                .ok_or_else(|| err("no PRIVATE KEY block".into()))?;
            key.pkcs8_der().to_vec()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let der =
                token::Signer::generate_pkcs8().map_err(|_| err("key generation failed".into()))?;
            state::write_atomic(path, pki::pem_encode("PRIVATE KEY", &der).as_bytes())
                .map_err(|e| err(e.to_string()))?;
            der
        }
        Err(e) => return Err(err(e.to_string())),
    };
    token::Signer::from_pkcs8(&der).map_err(|e| err(format!("not a P-256 PKCS#8 key: {e}")))
}

/// Starts a dev vault: state, seed, TLS, listener. Returns once it accepts connections.
pub async fn start(opts: Options) -> Result<Running, DevVaultError> {
    opts.faults.validate().map_err(DevVaultError::Faults)?;
    std::fs::create_dir_all(&opts.state_dir).map_err(|source| DevVaultError::StateDir {
        path: opts.state_dir.clone(),
        source,
    })?;
    let dir = std::fs::canonicalize(&opts.state_dir).map_err(|source| DevVaultError::StateDir {
        path: opts.state_dir.clone(),
        source,
    })?;
    match state::remove_stale_temp_files(&dir) {
        Ok(removed) if !removed.is_empty() => {
            tracing::warn!(?removed, dir = %dir.display(), "removed temporary files left by an interrupted dev vault");
        }
        Ok(_) => {}
        Err(e) => {
            return Err(DevVaultError::StateDir {
                path: dir.clone(),
                source: e,
            })
        }
    }
    let state_path = dir.join("state.json");
    let mut st = state::load(&state_path)?.unwrap_or_else(|| {
        let mut s = state::State::new(seed::DEFAULT_TENANT.into());
        s.identities = seed::default_identities();
        s
    });
    if let Some(seed_path) = &opts.seed {
        let parsed = seed::load(seed_path)?;
        let mut next = st.clone();
        // Key generation is CPU-bound; keep it off the async workers.
        let sp = seed_path.clone();
        next =
            tokio::task::spawn_blocking(move || seed::apply(&mut next, &parsed, &sp).map(|_| next))
                .await
                .map_err(|e| seed::SeedError {
                    file: seed_path.clone(),
                    what: "apply".into(),
                    detail: e.to_string(),
                })??;
        st = next;
    }
    if st.vault_order.is_empty() {
        st.vault_mut(DEFAULT_VAULT);
    }
    state::save(&state_path, &st)?;

    let signer = load_signer(&dir.join("signing-key.pem"))?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| DevVaultError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DevVaultError::Listen {
            addr: opts.listen,
            source,
        })?;
    let tls_files = tls::TlsFiles::in_dir(&dir);
    let tls_config = tls::ensure(&tls_files, &tls::wanted_sans(&st.vault_order))?;

    let port = addr.port();
    let default_vault = st.default_vault();
    let cloud_env_file = dir.join("cloud.json");
    let origin = format!("https://localhost:{port}");
    let cloud = serde_json::json!({
        "name": "KvbridgeDevVault",
        "activeDirectoryEndpoint": format!("{origin}/"),
        "keyVaultEndpoint": format!("{origin}/"),
        "keyVaultDNSSuffix": format!("localhost:{port}"),
        "resourceIdentifiers": {"keyVault": origin},
    });
    state::write_atomic_mode(&cloud_env_file, cloud.to_string().as_bytes(), 0o644).map_err(
        |source| DevVaultError::Ready {
            path: cloud_env_file.clone(),
            source,
        },
    )?;
    let info = ReadyInfo {
        url: format!("https://localhost:{port}"),
        listen: addr.to_string(),
        port,
        ca: tls_files.ca_cert.clone(),
        cloud_env_file,
        tenant: st.tenant.clone(),
        vaults: st
            .vault_order
            .iter()
            .map(|v| (v.clone(), format!("https://{v}.localhost:{port}")))
            .collect(),
        default_vault,
        pid: std::process::id(),
    };
    let app = Arc::new(server::App::new(
        st,
        state_path,
        signer,
        opts.faults.clone(),
        port,
        opts.resource.clone(),
        opts.token_lifetime_secs,
    ));
    let events = {
        let app = app.clone();
        tokio::spawn(async move { app.event_grid.run().await })
    };
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        listener,
        tls_config,
        app.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    let ready_path = dir.join("ready.json");
    let ready = serde_json::to_vec_pretty(&info).unwrap_or_default();
    state::write_atomic_mode(&ready_path, &ready, 0o644).map_err(|source| {
        DevVaultError::Ready {
            path: ready_path,
            source,
        }
    })?;
    Ok(Running {
        addr,
        info,
        app,
        shutdown: Some(tx),
        task,
        events,
    })
}
