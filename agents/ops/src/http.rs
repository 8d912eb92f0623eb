//! The HTTP surface of every binary: `/healthz`, `/readyz`, `/metrics`.
//!
//! - `GET /healthz` -> 200 `ok` while the process serves at all.
//! - `GET /readyz` -> 200 `ready: <detail>` or 503 `not ready: <detail>` from [`Health`].
//! - `GET /metrics` -> the prometheus-client registry in OpenMetrics text.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::health::Health;

/// Content type of `/metrics` (what prometheus-client's text encoder produces).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of `/healthz` and `/readyz`.
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// After the shutdown future resolves, open connections get this long to finish before `serve` returns anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    health: Health,
    registry: Arc<Registry>,
}

/// A bound (not yet serving) ops HTTP server.
pub struct HttpServer {
    /// Bound at construction so callers (and tests with port 0) learn the address before serving.
    listener: TcpListener,
    /// The address actually bound.
    local_addr: SocketAddr,
    router: Router,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        health: Health,
        registry: Arc<Registry>,
    ) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(AppState { health, registry });
        Ok(HttpServer {
            listener,
            local_addr,
            router,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish (at most a few
    /// seconds) and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let graceful = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        tracing::info!(addr = %self.local_addr, "serving /healthz /readyz /metrics");
        let served = axum::serve(self.listener, self.router).with_graceful_shutdown(graceful);
        let drain_limit = async move {
            // Only a resolved shutdown starts the drain clock.
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = served => result,
            () = drain_limit => {
                tracing::warn!(timeout = ?DRAIN_TIMEOUT, "HTTP connections still open after shutdown; closing");
                Ok(())
            }
        }
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok".to_owned())
}

async fn readyz(State(state): State<AppState>) -> Response {
    let (ready, detail) = state.health.snapshot();
    if ready {
        text(StatusCode::OK, format!("ready: {detail}"))
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {detail}"),
        )
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot encode metrics");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode metrics".to_owned(),
            )
        }
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], body).into_response()
}
