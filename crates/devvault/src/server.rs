//! The HTTPS server: shared application state, the TLS accept loop, routing and the admin API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::error::KvError;
use crate::faults::{Counters, FaultConfig, Faults};
use crate::state::{self, State};
use crate::token::Signer;

/// Everything a request handler needs.
pub struct App {
    pub state: Mutex<State>,
    persist_lock: tokio::sync::Mutex<()>,
    pub state_path: PathBuf,
    pub signer: Signer,
    pub faults: Faults,
    pub counters: Counters,
    /// Event Grid subscriptions and deliveries.
    pub event_grid: crate::eventgrid::EventGrid,
    pub port: u16,
    pub resource_override: Option<String>,
    pub token_lifetime: i64,
}

impl App {
    pub fn new(
        state: State,
        state_path: PathBuf,
        signer: Signer,
        faults: FaultConfig,
        port: u16,
        resource_override: Option<String>,
        token_lifetime: i64,
    ) -> Self {
        Self {
            state: Mutex::new(state),
            persist_lock: tokio::sync::Mutex::new(()),
            state_path,
            signer,
            faults: Faults::new(faults),
            counters: Counters::default(),
            event_grid: crate::eventgrid::EventGrid::new(),
            port,
            resource_override,
            token_lifetime,
        }
    }

    /// Runs `f` on the state under its lock.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Applies a mutation transactionally: `f` runs on a copy of the state, the copy is saved,
    /// and only after a successful save does it become the state requests see. A refused
    /// mutation (`f` fails) or a failed save (answered 500) leaves the state untouched.
    /// Mutations are serialised, so the file never goes back in time.
    pub async fn mutate<R: Send>(
        &self,
        f: impl FnOnce(&mut State) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        let _guard = self.persist_lock.lock().await;
        let mut next = self.with_state(|s| s.clone());
        let out = f(&mut next)?;
        let path = self.state_path.clone();
        let (next, saved) = tokio::task::spawn_blocking(move || {
            let r = state::save(&path, &next);
            (next, r)
        })
        .await
        .map_err(|e| KvError::internal(format!("the dev vault could not save its state: {e}")))?;
        if let Err(e) = saved {
            tracing::error!(error = %e, "state write failed; the change was not applied");
            return Err(KvError::internal(format!(
                "the dev vault could not save its state, the change was not applied: {e}"
            )));
        }
        self.with_state(|s| *s = next);
        Ok(out)
    }

    /// Writes the current state to disk (serialised with [`App::mutate`]).
    pub async fn persist(&self) -> Result<(), state::StateError> {
        let _guard = self.persist_lock.lock().await;
        let snapshot = self.with_state(|s| s.clone());
        let path = self.state_path.clone();
        tokio::task::spawn_blocking(move || state::save(&path, &snapshot))
            .await
            .map_err(|e| state::StateError::Write {
                path: self.state_path.clone(),
                source: std::io::Error::other(e),
            })?
    }

    /// The authority host of the Entra stand-in.
    pub fn authority(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn tenant(&self) -> String {
        self.with_state(|s| s.tenant.clone())
    }
}

/// True for paths of the Key Vault data plane (as opposed to Entra, IMDS and admin).
pub fn is_data_plane(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    matches!(
        first,
        "secrets"
            | "deletedsecrets"
            | "keys"
            | "deletedkeys"
            | "certificates"
            | "deletedcertificates"
    )
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/admin/counters", get(admin_counters))
        .route("/admin/counters/reset", post(admin_counters_reset))
        .route("/admin/faults", get(admin_faults_get).put(admin_faults_put))
        .route("/admin/eventgrid", get(admin_eventgrid))
        .route(
            "/admin/eventgrid/subscriptions/{name}",
            axum::routing::put(admin_subscribe).delete(admin_unsubscribe),
        )
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::entra::routes())
        .fallback(crate::api::data_plane)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::api::MAX_REQUEST_BODY,
        ))
        .with_state(app)
}

async fn admin_counters(AxState(app): AxState<Arc<App>>) -> impl IntoResponse {
    Json(app.counters.snapshot())
}

async fn admin_counters_reset(AxState(app): AxState<Arc<App>>) -> impl IntoResponse {
    app.counters.reset();
    StatusCode::NO_CONTENT
}

async fn admin_faults_get(AxState(app): AxState<Arc<App>>) -> impl IntoResponse {
    Json(app.faults.get())
}

async fn admin_faults_put(AxState(app): AxState<Arc<App>>, body: axum::body::Bytes) -> Response {
    let config: FaultConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": format!("invalid fault configuration: {e}")})),
            )
                .into_response()
        }
    };
    if let Err(e) = config.validate() {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": format!("invalid fault configuration: {e}")})),
        )
            .into_response();
    }
    tracing::info!(?config, "fault injection changed");
    app.faults.set(config.clone());
    Json(config).into_response()
}

async fn admin_eventgrid(AxState(app): AxState<Arc<App>>) -> impl IntoResponse {
    Json(serde_json::json!({
        "subscriptions": app.event_grid.list(),
        "stats": app.event_grid.stats,
    }))
}

async fn admin_subscribe(
    AxState(app): AxState<Arc<App>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let bad = |e: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": e })),
        )
            .into_response()
    };
    let sub: crate::eventgrid::Subscription = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return bad(format!("invalid subscription: {e}")),
    };
    match app.event_grid.subscribe(&name, sub.clone()).await {
        Ok(()) => Json(sub).into_response(),
        Err(e) => bad(e.to_string()),
    }
}

async fn admin_unsubscribe(
    AxState(app): AxState<Arc<App>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> StatusCode {
    if app.event_grid.unsubscribe(&name) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Debug)]
struct DroppedByFaultInjection;

impl std::fmt::Display for DroppedByFaultInjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DroppedByFaultInjection {}

/// Accepts TLS connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = router(app.clone());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let router = router.clone();
                let app = app.clone();
                async move {
                    if app.faults.should_drop(is_data_plane(req.uri().path())) {
                        // An error from the service makes hyper close the connection unanswered.
                        return Err(DroppedByFaultInjection);
                    }
                    let resp: Result<Response, Infallible> =
                        router.oneshot(req.map(Body::new)).await;
                    match resp {
                        Ok(r) => Ok(r),
                        Err(never) => match never {},
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
