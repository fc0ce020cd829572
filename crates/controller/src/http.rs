//! `/healthz` (the process serves), `/readyz` (every watch listed once, or a follower on
//! standby) and `/metrics`
//! (OpenMetrics text) on TCP ports.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::run::Health;

/// An HTTP port that could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {addr}: {source}")]
pub struct HttpError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// `/healthz` and `/readyz`.
pub fn health_router(health: Arc<Health>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    if health.is_synced() {
                        (StatusCode::OK, "ok")
                    } else if health.is_ready() {
                        (StatusCode::OK, "standby")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "watches not listed yet")
                    }
                }
            }),
        )
}

/// `/metrics`.
pub fn metrics_router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    )
}

/// Binds `addr` and serves `router` in the background; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    router: axum::Router,
) -> Result<(SocketAddr, JoinHandle<()>), HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok((bound, task))
}
