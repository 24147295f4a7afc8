//! Serving one tunnelled request: pick the target, forward to the upstream with the
//! agent's credentials, stream both ways; an upgrade becomes a full-duplex stream.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::State;
use super::upstream::Upstream;
use crate::tunnel::body::{self, Body};
use crate::tunnel::headers::{end_to_end_headers, strip_caller_identity};
use crate::tunnel::protocol::{
    CONTROL_GOING_AWAY, CONTROL_HEADER, CONTROL_MEMBERSHIP, HELLO_HEADER, REQUEST_ID_HEADER,
    STREAMING_HEADER, TARGET_HEADER, UPGRADE_HEADER, UPGRADED_HEADER,
};
use crate::tunnel::proxy::{self, ProxyError, Target};
use crate::tunnel::ws::PeerClose;

const SOURCE: &str = "agent";

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Serves one request of a tunnel whose end the gateway announces in `peer_close`.
pub async fn handle(
    state: Arc<State>,
    peer_close: &PeerClose,
    req: Request<Incoming>,
) -> Response<Body> {
    if let Some(kind) = header(&req, CONTROL_HEADER) {
        return control(&state, peer_close, kind, header(&req, HELLO_HEADER));
    }
    let started = std::time::Instant::now();
    let id = header(&req, REQUEST_ID_HEADER).unwrap_or("-").to_string();
    let target = target_label(&state, &req);
    state.metrics.open_streams.inc();
    let mut response = match forward(&state, req, &id, &target).await {
        Ok(response) => response,
        Err(e) => e.into_response(SOURCE, &id),
    };
    proxy::set_request_id(response.headers_mut(), &id);
    state
        .metrics
        .served(&target, response.status().as_u16(), started.elapsed());
    // The stream stays open until its response body (or upgraded stream) ends.
    let metrics = state.metrics.clone();
    response.map(|body| {
        body::metered(body, 0, move |n| {
            metrics.add_bytes(&target, "response", n);
            metrics.open_streams.dec();
        })
    })
}

/// News from the gateway for the agent itself (only the gateway can send it: callers'
/// `planelink-*` headers never cross the tunnel).
fn control(
    state: &State,
    peer_close: &PeerClose,
    kind: &str,
    hello: Option<&str>,
) -> Response<Body> {
    let mut response = Response::new(body::empty());
    match (kind, hello.map(crate::tunnel::Hello::parse)) {
        (CONTROL_GOING_AWAY, _) => {
            peer_close.set_going_away();
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        (CONTROL_MEMBERSHIP, Some(Ok(hello))) => {
            state.learn(hello.membership);
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        (CONTROL_MEMBERSHIP, Some(Err(e))) => {
            tracing::warn!("the gateway sent a membership hello that does not parse: {e}");
            *response.status_mut() = StatusCode::BAD_REQUEST;
        }
        _ => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

/// The target a request names, as a metric label: one the agent serves, else
/// `unknown` (the label's values stay bounded whatever the peer sends).
fn target_label(state: &State, req: &Request<Incoming>) -> String {
    match header(req, TARGET_HEADER) {
        Some(name) if name == Target::AGENT || state.targets.contains_key(name) => name.into(),
        _ => "unknown".into(),
    }
}

/// The upstream a request's target names.
fn upstream(state: &State, req: &Request<Incoming>) -> Result<Option<Upstream>, ProxyError> {
    let target: Target = header(req, TARGET_HEADER)
        .ok_or_else(|| ProxyError::BadRequest("the tunnelled request names no target".into()))?
        .parse()
        .map_err(ProxyError::BadRequest)?;
    if target == Target::Agent {
        return Ok(None);
    }
    state
        .targets
        .get(target.as_str())
        .cloned()
        .map(Some)
        .ok_or_else(|| {
            ProxyError::NotFound(format!(
                "this agent has no target {:?}; it serves: {}",
                target.as_str(),
                state.target_names().join(", ")
            ))
        })
}

/// The upstream answered 101: its upgraded connection is pumped to and from the tunnel
/// stream, whose response names the protocol in [`UPGRADED_HEADER`].
fn switched(mut response: Response<Incoming>, downstream: Body, id: &str) -> Response<Body> {
    let protocol = response.headers().get(header::UPGRADE).cloned();
    let on_upgrade = hyper::upgrade::on(&mut response);
    let mut headers = end_to_end_headers(response.headers());
    headers.insert(
        UPGRADED_HEADER,
        protocol.unwrap_or_else(|| HeaderValue::from_static("unknown")),
    );
    let (tx, body) = body::channel();
    tokio::spawn(proxy::pump_upgraded(
        on_upgrade,
        downstream,
        tx,
        id.to_string(),
        "upstream",
    ));
    let mut out = Response::new(body);
    *out.headers_mut() = headers;
    out
}

async fn forward(
    state: &State,
    req: Request<Incoming>,
    id: &str,
    target_label: &str,
) -> Result<Response<Body>, ProxyError> {
    let Some(upstream) = upstream(state, &req)? else {
        return Ok(state.info_response());
    };
    let upgrade = req.headers().get(UPGRADE_HEADER).cloned();
    let streaming = header(&req, STREAMING_HEADER) == Some("true");
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    // The path at info; the query (tokens, exec commands) only at debug, masked.
    let path = crate::safe_text::escape(req.uri().path());
    let query = req.uri().query().map(crate::safe_text::redacted_query);
    let uri = upstream
        .uri_for(&path_and_query)
        .map_err(|e| ProxyError::BadRequest(format!("bad path: {e}")))?;
    let (parts, incoming) = req.into_parts();
    let metrics = state.metrics.clone();
    let target_owned = target_label.to_string();
    let incoming = body::metered(body::boxed(incoming), 0, move |n| {
        metrics.add_bytes(&target_owned, "request", n)
    });
    let mut headers = end_to_end_headers(&parts.headers);
    proxy::set_request_id(&mut headers, id);
    strip_caller_identity(
        &mut headers,
        upstream.drops_caller_auth,
        upstream.pass_impersonation,
    );
    let mut out = Request::new(body::empty());
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    let downstream = match &upgrade {
        Some(protocol) => {
            out.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            out.headers_mut().insert(header::UPGRADE, protocol.clone());
            Some(incoming)
        }
        None => {
            *out.body_mut() = incoming;
            None
        }
    };
    let target = upstream.name.as_str();
    tracing::debug!(request_id = %id, target, method = %parts.method, %path, query = ?query, "forwarding");
    let what = format!("target {target} ({})", upstream.base);
    let response = proxy::response_head(
        upstream.send(out),
        streaming,
        state.config.request_timeout,
        &what,
        "failed",
    )
    .await
    .inspect_err(|e| tracing::warn!(request_id = %id, target, "upstream request failed: {e}"))?;
    tracing::info!(request_id = %id, target, method = %parts.method, %path,
        status = response.status().as_u16(), "request served");
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(downstream)) = (response.status(), downstream) {
        return Ok(switched(response, downstream, id));
    }
    let (parts, incoming) = response.into_parts();
    let mut out = Response::new(body::boxed(incoming));
    *out.status_mut() = parts.status;
    *out.headers_mut() = end_to_end_headers(&parts.headers);
    Ok(out)
}
