//! The plane API of OpenChoreo's gateway: notify, reconnect, per-plane and all-planes
//! status. planelink's registry is live, so `notify` needs no CA fetch: it re-verifies
//! the plane's agents against what the registry holds now.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::Core;
use crate::planes::connection::Notification;
use crate::planes::{CrRef, PlaneKey, PlaneType};
use crate::tunnel::body::{self, Body};

const SOURCE: &str = "gateway";
/// A notification is a few hundred bytes; refuse anything near this.
const MAX_NOTIFY_BODY: usize = 64 * 1024;

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(body::full(value.to_string() + "\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    body::error_response(status, SOURCE, message)
}

fn plane_key(plane_type: &str, plane_id: &str) -> Result<PlaneKey, Box<Response<Body>>> {
    let plane_type = PlaneType::parse(plane_type).ok_or_else(|| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unknown planeType {plane_type:?}; use dataplane, buildplane or observabilityplane"
            ),
        ))
    })?;
    if plane_id.is_empty() {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "missing planeID")));
    }
    Ok(PlaneKey {
        plane_type,
        plane_id: plane_id.to_string(),
    })
}

pub async fn handle(core: Arc<Core>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let decoded: Vec<String> = path
        .split('/')
        .skip(4)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, ["notify"]) => notify(core, req).await,
        (Method::GET, ["status"]) => {
            let snapshot = core.registry.current();
            let planes = core.hub.all_statuses(snapshot.as_deref());
            json(
                StatusCode::OK,
                serde_json::json!({ "total": planes.len(), "planes": planes }),
            )
        }
        (Method::POST, [plane_type, plane_id, "reconnect"]) => {
            let key = match plane_key(plane_type, plane_id) {
                Ok(key) => key,
                Err(response) => return *response,
            };
            let disconnected = core.hub.disconnect(&key);
            tracing::info!(plane = %key, disconnected, "reconnect requested through the plane API");
            json(
                StatusCode::OK,
                serde_json::json!({ "success": true, "disconnectedAgents": disconnected }),
            )
        }
        (Method::GET, [plane_type, plane_id, "status"]) => {
            let key = match plane_key(plane_type, plane_id) {
                Ok(key) => key,
                Err(response) => return *response,
            };
            let query: Vec<(String, String)> = req
                .uri()
                .query()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default();
            let param = |name: &str| {
                query
                    .iter()
                    .find(|(k, v)| k == name && !v.is_empty())
                    .map(|(_, v)| v.clone())
            };
            let cr = match (param("namespace"), param("name")) {
                (Some(ns), Some(name)) => Some(CrRef::new(&ns, &name)),
                (None, None) => None,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "give both namespace and name, or neither",
                    );
                }
            };
            let status = core.plane_status(&key, cr.as_ref());
            json(
                StatusCode::OK,
                serde_json::to_value(status).unwrap_or_default(),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "unknown plane API call; use POST /api/v1/planes/notify, POST /api/v1/planes/{type}/{id}/reconnect, \
             GET /api/v1/planes/{type}/{id}/status or GET /api/v1/planes/status",
        ),
    }
}

async fn notify(core: Arc<Core>, req: Request<Incoming>) -> Response<Body> {
    let bytes = match Limited::new(req.into_body(), MAX_NOTIFY_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let notification: Notification = match serde_json::from_slice(&bytes) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid payload: {e}")),
    };
    if notification.plane_type.is_empty()
        || notification.plane_id.is_empty()
        || notification.event.is_empty()
    {
        return error(
            StatusCode::BAD_REQUEST,
            "missing required fields: planeType, planeID, event",
        );
    }
    if !matches!(
        notification.event.as_str(),
        "created" | "updated" | "deleted"
    ) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unknown event type: {}; use created, updated or deleted",
                notification.event
            ),
        );
    }
    let key = match plane_key(&notification.plane_type, &notification.plane_id) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let Some(snapshot) = core.registry.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the plane registry has not loaded yet; retry shortly",
        );
    };
    let result = core.hub.reverify(&snapshot, Some(&key));
    tracing::info!(plane = %key, event = %notification.event,
        cr = %format!("{}/{}", notification.namespace, notification.name),
        disconnected = result.disconnected_agents, granted = result.authorizations_granted,
        revoked = result.authorizations_revoked, "plane notification: agents re-verified");
    json(
        StatusCode::OK,
        serde_json::json!({
            "success": true,
            "action": "revalidate",
            "disconnectedAgents": result.disconnected_agents,
            "authorizationsGranted": result.authorizations_granted,
            "authorizationsRevoked": result.authorizations_revoked,
        }),
    )
}
