//! OpenChoreo's cluster agents at planelink's gateway, next to planelink's agents.
//!
//! The OpenChoreo agent here is written in the test from the facts of OpenChoreo's wire
//! protocol (no OpenChoreo build can run on this machine): it dials `/ws` with its
//! client certificate and no subprotocol, reads JSON text frames, and answers each
//! request whole, with the body in base64. It answers `/echo` itself with what it
//! received, so the test sees exactly what crossed the gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use planelink::planes::{PlaneKey, PlaneType};
use planelink::tunnel::dial;
use planelink::tunnel::openchoreo::{self, FromGateway, ResponseError, TunnelResponse};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// An OpenChoreo-protocol agent and what it has seen.
struct OcAgent {
    pings: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OcAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// TLS to the gateway's public listener with `identity`'s client certificate.
async fn tls_to_gateway(
    topo: &Topology,
    identity: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let dir = topo.pki.dir.join(identity);
    let tls_identity = dial::TlsIdentity {
        server_ca: planelink::trust::load_certificates(&topo.pki.dir.join("gateway/ca.crt"))
            .unwrap(),
        client: Some((
            planelink::trust::load_certificates(&dir.join("tls.crt")).unwrap(),
            planelink::trust::load_private_key(&dir.join("tls.key")).unwrap(),
        )),
    };
    let port = topo.gateway.public_addr.port();
    let tcp = dial::connect("127.0.0.1", port, dial::STEP_TIMEOUT)
        .await
        .unwrap();
    dial::tls(
        tcp,
        "127.0.0.1",
        &tls_identity,
        b"http/1.1",
        dial::STEP_TIMEOUT,
    )
    .await
    .unwrap()
    .0
}

/// The `/ws` URL as OpenChoreo's agent builds it (query keys sorted).
fn ws_url(topo: &Topology, query: &str) -> String {
    format!(
        "wss://127.0.0.1:{}/ws?{query}",
        topo.gateway.public_addr.port()
    )
}

/// The agent's answer to one request, as OpenChoreo's agent would give it.
fn answer(request: openchoreo::TunnelRequest) -> TunnelResponse {
    let base = TunnelResponse {
        request_id: request.request_id.clone(),
        status_code: 200,
        headers: Default::default(),
        body: None,
        error: None,
    };
    match (request.target.as_str(), request.path.as_str()) {
        ("k8s", "/echo") => {
            let body = request.body.clone().unwrap_or_default();
            let echo = serde_json::json!({
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "gatewayRequestID": request.gateway_request_id,
                "contentType": request.headers.get("Content-Type"),
                "tunnelHeaders": request.headers.keys().filter(|k| k.starts_with("Planelink-")).collect::<Vec<_>>(),
                "callerIdentityHeaders": request.headers.keys().filter(|k| {
                    let k = k.to_ascii_lowercase();
                    k == "authorization" || k == "forwarded" || k.starts_with("impersonate-")
                        || k.starts_with("x-remote-") || k.starts_with("x-forwarded-")
                }).collect::<Vec<_>>(),
                "otherHeaders": request.headers.get("X-Kept").cloned().unwrap_or_default(),
                "bodyLength": body.len(),
                "bodySha256": sha256_hex(&body),
            });
            TunnelResponse {
                headers: [(
                    "Content-Type".to_string(),
                    vec!["application/json".to_string()],
                )]
                .into(),
                body: Some(echo.to_string().into_bytes()),
                ..base
            }
        }
        ("k8s", "/bad-status") => TunnelResponse {
            status_code: 42,
            ..base
        },
        (target, _) => TunnelResponse {
            status_code: 404,
            error: Some(ResponseError {
                code: Some(404),
                message: format!("unknown target: {target}"),
            }),
            ..base
        },
    }
}

fn chunk(id: &str, data: Option<Vec<u8>>, stream_id: i64, is_close: bool) -> String {
    serde_json::to_string(&openchoreo::StreamChunk {
        request_id: id.to_string(),
        data,
        stream_id,
        is_close,
    })
    .unwrap()
}

/// An exec session's start, as OpenChoreo's agent answers it: the sentinel `[1]`, then
/// the exec's path and query on stdout; the pod `missing` ends it with the reason.
fn exec_start(init: openchoreo::StreamInit) -> Vec<String> {
    assert!(init.is_upgrade);
    if init.target == "hubble" {
        return wire_log_session(init);
    }
    if init.path.ends_with("/pods/missing/exec") {
        let why = b"failed to create executor: pods \"missing\" not found".to_vec();
        return vec![chunk(&init.request_id, Some(why), 0, true)];
    }
    let started = format!("exec {}?{}\n", init.path, init.query);
    vec![
        chunk(&init.request_id, Some(vec![1]), 1, false),
        chunk(
            &init.request_id,
            Some([&[1u8][..], started.as_bytes()].concat()),
            1,
            false,
        ),
    ]
}

/// A wire-log session as OpenChoreo's agent runs it on Hubble Relay: the sentinel (empty
/// data), two flows (the first naming the query it got, the second of two lines), the end.
fn wire_log_session(init: openchoreo::StreamInit) -> Vec<String> {
    assert_eq!(
        (init.method.as_str(), init.path.as_str()),
        ("GET", "/wirelogs")
    );
    let id = &init.request_id;
    let first = serde_json::json!({"flow": {"query": init.query}}).to_string();
    vec![
        chunk(id, Some(Vec::new()), 0, false),
        chunk(id, Some(first.into_bytes()), 0, false),
        chunk(
            id,
            Some(b"{\"flow\":2,\n\"verdict\":\"FORWARDED\"}".to_vec()),
            0,
            false,
        ),
        chunk(id, None, 0, true),
    ]
}

/// The session's input: stdin echoed on stdout, a resize reported on stderr, stdin
/// closed ends the session.
fn exec_input(input: openchoreo::StreamChunk) -> Vec<String> {
    let id = &input.request_id;
    match input.data.as_deref() {
        _ if input.is_close => Vec::new(),
        Some([0]) => vec![chunk(id, None, 0, true)],
        Some([0, data @ ..]) => vec![chunk(id, Some([&[1u8][..], data].concat()), 1, false)],
        Some([3, size @ ..]) => {
            let text = format!("resize {}\n", String::from_utf8_lossy(size));
            vec![chunk(
                id,
                Some([&[2u8][..], text.as_bytes()].concat()),
                2,
                false,
            )]
        }
        other => panic!("an exec chunk OpenChoreo's framing does not have: {other:?}"),
    }
}

/// Connects an OpenChoreo-protocol agent for `plane_id` and serves until dropped;
/// `answering` false: it never reads again after the upgrade (so never answers pings).
async fn oc_agent(topo: &Topology, identity: &str, plane_id: &str, answering: bool) -> OcAgent {
    let tls = tls_to_gateway(topo, identity).await;
    let url = ws_url(topo, &format!("planeID={plane_id}&planeType=dataplane"));
    let (ws, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(response.status(), 101);
    // No subprotocol was offered, none is chosen.
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    let pings = Arc::new(AtomicUsize::new(0));
    let seen = pings.clone();
    let task = tokio::spawn(async move {
        let (mut sink, mut frames) = ws.split();
        if !answering {
            std::future::pending::<()>().await;
        }
        let (out, mut queued) = tokio::sync::mpsc::channel::<Message>(16);
        let writer = tokio::spawn(async move {
            while let Some(message) = queued.recv().await {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        });
        while let Some(Ok(message)) = frames.next().await {
            match message {
                Message::Ping(payload) => {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = out.send(Message::Pong(payload)).await;
                }
                Message::Text(text) => {
                    let replies = match FromGateway::parse(text.as_str()) {
                        Ok(FromGateway::Request(request)) => {
                            vec![serde_json::to_string(&answer(request)).unwrap()]
                        }
                        Ok(FromGateway::Init(init)) => exec_start(init),
                        Ok(FromGateway::Chunk(chunk)) => exec_input(chunk),
                        Err(e) => {
                            panic!("the gateway sent a frame OpenChoreo's agent cannot read: {e}")
                        }
                    };
                    for reply in replies {
                        let _ = out.send(Message::Text(reply.into())).await;
                    }
                }
                _ => {}
            }
        }
        writer.abort();
    });
    OcAgent { pings, task }
}

fn p1() -> PlaneKey {
    PlaneKey {
        plane_type: PlaneType::DataPlane,
        plane_id: "p1".into(),
    }
}

/// Status code and body of a curl call (`-w` appends the code on its own line).
async fn call(topo: &Topology, args: &[&str], url: &str) -> (u16, String) {
    let mut cmd = topo.curl();
    cmd.args(["-w", "\n%{http_code}"]).args(args).arg(url);
    let out = curl(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A WebSocket upgrade request that is refused, made with curl (which reads the whole
/// refusal): its status and body. `identity` presents that agent's certificate.
async fn refused_upgrade(topo: &Topology, url: &str, identity: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "--http1.1",
        "-w",
        "\n%{http_code}",
    ])
    .args(["--cacert", &topo.pki.path("gateway/ca.crt")])
    .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
    .args(["-H", "Sec-WebSocket-Version: 13"])
    .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]);
    if let Some(identity) = identity {
        let dir = topo.pki.dir.join(identity);
        cmd.arg("--cert").arg(dir.join("tls.crt"));
        cmd.arg("--key").arg(dir.join("tls.key"));
    }
    cmd.arg(url);
    let out = curl(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn status_message(body: &str) -> String {
    let status: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a Status ({e}): {body}"));
    status["message"].as_str().unwrap_or_default().to_string()
}

/// An OpenChoreo agent serves GET and POST with bodies through the gateway; what its
/// protocol cannot carry is refused with the fix; it survives the gateway's pings; and
/// once a planelink agent of the same plane connects, requests go to that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openchoreo_agents_serve_next_to_planelink_agents() {
    let topo = Topology::start_with(
        false,
        &["--heartbeat-interval=200ms", "--heartbeat-timeout=1s"],
    )
    .await;
    let agent = oc_agent(&topo, "a1", "p1", true).await;
    topo.wait_for_agents("p1", 1).await;
    let status = topo.gateway.status(&p1(), None);
    assert_eq!(status.agents.len(), 1);
    assert_eq!(status.agents[0].protocol, "openchoreo");

    // A caller's credentials and impersonation never reach an OpenChoreo agent (whose
    // one route acts as its ServiceAccount); other headers do.
    let (code, body) = call(
        &topo,
        &[
            "-H",
            "Authorization: Bearer the-callers-token",
            "-H",
            "Impersonate-User: system:admin",
            "-H",
            "Impersonate-Group: system:masters",
            "-H",
            "X-Remote-User: admin",
            "-H",
            "X-Forwarded-For: 192.0.2.1",
            "-H",
            "Forwarded: for=192.0.2.1",
            "-H",
            "X-Kept: yes",
        ],
        &topo.proxy_url("k8s", "/echo?x=1&y=%2F"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["callerIdentityHeaders"], serde_json::json!([]));
    assert_eq!(echo["otherHeaders"], serde_json::json!(["yes"]));
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["query"], "x=1&y=%2F");
    assert_eq!(echo["bodyLength"], 0);
    // planelink's tunnel headers stay between gateway and adapter.
    assert_eq!(echo["tunnelHeaders"], serde_json::json!([]));
    assert_eq!(echo["gatewayRequestID"].as_str().map(str::len), Some(24));

    let upload = topo.pki.dir.join("upload");
    let payload = pattern(1 << 20);
    std::fs::write(&upload, &payload).unwrap();
    let data = format!("@{}", upload.display());
    let (code, body) = call(
        &topo,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data,
        ],
        &topo.proxy_url("k8s", "/echo"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["contentType"],
        serde_json::json!(["application/octet-stream"])
    );
    assert_eq!(echo["bodyLength"], 1 << 20);
    assert_eq!(echo["bodySha256"], sha256_hex(&payload));

    // Over the protocol's body cap: 413 naming the cap and the fix.
    let big = topo.pki.dir.join("big");
    std::fs::write(&big, pattern(10 * 1024 * 1024 + 1)).unwrap();
    let data = format!("@{}", big.display());
    let (code, body) = call(
        &topo,
        &["-X", "POST", "--data-binary", &data],
        &topo.proxy_url("k8s", "/echo"),
    )
    .await;
    assert_eq!(code, 413, "{body}");
    assert_eq!(
        status_message(&body),
        "the request body is over 10 MiB, the most the OpenChoreo agent of this plane takes \
         (it holds bodies whole); run planelink agent in that plane (README: Migrating from OpenChoreo)"
    );
    // A watch cannot be carried: 501 with the fix.
    let (code, body) = call(
        &topo,
        &[],
        &topo.proxy_url("k8s", "/api/v1/pods?watch=true"),
    )
    .await;
    assert_eq!(code, 501, "{body}");
    assert_eq!(
        status_message(&body),
        "the agent of this plane speaks OpenChoreo's protocol, which carries whole responses and \
         WebSocket exec sessions only: no watch, log follow, attach or port-forward; run planelink \
         agent in that plane (README: Migrating from OpenChoreo)"
    );
    // The agent's own error report reaches the caller (OpenChoreo's gateway drops it).
    let (code, body) = call(&topo, &[], &topo.proxy_url("svc", "/anything")).await;
    assert_eq!((code, body.as_str()), (404, "unknown target: svc\n"));
    // A status no HTTP response can have is the agent's failure.
    let (code, body) = call(&topo, &[], &topo.proxy_url("k8s", "/bad-status")).await;
    assert_eq!(code, 502, "{body}");
    assert_eq!(
        status_message(&body),
        "the OpenChoreo agent answered with status 42, which is not an HTTP status it may send"
    );

    // Pings every 200 ms, a dead agent dropped after 1 s: answering six of them, the
    // agent has outlived that timeout several times over and is still registered.
    let answered = async {
        while agent.pings.load(Ordering::SeqCst) < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), answered)
        .await
        .expect("the gateway pings its OpenChoreo agents");
    assert_eq!(topo.gateway.status(&p1(), None).connected_agents, 1);

    let metrics = topo.metrics().await;
    assert!(
        metrics.contains("planelink_gateway_tunnels{protocol=\"openchoreo\"} 1\n"),
        "{metrics}"
    );

    // A planelink agent joins the plane: requests go to it, not to the OpenChoreo one
    // (which would answer /echo itself; planelink's reaches the real upstream).
    let _planelink = topo.agent("a1", "p1").await;
    let status = topo.gateway.status(&p1(), None);
    let mut protocols: Vec<&str> = status.agents.iter().map(|a| a.protocol.as_str()).collect();
    protocols.sort();
    assert_eq!(protocols, ["openchoreo", "planelink.v1-h2"]);
    for _ in 0..20 {
        let (code, body) = call(&topo, &[], &topo.proxy_url("k8s", "/bytes/16")).await;
        assert_eq!((code, body.len()), (200, 16), "{body}");
    }
}

/// The handshake refusals are the same for OpenChoreo's agents: a plane that does not
/// trust the certificate gets 401 with the fixed text, a missing planeID 400; and an
/// agent that stops answering pings is dropped after `--heartbeat-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openchoreo_agents_get_the_same_refusals_and_liveness() {
    let topo = Topology::start_with(
        false,
        &["--heartbeat-interval=200ms", "--heartbeat-timeout=1s"],
    )
    .await;
    let (_, _) = agent_identity(&topo.pki.dir, "stranger");
    let url = |query: &str| ws_url(&topo, query).replacen("wss://", "https://", 1);
    let (code, body) = refused_upgrade(
        &topo,
        &url("planeID=p1&planeType=dataplane"),
        Some("stranger"),
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (
            401,
            format!("{}\n", planelink::gateway::UNVERIFIED_REFUSAL).as_str()
        )
    );
    let (code, body) = refused_upgrade(&topo, &url("planeType=dataplane"), Some("a1")).await;
    assert_eq!(
        (code, body.as_str()),
        (
            400,
            "the /ws request must name planeType and planeID as query parameters\n"
        )
    );
    // A planeID no CR can have (here a terminal escape and a shell command) is refused
    // by the gateway before it is looked up, logged or counted.
    for plane_id in [
        "p1%1B%5D0%3Bowned%07",
        "p1%3B%20curl%20x%7Csh%20%23",
        "P1",
        "-p1",
    ] {
        let (code, body) = refused_upgrade(
            &topo,
            &url(&format!("planeID={plane_id}&planeType=dataplane")),
            Some("a1"),
        )
        .await;
        assert_eq!(
            (code, body.as_str()),
            (
                400,
                "a planeID is lowercase letters, digits and '-' (dots between labels too, as a \
                 CR name has), starts and ends with a letter or digit, and is at most 253 \
                 characters: give the plane CR's spec.planeID (or its name)\n"
            ),
            "{plane_id}"
        );
    }

    let _silent = oc_agent(&topo, "a1", "p1", false).await;
    topo.wait_for_agents("p1", 1).await;
    topo.wait_for_agents_exactly("p1", 0).await;
}

/// OpenChoreo's cluster gateway as its agents see it, written here from the facts: TLS
/// with the gateway's certificate, `/ws` taking a WebSocket upgrade and choosing no
/// subprotocol (any other upgrade gets gorilla's 400), then JSON request frames.
struct OcGateway {
    port: u16,
    /// The `Upgrade` header of every `/ws` request, in order.
    upgrades: Arc<std::sync::Mutex<Vec<String>>>,
    /// Each accepted WebSocket, with whether its request offered a subprotocol (an
    /// agent trying planelink's first drops that one).
    agents: tokio::sync::mpsc::Receiver<(bool, OcSocket)>,
}

type OcSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

async fn oc_gateway(topo: &Topology) -> OcGateway {
    use http_body_util::Empty;
    use tokio_tungstenite::tungstenite::handshake::server::create_response_with_body;
    let cert = planelink::trust::tls::ReloadingCert::load(
        &topo.pki.dir.join("gateway/tls.crt"),
        &topo.pki.dir.join("gateway/tls.key"),
    )
    .unwrap();
    let config = planelink::trust::tls::server_config(cert, None, &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upgrades = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (found, agents) = tokio::sync::mpsc::channel(4);
    let seen = upgrades.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let (seen, found) = (seen.clone(), found.clone());
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let upgrade = req
                        .headers()
                        .get("upgrade")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    seen.lock().unwrap().push(upgrade);
                    let offered = req.headers().contains_key("sec-websocket-protocol");
                    let response = match create_response_with_body(&req, Empty::<bytes::Bytes>::new)
                    {
                        Ok(switching) => {
                            let found = found.clone();
                            tokio::spawn(async move {
                                let upgraded = hyper::upgrade::on(req).await.unwrap();
                                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                                    hyper_util::rt::TokioIo::new(upgraded),
                                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                                    None,
                                )
                                .await;
                                let _ = found.send((offered, ws)).await;
                            });
                            switching
                        }
                        Err(_) => {
                            let mut refused = http::Response::new(Empty::new());
                            *refused.status_mut() = http::StatusCode::BAD_REQUEST;
                            refused
                        }
                    };
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .with_upgrades(),
            );
        }
    });
    OcGateway {
        port,
        upgrades,
        agents,
    }
}

/// The next text frame from the agent (pongs skipped), within 10 s.
async fn next_frame(ws: &mut OcSocket) -> openchoreo::FromAgent {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return openchoreo::FromAgent::parse(&text).unwrap();
                }
                Some(Ok(_)) => continue,
                other => panic!("the agent's connection ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the agent answers within 10 s")
}

/// Sends one request frame and returns the agent's response to it.
async fn ask(ws: &mut OcSocket, request: serde_json::Value) -> TunnelResponse {
    ws.send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    match next_frame(ws).await {
        openchoreo::FromAgent::Response(response) => {
            assert_eq!(
                Some(response.request_id.as_str()),
                request["requestID"].as_str()
            );
            response
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

/// planelink's agent joins OpenChoreo's gateway, with `--protocol openchoreo` and by
/// finding out (`auto`, the default): it serves GET and POST with bodies through its
/// `k8s` target with its own credentials, runs exec sessions on the plane's API server,
/// answers pings, and takes no planelink control header from a caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planelink_agents_join_an_openchoreo_gateway() {
    let topo = Topology::start(false).await;
    let mut gateway = oc_gateway(&topo).await;
    for (protocol, upgrades) in [
        ("openchoreo", vec!["websocket"]),
        ("auto", vec!["planelink.v1-h2", "websocket", "websocket"]),
    ] {
        gateway.upgrades.lock().unwrap().clear();
        let mut argv = topo.agent_argv("a1", "p1");
        for arg in &mut argv {
            if arg.starts_with("--server-url=") {
                *arg = format!("--server-url=wss://127.0.0.1:{}/ws", gateway.port);
            }
        }
        argv.push(format!("--protocol={protocol}"));
        let args: planelink::agent::AgentArgs = planelink::cli::args_from(argv).unwrap();
        let stop = topo.shutdown.child_token();
        let agent = planelink::agent::start(
            planelink::agent::Config::try_from(args).unwrap(),
            None,
            stop.clone(),
        )
        .await
        .unwrap();
        let mut ws = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match gateway.agents.recv().await {
                    Some((false, ws)) => return ws,
                    Some((true, _)) => continue,
                    None => panic!("the test gateway stopped"),
                }
            }
        })
        .await
        .expect("the agent dials OpenChoreo's protocol within 10 s");
        assert!(
            agent.wait_connected(Duration::from_secs(5)).await,
            "{protocol}"
        );
        assert_eq!(*gateway.upgrades.lock().unwrap(), upgrades, "{protocol}");

        let got = ask(
            &mut ws,
            serde_json::json!({"requestID": "r1", "target": "k8s",
            "method": "GET", "path": "/bytes/16"}),
        )
        .await;
        assert_eq!(got.status_code, 200);
        assert_eq!(got.body.as_deref(), Some(&pattern(16)[..]));
        assert_eq!(got.headers["Content-Length"], vec!["16"]);

        let payload = pattern(1 << 20);
        let got = ask(
            &mut ws,
            serde_json::json!({"requestID": "r2", "target": "k8s",
            "method": "POST", "path": "/sha256",
            "headers": {"Content-Type": ["application/octet-stream"]},
            "body": openchoreo::encode(&payload)}),
        )
        .await;
        assert_eq!(got.status_code, 200);
        assert_eq!(
            String::from_utf8(got.body.unwrap()).unwrap(),
            format!("{} {}", payload.len(), sha256_hex(&payload))
        );

        // The agent's own credentials reach the API server, never the caller's.
        let got = ask(
            &mut ws,
            serde_json::json!({"requestID": "r3", "target": "k8s",
            "method": "GET", "path": "/version",
            "headers": {"Authorization": ["Bearer the-callers-token"]}}),
        )
        .await;
        assert_eq!(
            got.status_code,
            200,
            "{:?}",
            got.body.map(String::from_utf8)
        );

        // A caller's planelink header is not news for the agent.
        let got = ask(
            &mut ws,
            serde_json::json!({"requestID": "r4", "target": "k8s",
            "method": "GET", "path": "/bytes/4",
            "headers": {"Planelink-Control": ["going-away"]}}),
        )
        .await;
        assert_eq!((got.status_code, got.body.map(|b| b.len())), (200, Some(4)));
        assert!(agent.is_connected());

        let got = ask(
            &mut ws,
            serde_json::json!({"requestID": "r5", "target": "Not A Name",
            "method": "GET", "path": "/"}),
        )
        .await;
        assert_eq!(got.status_code, 404);

        // An exec session runs on the plane's API server, in OpenChoreo's framing.
        let send = |frame: serde_json::Value| Message::Text(frame.to_string().into());
        let exec_init = |id: &str, pod: &str, target: &str| {
            send(
                serde_json::json!({"requestID": id, "target": target, "method": "POST",
                "path": format!("/api/v1/namespaces/a/pods/{pod}/exec"),
                "query": "stdout=true&stderr=true&stdin=true&command=ls",
                "isUpgrade": true, "upgradeProto": "SPDY/3.1"}),
            )
        };
        let input = |id: &str, data: &[u8]| {
            send(serde_json::json!({"requestID": id, "data": openchoreo::encode(data)}))
        };
        let next_chunk = async |ws: &mut OcSocket| match next_frame(ws).await {
            openchoreo::FromAgent::Chunk(chunk) => chunk,
            other => panic!("expected a stream chunk, got {other:?}"),
        };
        ws.send(exec_init("gw-1", "web-1", "k8s")).await.unwrap();
        let out = |data: &[u8]| Some(data.to_vec());
        assert_eq!(next_chunk(&mut ws).await.data, out(&[1]));
        assert_eq!(
            next_chunk(&mut ws).await.data,
            out(b"\x01exec stdout=true&stderr=true&stdin=true&command=ls\n")
        );
        ws.send(input("gw-1", b"\x00hi\n")).await.unwrap();
        let echoed = next_chunk(&mut ws).await;
        assert_eq!((echoed.data, echoed.stream_id), (out(b"\x01hi\n"), 1));
        ws.send(input("gw-1", b"\x03{\"width\":80,\"height\":24}"))
            .await
            .unwrap();
        let resized = next_chunk(&mut ws).await;
        assert_eq!(
            (resized.data, resized.stream_id),
            (out(b"\x02resize {\"width\":80,\"height\":24}\n"), 2)
        );
        ws.send(input("gw-1", b"\x00")).await.unwrap();
        assert_eq!(
            next_chunk(&mut ws).await,
            openchoreo::StreamChunk::close("gw-1")
        );
        // One that cannot start ends at once with the API server's reason; wire logs
        // have no source here.
        ws.send(exec_init("gw-2", "missing", "k8s")).await.unwrap();
        let refused = next_chunk(&mut ws).await;
        assert!(refused.is_close);
        assert_eq!(
            String::from_utf8(refused.data.unwrap()).unwrap(),
            "failed to create executor: 404 Not Found: \
             {\"kind\":\"Status\",\"status\":\"Failure\",\"message\":\"pods \\\"missing\\\" not found\",\"code\":404}"
        );
        ws.send(send(
            serde_json::json!({"requestID": "gw-3", "target": "hubble", "method": "GET",
            "path": "/wirelogs", "query": "environment=dev&namespace=acme",
            "isUpgrade": true, "upgradeProto": "hubble/v1"}),
        ))
        .await
        .unwrap();
        let wire_logs = next_chunk(&mut ws).await;
        assert!(wire_logs.is_close);
        assert_eq!(
            String::from_utf8(wire_logs.data.unwrap()).unwrap(),
            "planelink agent has no wire-log source (it does not read Hubble Relay)"
        );

        // Pings are answered.
        ws.send(Message::Ping(bytes::Bytes::from_static(b"alive?")))
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(Ok(Message::Pong(payload))) = ws.next().await {
                    return payload;
                }
            }
        })
        .await
        .expect("a pong within 5 s");
        assert_eq!(&pong[..], b"alive?");
        stop.cancel();
        agent.wait().await;
    }
}

/// A WebSocket to the gateway's internal listener (no client certificate: the topology
/// runs it without internal mTLS).
async fn internal_ws(
    topo: &Topology,
    path_and_query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let identity = dial::TlsIdentity {
        server_ca: planelink::trust::load_certificates(&topo.pki.dir.join("gateway/ca.crt"))
            .unwrap(),
        client: None,
    };
    let port = topo.gateway.internal_addr.port();
    let tcp = dial::connect("127.0.0.1", port, dial::STEP_TIMEOUT)
        .await
        .unwrap();
    let (tls, _) = dial::tls(tcp, "127.0.0.1", &identity, b"http/1.1", dial::STEP_TIMEOUT)
        .await
        .unwrap();
    let url = format!("wss://127.0.0.1:{port}{path_and_query}");
    match tokio_tungstenite::client_async(url, tls).await {
        Ok((ws, _)) => ws,
        Err(e) => panic!("exec WebSocket failed: {e}"),
    }
}

/// The next binary message, within 10 s (a Close or the end is an error).
async fn next_binary<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return message,
                other => panic!("the exec ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a message within 10 s")
}

fn framed(stream: u8, data: &[u8]) -> Message {
    let mut bytes = vec![stream];
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}

/// OpenChoreo's exec endpoint through a planelink agent: the gateway opens the pod's exec
/// on the plane's API server as a v5 WebSocket and bridges OpenChoreo's framing (started
/// sentinel, stdin, stdout, stderr, resize, stdin closed, Close at the end); what fails
/// before that is an HTTP error; wire logs say the plane has no source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openchoreo_exec_and_wire_log_endpoints() {
    let topo = Topology::start(false).await;
    let _agent = topo.agent("a1", "p1").await;
    let mut ws = internal_ws(
        &topo,
        "/api/exec/dataplane/p1/org/dp1?podNamespace=dp-a&podName=web-1&container=main\
         &command=sh&command=-c&stdin=true&tty=true",
    )
    .await;
    assert_eq!(next_binary(&mut ws).await, framed(1, b""));
    assert_eq!(
        next_binary(&mut ws).await,
        framed(
            1,
            b"exec stdout=true&stderr=true&stdin=true&tty=true&container=main&command=sh&command=-c\n"
        )
    );
    ws.send(framed(0, b"ls\n")).await.unwrap();
    assert_eq!(next_binary(&mut ws).await, framed(1, b"ls\n"));
    ws.send(framed(3, br#"{"width":120,"height":40}"#))
        .await
        .unwrap();
    assert_eq!(
        next_binary(&mut ws).await,
        framed(2, b"resize {\"width\":120,\"height\":40}\n")
    );
    // stdin closed: the command ends, its status stays on the plane, the caller gets 1000.
    ws.send(framed(0, b"")).await.unwrap();
    match next_binary(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a Close, got {other:?}"),
    }

    // Before any upgrade: the API server's own refusal, a plane with no agent, a bad query.
    let exec = |query: &str| topo.api_url(&format!("/api/exec/{query}"));
    let (code, body) = refused_upgrade(
        &topo,
        &exec("dataplane/p1/org/dp1?podNamespace=dp-a&podName=missing"),
        None,
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(status_message(&body), "pods \"missing\" not found");
    let (code, body) = refused_upgrade(
        &topo,
        &exec("dataplane/nowhere/org/dp1?podNamespace=a&podName=b"),
        None,
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        status_message(&body),
        "no agent connected for plane dataplane/nowhere"
    );
    let (code, body) = refused_upgrade(&topo, &exec("dataplane/p1/org/dp1?podName=b"), None).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        status_message(&body),
        "podNamespace and podName are required query parameters"
    );

    let wirelogs = |query: &'static str| {
        let url = topo.api_url(&format!("/api/wirelogs/dataplane/p1/org/dp1?{query}"));
        let topo = &topo;
        async move { call(topo, &[], &url).await }
    };
    let (code, body) = wirelogs("environment=dev&namespace=acme").await;
    assert_eq!(code, 501, "{body}");
    assert_eq!(
        status_message(&body),
        "plane dataplane/p1 has no wire-log source: wire logs come from Hubble Relay, which only \
         OpenChoreo's agent reads, and no such agent of the plane is connected; read Hubble \
         Relay in that plane (hubble observe) or keep OpenChoreo's agent there for wire logs"
    );
    let (code, body) = wirelogs("namespace=acme").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        status_message(&body),
        "environment and namespace are required query parameters"
    );
}

/// OpenChoreo's `/api/exec` and `/api/wirelogs` with an OpenChoreo agent: the gateway
/// runs each as that protocol's session (stream start, sentinel, chunks, close); the
/// exec both ways, the wire logs as Server-Sent Events; an exec the agent cannot start is
/// an HTTP error with the agent's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openchoreo_agents_run_exec_sessions() {
    let topo = Topology::start(false).await;
    let _agent = oc_agent(&topo, "a1", "p1", true).await;
    topo.wait_for_agents("p1", 1).await;
    let mut ws = internal_ws(
        &topo,
        "/api/exec/dataplane/p1/org/dp1?podNamespace=dp-a&podName=web-1&command=ls&stdin=true",
    )
    .await;
    assert_eq!(next_binary(&mut ws).await, framed(1, b""));
    assert_eq!(
        next_binary(&mut ws).await,
        framed(
            1,
            b"exec /api/v1/namespaces/dp-a/pods/web-1/exec?stdout=true&stderr=true&stdin=true&command=ls\n"
        )
    );
    ws.send(framed(0, b"pwd\n")).await.unwrap();
    assert_eq!(next_binary(&mut ws).await, framed(1, b"pwd\n"));
    ws.send(framed(3, br#"{"width":80,"height":24}"#))
        .await
        .unwrap();
    assert_eq!(
        next_binary(&mut ws).await,
        framed(2, b"resize {\"width\":80,\"height\":24}\n")
    );
    ws.send(framed(0, b"")).await.unwrap();
    match next_binary(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a Close, got {other:?}"),
    }

    // Wire logs: the agent's session relayed as Server-Sent Events, one per chunk.
    let url = topo.api_url(
        "/api/wirelogs/dataplane/p1/org/dp1?project=shop&namespace=acme&environment=dev&extra=x",
    );
    let (code, body) = call(&topo, &[], &url).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        "data: {\"flow\":{\"query\":\"environment=dev&namespace=acme&project=shop\"}}\n\n\
         data: {\"flow\":2,\ndata: \"verdict\":\"FORWARDED\"}\n\n"
    );

    let url = topo.api_url("/api/exec/dataplane/p1/org/dp1?podNamespace=dp-a&podName=missing");
    let (code, body) = refused_upgrade(&topo, &url, None).await;
    assert_eq!(code, 502, "{body}");
    assert_eq!(
        status_message(&body),
        "the OpenChoreo agent could not start the exec: failed to create executor: pods \"missing\" not found"
    );
}
