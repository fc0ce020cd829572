//! Serving: gRPC on a unix socket (the driver's provider API + gRPC health), and HTTP
//! `/healthz` and `/metrics` on TCP ports.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::proto::csi_driver_provider_server::CsiDriverProviderServer;
use crate::service::{Grpc, ProviderService};

/// Largest Mount response we send (the driver's default receive limit is 4 MiB; it can be
/// raised with its --max-call-recv-msg-size).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Largest Mount request we read (a larger one is refused from its length prefix, unread).
pub use crate::gate::MAX_REQUEST_SIZE;

/// Concurrent calls per provider-socket connection (HTTP/2 streams; hyper's default).
pub const MAX_STREAMS: u32 = 200;

/// Per-stream HTTP/2 receive window (HTTP/2's initial default).
pub const STREAM_WINDOW: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--endpoint {0:?}: expected unix:///path/to/provider.sock")]
    Endpoint(String),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// `unix:///var/run/x.sock` (or `unix:/x.sock`, or a bare path) -> the socket path.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = if let Some(p) = endpoint.strip_prefix("unix://") {
        p
    } else if let Some(p) = endpoint.strip_prefix("unix:") {
        p
    } else if endpoint.contains("://") {
        return Err(ServeError::Endpoint(endpoint.to_string()));
    } else {
        endpoint
    };
    if path.is_empty() || !path.starts_with('/') {
        return Err(ServeError::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket: creates the directory, removes a stale socket file left by a previous run.
/// The socket is created under a temporary name, restricted to its owner (mode 0600: the
/// driver runs as root), and only then renamed into place, so no client ever sees it with
/// wider permissions.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("the socket path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err)?;
    let placed =
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).and_then(|()| {
            if std::fs::symlink_metadata(path).is_ok() {
                tracing::info!(socket = %path.display(), "replacing stale socket");
            }
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

/// Serves the provider and the gRPC health service on `listener` until `shutdown` resolves.
pub async fn serve_grpc(
    listener: UnixListener,
    service: Arc<ProviderService>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let limits = service.config().connections.clone();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<CsiDriverProviderServer<Grpc>>()
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let gate = service.gate_config();
    let provider = CsiDriverProviderServer::new(Grpc(service))
        .max_decoding_message_size(MAX_REQUEST_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let provider = crate::gate::Gate::new(provider, gate);
    tonic::transport::Server::builder()
        // The driver sends every pod's Mount over one connection. A Mount waiting for the
        // large-request lane is not read (see crate::gate), so each stream may hold only a
        // small window, and the connection's window covers every stream's: waiting streams can
        // never stall the connection for the others.
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(MAX_STREAMS * STREAM_WINDOW + 1024 * 1024)
        .add_service(health)
        .add_service(provider)
        .serve_with_incoming_shutdown(crate::listener::incoming(listener, limits), shutdown)
        .await?;
    Ok(())
}

/// `/healthz`: 200 "ok" while the provider socket accepts connections, else 503.
pub fn healthz_router(socket: PathBuf) -> axum::Router {
    axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let socket = socket.clone();
            async move {
                match tokio::net::UnixStream::connect(&socket).await {
                    Ok(_) => (axum::http::StatusCode::OK, "ok".to_string()),
                    Err(e) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("provider socket {}: {e}", socket.display()),
                    ),
                }
            }
        }),
    )
}

/// `/metrics`: Prometheus text format 0.0.4 ([`crate::metrics::CONTENT_TYPE`]).
pub fn metrics_router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::metrics::CONTENT_TYPE,
                    )],
                    metrics.render(),
                )
            }
        }),
    )
}

/// Binds `addr` and serves `router` in the background; returns the bound address.
pub async fn spawn_http(
    addr: SocketAddr,
    router: axum::Router,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Http { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Http { addr, source })?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok((bound, task))
}

/// A running provider: gRPC on the socket, optional /healthz and /metrics.
pub struct Running {
    pub socket: PathBuf,
    pub healthz: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub service: Arc<ProviderService>,
    shutdown: Option<oneshot::Sender<()>>,
    grpc: JoinHandle<Result<(), ServeError>>,
    http: Vec<JoinHandle<()>>,
}

impl Running {
    /// Binds everything and starts serving. Ports: `Some(0)` picks a free one.
    pub async fn start(
        service: Arc<ProviderService>,
        socket: &Path,
        healthz: Option<SocketAddr>,
        metrics: Option<SocketAddr>,
    ) -> Result<Running, ServeError> {
        let listener = bind_unix(socket)?;
        let (tx, rx) = oneshot::channel::<()>();
        let grpc = tokio::spawn(serve_grpc(listener, service.clone(), async move {
            let _ = rx.await;
        }));
        let mut http = Vec::new();
        let healthz = match healthz {
            Some(addr) => {
                let (a, t) = spawn_http(addr, healthz_router(socket.to_path_buf())).await?;
                http.push(t);
                Some(a)
            }
            None => None,
        };
        let metrics = match metrics {
            Some(addr) => {
                let (a, t) = spawn_http(addr, metrics_router(service.metrics().clone())).await?;
                http.push(t);
                Some(a)
            }
            None => None,
        };
        Ok(Running {
            socket: socket.to_path_buf(),
            healthz,
            metrics,
            service,
            shutdown: Some(tx),
            grpc,
            http,
        })
    }

    /// Serves until the gRPC server ends (or fails).
    pub async fn wait(mut self) -> Result<(), ServeError> {
        let grpc = std::mem::replace(&mut self.grpc, tokio::spawn(async { Ok(()) }));
        let r = grpc.await.unwrap_or(Ok(()));
        self.cleanup();
        r
    }

    /// Graceful stop: no new connections, in-flight calls finish; the socket file is removed.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let grpc = std::mem::replace(&mut self.grpc, tokio::spawn(async { Ok(()) }));
        let r = grpc.await.unwrap_or(Ok(()));
        self.cleanup();
        r
    }

    fn cleanup(&mut self) {
        for t in self.http.drain(..) {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///var/run/secrets-store-csi-providers/azure.sock").unwrap(),
            PathBuf::from("/var/run/secrets-store-csi-providers/azure.sock")
        );
        assert_eq!(
            parse_endpoint("/tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert!(parse_endpoint("tcp://127.0.0.1:1").is_err());
        assert!(parse_endpoint("unix://relative.sock").is_err());
    }
}
