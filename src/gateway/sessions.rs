//! OpenChoreo's session endpoints on the internal listener, so its API server can use
//! them unchanged: wire logs ([`wire_logs`]) and exec, which opens a shell in a remote pod:
//! `GET /api/exec/{planeType}/{planeID}/{crNamespace}/{crName}?podNamespace=&podName=
//! [&container=][&command=…][&tty=true][&stdin=true]`, a WebSocket.
//!
//! The gateway opens the pod's exec on the plane's API server itself, as a WebSocket
//! (`v5.channel.k8s.io`, else `v4`) through the agent's `k8s` target, and bridges the
//! two framings, which nearly agree: each message is a stream byte and its payload. The
//! caller's are OpenChoreo's: `0` stdin (`[0]` alone: stdin closed), `1` stdout, `2`
//! stderr, `3` resize; Kubernetes' resize is channel `4` and its `3` carries the exit
//! status, which OpenChoreo's callers do not read. The caller gets `[1]` once the exec
//! runs, and a Close (1000) when it ends. Anything that fails before that (no agent, no
//! such pod, a refused exec) is an HTTP error, before the caller's upgrade.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::create_response_with_body;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Core;
use super::internal::{Route, admit, plane_and_cr};
use crate::planes::{CrRef, PlaneKey};
use crate::tunnel::body::{self, Body};
use crate::tunnel::kube_exec;
use crate::tunnel::protocol::UPGRADED_HEADER;
use crate::tunnel::proxy::{self, ProxyError, Target};

/// What a caller's frames may hold: stdin pasted in, a resize.
const MAX_CALLER_MESSAGE: usize = 1024 * 1024;

/// What a pod's namespace or name keeps as it is in a path (names are DNS labels).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The exec to open, as the caller's request names it.
struct ExecTarget {
    route: Route,
    query: String,
}

fn parse(rest: &str, query: Option<&str>) -> Result<ExecTarget, ProxyError> {
    let (key, cr) = plane_and_cr(&mut rest.splitn(4, '/'), |what| {
        format!(
            "the exec path names no {what}: use /api/exec/{{planeType}}/{{planeID}}/{{crNamespace}}/{{crName}}"
        )
    })?;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let one = |key: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let (Some(pod_namespace), Some(pod)) = (one("podNamespace"), one("podName")) else {
        return Err(ProxyError::BadRequest(
            "podNamespace and podName are required query parameters".into(),
        ));
    };
    for (what, name) in [
        ("podNamespace", Some(&pod_namespace)),
        ("podName", Some(&pod)),
    ]
    .into_iter()
    .chain([("container", one("container").as_ref())])
    {
        if name.is_some_and(|n| !kube_exec::is_object_name(n)) {
            return Err(ProxyError::BadRequest(format!(
                "{what} is not a Kubernetes name (lower-case letters, digits, '-' and '.')"
            )));
        }
    }
    let segment = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/exec",
        segment(&pod_namespace),
        segment(&pod)
    );
    let mut exec = url::form_urlencoded::Serializer::new(String::new());
    exec.append_pair("stdout", "true")
        .append_pair("stderr", "true");
    for flag in ["stdin", "tty"] {
        if one(flag).as_deref() == Some("true") {
            exec.append_pair(flag, "true");
        }
    }
    if let Some(container) = one("container") {
        exec.append_pair("container", &container);
    }
    let commands: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v)
        .collect();
    if commands.is_empty() {
        exec.append_pair("command", "/bin/sh");
    }
    for command in commands {
        exec.append_pair("command", command);
    }
    Ok(ExecTarget {
        route: Route {
            key,
            cr,
            target: Target::Kubernetes,
            path,
        },
        query: exec.finish(),
    })
}

/// Answers `/api/exec/…`: the caller's 101 once the pod's exec is open, or why not.
pub async fn handle(
    core: &Arc<Core>,
    req: Request<Incoming>,
    rest: &str,
    id: &str,
) -> Result<Response<Body>, ProxyError> {
    let exec = parse(rest, req.uri().query())?;
    // The caller's upgrade is checked first; it is answered last.
    let switching = create_response_with_body(&req, body::empty)
        .map_err(|e| ProxyError::BadRequest(format!("/api/exec takes a WebSocket upgrade: {e}")))?;
    let agent = admit(core, &req, &exec.route)?;
    let (forwarded, upstream_tx) =
        kube_exec::request(&exec.route.path, &exec.query, id).map_err(ProxyError::BadRequest)?;
    let guard = agent.stream_guard();
    let what = format!("the agent of plane {}", exec.route.key);
    let response = proxy::response_head(
        agent.sender().send_request(forwarded),
        false,
        core.config.request_timeout,
        &what,
        "dropped the exec",
    )
    .await?;
    // A switch reaches the gateway as a response that names the protocol it upgraded to
    // (HTTP/2 has no 101).
    if !response.headers().contains_key(UPGRADED_HEADER) {
        // The API server's own answer (no such pod, exec forbidden) is the caller's.
        let (mut parts, incoming) = response.into_parts();
        parts.headers = crate::tunnel::headers::end_to_end_headers(&parts.headers);
        proxy::set_request_id(&mut parts.headers, id);
        return Ok(Response::from_parts(parts, body::boxed(incoming)));
    }
    let v5 = kube_exec::speaks_v5(response.headers());
    let kube = kube_exec::websocket(body::boxed(response.into_body()), upstream_tx).await;
    let on_upgrade = hyper::upgrade::on(req);
    let id = id.to_string();
    core.tracker.spawn(async move {
        let _guard = guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(MAX_CALLER_MESSAGE))
                    .max_frame_size(Some(MAX_CALLER_MESSAGE));
                let caller = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let ended = bridge(caller, kube, v5).await;
                tracing::info!(request_id = %id, "exec ended: {ended}");
            }
            Err(e) => {
                tracing::warn!(request_id = %id, error = %e, "the caller's exec upgrade failed")
            }
        }
    });
    Ok(switching)
}

/// `GET /api/wirelogs/{planeType}/{planeID}/{crNamespace}/{crName}?environment=&namespace=
/// [&project=][&component=]`, Server-Sent Events: OpenChoreo's agents read these from
/// Hubble Relay, and the gateway relays an OpenChoreo agent's session of the plane;
/// planelink's agents have no wire-log source, which the answer says after the checks
/// OpenChoreo's gateway makes (the path, the required parameters, an agent for the plane).
pub async fn wire_logs(
    core: &Core,
    req: &Request<Incoming>,
    rest: &str,
    id: &str,
) -> Result<Response<Body>, ProxyError> {
    let (key, cr, query) = wire_log_route(req, rest)?;
    if let Some(agent) = core.hub.pick_openchoreo(&key, &cr) {
        let mut forwarded = Request::new(body::empty());
        *forwarded.uri_mut() = format!("http://hubble/wirelogs?{query}")
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("bad wire-log query: {e}")))?;
        let headers = forwarded.headers_mut();
        for (name, value) in [
            (crate::tunnel::protocol::TARGET_HEADER, "hubble"),
            (crate::tunnel::protocol::STREAMING_HEADER, "true"),
            (crate::tunnel::protocol::REQUEST_ID_HEADER, id),
        ] {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        let guard = agent.stream_guard();
        let response = proxy::response_head(
            agent.sender().send_request(forwarded),
            true,
            core.config.request_timeout,
            &format!("the agent of plane {key}"),
            "dropped the wire-log stream",
        )
        .await?;
        let (mut parts, incoming) = response.into_parts();
        proxy::set_request_id(&mut parts.headers, id);
        let body = body::metered(body::boxed(incoming), 0, move |_| drop(guard));
        return Ok(Response::from_parts(parts, body));
    }
    if core.hub.pick(&key, &cr).is_none() {
        return Err(ProxyError::NoAgent(format!(
            "no agent available: no connected agent of plane {key} is authorised for the plane CR {cr}"
        )));
    }
    Err(ProxyError::NotImplemented(format!(
        "plane {key} has no wire-log source: wire logs come from Hubble Relay, which only \
         OpenChoreo's agent reads, and no such agent of the plane is connected; read Hubble \
         Relay in that plane (hubble observe) or keep OpenChoreo's agent there for wire logs"
    )))
}

/// The plane, CR and (re-encoded, keys sorted) query of a wire-log request.
fn wire_log_route(
    req: &Request<Incoming>,
    rest: &str,
) -> Result<(PlaneKey, CrRef, String), ProxyError> {
    let (key, cr) = plane_and_cr(&mut rest.splitn(4, '/'), |_| {
        "use /api/wirelogs/{planeType}/{planeID}/{crNamespace}/{crName}?environment=&namespace="
            .into()
    })?;
    let query = req.uri().query().unwrap_or("");
    let given = |key: &str| {
        url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == key && !v.is_empty())
    };
    if !given("environment") || !given("namespace") {
        return Err(ProxyError::BadRequest(
            "environment and namespace are required query parameters".into(),
        ));
    }
    let mut kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, v)| {
            matches!(
                k.as_ref(),
                "environment" | "namespace" | "project" | "component"
            ) && !v.is_empty()
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    kept.sort();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    Ok((key, cr, query))
}

/// Carries messages both ways until either side ends; why it ended.
async fn bridge<C, K>(caller: WebSocketStream<C>, kube: WebSocketStream<K>, v5: bool) -> String
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    K: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_caller, mut from_caller) = caller.split();
    let (mut to_kube, mut from_kube) = kube.split();
    // The exec runs: OpenChoreo's callers wait for this before they send.
    if to_caller
        .send(Message::Binary(Bytes::from_static(&[1])))
        .await
        .is_err()
    {
        return "the caller left".into();
    }
    let upstream = async {
        while let Some(Ok(message)) = from_caller.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Text(text) => Bytes::from(text.as_str().as_bytes().to_vec()),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some(forwarded) = kube_exec::from_openchoreo_input(&data, v5) else {
                continue;
            };
            if to_kube.send(Message::Binary(forwarded)).await.is_err() {
                return "the API server's side closed";
            }
        }
        let _ = to_kube.send(Message::Close(None)).await;
        "the caller left"
    };
    let downstream = async {
        while let Some(data) = kube_exec::next_output(&mut from_kube).await {
            if to_caller.send(Message::Binary(data)).await.is_err() {
                return "the caller left";
            }
        }
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = to_caller.send(close).await;
        "the command ended"
    };
    tokio::select! {
        why = upstream => why.to_string(),
        why = downstream => why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_are_built_as_openchoreo_builds_them() {
        let exec = parse(
            "dataplane/p1/_cluster/shared",
            Some("podNamespace=dp-a&podName=web-1&container=main&command=ls&command=-l&tty=true&stdin=true"),
        )
        .unwrap();
        assert_eq!(exec.route.path, "/api/v1/namespaces/dp-a/pods/web-1/exec");
        assert_eq!(
            exec.query,
            "stdout=true&stderr=true&stdin=true&tty=true&container=main&command=ls&command=-l"
        );
        assert_eq!(exec.route.cr, CrRef::new("_cluster", "shared"));
        let shell = parse("dataplane/p1/org/dp1", Some("podNamespace=a&podName=b")).unwrap();
        assert_eq!(shell.query, "stdout=true&stderr=true&command=%2Fbin%2Fsh");
        assert_eq!(
            parse("dataplane/p1/org/dp1", Some("podName=b")).err(),
            Some(ProxyError::BadRequest(
                "podNamespace and podName are required query parameters".into()
            ))
        );
        assert!(matches!(
            parse("dataplane/p1/org", Some("podNamespace=a&podName=b")),
            Err(ProxyError::BadRequest(_))
        ));
        // A name that is not one would make the checks judge another path.
        assert_eq!(
            parse(
                "dataplane/p1/org/dp1",
                Some("podNamespace=.&podName=configmaps")
            )
            .err(),
            Some(ProxyError::BadRequest(
                "podNamespace is not a Kubernetes name (lower-case letters, digits, '-' and '.')"
                    .into()
            ))
        );
        assert!(
            parse(
                "dataplane/p1/org/dp1",
                Some("podNamespace=a&podName=b&container=x/y")
            )
            .is_err()
        );
    }
}
