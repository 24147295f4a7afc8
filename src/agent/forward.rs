//! Serving one tunnelled request: pick the target, forward to the upstream with the
//! agent's credentials, stream both ways; an upgrade becomes a full-duplex stream.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::State;

use crate::tunnel::body::{self, Body};
use crate::tunnel::headers::end_to_end_headers;
use crate::tunnel::protocol::{
    REQUEST_ID_HEADER, STREAMING_HEADER, TARGET_HEADER, UPGRADE_HEADER, UPGRADED_HEADER,
};

const SOURCE: &str = "agent";

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let id = header(&req, REQUEST_ID_HEADER).unwrap_or("-").to_string();
    let mut response = forward(state, req, id.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

async fn forward(state: Arc<State>, req: Request<Incoming>, id: String) -> Response<Body> {
    let id = id.as_str();
    let Some(target) = header(&req, TARGET_HEADER).map(str::to_owned) else {
        return body::error_response(
            StatusCode::BAD_REQUEST,
            SOURCE,
            "the tunnelled request names no target",
        );
    };
    if target == "agent" {
        return state.info_response();
    }
    let Some(upstream) = state.targets.get(&target).cloned() else {
        return body::error_response(
            StatusCode::NOT_FOUND,
            SOURCE,
            &format!(
                "this agent has no target {target:?}; it serves: {}",
                state.target_names().join(", ")
            ),
        );
    };
    let upgrade = req.headers().get(UPGRADE_HEADER).cloned();
    let streaming = header(&req, STREAMING_HEADER) == Some("true");
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    let uri = match upstream.uri_for(&path_and_query) {
        Ok(uri) => uri,
        Err(e) => {
            return body::error_response(
                StatusCode::BAD_REQUEST,
                SOURCE,
                &format!("bad path: {e}"),
            );
        }
    };
    let (parts, incoming) = req.into_parts();
    let mut headers = end_to_end_headers(&parts.headers);
    if let Ok(value) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    if upstream.has_auth {
        // The agent's identity, never a caller's credentials, reaches this upstream.
        headers.remove(header::AUTHORIZATION);
    }
    let mut out = Request::new(body::empty());
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    let downstream = if let Some(protocol) = &upgrade {
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        out.headers_mut().insert(header::UPGRADE, protocol.clone());
        Some(incoming)
    } else {
        *out.body_mut() = body::boxed(incoming);
        None
    };
    tracing::debug!(request_id = %id, target, method = %parts.method, path = %path_and_query, "forwarding");
    let sent = upstream.send(out);
    let result = if streaming {
        sent.await
    } else {
        match tokio::time::timeout(state.request_timeout, sent).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(request_id = %id, target, "upstream did not answer within --request-timeout");
                return body::error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    SOURCE,
                    &format!(
                        "target {target} did not answer within {}",
                        humantime::format_duration(state.request_timeout)
                    ),
                );
            }
        }
    };
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(request_id = %id, target, error = %e, "upstream request failed");
            return body::error_response(
                StatusCode::BAD_GATEWAY,
                SOURCE,
                &format!("target {target} ({}) failed: {e}", upstream.base),
            );
        }
    };
    tracing::info!(request_id = %id, target, method = %parts.method, path = %path_and_query,
        status = response.status().as_u16(), "request served");
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(downstream)) = (response.status(), downstream) {
        let protocol = response.headers().get(header::UPGRADE).cloned();
        let on_upgrade = hyper::upgrade::on(&mut response);
        let mut headers = end_to_end_headers(response.headers());
        headers.insert(
            UPGRADED_HEADER,
            protocol.unwrap_or_else(|| HeaderValue::from_static("unknown")),
        );
        let (tx, body) = body::channel();
        let id = id.to_owned();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upstream_io) => {
                    let (sent, received) =
                        body::pump(TokioIo::new(upstream_io), body::boxed(downstream), tx).await;
                    tracing::info!(request_id = %id, sent, received, "upgraded stream closed");
                }
                Err(e) => tracing::warn!(request_id = %id, error = %e, "upstream upgrade failed"),
            }
        });
        let mut out = Response::new(body);
        *out.headers_mut() = headers;
        return out;
    }
    let (parts, incoming) = response.into_parts();
    let mut out = Response::new(body::boxed(incoming));
    *out.status_mut() = parts.status;
    *out.headers_mut() = end_to_end_headers(&parts.headers);
    out
}
