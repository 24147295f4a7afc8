//! The internal listener: the proxy into every connected plane
//! (`/api/proxy/{planeType}/{planeID}/{crNamespace}/{crName}/{target}/{path…}`) and the
//! plane API (`/api/v1/planes/…`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::hub::{AgentConn, StreamGuard};
use super::metrics::{RequestLabels, TargetLabels};
use super::{Core, MAX_CALLER_CONNECTIONS};
use crate::planes::{CrRef, PlaneKey, PlaneType};
use crate::server;
use crate::tunnel::body::{self, Body};
use crate::tunnel::headers::{end_to_end_headers, requested_upgrade};
use crate::tunnel::protocol::{
    REQUEST_ID_HEADER, STREAMING_HEADER, TARGET_HEADER, UPGRADE_HEADER, UPGRADED_HEADER,
};
use crate::tunnel::proxy::{self, ProxyError, Target};

const SOURCE: &str = "gateway";

/// Accepts callers until `stop`; each connection gets the TLS handshake deadline and the
/// `--read-timeout`, `--write-timeout` and `--idle-timeout` limits.
pub async fn serve(
    core: Arc<Core>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) {
    let builder = server::http_builder(&core.config.http);
    let tracker = core.tracker.clone();
    let handler_stop = stop.clone();
    server::accept_loop(
        listener,
        "internal",
        MAX_CALLER_CONNECTIONS,
        stop,
        tracker,
        move |tcp, remote| {
            connection(
                core.clone(),
                tcp,
                remote,
                acceptor.clone(),
                builder.clone(),
                handler_stop.clone(),
            )
        },
    )
    .await;
}

async fn connection(
    core: Arc<Core>,
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    stop: CancellationToken,
) {
    let tls = match server::tls_handshake(&acceptor, tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!(%remote, "caller refused on the internal listener: {e}");
            return;
        }
    };
    let timeouts = core.config.http;
    server::serve_http(tls, &builder, timeouts, stop, move |req| {
        let core = core.clone();
        async move {
            let http1 = req.version() < http::Version::HTTP_2;
            let mut response = handle(core.clone(), req).await;
            // Draining: an HTTP/1.1 caller's next request goes to another replica (HTTP/2
            // callers are told by GOAWAY when the listener closes).
            if http1
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
                && core.draining.load(std::sync::atomic::Ordering::Relaxed)
            {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    })
    .await;
}

fn new_request_id() -> String {
    use std::fmt::Write as _;
    let bytes: [u8; 12] = rand::random();
    let mut id = String::with_capacity(24);
    for b in bytes {
        let _ = write!(id, "{b:02x}");
    }
    id
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

pub async fn handle(core: Arc<Core>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/api/proxy/") {
        let rest = rest.to_owned();
        let id = request_id(req.headers());
        return match proxy(&core, req, &rest, &id).await {
            Ok(response) => response,
            Err(e) => e.into_response(SOURCE, &id),
        };
    }
    if let Some(rest) = path.strip_prefix("/api/exec/") {
        let rest = rest.to_owned();
        let id = request_id(req.headers());
        return match super::sessions::handle(&core, req, &rest, &id).await {
            Ok(response) => response,
            Err(e) => e.into_response(SOURCE, &id),
        };
    }
    if let Some(rest) = path.strip_prefix("/api/wirelogs/") {
        let id = request_id(req.headers());
        return match super::sessions::wire_logs(&core, &req, rest, &id).await {
            Ok(response) => response,
            Err(e) => e.into_response(SOURCE, &id),
        };
    }
    if path.starts_with("/api/v1/planes") {
        return super::api::handle(core, req).await;
    }
    body::error_response(
        StatusCode::NOT_FOUND,
        SOURCE,
        &format!(
            "{path} not found: use /api/proxy/{{planeType}}/{{planeID}}/{{crNamespace}}/{{crName}}/{{target}}/{{path}}, \
             /api/exec/{{planeType}}/{{planeID}}/{{crNamespace}}/{{crName}}, /api/wirelogs/… or /api/v1/planes/..."
        ),
    )
}

pub(super) struct Route {
    pub key: PlaneKey,
    pub cr: CrRef,
    pub target: Target,
    /// Raw (still percent-encoded) path below the target, starting with `/`.
    pub path: String,
}

/// The plane and CR every internal path names first,
/// `{planeType}/{planeID}/{crNamespace}/{crName}`, taken from `parts`; `missing` words the
/// error for a segment that is not there.
pub(super) fn plane_and_cr<'a>(
    parts: &mut impl Iterator<Item = &'a str>,
    missing: impl Fn(&str) -> String,
) -> Result<(PlaneKey, CrRef), ProxyError> {
    let mut next = |what: &str| {
        parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ProxyError::BadRequest(missing(what)))
    };
    let plane_type: PlaneType = next("planeType")?.parse().map_err(ProxyError::BadRequest)?;
    let plane_id = next("planeID")?.to_string();
    let (namespace, name) = (next("crNamespace")?, next("crName")?);
    let key = PlaneKey {
        plane_type,
        plane_id,
    };
    Ok((key, CrRef::new(namespace, name)))
}

fn parse_route(rest: &str) -> Result<Route, ProxyError> {
    let missing = |what: &str| format!("the proxy path names no {what}");
    let mut parts = rest.splitn(6, '/');
    let (key, cr) = plane_and_cr(&mut parts, missing)?;
    let target = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ProxyError::BadRequest(missing("target")))?
        .parse()
        .map_err(ProxyError::BadRequest)?;
    let path = format!("/{}", parts.next().unwrap_or(""));
    Ok(Route {
        key,
        cr,
        target,
        path,
    })
}

/// Checks a request against the proxy's rules and picks the agent to carry it.
pub(super) fn admit(
    core: &Core,
    req: &Request<Incoming>,
    route: &Route,
) -> Result<Arc<AgentConn>, ProxyError> {
    let decoded = percent_encoding::percent_decode_str(&route.path).decode_utf8_lossy();
    core.config
        .checks
        .check(req.method(), &route.target, &decoded)?;
    let limit = core.config.max_body_size;
    let declared_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if limit > 0 && declared_length.is_some_and(|n| n > limit) {
        return Err(ProxyError::TooLarge(format!(
            "request body larger than --max-body-size ({limit} bytes)"
        )));
    }
    core.hub.pick(&route.key, &route.cr).ok_or_else(|| {
        ProxyError::NoAgent(if core.hub.any_connected(&route.key) {
            format!(
                "no connected agent of plane {} is authorised for the plane CR {}",
                route.key, route.cr
            )
        } else {
            format!("no agent connected for plane {}", route.key)
        })
    })
}

async fn proxy(
    core: &Arc<Core>,
    mut req: Request<Incoming>,
    rest: &str,
    id: &str,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let route = parse_route(rest)?;
    let agent = match admit(core, &req, &route) {
        Ok(agent) => agent,
        Err(e) => {
            tracing::info!(request_id = %id, plane = %route.key, target = %route.target,
                status = e.status().as_u16(), "proxy request refused: {}", crate::safe_text::escape(&e.to_string()));
            if let ProxyError::NoAgent(_) = e {
                record(core, &route, e.status(), started);
            }
            return Err(e);
        }
    };
    let upgrade = requested_upgrade(req.headers());
    let streaming = proxy::is_streaming(
        req.method(),
        &route.path,
        req.uri().query(),
        upgrade.is_some(),
    );
    let on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (forwarded, upstream_tx) = tunnel_request(core, req, &route, id, streaming, upgrade)?;
    tracing::debug!(request_id = %id, agent = agent.id, plane = %route.key, target = %route.target,
        path = %crate::safe_text::escape(&route.path), streaming, "proxying");
    let open = OpenStream::new(core, agent.stream_guard());
    let what = format!("the agent of plane {}", route.key);
    let sent = agent.sender().send_request(forwarded);
    let response = match proxy::response_head(
        sent,
        streaming,
        core.config.request_timeout,
        &what,
        "dropped the request",
    )
    .await
    {
        Ok(response) => response,
        Err(e) => {
            record(core, &route, e.status(), started);
            tracing::warn!(request_id = %id, agent = agent.id, plane = %route.key, "tunnel request failed: {e}");
            return Err(e);
        }
    };
    record(core, &route, response.status(), started);
    let (mut parts, incoming) = response.into_parts();
    let upgraded_to = parts.headers.get(UPGRADED_HEADER).cloned();
    parts.headers = end_to_end_headers(&parts.headers);
    proxy::set_request_id(&mut parts.headers, id);
    if let (Some(protocol), Some(on_upgrade), Some(upstream_tx)) =
        (upgraded_to, on_upgrade, upstream_tx)
    {
        let pump = (on_upgrade, body::boxed(incoming), upstream_tx);
        return Ok(switch_protocols(core, parts, protocol, pump, id, open));
    }
    let metrics = core.metrics.clone();
    let body = body::metered(body::boxed(incoming), core.config.max_body_size, move |n| {
        metrics.add_bytes("response", n);
        drop(open);
    });
    Ok(Response::from_parts(parts, body))
}

/// The caller's 101: the upgraded connection is pumped to and from the tunnel stream,
/// which stays accounted for until both directions end.
fn switch_protocols(
    core: &Arc<Core>,
    mut parts: http::response::Parts,
    protocol: HeaderValue,
    (on_upgrade, incoming, upstream_tx): (hyper::upgrade::OnUpgrade, Body, UpgradeSender),
    id: &str,
    open: OpenStream,
) -> Response<Body> {
    parts.headers.insert(header::UPGRADE, protocol);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    parts.status = StatusCode::SWITCHING_PROTOCOLS;
    let pump = proxy::pump_upgraded(on_upgrade, incoming, upstream_tx, id.to_string(), "caller");
    core.tracker.spawn(async move {
        let _open = open;
        pump.await;
    });
    Response::from_parts(parts, body::empty())
}

type UpgradeSender = http_body_util::channel::Sender<bytes::Bytes, crate::tunnel::BoxError>;

/// The request as it travels through the tunnel: end-to-end headers, the target and the
/// request ID as tunnel headers; an upgrade gets a channel body the pump feeds later.
fn tunnel_request(
    core: &Core,
    req: Request<Incoming>,
    route: &Route,
    id: &str,
    streaming: bool,
    upgrade: Option<HeaderValue>,
) -> Result<(Request<Body>, Option<UpgradeSender>), ProxyError> {
    let (parts, incoming) = req.into_parts();
    let uri = match parts.uri.query() {
        Some(q) => format!("http://{}{}?{q}", route.target, route.path),
        None => format!("http://{}{}", route.target, route.path),
    };
    let mut forwarded = Request::new(body::empty());
    *forwarded.method_mut() = parts.method;
    *forwarded.uri_mut() = uri
        .parse()
        .map_err(|e| ProxyError::BadRequest(format!("bad path: {e}")))?;
    let headers = forwarded.headers_mut();
    *headers = end_to_end_headers(&parts.headers);
    insert(headers, TARGET_HEADER, route.target.as_str());
    insert(headers, REQUEST_ID_HEADER, id);
    if streaming {
        insert(headers, STREAMING_HEADER, "true");
    }
    let upstream_tx = match upgrade {
        Some(protocol) => {
            headers.insert(UPGRADE_HEADER, protocol);
            // The stream's body is the upgraded connection's bytes, not the request's
            // (empty) body: a `content-length: 0` (SPDY upgrades are POSTs) would end it
            // before the first byte.
            headers.remove(hyper::header::CONTENT_LENGTH);
            let (tx, body) = body::channel();
            *forwarded.body_mut() = body;
            Some(tx)
        }
        None => {
            let metrics = core.metrics.clone();
            *forwarded.body_mut() =
                body::metered(body::boxed(incoming), core.config.max_body_size, move |n| {
                    metrics.add_bytes("request", n)
                });
            None
        }
    };
    Ok((forwarded, upstream_tx))
}

/// Accounts for one stream in flight until the response body is gone.
struct OpenStream {
    core: Arc<Core>,
    _agent: StreamGuard,
}

impl OpenStream {
    fn new(core: &Arc<Core>, agent: StreamGuard) -> OpenStream {
        core.metrics.open_streams.inc();
        OpenStream {
            core: core.clone(),
            _agent: agent,
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.core.metrics.open_streams.dec();
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The `plane_id` label of requests for planes that are not registered: callers cannot
/// mint a new metric series per made-up planeID.
const UNREGISTERED: &str = "(unregistered)";

fn record(core: &Core, route: &Route, status: StatusCode, started: Instant) {
    let registered = core
        .registry
        .current()
        .is_some_and(|s| s.entries_for(&route.key).next().is_some());
    let plane_id = if registered {
        route.key.plane_id.clone()
    } else {
        UNREGISTERED.to_string()
    };
    core.metrics
        .requests
        .get_or_create(&RequestLabels {
            plane_type: route.key.plane_type.as_str().to_string(),
            plane_id,
            target: route.target.to_string(),
            code: status.as_u16().to_string(),
        })
        .inc();
    core.metrics
        .request_duration
        .get_or_create(&TargetLabels {
            plane_type: route.key.plane_type.as_str().to_string(),
            target: route.target.to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
}
