//! The internal listener: the proxy into every connected plane
//! (`/api/proxy/{planeType}/{planeID}/{crNamespace}/{crName}/{target}/{path…}`) and the
//! plane API (`/api/v1/planes/…`).

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::Core;
use super::hub::StreamGuard;
use super::metrics::{RequestLabels, TargetLabels};
use crate::planes::{CrRef, PlaneKey, PlaneType};
use crate::tunnel::body::{self, Body};
use crate::tunnel::headers::{end_to_end_headers, requested_upgrade};
use crate::tunnel::protocol::{
    REQUEST_ID_HEADER, STREAMING_HEADER, TARGET_HEADER, UPGRADE_HEADER, UPGRADED_HEADER,
};

const SOURCE: &str = "gateway";

/// Long-lived responses get no time limit: watches, followed logs, upgrades.
pub fn is_streaming(method: &Method, path: &str, query: Option<&str>, upgrade: bool) -> bool {
    if upgrade {
        return true;
    }
    let flag_set = |name: &str| {
        query.is_some_and(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == name && (v == "true" || v == "1"))
        })
    };
    method == Method::GET && (flag_set("watch") || flag_set("follow") || path.contains("/watch/"))
}

fn new_request_id() -> String {
    let bytes: [u8; 12] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        return proxy(core, req, &rest).await;
    }
    if path.starts_with("/api/v1/planes") {
        return super::api::handle(core, req).await;
    }
    body::error_response(
        StatusCode::NOT_FOUND,
        SOURCE,
        &format!(
            "{path} not found: use /api/proxy/{{planeType}}/{{planeID}}/{{crNamespace}}/{{crName}}/{{target}}/{{path}} \
             or /api/v1/planes/..."
        ),
    )
}

struct Route {
    key: PlaneKey,
    cr: CrRef,
    target: String,
    /// Raw (still percent-encoded) path below the target, starting with `/`.
    path: String,
}

fn parse_route(rest: &str) -> Result<Route, String> {
    let mut parts = rest.splitn(6, '/');
    let mut next = |what: &str| {
        parts
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("the proxy path names no {what}"))
    };
    let plane_type = next("planeType")?;
    let plane_id = next("planeID")?;
    let namespace = next("crNamespace")?;
    let name = next("crName")?;
    let target = next("target")?;
    let path = format!("/{}", parts.next().unwrap_or(""));
    let plane_type = PlaneType::parse(&plane_type).ok_or_else(|| {
        format!("unknown planeType {plane_type:?}; use dataplane, buildplane or observabilityplane")
    })?;
    Ok(Route {
        key: PlaneKey {
            plane_type,
            plane_id,
        },
        cr: CrRef::new(&namespace, &name),
        target,
        path,
    })
}

async fn proxy(core: Arc<Core>, mut req: Request<Incoming>, rest: &str) -> Response<Body> {
    let started = Instant::now();
    let id = request_id(req.headers());
    let route = match parse_route(rest) {
        Ok(route) => route,
        Err(e) => {
            return with_id(
                body::error_response(StatusCode::BAD_REQUEST, SOURCE, &e),
                &id,
            );
        }
    };
    let decoded = percent_encoding::percent_decode_str(&route.path).decode_utf8_lossy();
    if let Err((status, message)) = core.checks.check(req.method(), &route.target, &decoded) {
        tracing::info!(request_id = %id, plane = %route.key, target = %route.target, %status, "proxy request refused: {message}");
        return with_id(body::error_response(status, SOURCE, &message), &id);
    }
    let declared_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if core.max_body_size > 0 && declared_length.is_some_and(|n| n > core.max_body_size) {
        return with_id(
            body::error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                SOURCE,
                &format!(
                    "request body larger than --max-body-size ({} bytes)",
                    core.max_body_size
                ),
            ),
            &id,
        );
    }
    let Some(agent) = core.hub.pick(&route.key, &route.cr) else {
        let message = if core.hub.any_connected(&route.key) {
            format!(
                "no connected agent of plane {} is authorised for {} {}",
                route.key,
                route.key.plane_type.kind(),
                route.cr
            )
        } else {
            format!("no agent connected for plane {}", route.key)
        };
        record(&core, &route, StatusCode::BAD_GATEWAY, started);
        return with_id(
            body::error_response(StatusCode::BAD_GATEWAY, SOURCE, &message),
            &id,
        );
    };

    let upgrade = requested_upgrade(req.headers());
    let streaming = is_streaming(
        req.method(),
        &route.path,
        req.uri().query(),
        upgrade.is_some(),
    );
    let on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();

    let uri = match parts.uri.query() {
        Some(q) => format!("http://{}{}?{q}", route.target, route.path),
        None => format!("http://{}{}", route.target, route.path),
    };
    let mut forwarded = Request::new(body::empty());
    *forwarded.method_mut() = parts.method.clone();
    *forwarded.uri_mut() = match uri.parse() {
        Ok(uri) => uri,
        Err(e) => {
            return with_id(
                body::error_response(StatusCode::BAD_REQUEST, SOURCE, &format!("bad path: {e}")),
                &id,
            );
        }
    };
    *forwarded.headers_mut() = end_to_end_headers(&parts.headers);
    let headers = forwarded.headers_mut();
    insert(headers, TARGET_HEADER, &route.target);
    insert(headers, REQUEST_ID_HEADER, &id);
    if streaming {
        insert(headers, STREAMING_HEADER, "true");
    }
    let upstream_tx = if let Some(protocol) = &upgrade {
        headers.insert(UPGRADE_HEADER, protocol.clone());
        let (tx, body) = body::channel();
        *forwarded.body_mut() = body;
        Some(tx)
    } else {
        let metrics = core.metrics.clone();
        *forwarded.body_mut() =
            body::metered(body::boxed(incoming), core.max_body_size, move |n| {
                metrics.add_bytes("request", n)
            });
        None
    };

    tracing::debug!(request_id = %id, agent = agent.id, plane = %route.key, target = %route.target,
        method = %parts.method, path = %route.path, streaming, "proxying");
    let guard = agent.stream_guard();
    core.metrics.open_streams.inc();
    let open_streams = OpenStream {
        core: core.clone(),
        _agent: guard,
    };
    let send = agent.sender().send_request(forwarded);
    let response = if streaming {
        send.await
    } else {
        match tokio::time::timeout(core.request_timeout, send).await {
            Ok(result) => result,
            Err(_) => {
                record(&core, &route, StatusCode::GATEWAY_TIMEOUT, started);
                tracing::warn!(request_id = %id, plane = %route.key, "no response within --request-timeout");
                return with_id(
                    body::error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        SOURCE,
                        &format!(
                            "plane {} did not answer within {} (--request-timeout)",
                            route.key,
                            humantime::format_duration(core.request_timeout)
                        ),
                    ),
                    &id,
                );
            }
        }
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            record(&core, &route, StatusCode::BAD_GATEWAY, started);
            tracing::warn!(request_id = %id, agent = agent.id, plane = %route.key, error = %e, "tunnel request failed");
            return with_id(
                body::error_response(
                    StatusCode::BAD_GATEWAY,
                    SOURCE,
                    &format!("the agent of plane {} dropped the request: {e}", route.key),
                ),
                &id,
            );
        }
    };
    record(&core, &route, response.status(), started);
    let (mut parts, incoming) = response.into_parts();
    let upgraded_to = parts.headers.get(UPGRADED_HEADER).cloned();
    let mut headers = end_to_end_headers(&parts.headers);
    insert(&mut headers, REQUEST_ID_HEADER, &id);

    if let (Some(protocol), Some(on_upgrade), Some(upstream_tx)) =
        (upgraded_to, on_upgrade, upstream_tx)
    {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.status = StatusCode::SWITCHING_PROTOCOLS;
        parts.headers = headers;
        let agent_id = agent.id;
        let plane = route.key.to_string();
        core.tracker.spawn(async move {
            let _open = open_streams;
            match on_upgrade.await {
                Ok(caller) => {
                    let (sent, received) = body::pump(TokioIo::new(caller), body::boxed(incoming), upstream_tx).await;
                    tracing::info!(request_id = %id, agent = agent_id, plane, sent, received, "upgraded stream closed");
                }
                Err(e) => tracing::warn!(request_id = %id, error = %e, "caller's upgrade failed"),
            }
        });
        return Response::from_parts(parts, body::empty());
    }
    parts.headers = headers;
    let metrics = core.metrics.clone();
    let body = body::metered(body::boxed(incoming), core.max_body_size, move |n| {
        metrics.add_bytes("response", n);
        drop(open_streams);
    });
    Response::from_parts(parts, body)
}

/// Accounts for one stream in flight until the response body is gone.
struct OpenStream {
    core: Arc<Core>,
    _agent: StreamGuard,
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

fn with_id(mut response: Response<Body>, id: &str) -> Response<Body> {
    insert(response.headers_mut(), REQUEST_ID_HEADER, id);
    response
}

fn record(core: &Core, route: &Route, status: StatusCode, started: Instant) {
    core.metrics
        .requests
        .get_or_create(&RequestLabels {
            plane_type: route.key.plane_type.as_str().to_string(),
            plane_id: route.key.plane_id.clone(),
            target: route.target.clone(),
            code: status.as_u16().to_string(),
        })
        .inc();
    core.metrics
        .request_duration
        .get_or_create(&TargetLabels {
            plane_type: route.key.plane_type.as_str().to_string(),
            target: route.target.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
}
