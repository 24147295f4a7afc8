//! A pod's exec opened as a WebSocket on the plane's API server, through a tunnel's
//! `k8s` target: the request both ends send for OpenChoreo's exec sessions (the gateway
//! for `/api/exec`, the agent for an OpenChoreo gateway's), and the WebSocket over the
//! upgraded stream once the API server switched.

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Request, header};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::body::{self, Body, BoxError};
use super::protocol::{REQUEST_ID_HEADER, STREAMING_HEADER, TARGET_HEADER, UPGRADE_HEADER};
use super::proxy::Target;

/// Whether `name` can be a namespace, pod or container name: a DNS subdomain
/// (lower-case letters, digits, `-` and `.`, starting and ending alphanumeric), so
/// nothing in it changes the path it goes into (no `/`, `.` or `..` segment, escape).
pub fn is_object_name(name: &str) -> bool {
    let alphanumeric = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && alphanumeric(bytes[0])
        && alphanumeric(bytes[bytes.len() - 1])
        && bytes
            .iter()
            .all(|&c| alphanumeric(c) || c == b'-' || c == b'.')
}

/// Whether `path` is a pod's exec, `/api/v1/namespaces/{ns}/pods/{pod}/exec`, with names
/// that are names.
pub fn is_exec_path(path: &str) -> bool {
    matches!(
        path.split('/').collect::<Vec<_>>().as_slice(),
        ["", "api", "v1", "namespaces", namespace, "pods", pod, "exec"]
            if is_object_name(namespace) && is_object_name(pod)
    )
}

/// Kubernetes' exec subprotocols, newest first: v5 can say "stdin closed".
pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

/// Feeds the exec's upgraded stream, toward the API server.
pub type ToKube = http_body_util::channel::Sender<bytes::Bytes, BoxError>;

/// The tunnel request that opens `path?query` (an exec path) as a WebSocket offering v5
/// and v4; its body channel carries the bytes toward the API server once it switched.
pub fn request(
    path: &str,
    query: &str,
    request_id: &str,
) -> Result<(Request<Body>, ToKube), String> {
    let (to_kube, kube_body) = body::channel();
    let mut request = Request::new(kube_body);
    *request.uri_mut() = format!("http://{}{path}?{query}", Target::KUBERNETES)
        .parse()
        .map_err(|_| format!("not a valid exec path and query: {path}"))?;
    let key: [u8; 16] = rand::random();
    let headers = request.headers_mut();
    for (name, value) in [
        (header::CONNECTION.as_str(), "Upgrade".to_string()),
        (header::UPGRADE.as_str(), "websocket".into()),
        (header::SEC_WEBSOCKET_VERSION.as_str(), "13".into()),
        (
            header::SEC_WEBSOCKET_KEY.as_str(),
            base64::engine::general_purpose::STANDARD.encode(key),
        ),
        (
            header::SEC_WEBSOCKET_PROTOCOL.as_str(),
            format!("{V5}, {V4}"),
        ),
        (TARGET_HEADER, Target::KUBERNETES.into()),
        (UPGRADE_HEADER, "websocket".into()),
        (STREAMING_HEADER, "true".into()),
        (REQUEST_ID_HEADER, request_id.into()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok((request, to_kube))
}

/// Whether the API server chose v5.
pub fn speaks_v5(headers: &HeaderMap) -> bool {
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .is_some_and(|p| p.as_bytes() == V5.as_bytes())
}

/// The WebSocket (client side) over the exec's upgraded stream: the response body from
/// the API server and `to_kube` toward it, pumped by a task of its own.
pub async fn websocket(from_kube: Body, to_kube: ToKube) -> WebSocketStream<DuplexStream> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        body::pump(theirs, from_kube, to_kube).await;
    });
    WebSocketStream::from_raw_socket(ours, Role::Client, None).await
}

/// OpenChoreo's exec input (`0` stdin, `[0]` alone: stdin closed, `3` resize) as the
/// Kubernetes channel message it means; `None` for what has no equivalent (v4 cannot
/// say "stdin closed": the exec sees it when the session ends).
pub fn from_openchoreo_input(data: &[u8], v5: bool) -> Option<bytes::Bytes> {
    match data {
        [0] if v5 => Some(bytes::Bytes::from_static(&[255, 0])),
        [0] => None,
        [0, ..] => Some(bytes::Bytes::copy_from_slice(data)),
        [3, size @ ..] => Some([&[4u8][..], size].concat().into()),
        _ => None,
    }
}

/// A Kubernetes stdin or resize message as OpenChoreo's exec input (v5's "stdin closed"
/// becomes `[0]` alone); `None` for the rest.
pub fn to_openchoreo_input(data: &[u8]) -> Option<Vec<u8>> {
    match data {
        [255, 0] => Some(vec![0]),
        [0, ..] => Some(data.to_vec()),
        [4, size @ ..] => Some([&[3u8][..], size].concat()),
        _ => None,
    }
}

/// The next stdout or stderr message with a payload (both framings agree on those);
/// channels' opening bytes, the exit status (channel 3) and the rest are skipped. `None`
/// once the API server closes.
pub async fn next_output<S>(
    from_kube: &mut futures_util::stream::SplitStream<WebSocketStream<S>>,
) -> Option<bytes::Bytes>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    while let Some(Ok(message)) = from_kube.next().await {
        match message {
            Message::Binary(data) if data.len() > 1 && matches!(data[0], 1 | 2) => {
                return Some(data);
            }
            Message::Close(_) => return None,
            _ => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_paths_name_real_objects() {
        assert!(is_exec_path("/api/v1/namespaces/dp-a/pods/web-1.x/exec"));
        for bad in [
            "/api/v1/namespaces/./pods/configmaps/exec",
            "/api/v1/namespaces/a/pods/../exec",
            "/api/v1/namespaces/a/pods/%2e%2e/exec",
            "/api/v1/namespaces/A/pods/b/exec",
            "/api/v1/namespaces/a/pods/-b/exec",
            "/api/v1/namespaces/a/pods/b/exec/x",
            "/api/v1/namespaces/a/secrets/b/exec",
        ] {
            assert!(!is_exec_path(bad), "{bad}");
        }
    }

    #[test]
    fn openchoreo_input_maps_to_kubernetes_channels() {
        assert_eq!(
            from_openchoreo_input(b"\x00ls\n", true).as_deref(),
            Some(&b"\x00ls\n"[..])
        );
        assert_eq!(
            from_openchoreo_input(b"\x00", true).as_deref(),
            Some(&[255u8, 0][..])
        );
        assert_eq!(from_openchoreo_input(b"\x00", false), None);
        assert_eq!(
            from_openchoreo_input(b"\x03{\"width\":1}", false).as_deref(),
            Some(&b"\x04{\"width\":1}"[..])
        );
        assert_eq!(from_openchoreo_input(b"\x01out", true), None);
        for input in [&b"\x00ls\n"[..], b"\x00", b"\x03{\"width\":1}"] {
            let kube = from_openchoreo_input(input, true).unwrap();
            assert_eq!(to_openchoreo_input(&kube).as_deref(), Some(input));
        }
        assert_eq!(to_openchoreo_input(b"\x01out"), None);
        assert_eq!(from_openchoreo_input(b"", true), None);
    }
}
