//! The plain-HTTP health listener every long-running role serves: `/health` (alive),
//! `/ready` (able to do its job), `/metrics` (Prometheus text format). The `…z`
//! spellings Kubernetes tooling expects are accepted too.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::server::{self, HttpTimeouts};

use crate::tunnel::body::{self, Body};

/// `Ok(())` when ready, else why not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub struct Health {
    pub ready: ReadyCheck,
    pub metrics: Arc<Registry>,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn respond(health: &Health, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".into(),
        );
    }
    match req.uri().path() {
        "/health" | "/healthz" | "/livez" => {
            text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
        }
        "/ready" | "/readyz" => match (health.ready)() {
            Ok(()) => text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".into(),
            ),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &health.metrics) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("cannot encode metrics: {e}\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; try /health, /ready or /metrics\n".into(),
        ),
    }
}

/// Probes and scrapes are small and quick: a slow or idle client is cut early, and a
/// flood of them cannot take more than [`MAX_CONNECTIONS`] descriptors.
const TIMEOUTS: HttpTimeouts = HttpTimeouts {
    header_read: Duration::from_secs(10),
    write: Duration::from_secs(10),
    idle: Duration::from_secs(30),
};
pub const MAX_CONNECTIONS: usize = 64;

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, health: Health, shutdown: CancellationToken) {
    let builder = server::http_builder(&TIMEOUTS);
    let stop = shutdown.clone();
    server::accept_loop(
        listener,
        "health",
        MAX_CONNECTIONS,
        shutdown,
        TaskTracker::new(),
        move |tcp, _| {
            let health = health.clone();
            let builder = builder.clone();
            let stop = stop.clone();
            async move {
                server::serve_http(tcp, &builder, TIMEOUTS, stop, move |req| {
                    let response = respond(&health, &req);
                    async move { response }
                })
                .await
            }
        },
    )
    .await;
}
