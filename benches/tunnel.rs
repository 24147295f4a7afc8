//! Tunnel benchmark: the same requests sent directly to an HTTPS upstream and through
//! gateway and agent (separate release processes), in one run, printed as a table
//! with ratios. Run with `cargo bench --bench tunnel` (add `-- --quick` for a short run).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use planelink::planes::PlaneType;
use planelink::planes::crd::{PlaneBuilder, ValueFrom};
use planelink::planes::manifest::to_yaml;
use planelink::trust::issue::{self, CaOptions, LeafOptions};
use planelink::tunnel::body::{self as tbody, Body};

mod support;
use support::{HttpsClient, Procs, client, free_port, gateway_command, get, rss_kib, write};

const CHUNK: usize = 64 * 1024;

async fn upstream(req: Request<Incoming>, chunk: Bytes) -> Response<Body> {
    let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        let mut r = Response::new(tbody::full("not found"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let (mut tx, body) = tbody::channel();
    tokio::spawn(async move {
        let mut left = n;
        while left > 0 {
            let take = left.min(CHUNK);
            if tx.send_data(chunk.slice(..take)).await.is_err() {
                return;
            }
            left -= take;
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert("content-length", n.into());
    r
}

async fn start_upstream(dir: &Path) -> SocketAddr {
    let cert = planelink::trust::tls::ReloadingCert::load(
        &dir.join("up/tls.crt"),
        &dir.join("up/tls.key"),
    )
    .unwrap();
    let config = planelink::trust::tls::server_config(cert, None, &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let chunk = Bytes::from(vec![42u8; CHUNK]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let chunk = chunk.clone();
                    async move { Ok::<_, Infallible>(upstream(req, chunk).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Latency {
    p50: Duration,
    p99: Duration,
    rps: f64,
}

async fn latency(client: &HttpsClient, url: &str, n: usize) -> Latency {
    for _ in 0..50 {
        get(client, url).await;
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        get(client, url).await;
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    samples.sort();
    Latency {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        rps: n as f64 / total.as_secs_f64(),
    }
}

async fn concurrent_rps(
    client: &HttpsClient,
    url: &str,
    connections: usize,
    duration: Duration,
) -> f64 {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = client.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                get(&client, &url).await;
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / duration.as_secs_f64()
}

async fn throughput(client: &HttpsClient, url: &str, size: usize, rounds: usize) -> f64 {
    let mut best = 0f64;
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(get(client, url).await, size);
        best = best.max(size as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    best
}

async fn wait_connected(internal: u16, client: &HttpsClient) {
    for _ in 0..200 {
        if plane_status(internal, client)
            .await
            .contains("\"connected\":true")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the bench agent did not connect");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(quick));
}

async fn bench(quick: bool) {
    let _ =
        rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (sub, ca, leaf) in [
        (
            "gw",
            CaOptions::gateway(),
            LeafOptions::server("gw", vec![], vec!["127.0.0.1".parse().unwrap()]),
        ),
        (
            "up",
            CaOptions::gateway(),
            LeafOptions::server("up", vec![], vec!["127.0.0.1".parse().unwrap()]),
        ),
        (
            "agent",
            CaOptions::agent("bench"),
            LeafOptions::client("bench"),
        ),
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        let ca = issue::new_ca(&ca).unwrap();
        let leaf = issue::issue_leaf(&ca, &leaf).unwrap();
        issue::write_bundle(&dir.join(sub), &ca, true, &leaf).unwrap();
    }
    let up = start_upstream(dir).await;
    std::fs::create_dir_all(dir.join("planes")).unwrap();
    let agent_ca = std::fs::read_to_string(dir.join("agent/ca.crt")).unwrap();
    let plane = PlaneBuilder::new(PlaneType::DataPlane, "default", "bench")
        .client_ca(ValueFrom::inline(&agent_ca))
        .build();
    write(&dir.join("planes/bench.yaml"), &to_yaml(&[plane]));
    write(
        &dir.join("routes.yaml"),
        &format!(
            "routes:\n- name: svc\n  url: https://{up}\n  caFile: {}\n",
            dir.join("up/ca.crt").display()
        ),
    );
    let (port, internal, health) = (free_port(), free_port(), free_port());
    let bin = env!("CARGO_BIN_EXE_planelink");
    let gateway = start_gateway(dir, port, internal, health, &[]);
    let gateway_pid = gateway.id();
    let agent_args = |extra: &[String]| {
        let mut cmd = Command::new(bin);
        cmd.args([
            "agent",
            "--plane-id=bench",
            "--health-port=0",
            "--log-level=warn",
        ])
        .arg(format!("--server-url=wss://127.0.0.1:{port}/ws"))
        .arg(format!(
            "--client-cert={}",
            dir.join("agent/tls.crt").display()
        ))
        .arg(format!(
            "--client-key={}",
            dir.join("agent/tls.key").display()
        ))
        .arg(format!("--server-ca={}", dir.join("gw/ca.crt").display()))
        .arg(format!("--routes={}", dir.join("routes.yaml").display()))
        .args(extra)
        .env_remove("KUBECONFIG");
        cmd
    };
    let agent = agent_args(&[])
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start agent");
    let mut procs = Procs(vec![gateway, agent]);
    let c1 = client(dir, 1);
    wait_connected(internal, &c1).await;

    println!(
        "\nplanelink tunnel benchmark (client -> gateway -> agent -> upstream vs client -> upstream)\n"
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "measure", "direct", "tunnel", "ratio"
    );
    // Memory at the gateway per idle agent, measured first, before any traffic has
    // grown the allocator's pools.
    let idle_agents = if quick { 20 } else { 100 };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(gateway_pid, "VmRSS:");
    let shutdown: Vec<_> = (0..idle_agents)
        .map(|_| tokio_util::sync::CancellationToken::new())
        .collect();
    let mut agents = Vec::new();
    for token in &shutdown {
        agents.push(spawn_idle_agent(dir, port, token.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(gateway_pid, "VmRSS:");
    println!(
        "{:<44} {:>14} {:>10.1} KiB",
        format!("gateway RSS per idle agent ({idle_agents} agents)"),
        "",
        after.saturating_sub(before) as f64 / idle_agents as f64
    );
    for token in shutdown {
        token.cancel();
    }
    drop(agents);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = if quick { 50 } else { 200 };
    let per_pending = rss_per_unfinished_upgrade(dir, port, gateway_pid, pending).await;
    println!(
        "{:<44} {:>14} {:>10.1} KiB",
        format!("gateway RSS per unfinished /ws request ({pending})"),
        "",
        per_pending
    );

    let direct = |path: &str| format!("https://{up}{path}");
    let tunnel = |path: &str| {
        format!("https://127.0.0.1:{internal}/api/proxy/dataplane/bench/default/bench/svc{path}")
    };
    let n = if quick { 500 } else { 3000 };
    let window = Duration::from_secs(if quick { 2 } else { 5 });

    let row = |name: &str, d: f64, t: f64, unit: &str, higher_better: bool| {
        let ratio = if higher_better { t / d } else { d / t };
        println!(
            "{name:<44} {:>10.2} {unit:<3} {:>10.2} {unit:<3} {ratio:>7.2}x",
            d, t
        );
    };

    let d1 = latency(&c1, &direct("/bytes/1024"), n).await;
    let t1 = latency(&c1, &tunnel("/bytes/1024"), n).await;
    row(
        "1 KiB GET p50 latency (1 conn)",
        ms(d1.p50),
        ms(t1.p50),
        "ms",
        false,
    );
    row(
        "1 KiB GET p99 latency (1 conn)",
        ms(d1.p99),
        ms(t1.p99),
        "ms",
        false,
    );
    row("1 KiB GET requests/s (1 conn)", d1.rps, t1.rps, "r/s", true);

    let c64 = client(dir, 64);
    let d64 = concurrent_rps(&c64, &direct("/bytes/1024"), 64, window).await;
    let t64 = concurrent_rps(&c64, &tunnel("/bytes/1024"), 64, window).await;
    row("1 KiB GET requests/s (64 conns)", d64, t64, "r/s", true);

    let size = 64 << 20;
    let rounds = if quick { 2 } else { 4 };
    let hwm_before = rss_kib(gateway_pid, "VmHWM:");
    let dm = throughput(&c1, &direct(&format!("/bytes/{size}")), size, rounds).await;
    let tm = throughput(&c1, &tunnel(&format!("/bytes/{size}")), size, rounds).await;
    let hwm_after = rss_kib(gateway_pid, "VmHWM:");
    row("64 MiB GET throughput", dm, tm, "MB/s", true);

    // Small-request latency while a 64 MiB transfer runs through the same tunnel.
    let idle = latency(&c1, &tunnel("/bytes/1024"), n / 2).await;
    let bulk_client = client(dir, 1);
    let bulk_url = tunnel(&format!("/bytes/{}", 1usize << 30));
    let bulk = tokio::spawn(async move { get(&bulk_client, &bulk_url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = latency(&c1, &tunnel("/bytes/1024"), n / 2).await;
    bulk.abort();
    println!(
        "{:<44} {:>10.2} ms  {:>10.2} ms  {:>7.2}x",
        "1 KiB p99 idle vs during a bulk transfer",
        ms(idle.p99),
        ms(busy.p99),
        ms(busy.p99) / ms(idle.p99)
    );

    println!(
        "{:<44} {:>14} {:>10} KiB",
        "gateway peak RSS growth over 64 MiB GETs",
        "",
        hwm_after.saturating_sub(hwm_before)
    );
    procs.0.iter_mut().for_each(|c| {
        let _ = c.kill();
    });
    replica_memory(dir, idle_agents).await;
}

/// A gateway process serving the bench's planes directory.
fn start_gateway(dir: &Path, port: u16, internal: u16, health: u16, extra: &[String]) -> Child {
    gateway_command(dir, port, internal, health)
        .arg("--allowed-targets=svc,agent")
        .arg("--max-agents-per-plane=1000")
        .args(extra)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start gateway")
}

/// Three gateway replicas (`--replicas 3`) behind a round-robin TCP balancer, and idle
/// agents that each hold a tunnel to every replica: the memory a tunnel costs a replica,
/// and what the replicas cost together.
async fn replica_memory(dir: &Path, agents: usize) {
    const REPLICAS: usize = 3;
    let mut backends = Vec::new();
    let mut procs = Procs(Vec::new());
    let mut internals = Vec::new();
    for i in 0..REPLICAS {
        let (port, internal, health) = (free_port(), free_port(), free_port());
        procs.0.push(start_gateway(
            dir,
            port,
            internal,
            health,
            &[
                format!("--replicas={REPLICAS}"),
                format!("--replica-id=r{i}"),
            ],
        ));
        backends.push(SocketAddr::from(([127, 0, 0, 1], port)));
        internals.push(internal);
    }
    let balancer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb_port = balancer.local_addr().unwrap().port();
    tokio::spawn(async move {
        for turn in 0.. {
            let Ok((mut downstream, _)) = balancer.accept().await else {
                return;
            };
            let backend = backends[turn % backends.len()];
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                }
            });
        }
    });
    let c1 = client(dir, 1);
    for internal in &internals {
        wait_ready(*internal, &c1).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids: Vec<u32> = procs.0.iter().map(|c| c.id()).collect();
    let before: Vec<u64> = pids.iter().map(|p| rss_kib(*p, "VmRSS:")).collect();
    let bench_before = rss_kib(std::process::id(), "VmRSS:");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut held = Vec::new();
    for _ in 0..agents {
        held.push(spawn_idle_agent(dir, lb_port, shutdown.clone()).await);
    }
    for internal in &internals {
        wait_agents(*internal, &c1, agents).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown: u64 = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| rss_kib(*p, "VmRSS:").saturating_sub(*b))
        .sum();
    let tunnels = (agents * REPLICAS) as f64;
    println!(
        "{:<44} {:>14} {:>10.1} KiB",
        format!("gateway RSS per tunnel, {REPLICAS} replicas ({agents} agents)"),
        "",
        grown as f64 / tunnels
    );
    println!(
        "{:<44} {:>14} {:>10.1} KiB",
        format!("agent-side RSS per tunnel ({REPLICAS} per agent)"),
        "",
        rss_kib(std::process::id(), "VmRSS:").saturating_sub(bench_before) as f64 / tunnels
    );
    shutdown.cancel();
    drop(held);
}

async fn plane_status(internal: u16, client: &HttpsClient) -> String {
    let url = format!("https://127.0.0.1:{internal}/api/v1/planes/dataplane/bench/status");
    match client
        .request(Request::get(&url).body(Empty::new()).unwrap())
        .await
    {
        Ok(r) => {
            let body = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            String::from_utf8_lossy(&body).into_owned()
        }
        Err(_) => String::new(),
    }
}

/// Waits until the gateway's plane API answers.
async fn wait_ready(internal: u16, client: &HttpsClient) {
    for _ in 0..200 {
        if plane_status(internal, client).await.contains("planeID") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway replica did not start");
}

/// Waits until `count` agents are connected to the gateway.
async fn wait_agents(internal: u16, client: &HttpsClient, count: usize) {
    for _ in 0..600 {
        let status: serde_json::Value =
            serde_json::from_str(&plane_status(internal, client).await).unwrap_or_default();
        if status["connectedAgents"].as_u64() == Some(count as u64) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not every agent reached the gateway replica on :{internal}");
}

/// The gateway's memory per connection of a client that finished TLS and then sends 7 KiB
/// of an upgrade request that never ends (what an unauthenticated peer can hold open
/// until the header deadline).
async fn rss_per_unfinished_upgrade(dir: &Path, port: u16, gateway_pid: u32, count: usize) -> f64 {
    use planelink::tunnel::dial;
    use tokio::io::AsyncWriteExt as _;
    let identity = dial::TlsIdentity {
        server_ca: planelink::trust::load_certificates(&dir.join("gw/ca.crt")).unwrap(),
        client: Some((
            planelink::trust::load_certificates(&dir.join("agent/tls.crt")).unwrap(),
            planelink::trust::load_private_key(&dir.join("agent/tls.key")).unwrap(),
        )),
    };
    let unfinished = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n",
        "p".repeat(7 * 1024)
    );
    let before = rss_kib(gateway_pid, "VmRSS:");
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let tcp = dial::connect("127.0.0.1", port, dial::STEP_TIMEOUT)
            .await
            .unwrap();
        let (mut tls, _) = dial::tls(tcp, "127.0.0.1", &identity, b"http/1.1", dial::STEP_TIMEOUT)
            .await
            .unwrap();
        tls.write_all(unfinished.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        held.push(tls);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(gateway_pid, "VmRSS:");
    drop(held);
    after.saturating_sub(before) as f64 / count as f64
}

async fn spawn_idle_agent(
    dir: &Path,
    port: u16,
    token: tokio_util::sync::CancellationToken,
) -> planelink::agent::Agent {
    let args: planelink::agent::AgentArgs = planelink::cli::args_from(vec![
        "agent".into(),
        "--plane-id=bench".into(),
        "--health-port=0".into(),
        format!("--server-url=wss://127.0.0.1:{port}/ws"),
        format!("--client-cert={}", dir.join("agent/tls.crt").display()),
        format!("--client-key={}", dir.join("agent/tls.key").display()),
        format!("--server-ca={}", dir.join("gw/ca.crt").display()),
        format!("--routes={}", dir.join("routes.yaml").display()),
    ])
    .unwrap();
    let config = planelink::agent::Config::try_from(args).unwrap();
    planelink::agent::start(config, None, token).await.unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
