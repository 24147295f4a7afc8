//! The tunnel end to end: real gateway, real agents, real HTTPS upstream, real clients
//! (curl, kubectl, a WebSocket client), all over loopback.

mod attacks;
#[path = "../common/mod.rs"]
mod common;
mod harness;
mod openchoreo;
mod rotation;
mod spdy;
mod timeouts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// GET and POST bodies of 0 B, 1 KiB and 64 MiB through gateway and agent; every
/// checksum matches the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_size_arrive_intact() {
    let topo = Topology::start(true).await;
    let _agent = topo.agent("a1", "p1").await;
    for size in [0usize, 1024, 64 << 20] {
        let file = topo.pki.dir.join(format!("download-{size}"));
        let mut cmd = topo.curl();
        cmd.args(["-f", "-o"])
            .arg(&file)
            .arg(topo.proxy_url("k8s", &format!("/bytes/{size}")));
        let out = curl(cmd).await;
        assert!(out.status.success(), "GET {size}: {}", err(&out));
        let got = std::fs::read(&file).unwrap();
        assert_eq!(got.len(), size);
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&pattern(size)),
            "GET {size} checksum"
        );

        let upload = topo.pki.dir.join(format!("upload-{size}"));
        std::fs::write(&upload, pattern(size)).unwrap();
        let mut cmd = topo.curl();
        cmd.args(["-f", "-X", "POST", "--data-binary"])
            .arg(format!("@{}", upload.display()))
            .arg(topo.proxy_url("k8s", "/sha256"));
        let out = curl(cmd).await;
        assert!(out.status.success(), "POST {size}: {}", err(&out));
        assert_eq!(
            text(&out),
            format!("{size} {}", sha256_hex(&pattern(size))),
            "POST {size}"
        );
    }
}

/// The first chunk of a streaming response reaches the caller while the upstream is
/// still holding the rest back: nothing is buffered whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_response_is_not_buffered() {
    let topo = Topology::start(false).await;
    let _agent = topo.agent("a1", "p1").await;
    let mut cmd = topo.curl();
    cmd.args(["-N", "-f"]).arg(topo.proxy_url("k8s", "/stream"));
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (line, reader)
    });
    let (line, reader) = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first chunk did not arrive while the upstream held the rest")
        .unwrap();
    assert_eq!(line, "first\n");
    topo.upstream.release.notify_one();
    let rest = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut rest = String::new();
        let mut reader = reader;
        reader.read_to_string(&mut rest).unwrap();
        let _ = child.wait();
        rest
    })
    .await
    .unwrap();
    assert_eq!(rest, "last\n");
}

/// A WebSocket upgrade through the proxy: the upstream's 101, then messages echoed
/// both ways over the raw stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_carried_both_ways() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let topo = Topology::start(false).await;
    let _agent = topo.agent("a1", "p1").await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(topo.pki.gateway_ca.cert_der().unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(planelink::trust::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(topo.gateway.internal_addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let url = topo.proxy_url("k8s", "/ws").replace("https://", "wss://");
    let (mut ws, response) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("upgrade through the tunnel");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    let big = vec![7u8; 3 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), big.as_slice());
    ws.close(None).await.unwrap();
}

/// kubectl reaches the plane's API through the gateway, and execs in a pod of it over
/// both of the kubelet's transports (a `v5.channel.k8s.io` WebSocket, kubectl's default,
/// and SPDY/3.1, which older servers and `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` use);
/// the agent authenticates with its own kubeconfig token, which the upstream requires.
/// `--server` carries the proxy prefix for discovery (`kubectl version`); `get --raw`
/// takes an absolute path, so it names the whole proxy path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_through_the_gateway() {
    let topo = Topology::start(true).await;
    let _agent = topo.agent("a1", "p1").await;
    let server = topo.proxy_url("k8s", "");
    let (ca, cert, key) = (
        topo.pki.path("gateway/ca.crt"),
        topo.pki.path("caller.crt"),
        topo.pki.path("caller.key"),
    );
    let exec = vec![
        "exec", "-n", "dp-a", "web-1", "-c", "main", "--", "ls", "-l",
    ];
    let exec_query = "command=ls&command=-l&container=main&stderr=true&stdout=true&timeout=20s";
    let websocket_exec = format!("exec {exec_query}\n");
    let spdy_exec = format!("spdy exec {exec_query}\n");
    for (command, websockets, expected) in [
        (
            vec!["version", "-o", "json"],
            "true",
            "v1.32.0-upstream-under-test",
        ),
        (
            vec![
                "get",
                "--raw",
                "/api/proxy/dataplane/p1/org/dp1/k8s/version",
            ],
            "true",
            "v1.32.0-upstream-under-test",
        ),
        // An exec: kubectl looks the pod up, then upgrades to a v5.channel.k8s.io
        // WebSocket that the tunnel carries to the upstream's exec.
        (exec.clone(), "true", websocket_exec.as_str()),
        // The same exec over SPDY/3.1: the tunnel carries the upgraded bytes as they are.
        (exec.clone(), "false", spdy_exec.as_str()),
    ] {
        let is_exec = command[0] == "exec";
        let (server, ca, cert, key) = (server.clone(), ca.clone(), cert.clone(), key.clone());
        let out = tokio::task::spawn_blocking(move || {
            crate::common::output_within(
                std::process::Command::new("kubectl")
                    .env("KUBECONFIG", "/dev/null")
                    .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
                    .args(["--server", &server, "--certificate-authority", &ca])
                    .args(["--client-certificate", &cert, "--client-key", &key])
                    .arg("--request-timeout=20s")
                    .args(&command),
                crate::common::COMMAND_LIMIT,
            )
        })
        .await
        .unwrap();
        assert!(out.status.success(), "kubectl: {}", err(&out));
        if is_exec {
            // Whole: each transport's exec prints its own marker.
            assert_eq!(text(&out), expected);
        } else {
            assert!(text(&out).contains(expected), "{}", text(&out));
        }
    }
}

/// `kubectl port-forward` through the gateway to a pod of the plane: kubectl's WebSocket
/// attempt is refused by the kubelet-like upstream, it falls back to SPDY/3.1 as it does
/// with a kubelet, and two connections through the forwarded port each reach the pod's
/// echo server, whole, both ways; the tunnel carries the SPDY bytes as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_through_the_gateway() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let topo = Topology::start(true).await;
    let _agent = topo.agent("a1", "p1").await;
    let mut kubectl = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", "/dev/null")
        .args(["--server", &topo.proxy_url("k8s", "")])
        .args(["--certificate-authority", &topo.pki.path("gateway/ca.crt")])
        .args(["--client-certificate", &topo.pki.path("caller.crt")])
        .args(["--client-key", &topo.pki.path("caller.key")])
        .args([
            "port-forward",
            "-n",
            "dp-a",
            "pod/web-1",
            "--address",
            "127.0.0.1",
            ":8080",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl is installed");
    let mut stdout = tokio::io::BufReader::new(kubectl.stdout.take().unwrap()).lines();
    // "Forwarding from 127.0.0.1:PORT -> 8080" once the local port listens.
    let port: u16 = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                return rest.split(' ').next().unwrap().parse().unwrap();
            }
        }
        panic!("kubectl port-forward ended without forwarding");
    })
    .await
    .expect("kubectl port-forward listens within 20 s");
    for round in 0..2u8 {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let sent: Vec<u8> = (0..200_000u32)
            .map(|i| (i as u8).wrapping_add(round))
            .collect();
        let (mut read, mut write) = conn.split();
        let echoed = async {
            let mut echoed = vec![0u8; sent.len()];
            read.read_exact(&mut echoed).await.map(|_| echoed)
        };
        let (written, echoed) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(write.write_all(&sent), echoed)
        })
        .await
        .expect("the echo comes back within 20 s");
        written.unwrap();
        assert!(echoed.unwrap() == sent, "round {round}: the echo differs");
    }
    let _ = kubectl.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), kubectl.wait()).await;
}

/// The request ID travels to the upstream; callers cannot inject planelink's
/// control headers; bad requests are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_checks_and_errors() {
    let topo = Topology::start(true).await;
    let _agent = topo.agent("a1", "p1").await;
    let mut cmd = topo.curl();
    cmd.args([
        "-i",
        "-H",
        "X-Request-ID: trace-me-42",
        "-H",
        "planelink-target: agent",
    ])
    .arg(topo.proxy_url("k8s", "/headers"));
    let out = curl(cmd).await;
    let body = text(&out);
    assert!(
        body.contains("x-request-id=trace-me-42 planelink-headers=false"),
        "{body}"
    );
    assert!(
        body.to_ascii_lowercase()
            .contains("x-request-id: trace-me-42"),
        "{body}"
    );

    for (path, status, words) in [
        (
            "/api/proxy/dataplane/p1/org/dp1/k8s/api/v1/secrets",
            "403",
            "blocked",
        ),
        (
            "/api/proxy/dataplane/p1/org/dp1/db/x",
            "403",
            "target not allowed",
        ),
        (
            "/api/proxy/dataplane/p1/org/dp1/k8s/a/%2e%2e/b",
            "400",
            "traversal",
        ),
        (
            "/api/proxy/dataplane/nope/org/dp1/k8s/version",
            "503",
            "no agent connected",
        ),
        (
            "/api/proxy/dataplane/p1/org/other/k8s/version",
            "503",
            "is authorised for the plane CR org/other",
        ),
        ("/api/proxy/dataplane/p1/org/dp1/svc/x", "404", "no target"),
    ] {
        let mut cmd = topo.curl();
        cmd.args(["-w", "\n%{http_code}"]).arg(topo.api_url(path));
        let out = curl(cmd).await;
        let body = text(&out);
        assert!(body.ends_with(status), "{path}: {body}");
        assert!(body.contains(words), "{path}: {body}");
    }

    // Without a client certificate the internal listener (mTLS on) refuses the caller.
    let out = curl({
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--cacert", &topo.pki.path("gateway/ca.crt")])
            .arg(topo.proxy_url("agent", "/"));
        cmd
    })
    .await;
    assert!(
        !out.status.success(),
        "a caller without a certificate got through"
    );
}

/// An agent whose certificate no CR of its plane trusts, and one naming an unknown
/// plane, get the same fixed 401 text (an unverified peer learns nothing about which
/// planes exist); the gateway's log and rejection metric keep the precise reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_agent_is_refused() {
    let topo = Topology::start(false).await;
    agent_identity(&topo.pki.dir, "stranger");
    let expected_refusal = format!(
        "the gateway refused the agent (401): {}",
        planelink::gateway::UNVERIFIED_REFUSAL
    );
    for (identity, plane, metric) in [
        ("stranger", "p1", "untrusted_certificate"),
        ("a1", "unknown-plane", "unknown_plane"),
    ] {
        let out = crate::common::output_within(
            std::process::Command::new(harness_binary())
                .args(["register", "check"])
                .arg(format!(
                    "--server-url=wss://127.0.0.1:{}/ws",
                    topo.gateway.public_addr.port()
                ))
                .arg(format!("--server-ca={}", topo.pki.path("gateway/ca.crt")))
                .arg(format!(
                    "--client-cert={}",
                    topo.pki.dir.join(identity).join("tls.crt").display()
                ))
                .arg(format!(
                    "--client-key={}",
                    topo.pki.dir.join(identity).join("tls.key").display()
                ))
                .arg(format!("--plane-id={plane}")),
            crate::common::COMMAND_LIMIT,
        );
        let answered = format!(
            "  agent     FAILED: the gateway answered 401 ({}); ",
            planelink::gateway::UNVERIFIED_REFUSAL
        );
        assert!(text(&out).contains(&answered), "{identity}: {}", text(&out));
        let args = topo.agent_config(identity, plane);
        let refusal = match dial_once(args).await {
            Ok(()) => panic!("{identity} was accepted"),
            Err(e) => e,
        };
        assert_eq!(refusal, expected_refusal, "{identity}");
        let metrics = topo.metrics().await;
        // register check and at least one dial of the agent, each refused for `metric`.
        let prefix =
            format!("planelink_gateway_handshake_rejections_total{{reason=\"{metric}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} not in:\n{metrics}"));
        assert!(count >= 2, "{prefix}{count}");
    }
}

fn harness_binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_planelink"))
}

/// One dial by the real agent code, reporting the gateway's refusal.
async fn dial_once(args: planelink::agent::Config) -> Result<(), String> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent = planelink::agent::start(args, None, shutdown.clone())
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..100 {
        if agent.is_connected() || agent.last_error().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = agent.is_connected();
    let reason = agent.last_error();
    shutdown.cancel();
    agent.wait().await;
    if connected {
        Ok(())
    } else {
        Err(reason.unwrap_or_default())
    }
}

/// Replacing the registered CA disconnects the connected agent within 2 s, and
/// restoring it lets the agent back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_ca_disconnects_the_agent_live() {
    let topo = Topology::start(false).await;
    let agent = topo.agent("a1", "p1").await;
    let original = std::fs::read_to_string(topo.planes.join("dp1.yaml")).unwrap();
    let (_, other_ca) = agent_identity(&topo.pki.dir, "other");
    write(
        &topo.planes.join("dp1.yaml"),
        &dataplane("dp1", "p1", &other_ca),
    );
    let changed = Instant::now();
    while agent.is_connected() && changed.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = changed.elapsed();
    assert!(
        !agent.is_connected(),
        "agent still connected 5 s after its CA was replaced"
    );
    assert!(took < Duration::from_secs(3), "disconnect took {took:?}");
    let status = topo.gateway.status(
        &planelink::planes::PlaneKey {
            plane_type: planelink::planes::PlaneType::DataPlane,
            plane_id: "p1".into(),
        },
        None,
    );
    assert!(!status.connected);

    write(&topo.planes.join("dp1.yaml"), &original);
    let restored = Instant::now();
    while !agent.is_connected() && restored.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        agent.is_connected(),
        "agent not back 10 s after its CA was restored"
    );
}

/// Killing the agent process mid-request ends the caller's request at once: 502 when
/// no response had started, a broken transfer when the body was streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_ends_requests_promptly() {
    let topo = Topology::start(false).await;
    for (path, expect_502) in [("/slow-head", true), ("/slow-bytes/67108864", false)] {
        // The agent killed in the previous round must be gone first, or the request could
        // be routed to it and fail fast for that reason instead.
        topo.wait_for_agents_exactly("p1", 0).await;
        let mut child = std::process::Command::new(harness_binary())
            .args(topo.agent_argv("a1", "p1"))
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        topo.wait_for_agents_exactly("p1", 1).await;
        let received = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = topo.curl();
        cmd.args(["-w", "%{http_code}", "-o"])
            .arg(received.path())
            .arg(topo.proxy_url("k8s", path));
        let request = curl(cmd);
        let metrics_url = format!("http://{}/metrics", topo.gateway.health_addr);
        let killer = async {
            // Kill once the request is inside the tunnel (its stream is open) and, for the
            // transfer, once the caller has body bytes (a kill before the response head is
            // the first case, a clean 502).
            let in_flight = async {
                loop {
                    let mut cmd = std::process::Command::new("curl");
                    cmd.args(["-sS", "--max-time", "5", &metrics_url]);
                    let open = text(&curl(cmd).await)
                        .lines()
                        .any(|l| l == "planelink_gateway_open_streams 1");
                    let flowing = std::fs::metadata(received.path()).is_ok_and(|m| m.len() > 0);
                    if open && (expect_502 || flowing) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), in_flight)
                .await
                .expect("the request did not reach the tunnel within 10 s");
            child.kill().unwrap();
            child.wait().unwrap();
            Instant::now()
        };
        let (out, killed_at) = tokio::join!(request, killer);
        let ended = killed_at.elapsed();
        assert!(
            ended < Duration::from_secs(3),
            "{path}: the caller waited {ended:?} after the kill"
        );
        let body = std::fs::read_to_string(received.path()).unwrap_or_default() + &text(&out);
        if expect_502 {
            assert!(
                body.ends_with("502") && body.contains("dropped the request"),
                "{path}: {body}"
            );
        } else {
            assert!(
                !out.status.success(),
                "{path}: a cut transfer looked complete"
            );
        }
    }
}

/// Two agents for one plane (HA replicas) both carry requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_for_one_plane_both_serve() {
    let topo = Topology::start(false).await;
    let _a = topo.agent("a1", "p1").await;
    let _b = topo.agent("a1", "p1").await;
    let mut instances = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let mut cmd = topo.curl();
        cmd.arg("-f").arg(topo.proxy_url("agent", "/"));
        let out = curl(cmd).await;
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        instances.insert(info["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(instances.len(), 2, "requests went to {instances:?}");

    let mut cmd = topo.curl();
    cmd.arg(topo.api_url("/api/v1/planes/dataplane/p1/status?namespace=org&name=dp1"));
    let status: serde_json::Value = serde_json::from_slice(&curl(cmd).await.stdout).unwrap();
    assert_eq!(status["connected"], true);
    assert_eq!(status["connectedAgents"], 2);
    let mut cmd = topo.curl();
    cmd.arg(topo.api_url("/api/v1/planes/status"));
    let all: serde_json::Value = serde_json::from_slice(&curl(cmd).await.stdout).unwrap();
    assert_eq!(all["total"], 1);
    let mut cmd = topo.curl();
    cmd.args(["-X", "POST", "-d", r#"{"planeType":"dataplane","planeID":"p1","event":"updated","namespace":"org","name":"dp1"}"#])
        .arg(topo.api_url("/api/v1/planes/notify"));
    let notified: serde_json::Value = serde_json::from_slice(&curl(cmd).await.stdout).unwrap();
    assert_eq!(notified["success"], true);
    assert_eq!(notified["disconnectedAgents"], 0);
    let mut cmd = topo.curl();
    cmd.args(["-X", "POST"])
        .arg(topo.api_url("/api/v1/planes/dataplane/p1/reconnect"));
    let reconnect: serde_json::Value = serde_json::from_slice(&curl(cmd).await.stdout).unwrap();
    assert_eq!(reconnect["disconnectedAgents"], 2);
}

/// A metric's value in Prometheus text (`name{labels}` exactly as exposed), if present.
fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    })
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"])
        .arg(format!("http://{addr}/metrics"));
    text(&curl(cmd).await)
}

/// The agent's `/metrics`: a tunnel that is up, requests by target and code, body bytes
/// both ways, the client certificate's expiry; then the gateway goes away and the agent
/// reports no tunnel, one disconnect and failed dials by step. The gateway exports its
/// serving certificate's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_follow_its_tunnel_and_requests() {
    let topo = Topology::start(true).await;
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent = planelink::agent::start(
        topo.agent_config("a1", "p1"),
        Some(health),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert!(agent.wait_connected(Duration::from_secs(5)).await);
    topo.wait_for_agents("p1", 1).await;
    let health = agent.health_addr.unwrap();

    let upload = topo.pki.dir.join("upload");
    std::fs::write(&upload, pattern(100_000)).unwrap();
    let mut post = topo.curl();
    post.args(["-o", "/dev/null", "-w", "%{http_code}", "--data-binary"])
        .arg(format!("@{}", upload.display()))
        .arg(topo.proxy_url("k8s", "/sha256"));
    assert_eq!(text(&curl(post).await), "200");
    let mut get = topo.curl();
    get.args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg(topo.proxy_url("k8s", "/bytes/5000"));
    assert_eq!(text(&curl(get).await), "200");
    let mut missing = topo.curl();
    missing
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg(topo.proxy_url("svc", "/"));
    assert_eq!(text(&curl(missing).await), "404");

    let metrics = scrape(health).await;
    let value = |series: &str| {
        metric_value(&metrics, series).unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    };
    assert_eq!(value("planelink_agent_tunnels"), 1.0);
    assert_eq!(
        value("planelink_agent_dials_total{result=\"connected\"}"),
        1.0
    );
    assert_eq!(value("planelink_agent_disconnects_total"), 0.0);
    assert_eq!(
        value("planelink_agent_requests_total{target=\"k8s\",code=\"200\"}"),
        2.0
    );
    assert_eq!(
        value("planelink_agent_requests_total{target=\"unknown\",code=\"404\"}"),
        1.0
    );
    assert_eq!(
        value("planelink_agent_response_seconds_count{target=\"k8s\"}"),
        2.0
    );
    assert_eq!(
        value("planelink_agent_bytes_total{target=\"k8s\",direction=\"request\"}"),
        100_000.0
    );
    // /sha256 answers "100000 <64 hex digits>"; /bytes/5000 five thousand bytes.
    assert_eq!(
        value("planelink_agent_bytes_total{target=\"k8s\",direction=\"response\"}"),
        (5000 + "100000 ".len() + 64) as f64
    );
    assert_eq!(value("planelink_agent_open_streams"), 0.0);
    let leaf = planelink::trust::load_certificates(&topo.pki.dir.join("a1/tls.crt")).unwrap();
    let not_after = planelink::trust::inspect::CertInfo::from_der(&leaf[0])
        .unwrap()
        .not_after
        .unix_timestamp();
    assert_eq!(
        value("planelink_agent_client_certificate_expiry_timestamp_seconds"),
        not_after as f64
    );

    let served =
        planelink::trust::load_certificates(&topo.pki.dir.join("gateway/tls.crt")).unwrap();
    let gateway_not_after = planelink::trust::inspect::CertInfo::from_der(&served[0])
        .unwrap()
        .not_after
        .unix_timestamp();
    let gateway_metrics = topo.metrics().await;
    assert_eq!(
        metric_value(
            &gateway_metrics,
            "planelink_gateway_serving_certificate_expiry_timestamp_seconds"
        ),
        Some(gateway_not_after as f64),
        "{gateway_metrics}"
    );

    // The gateway goes away: the tunnel is lost once, and every redial fails at connect.
    topo.shutdown.cancel();
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = scrape(health).await;
        if metric_value(&metrics, "planelink_agent_dials_total{result=\"connect\"}").is_some() {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "no failed dial counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metric_value(&metrics, "planelink_agent_tunnels"), Some(0.0));
    assert_eq!(
        metric_value(&metrics, "planelink_agent_disconnects_total"),
        Some(1.0)
    );
    shutdown.cancel();
    agent.wait().await;
}

/// A gateway restarted five times in a row on the same port: its agent, at the default
/// `--reconnect-delay` (5 s, whose first backoff alone is 2.5–5 s), is registered again
/// within 2 s of each new gateway listening, because the stopping gateway tells its
/// agents it is going away and they redial within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_return_promptly_after_gateway_restarts() {
    let topo = Topology::start(true).await;
    let port = topo.gateway.public_addr.port();
    let mut argv = topo.agent_argv("a1", "p1");
    argv.retain(|a| !a.starts_with("--reconnect-delay") && !a.starts_with("--max-reconnect-delay"));
    let args: planelink::agent::AgentArgs = planelink::cli::args_from(argv).unwrap();
    let config = planelink::agent::Config::try_from(args).unwrap();
    let agent_stop = tokio_util::sync::CancellationToken::new();
    let agent = planelink::agent::start(config, None, agent_stop.clone())
        .await
        .unwrap();
    topo.wait_for_agents("p1", 1).await;
    let key = planelink::planes::PlaneKey {
        plane_type: planelink::planes::PlaneType::DataPlane,
        plane_id: "p1".into(),
    };
    // The agent took the h2 transport, whose going-away news this test relies on.
    let protocols = |gateway: &planelink::gateway::Gateway| -> Vec<String> {
        let status = gateway.status(&key, None);
        status.agents.into_iter().map(|a| a.protocol).collect()
    };
    assert_eq!(
        protocols(&topo.gateway),
        [planelink::tunnel::transport::H2_UPGRADE]
    );
    let gateway_argv: Vec<String> = topo
        .gateway_argv
        .iter()
        .map(|a| match a.as_str() {
            "--port=0" => format!("--port={port}"),
            _ => a.clone(),
        })
        .collect();
    let Topology {
        _dir,
        planes,
        mut gateway,
        mut shutdown,
        ..
    } = topo;
    for restart in 1..=5 {
        shutdown.cancel();
        gateway.wait().await;
        (gateway, shutdown) = launch_gateway(gateway_argv.clone(), &planes).await;
        let listening = Instant::now();
        let back = async {
            while gateway.status(&key, None).connected_agents < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(2), back)
                .await
                .is_ok(),
            "restart {restart}: the agent was not back within 2 s (last error: {:?})",
            agent.last_error()
        );
        eprintln!(
            "restart {restart}: agent back after {:?}",
            listening.elapsed()
        );
        assert_eq!(
            protocols(&gateway),
            [planelink::tunnel::transport::H2_UPGRADE]
        );
    }
    shutdown.cancel();
    agent_stop.cancel();
    agent.wait().await;
}
