//! OpenChoreo's cluster agents at this gateway, next to planelink's, so that a platform
//! can replace its gateway first and its agents one plane at a time.
//!
//! Such an agent speaks JSON text frames ([`crate::tunnel::openchoreo`]) over a
//! WebSocket with no subprotocol. The gateway drives it exactly as it drives a planelink
//! agent, through its HTTP/2 client: here an in-process HTTP/2 server at the other end
//! of that connection turns each request into OpenChoreo's request frame and the frame
//! that answers it back into a response. Trust, authorisation, plane status, metrics,
//! re-verification and the proxy's checks are therefore the same for both kinds.
//!
//! An exec opened as a WebSocket upgrade (`/api/exec`, or kubectl through the proxy)
//! runs as the protocol's exec session. What the protocol cannot carry is refused with
//! the way out: it holds bodies whole, so requests over [`MAX_REQUEST_BODY`] get 413, and
//! watches, log follows and other upgrades get 501 naming the fix (run planelink's agent
//! in that plane).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::safe_text::escape;
use crate::tunnel::body::{self, Body};
use crate::tunnel::openchoreo::{
    self, FromAgent, MAX_FRAME, MAX_REQUEST_BODY, StreamChunk, TunnelRequest, TunnelResponse,
};
use crate::tunnel::protocol::{
    Heartbeat, REQUEST_ID_HEADER, STREAMING_HEADER, TARGET_HEADER, UPGRADE_HEADER, UPGRADED_HEADER,
};
use crate::tunnel::proxy::Target;

/// The WebSocket limits of an OpenChoreo agent's connection: its responses come whole,
/// in one message.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

/// Frames waiting for the WebSocket writer.
const OUTBOX: usize = 64;
/// The in-process HTTP/2 connection's buffer each way.
const LOCAL_BUFFER: usize = 256 * 1024;
/// The largest chunk of a session: exec output and flows are small; one session's
/// buffer ([`SESSION_BUFFER`] chunks) stays bounded in bytes too.
const MAX_CHUNK: usize = 1024 * 1024;
/// The longest reason for a session that did not start that is passed on.
const MAX_REASON: usize = 1024;

/// The longest request ID from the agent worth looking up (ours are UUIDs).
const MAX_ID: usize = 64;

/// What the adapter's request handlers share with its WebSocket reader and writer.
struct Shared {
    outbox: mpsc::Sender<Message>,
    pending: Mutex<HashMap<String, oneshot::Sender<TunnelResponse>>>,
    /// Exec sessions open on the agent, by session ID: where its chunks go.
    sessions: Mutex<HashMap<String, mpsc::Sender<StreamChunk>>>,
    remote: SocketAddr,
}

/// Removes a request's entry when its handler ends, answered or abandoned (the
/// gateway's caller gone, its `--request-timeout` passed).
struct Pending<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Starts carrying one OpenChoreo agent's WebSocket; the returned stream is the
/// gateway's end of the HTTP/2 connection that reaches it. The adapter ends when the
/// agent goes (the stream then ends too), when the gateway drops its end, and with
/// `going_away` (the agent gets a Close "going away" and redials another replica).
pub fn spawn<S>(
    ws: WebSocketStream<S>,
    heartbeat: Heartbeat,
    going_away: CancellationToken,
    remote: SocketAddr,
) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (gateway_end, adapter_end) = tokio::io::duplex(LOCAL_BUFFER);
    tokio::spawn(run(ws, adapter_end, heartbeat, going_away, remote));
    gateway_end
}

async fn run<S>(
    ws: WebSocketStream<S>,
    local: DuplexStream,
    heartbeat: Heartbeat,
    going_away: CancellationToken,
    remote: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut frames) = ws.split();
    let (outbox, mut queued) = mpsc::channel::<Message>(OUTBOX);
    let shared = Arc::new(Shared {
        outbox,
        pending: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
        remote,
    });
    let handlers = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = handlers.clone();
        async move { Ok::<_, Infallible>(forward(&shared, req).await) }
    });
    let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(local), service);
    let reader = async {
        loop {
            // OpenChoreo's agents answer pings; any frame shows the agent alive.
            let next = tokio::time::timeout(heartbeat.timeout, frames.next()).await;
            let message = match next {
                Err(_) => return format!("no frame or pong for {:?}", heartbeat.timeout),
                Ok(None) => return "the agent closed the connection".to_string(),
                Ok(Some(Err(e))) => return format!("WebSocket error: {e}"),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => take(&shared, text.as_str()),
                // OpenChoreo's gateway reads binary messages the same way.
                Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(text) => take(&shared, text),
                    Err(_) => {
                        tracing::warn!(%remote, "OpenChoreo agent sent a binary frame that is not text; ignored")
                    }
                },
                Message::Close(_) => return "the agent closed the connection".to_string(),
                _ => {}
            }
        }
    };
    let writer = async {
        let mut ping = tokio::time::interval(heartbeat.interval);
        ping.tick().await;
        loop {
            let message = tokio::select! {
                queued = queued.recv() => match queued {
                    Some(message) => message,
                    None => return None,
                },
                _ = ping.tick() => Message::Ping(Bytes::new()),
                _ = going_away.cancelled() => return Some(CloseCode::Away),
            };
            // An agent that stops reading is dead, however much it still sends.
            match tokio::time::timeout(heartbeat.timeout, sink.send(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%remote, "writing to the OpenChoreo agent failed: {e}");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%remote, "the OpenChoreo agent stopped reading");
                    return None;
                }
            }
        }
    };
    let reason = tokio::select! {
        result = server => match result {
            Ok(()) => "the gateway closed the tunnel".to_string(),
            Err(e) => format!("the gateway's side of the tunnel failed: {e}"),
        },
        reason = reader => reason,
        close = writer => match close {
            Some(_) => "the gateway is shutting down".to_string(),
            None => "the connection to the agent failed".to_string(),
        },
    };
    // Handlers still waiting get "the connection closed" when their senders drop, and
    // sessions their end.
    shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let code = if going_away.is_cancelled() {
        CloseCode::Away
    } else {
        CloseCode::Normal
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: "".into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
    tracing::debug!(%remote, reason, "OpenChoreo agent connection ended");
}

/// One frame from the agent: a response goes to the handler waiting for it.
fn take(shared: &Shared, text: &str) {
    match FromAgent::parse(text) {
        Ok(FromAgent::Response(response)) => {
            let waiting = shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&response.request_id);
            match waiting {
                Some(handler) => {
                    let _ = handler.send(response);
                }
                None => tracing::debug!(remote = %shared.remote,
                    request_id = %escape(&bounded(&response.request_id)),
                    "OpenChoreo agent answered a request no longer waiting"),
            }
        }
        Ok(FromAgent::Chunk(chunk)) => {
            let session = shared
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&chunk.request_id)
                .cloned();
            match session {
                // A session that does not keep up is closed rather than buffered without
                // bound (OpenChoreo's gateway does the same).
                Some(session) => {
                    let oversized = chunk.data.as_ref().is_some_and(|d| d.len() > MAX_CHUNK);
                    if oversized || session.try_send(chunk).is_err() {
                        session_closed(shared, &session);
                    }
                }
                None => tracing::debug!(remote = %shared.remote,
                    request_id = %escape(&bounded(&chunk.request_id)),
                    "OpenChoreo agent sent a stream chunk for no open session; ignored"),
            }
        }
        Err(why) => tracing::warn!(remote = %shared.remote,
            "OpenChoreo agent sent a frame that is not its protocol ({}); ignored", escape(&why)),
    }
}

/// Forgets a session whose consumer is gone or too slow; its handler ends it.
fn session_closed(shared: &Shared, session: &mpsc::Sender<StreamChunk>) {
    shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, s| !s.same_channel(session));
}

fn bounded(id: &str) -> String {
    id.chars().take(MAX_ID).collect()
}

/// An answer of the gateway's own, as a Kubernetes Status.
fn refuse(status: StatusCode, message: &str) -> Response<Body> {
    body::error_response(status, "gateway", message)
}

/// The advice every refusal for want of planelink's agent ends with.
const UPGRADE_ADVICE: &str =
    "run planelink agent in that plane (README: Migrating from OpenChoreo)";

/// Carries one request of the gateway to the agent and its answer back.
async fn forward(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let target = req
        .headers()
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if target == Target::AGENT {
        // The gateway's handshake probe and its news for planelink agents (replicas,
        // going away): an OpenChoreo agent has no such target, the adapter answers.
        let mut response = Response::new(body::full(
            serde_json::json!({ "protocol": openchoreo::PROTOCOL }).to_string() + "\n",
        ));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return response;
    }
    let headers = req.headers();
    if target == "hubble" && headers.contains_key(STREAMING_HEADER) {
        return wire_logs(shared, req).await;
    }
    if target == Target::KUBERNETES
        && headers
            .get(UPGRADE_HEADER)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && crate::tunnel::kube_exec::is_exec_path(req.uri().path())
    {
        return exec(shared, req).await;
    }
    if headers.contains_key(UPGRADE_HEADER) || headers.contains_key(STREAMING_HEADER) {
        return refuse(
            StatusCode::NOT_IMPLEMENTED,
            &format!(
                "the agent of this plane speaks OpenChoreo's protocol, which carries whole responses \
                 and WebSocket exec sessions only: no watch, log follow, attach or port-forward; \
                 {UPGRADE_ADVICE}"
            ),
        );
    }
    let (parts, incoming) = req.into_parts();
    let body = match http_body_util::Limited::new(incoming, MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request body is over {} MiB, the most the OpenChoreo agent of this plane takes \
                     (it holds bodies whole); {UPGRADE_ADVICE}",
                    MAX_REQUEST_BODY >> 20
                ),
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body failed: {e}"),
            );
        }
    };
    // planelink's own tunnel headers (and any hop header) mean nothing to the agent.
    let mut forwarded = crate::tunnel::headers::end_to_end_headers(&parts.headers);
    // OpenChoreo's agent drops only `Authorization`, and only for `k8s`: the caller's
    // credentials and impersonation stop here, as planelink's agent stops them there.
    // Its one route acts as the agent's ServiceAccount, so nothing legitimate is lost.
    crate::tunnel::headers::strip_caller_identity(&mut forwarded, true, false);
    let gateway_request_id = forwarded
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let request = TunnelRequest {
        request_id: openchoreo::new_request_id(),
        gateway_request_id,
        target,
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: openchoreo::to_go_headers(&forwarded),
        body: (!body.is_empty()).then(|| body.to_vec()),
    };
    let frame = match serde_json::to_string(&request) {
        Ok(frame) => frame,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding the request failed: {e}"),
            );
        }
    };
    let (answer, answered) = oneshot::channel();
    shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(request.request_id.clone(), answer);
    let _pending = Pending {
        shared,
        id: request.request_id,
    };
    let closed = || {
        refuse(
            StatusCode::BAD_GATEWAY,
            "the OpenChoreo agent's connection closed before it answered",
        )
    };
    if shared
        .outbox
        .send(Message::Text(frame.into()))
        .await
        .is_err()
    {
        return closed();
    }
    // No deadline here: the gateway's proxy bounds the wait (--request-timeout) and
    // resets the stream, which drops this handler and its entry.
    match answered.await {
        Ok(response) => into_response(response),
        Err(_) => closed(),
    }
}

/// The agent's answer as an HTTP response; a status that cannot end a request (not
/// 200–599) is the agent's failure (502).
fn into_response(answer: TunnelResponse) -> Response<Body> {
    let status = u16::try_from(answer.status_code)
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok());
    let Some(status) = status else {
        return refuse(
            StatusCode::BAD_GATEWAY,
            &format!(
                "the OpenChoreo agent answered with status {}, which is not an HTTP status it may send",
                answer.status_code
            ),
        );
    };
    let (headers, dropped) = openchoreo::from_go_headers(&answer.headers);
    if dropped > 0 {
        tracing::debug!(
            dropped,
            "OpenChoreo agent's response headers HTTP cannot carry were left out"
        );
    }
    let mut headers = crate::tunnel::headers::end_to_end_headers(&headers);
    // The body is whole: its length is known here, whatever the agent copied.
    headers.remove(header::CONTENT_LENGTH);
    let body = match (answer.body, answer.error) {
        (Some(bytes), _) => bytes,
        // OpenChoreo's gateway drops the agent's error report; a caller is better told.
        (None, Some(error)) if !error.message.is_empty() => {
            if !headers.contains_key(header::CONTENT_TYPE) {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
            }
            format!("{}\n", error.message).into_bytes()
        }
        (None, _) => Vec::new(),
    };
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// How long the agent has to start an exec (OpenChoreo's gateway waits as long).
const SESSION_START: Duration = Duration::from_secs(30);
/// Chunks of a session waiting for the caller.
const SESSION_BUFFER: usize = 256;
/// Kubernetes' exec subprotocol the gateway's exec bridge speaks on the upgraded stream.
const V5: &str = "v5.channel.k8s.io";

/// An exec the gateway opens as a WebSocket upgrade to the pod (`/api/exec`, or a
/// WebSocket exec through the proxy), run on an OpenChoreo agent as its session: a
/// stream start, then chunks both ways. The upgraded stream speaks Kubernetes'
/// `v5.channel.k8s.io` framing, translated to and from the session's: stdin `0` (v5's
/// "stdin closed" is `[0]` alone), stdout `1`, stderr `2`, resize `4` ↔ `3`.
async fn exec(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    // A caller of the proxy (kubectl exec) checks the accept key of its own request.
    let accept = parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()));
    let init = openchoreo::StreamInit {
        // A fresh ID, never the caller's X-Request-ID: sessions are routed by it, and a
        // caller must not be able to name another caller's session.
        request_id: openchoreo::new_request_id(),
        target: Target::KUBERNETES.into(),
        method: "POST".into(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: Default::default(),
        is_upgrade: true,
        upgrade_proto: "SPDY/3.1".into(),
    };
    let id = init.request_id.clone();
    let (session, mut chunks) = match start_session(shared, init, "exec").await {
        Ok(started) => started,
        Err(refused) => return refused,
    };
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (to_gateway, response_body) = body::channel();
    tokio::spawn(async move {
        body::pump(theirs, body::boxed(incoming), to_gateway).await;
    });
    let outbox = shared.outbox.clone();
    tokio::spawn(async move {
        let _session = session;
        let limits = WebSocketConfig::default()
            .max_message_size(Some(MAX_CHUNK))
            .max_frame_size(Some(MAX_CHUNK));
        let ws = WebSocketStream::from_raw_socket(
            ours,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(limits),
        )
        .await;
        let (mut to_bridge, mut from_bridge) = ws.split();
        let chunk = |data: Option<Vec<u8>>, is_close: bool| {
            let chunk = StreamChunk {
                request_id: id.clone(),
                data,
                stream_id: 0,
                is_close,
            };
            serde_json::to_string(&chunk).map(|f| Message::Text(f.into()))
        };
        let upstream = async {
            while let Some(Ok(message)) = from_bridge.next().await {
                let data = match message {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some(translated) = crate::tunnel::kube_exec::to_openchoreo_input(&data) else {
                    continue;
                };
                let Ok(frame) = chunk(Some(translated), false) else {
                    continue;
                };
                if outbox.send(frame).await.is_err() {
                    return;
                }
            }
            if let Ok(frame) = chunk(None, true) {
                let _ = outbox.send(frame).await;
            }
        };
        let downstream = async {
            while let Some(chunk) = chunks.recv().await {
                if chunk.is_close {
                    break;
                }
                let Some(data) = chunk.data.filter(|d| d.len() > 1 && matches!(d[0], 1 | 2)) else {
                    continue;
                };
                if to_bridge.send(Message::Binary(data.into())).await.is_err() {
                    return;
                }
            }
            let _ = to_bridge.send(Message::Close(None)).await;
        };
        tokio::select! {
            _ = upstream => {}
            _ = downstream => {}
        }
    });
    let mut response = Response::new(response_body);
    let headers = response.headers_mut();
    headers.insert(UPGRADED_HEADER, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(V5));
    if let Some(accept) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Starts a session on the agent and waits for its first chunk, which says whether it
/// runs (the agent's sentinel) or why not (a close with the reason, which OpenChoreo's
/// gateway only logs); the answer to give when it does not.
async fn start_session(
    shared: &Arc<Shared>,
    init: openchoreo::StreamInit,
    what: &str,
) -> Result<(Session, mpsc::Receiver<StreamChunk>), Response<Body>> {
    let (chunks_tx, mut chunks) = mpsc::channel(SESSION_BUFFER);
    shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(init.request_id.clone(), chunks_tx);
    let session = Session {
        shared: shared.clone(),
        id: init.request_id.clone(),
    };
    let closed = || {
        refuse(
            StatusCode::BAD_GATEWAY,
            &format!("the OpenChoreo agent's connection closed before the {what} started"),
        )
    };
    let frame = serde_json::to_string(&init).map_err(|_| closed())?;
    if shared
        .outbox
        .send(Message::Text(frame.into()))
        .await
        .is_err()
    {
        return Err(closed());
    }
    let first = match tokio::time::timeout(SESSION_START, chunks.recv()).await {
        Err(_) => {
            return Err(refuse(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("the OpenChoreo agent did not start the {what} within {SESSION_START:?}"),
            ));
        }
        Ok(None) => return Err(closed()),
        Ok(Some(first)) => first,
    };
    if first.is_close {
        let why: String = first
            .data
            .map(|d| {
                String::from_utf8_lossy(&d)
                    .chars()
                    .take(MAX_REASON)
                    .collect()
            })
            .unwrap_or_default();
        return Err(refuse(
            StatusCode::BAD_GATEWAY,
            &format!(
                "the OpenChoreo agent could not start the {what}: {}",
                escape(&why)
            ),
        ));
    }
    Ok((session, chunks))
}

/// Wire logs from an OpenChoreo agent's Hubble Relay session, as OpenChoreo's gateway
/// serves them: Server-Sent Events, one event per chunk, each line of it a `data:` line.
/// The caller leaving ends the session on the agent.
async fn wire_logs(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let init = openchoreo::StreamInit {
        request_id: openchoreo::new_request_id(),
        target: "hubble".into(),
        method: "GET".into(),
        path: "/wirelogs".into(),
        query: req.uri().query().unwrap_or("").to_string(),
        headers: Default::default(),
        is_upgrade: true,
        upgrade_proto: "hubble/v1".into(),
    };
    let (session, mut chunks) = match start_session(shared, init, "wire-log stream").await {
        Ok(started) => started,
        Err(refused) => return refused,
    };
    let (mut events, response_body) = body::channel();
    tokio::spawn(async move {
        let _session = session;
        while let Some(chunk) = chunks.recv().await {
            if chunk.is_close {
                break;
            }
            let Some(data) = chunk.data.filter(|d| !d.is_empty()) else {
                continue;
            };
            let mut event = String::new();
            // Every line end SSE knows (\r\n, \r, \n) starts a data line: a flow cannot
            // add fields of its own to the stream.
            let text = String::from_utf8_lossy(&data).replace("\r\n", "\n");
            for line in text.split(['\r', '\n']) {
                event.push_str("data: ");
                event.push_str(line);
                event.push('\n');
            }
            event.push('\n');
            if events.send_data(Bytes::from(event)).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(response_body);
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache, no-transform"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Ends a session when its task ends, however it ends (the caller gone, too slow, the
/// agent's end, a start that timed out): forgotten here, and a close chunk tells the
/// agent to stop the exec or the stream (a second close after the agent's own is
/// ignored by it).
struct Session {
    shared: Arc<Shared>,
    id: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if let Ok(frame) = serde_json::to_string(&StreamChunk::close(&self.id)) {
            let _ = self.shared.outbox.try_send(Message::Text(frame.into()));
        }
    }
}
