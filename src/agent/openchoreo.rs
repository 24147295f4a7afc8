//! planelink's agent at OpenChoreo's cluster gateway (`--protocol openchoreo`, or found
//! out with `auto`): the agent serves its tunnel as always, with its HTTP/2 server and
//! [`super::forward`], here at one end of an in-process connection. At the other end
//! this adapter reads OpenChoreo's JSON request frames from the WebSocket, sends each
//! through an HTTP/2 client, and writes the whole response back as one frame.
//!
//! That protocol carries whole bodies: a response over
//! [`openchoreo::MAX_RESPONSE_BODY`] is answered 502 instead. An exec session (its stream
//! frames) runs as a WebSocket exec (`v5.channel.k8s.io`) on the plane's API server
//! through the agent's `k8s` target; wire-log sessions end at once, saying there is no
//! source. Watches and log streams never come: OpenChoreo's gateway refuses them itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, header};
use http_body_util::BodyExt as _;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::safe_text::escape;
use crate::tunnel::body::{self, Body};
use crate::tunnel::kube_exec;
use crate::tunnel::openchoreo::{
    self, FromGateway, MAX_RESPONSE_BODY, ResponseError, StreamChunk, TunnelRequest, TunnelResponse,
};
use crate::tunnel::protocol::{Heartbeat, REQUEST_ID_HEADER, TARGET_HEADER, UPGRADED_HEADER};
use crate::tunnel::proxy::Target;
use crate::tunnel::ws::PeerClose;

/// Exec sessions running, by session ID: where the gateway's chunks for each go.
type Sessions = Arc<Mutex<HashMap<String, mpsc::Sender<StreamChunk>>>>;
/// Chunks of a session waiting for its exec.
const SESSION_BUFFER: usize = 256;

/// Frames waiting for the WebSocket writer.
const OUTBOX: usize = 64;
/// The in-process HTTP/2 connection's buffer each way.
const LOCAL_BUFFER: usize = 256 * 1024;

/// Starts carrying OpenChoreo's frames on `ws`; the returned stream is the end the
/// agent's HTTP/2 server serves. It ends when the gateway goes silent for
/// `heartbeat.timeout` (OpenChoreo's gateway pings every 30 s) or closes.
pub fn spawn<S>(ws: WebSocketStream<S>, heartbeat: Heartbeat, peer_close: PeerClose) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (agent_end, adapter_end) = tokio::io::duplex(LOCAL_BUFFER);
    tokio::spawn(run(ws, adapter_end, heartbeat, peer_close));
    agent_end
}

async fn run<S>(
    ws: WebSocketStream<S>,
    local: DuplexStream,
    heartbeat: Heartbeat,
    peer_close: PeerClose,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(local))
        .await;
    let (sender, connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!("the in-process tunnel connection failed: {e}");
            return;
        }
    };
    let (mut sink, mut frames) = ws.split();
    let (outbox, mut queued) = mpsc::channel::<Message>(OUTBOX);
    let sessions: Sessions = Default::default();
    let writer = async {
        while let Some(message) = queued.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        loop {
            // Pongs to the gateway's pings are written while reading.
            let next = tokio::time::timeout(heartbeat.timeout, frames.next()).await;
            let message = match next {
                Err(_) => {
                    return format!(
                        "no frame or ping from the gateway for {:?}",
                        heartbeat.timeout
                    );
                }
                Ok(None) => return "the gateway closed the connection".to_string(),
                Ok(Some(Err(e))) => return format!("WebSocket error: {e}"),
                Ok(Some(Ok(message))) => message,
            };
            let text = match &message {
                Message::Text(text) => text.as_str(),
                Message::Binary(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(_) => continue,
                },
                Message::Close(frame) => {
                    if frame.as_ref().is_some_and(|f| u16::from(f.code) == 1001) {
                        peer_close.set_going_away();
                    }
                    return "the gateway closed the connection".to_string();
                }
                _ => continue,
            };
            match FromGateway::parse(text) {
                Ok(FromGateway::Request(request)) => {
                    tokio::spawn(answer(sender.clone(), request, outbox.clone()));
                }
                Ok(FromGateway::Init(init)) if init.target == "hubble" => {
                    // Wire logs come from Hubble Relay, which this agent does not read.
                    let why =
                        "planelink agent has no wire-log source (it does not read Hubble Relay)";
                    send_chunk(
                        &outbox,
                        StreamChunk {
                            data: Some(why.as_bytes().to_vec()),
                            ..StreamChunk::close(&init.request_id)
                        },
                    )
                    .await;
                }
                Ok(FromGateway::Init(init)) => {
                    let (input, inputs) = mpsc::channel(SESSION_BUFFER);
                    let fresh = sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(init.request_id.clone(), input)
                        .is_none();
                    if fresh {
                        tokio::spawn(exec_session(
                            sender.clone(),
                            init,
                            outbox.clone(),
                            inputs,
                            sessions.clone(),
                        ));
                    } else {
                        tracing::warn!(
                            "the gateway started a session whose ID is already open; ignored"
                        );
                    }
                }
                Ok(FromGateway::Chunk(chunk)) => {
                    let session = sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&chunk.request_id)
                        .cloned();
                    if let Some(session) = session {
                        // A session that does not keep up is ended, not buffered without bound.
                        if session.try_send(chunk).is_err() {
                            sessions
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .retain(|_, s| !s.same_channel(&session));
                        }
                    }
                }
                Err(why) => tracing::warn!(
                    "the gateway sent a frame that is not OpenChoreo's protocol ({}); ignored",
                    escape(&why)
                ),
            }
        }
    };
    let reason = tokio::select! {
        reason = reader => reason,
        _ = writer => "writing to the gateway failed".to_string(),
        result = connection => match result {
            Ok(()) => "the agent closed the tunnel".to_string(),
            Err(e) => format!("the in-process tunnel connection failed: {e}"),
        },
    };
    tracing::debug!(reason, "OpenChoreo tunnel ended");
}

/// One request made through the agent's own service, answered as one frame.
async fn answer(
    mut sender: SendRequest<Body>,
    request: TunnelRequest,
    outbox: mpsc::Sender<Message>,
) {
    let id = request.request_id.clone();
    let response = match into_request(request) {
        Ok(forwarded) => match send(&mut sender, forwarded).await {
            Ok(response) => response,
            Err((status, message)) => failure(&id, status, message),
        },
        Err((status, message)) => failure(&id, status, message),
    };
    let response = TunnelResponse {
        request_id: id,
        ..response
    };
    if let Ok(frame) = serde_json::to_string(&response) {
        let _ = outbox.send(Message::Text(frame.into())).await;
    }
}

fn failure(id: &str, status: u16, message: String) -> TunnelResponse {
    TunnelResponse {
        request_id: id.to_string(),
        status_code: i64::from(status),
        headers: Default::default(),
        body: None,
        error: Some(ResponseError {
            code: Some(i64::from(status)),
            message,
        }),
    }
}

/// The frame as the request the agent's service takes: its target as planelink's tunnel
/// names it; the caller's headers, except hop-by-hop ones and planelink's own (which
/// only planelink's gateway may set).
fn into_request(request: TunnelRequest) -> Result<Request<Body>, (u16, String)> {
    let target: Target = request
        .target
        .parse()
        .map_err(|e: String| (404, format!("unknown target: {e}")))?;
    let uri = match request.query.as_str() {
        "" => format!("http://{target}{}", request.path),
        query => format!("http://{target}{}?{query}", request.path),
    };
    let mut forwarded = Request::new(body::full(request.body.unwrap_or_default()));
    *forwarded.uri_mut() = uri
        .parse()
        .map_err(|_| (400, "the path or query is not a valid URI".to_string()))?;
    *forwarded.method_mut() = request
        .method
        .parse()
        .map_err(|_| (400, "the method is not a valid HTTP method".to_string()))?;
    let (headers, _) = openchoreo::from_go_headers(&request.headers);
    // Hop headers go, and planelink's own: only planelink's gateway may set those.
    let mut headers = crate::tunnel::headers::end_to_end_headers(&headers);
    headers.remove(header::CONTENT_LENGTH);
    if let Ok(value) = http::HeaderValue::from_str(target.as_str()) {
        headers.insert(TARGET_HEADER, value);
    }
    if !request.gateway_request_id.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(&request.gateway_request_id)
    {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    *forwarded.headers_mut() = headers;
    Ok(forwarded)
}

/// Sends the request through the agent's service and reads the whole response.
async fn send(
    sender: &mut SendRequest<Body>,
    request: Request<Body>,
) -> Result<TunnelResponse, (u16, String)> {
    let failed = |e: &dyn std::fmt::Display| (502, format!("the request failed in the agent: {e}"));
    sender.ready().await.map_err(|e| failed(&e))?;
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    let (parts, incoming) = response.into_parts();
    let body: Bytes = match http_body_util::Limited::new(incoming, MAX_RESPONSE_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err((
                502,
                format!(
                    "the response is over {} MiB, more than OpenChoreo's protocol carries in one \
                     message; replace the gateway with planelink's, which streams it",
                    MAX_RESPONSE_BODY >> 20
                ),
            ));
        }
        Err(e) => return Err(failed(&e)),
    };
    let mut headers = crate::tunnel::headers::end_to_end_headers(&parts.headers);
    headers.remove(header::CONTENT_LENGTH);
    let mut headers = openchoreo::to_go_headers(&headers);
    headers.insert("Content-Length".into(), vec![body.len().to_string()]);
    Ok(TunnelResponse {
        request_id: String::new(),
        status_code: i64::from(parts.status.as_u16()),
        headers,
        body: (!body.is_empty()).then(|| body.to_vec()),
        error: None,
    })
}

async fn send_chunk(outbox: &mpsc::Sender<Message>, chunk: StreamChunk) -> bool {
    match serde_json::to_string(&chunk) {
        Ok(frame) => outbox.send(Message::Text(frame.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// Runs one exec session: the pod's exec opened as a WebSocket through the agent's own
/// service, OpenChoreo's framing translated both ways (stdin `0`, `[0]` alone closes it;
/// resize `3` ↔ Kubernetes' `4`; stdout and stderr as they are), the sentinel `[1]` once
/// it runs, and a close chunk at the end, with the reason when it could not start.
async fn exec_session(
    mut sender: SendRequest<Body>,
    init: openchoreo::StreamInit,
    outbox: mpsc::Sender<Message>,
    mut inputs: mpsc::Receiver<StreamChunk>,
    sessions: Sessions,
) {
    let id = init.request_id.clone();
    let ended = match open_exec(&mut sender, &init).await {
        Err(why) => Some(why),
        Ok((kube, v5)) => {
            run_exec(&id, kube, v5, &outbox, &mut inputs).await;
            None
        }
    };
    sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    send_chunk(
        &outbox,
        StreamChunk {
            data: ended.map(String::into_bytes),
            ..StreamChunk::close(&id)
        },
    )
    .await;
}

type KubeWs = WebSocketStream<DuplexStream>;

/// The pod's exec as a WebSocket, and whether it speaks v5; or why not, as OpenChoreo's
/// agent words it.
async fn open_exec(
    sender: &mut SendRequest<Body>,
    init: &openchoreo::StreamInit,
) -> Result<(KubeWs, bool), String> {
    if !kube_exec::is_exec_path(&init.path) {
        return Err(format!("invalid exec path: {}", escape(&init.path)));
    }
    let (request, to_kube) = kube_exec::request(&init.path, &init.query, &init.request_id)
        .map_err(|e| format!("invalid exec query: {e}"))?;
    let failed = |e: &dyn std::fmt::Display| format!("failed to create executor: {e}");
    sender.ready().await.map_err(|e| failed(&e))?;
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    if !response.headers().contains_key(UPGRADED_HEADER) {
        let status = response.status();
        let text = http_body_util::Limited::new(response.into_body(), 4096)
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(failed(&format!("{status}: {}", text.trim())));
    }
    let v5 = kube_exec::speaks_v5(response.headers());
    let ws = kube_exec::websocket(body::boxed(response.into_body()), to_kube).await;
    Ok((ws, v5))
}

async fn run_exec(
    id: &str,
    kube: KubeWs,
    v5: bool,
    outbox: &mpsc::Sender<Message>,
    inputs: &mut mpsc::Receiver<StreamChunk>,
) {
    let (mut to_kube, mut from_kube) = kube.split();
    let output = |data: Vec<u8>| StreamChunk {
        request_id: id.to_string(),
        stream_id: i64::from(data[0]),
        data: Some(data),
        is_close: false,
    };
    // The exec runs: OpenChoreo's gateway waits for this before it bridges.
    if !send_chunk(outbox, output(vec![1])).await {
        return;
    }
    let upstream = async {
        while let Some(input) = inputs.recv().await {
            if input.is_close {
                break;
            }
            let data = input.data.unwrap_or_default();
            let Some(translated) = kube_exec::from_openchoreo_input(&data, v5) else {
                continue;
            };
            if to_kube.send(Message::Binary(translated)).await.is_err() {
                return;
            }
        }
        let _ = to_kube.send(Message::Close(None)).await;
    };
    let downstream = async {
        while let Some(data) = kube_exec::next_output(&mut from_kube).await {
            if !send_chunk(outbox, output(data.to_vec())).await {
                return;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
