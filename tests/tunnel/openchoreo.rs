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
use planelink::agent::dial;
use planelink::planes::{PlaneKey, PlaneType};
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
                    if let Ok(FromGateway::Request(request)) = FromGateway::parse(text.as_str()) {
                        let reply = serde_json::to_string(&answer(request)).unwrap();
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

    let (code, body) = call(&topo, &[], &topo.proxy_url("k8s", "/echo?x=1&y=%2F")).await;
    assert_eq!(code, 200, "{body}");
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
        "the agent of this plane speaks OpenChoreo's protocol, which carries whole responses only: \
         no watch, log follow, exec, attach or port-forward; run planelink agent in that plane \
         (README: Migrating from OpenChoreo)"
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
    let refused = |url: String, identity: &'static str| {
        let topo = &topo;
        async move {
            let tls = tls_to_gateway(topo, identity).await;
            match tokio_tungstenite::client_async(url, tls).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    let body = response
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    (response.status().as_u16(), body)
                }
                other => panic!(
                    "expected a refusal, got {:?}",
                    other.map(|(_, r)| r.status())
                ),
            }
        }
    };
    let (code, body) = refused(ws_url(&topo, "planeID=p1&planeType=dataplane"), "stranger").await;
    assert_eq!(
        (code, body.as_str()),
        (
            401,
            format!("{}\n", planelink::gateway::UNVERIFIED_REFUSAL).as_str()
        )
    );
    let (code, body) = refused(ws_url(&topo, "planeType=dataplane"), "a1").await;
    assert_eq!(
        (code, body.as_str()),
        (
            400,
            "the /ws request must name planeType and planeID as query parameters\n"
        )
    );

    let _silent = oc_agent(&topo, "a1", "p1", false).await;
    topo.wait_for_agents("p1", 1).await;
    topo.wait_for_agents_exactly("p1", 0).await;
}
