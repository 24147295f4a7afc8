//! Fleet benchmark: many agents against one gateway process. The agents run in this
//! process, one tunnel each, with the real agent code (dialling, backoff with jitter,
//! prompt redial after a gateway's "going away"); the gateway is the release binary.
//! Prints the gateway's memory per idle agent, its CPU per agent handshake, and how long
//! until every agent is back after a graceful restart (SIGTERM) and after a crash
//! (SIGKILL), against the goals of a production fleet.
//!
//! `cargo bench --bench fleet` runs 10,000 agents on 10,000 planes (each its own CA);
//! `-- --agents N --planes P` spreads N agents over P planes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use planelink::planes::PlaneType;
use planelink::planes::crd::{PlaneBuilder, ValueFrom};
use planelink::planes::manifest::to_yaml;
use planelink::trust::issue::{self, CaOptions, LeafOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

mod support;
use support::{Procs, cpu_seconds, free_port, gateway_command, rss_kib, write};

/// How long any phase may take before the bench gives up on it.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// The goals of issue 16.
const GOAL_RSS_MIB: f64 = 500.0;
const GOAL_PER_AGENT_KIB: f64 = 50.0;
const GOAL_RECONNECT: Duration = Duration::from_secs(30);

struct Options {
    agents: usize,
    planes: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<usize>()
                    .unwrap_or_else(|_| panic!("{flag} takes a number, not {v:?}"))
            })
    };
    let agents = value("--agents").unwrap_or(10_000).max(1);
    let planes = value("--planes").unwrap_or(agents).clamp(1, agents);
    Options { agents, planes }
}

/// Agents and the gateway each hold one descriptor per tunnel: the soft limit is raised
/// to the hard one (children inherit it), and a hard limit too low is said plainly.
fn raise_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_max >= needed,
        "the hard limit of open files is {}, the fleet needs {needed}: raise it (ulimit -Hn, \
         LimitNOFILE=) or pass --agents with fewer",
        limit.rlim_max
    );
}

fn main() {
    let options = options();
    raise_open_files(options.agents as u64 + 2048);
    // SAFETY: no other thread runs yet. The agents must not pick up a cluster of the
    // machine they run on: their `k8s` target is not what this measures.
    unsafe { std::env::remove_var("KUBECONFIG") };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let missed = runtime.block_on(bench(options));
    if missed > 0 {
        eprintln!("{missed} goal(s) missed");
        std::process::exit(1);
    }
}

/// The certificates: the gateway's, and per plane a CA and one client certificate its
/// agents share; the planes in manifest files of 500.
fn issue_pki(dir: &Path, planes: usize) {
    let gw_ca = issue::new_ca(&CaOptions::gateway()).unwrap();
    let gw = issue::issue_leaf(
        &gw_ca,
        &LeafOptions::server("gw", vec![], vec!["127.0.0.1".parse().unwrap()]),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("gw")).unwrap();
    issue::write_bundle(&dir.join("gw"), &gw_ca, true, &gw).unwrap();
    let mut manifests = Vec::with_capacity(planes);
    for i in 0..planes {
        let id = format!("p{i}");
        let ca = issue::new_ca(&CaOptions::agent(&id)).unwrap();
        let leaf = issue::issue_leaf(&ca, &LeafOptions::client(&id)).unwrap();
        let sub = dir.join("agents").join(&id);
        std::fs::create_dir_all(&sub).unwrap();
        issue::write_bundle(&sub, &ca, false, &leaf).unwrap();
        manifests.push(
            PlaneBuilder::new(PlaneType::DataPlane, "default", &id)
                .client_ca(ValueFrom::inline(&ca.cert_pem))
                .build(),
        );
    }
    std::fs::create_dir_all(dir.join("planes")).unwrap();
    // A manifest file holds at most 1,024 documents (the YAML reader's budget).
    for (i, chunk) in manifests.chunks(500).enumerate() {
        write(&dir.join(format!("planes/fleet-{i}.yaml")), &to_yaml(chunk));
    }
}

struct Gateway {
    port: u16,
    internal: u16,
    health: u16,
}

impl Gateway {
    fn start(&self, dir: &Path, run: usize) -> Child {
        let log = std::fs::File::create(dir.join(format!("gateway-{run}.log"))).unwrap();
        gateway_command(dir, self.port, self.internal, self.health)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the gateway")
    }

    /// The gateway's metrics, summed by series name (labels dropped), plus the
    /// handshake rejections by reason.
    async fn metrics(&self) -> Option<BTreeMap<String, f64>> {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.health))
            .await
            .ok()?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut text))
            .await
            .ok()?
            .ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        let mut sums = BTreeMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = match series.split_once('{') {
                Some((name, labels)) if name.ends_with("handshake_rejections_total") => {
                    format!("{name}{{{labels}")
                }
                Some((name, _)) => name.to_string(),
                None => series.to_string(),
            };
            *sums.entry(name).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
        Some(sums)
    }

    async fn agents_connected(&self) -> usize {
        self.metrics()
            .await
            .and_then(|m| m.get("planelink_gateway_agents_connected").copied())
            .unwrap_or(0.0) as usize
    }
}

/// The agents of the fleet, in this process.
struct Fleet {
    agents: Vec<planelink::agent::Agent>,
    stop: CancellationToken,
}

impl Fleet {
    async fn start(dir: &Path, port: u16, options: &Options) -> Fleet {
        let stop = CancellationToken::new();
        let mut starting = tokio::task::JoinSet::new();
        for i in 0..options.agents {
            let id = format!("p{}", i % options.planes);
            let files = dir.join("agents").join(&id);
            let argv = vec![
                "agent".to_string(),
                format!("--plane-id={id}"),
                "--health-port=0".into(),
                format!("--server-url=wss://127.0.0.1:{port}/ws"),
                format!("--client-cert={}", files.join("tls.crt").display()),
                format!("--client-key={}", files.join("tls.key").display()),
                format!("--client-ca={}", files.join("ca.crt").display()),
                format!("--server-ca={}", dir.join("gw/ca.crt").display()),
            ];
            let stop = stop.clone();
            starting.spawn(async move {
                let args: planelink::agent::AgentArgs =
                    planelink::cli::args_from(argv).expect("agent flags");
                let config = planelink::agent::Config::try_from(args).expect("agent config");
                planelink::agent::start(config, None, stop)
                    .await
                    .expect("agent start")
            });
        }
        let mut agents = Vec::with_capacity(options.agents);
        while let Some(agent) = starting.join_next().await {
            agents.push(agent.expect("agent task"));
        }
        Fleet { agents, stop }
    }

    fn connected(&self) -> usize {
        self.agents.iter().filter(|a| a.is_connected()).count()
    }

    /// Waits until `wanted` agents hold a tunnel; how long that took, `None` past the limit.
    async fn until_connected(&self, wanted: usize, since: Instant) -> Option<Duration> {
        while since.elapsed() < PHASE_LIMIT {
            if self.connected() >= wanted {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits until no agent holds a tunnel (the gateway is gone and they noticed).
    async fn until_disconnected(&self) {
        let since = Instant::now();
        while self.connected() > 0 {
            assert!(
                since.elapsed() < PHASE_LIMIT,
                "{} agents still connected to a gateway that is gone",
                self.connected()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits (bounded) until the gateway's metrics endpoint answers.
async fn until_serving(gateway: &Gateway, child: &mut Child, dir: &Path, run: usize) {
    let since = Instant::now();
    while gateway.metrics().await.is_none() {
        if let Ok(Some(status)) = child.try_wait() {
            let log =
                std::fs::read_to_string(dir.join(format!("gateway-{run}.log"))).unwrap_or_default();
            panic!("the gateway exited ({status}): {log}");
        }
        assert!(
            since.elapsed() < PHASE_LIMIT,
            "the gateway did not serve its metrics"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the gateway process has exited.
fn until_exited(child: &mut Child) {
    let since = Instant::now();
    while child.try_wait().expect("wait for the gateway").is_none() {
        assert!(
            since.elapsed() < PHASE_LIMIT,
            "the gateway did not exit after its signal"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill only sends a signal to the gateway this bench started.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(sent, 0, "signal the gateway");
}

struct Report {
    rows: Vec<(String, String, String, bool)>,
}

impl Report {
    fn row(&mut self, measure: impl Into<String>, value: String, goal: &str, met: bool) {
        self.rows
            .push((measure.into(), value, goal.to_string(), met));
    }

    fn print(&self) -> usize {
        println!("\n{:<52} {:>14}  {:<12}", "measure", "value", "goal");
        for (measure, value, goal, met) in &self.rows {
            let mark = if goal.is_empty() || *met {
                ""
            } else {
                "  MISSED"
            };
            println!("{measure:<52} {value:>14}  {goal:<12}{mark}");
        }
        self.rows
            .iter()
            .filter(|(_, _, goal, met)| !goal.is_empty() && !met)
            .count()
    }
}

fn seconds(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| format!("> {} s", PHASE_LIMIT.as_secs()))
}

fn rejections(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let mut parts = Vec::new();
    for (series, value) in after {
        let Some(labels) = series.strip_prefix("planelink_gateway_handshake_rejections_total{")
        else {
            continue;
        };
        let n = value - before.get(series).copied().unwrap_or(0.0);
        if n > 0.0 {
            parts.push(format!("{} {n}", labels.trim_end_matches('}')));
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

async fn bench(options: Options) -> usize {
    let _ =
        rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let issued = Instant::now();
    issue_pki(dir, options.planes);
    println!(
        "\nplanelink fleet benchmark: {} agents on {} planes (each plane its own CA) against one gateway\n\
         certificates issued in {:.1} s",
        options.agents,
        options.planes,
        issued.elapsed().as_secs_f64()
    );
    let gateway = Gateway {
        port: free_port(),
        internal: free_port(),
        health: free_port(),
    };
    let mut procs = Procs(vec![gateway.start(dir, 0)]);
    until_serving(&gateway, &mut procs.0[0], dir, 0).await;
    // The planes are loaded once the gateway has read its directory; let it settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = procs.0[0].id();
    let mut report = Report { rows: Vec::new() };
    let rss_empty = rss_kib(pid, "VmRSS:");
    report.row(
        format!("gateway RSS, {} planes, no agent", options.planes),
        format!("{:.1} MiB", rss_empty as f64 / 1024.0),
        "",
        true,
    );

    // First connect: every agent at once, as after a control plane outage.
    let metrics_before = gateway.metrics().await.unwrap_or_default();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let fleet = Fleet::start(dir, gateway.port, &options).await;
    let up = fleet.until_connected(options.agents, started).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let metrics_after = gateway.metrics().await.unwrap_or_default();
    report.row("first connect: all agents up", seconds(up), "", true);
    if up.is_none() {
        let log = std::fs::read_to_string(dir.join("gateway-0.log")).unwrap_or_default();
        eprintln!(
            "{} agents connected; the gateway's log says:",
            fleet.connected()
        );
        // The first lines say why; refusals repeat.
        for line in log.lines().take(5) {
            eprintln!("  {line}");
        }
    }
    let verified = metrics_after
        .get("planelink_gateway_certificate_verifications_total")
        .copied()
        .unwrap_or(0.0)
        - metrics_before
            .get("planelink_gateway_certificate_verifications_total")
            .copied()
            .unwrap_or(0.0);
    report.row(
        "gateway CPU per agent handshake (TLS + upgrade)",
        format!("{:.2} ms", cpu * 1e3 / verified.max(1.0)),
        "",
        true,
    );
    report.row("  handshakes verified", format!("{verified:.0}"), "", true);
    report.row(
        format!("  refused: {}", rejections(&metrics_before, &metrics_after)),
        String::new(),
        "",
        true,
    );

    // Idle: what the tunnels cost the gateway once the handshakes' buffers are gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_gateway = gateway.agents_connected().await;
    report.row(
        "agents the gateway counts connected",
        format!("{at_gateway}"),
        &format!("= {}", options.agents),
        at_gateway == options.agents,
    );
    let rss_idle = rss_kib(pid, "VmRSS:");
    let total_mib = rss_idle as f64 / 1024.0;
    report.row(
        format!("gateway RSS with {} idle agents", options.agents),
        format!("{total_mib:.1} MiB"),
        &format!("< {GOAL_RSS_MIB} MiB"),
        total_mib < GOAL_RSS_MIB,
    );
    let per_agent = rss_idle.saturating_sub(rss_empty) as f64 / options.agents as f64;
    report.row(
        "gateway RSS per idle agent",
        format!("{per_agent:.1} KiB"),
        &format!("<= {GOAL_PER_AGENT_KIB} KiB"),
        per_agent <= GOAL_PER_AGENT_KIB,
    );
    report.row(
        "  (this process: agents' RSS per agent)",
        format!(
            "{:.1} KiB",
            rss_kib(std::process::id(), "VmRSS:") as f64 / options.agents as f64
        ),
        "",
        true,
    );

    // A request to one plane among them all: its lookups must not grow with the fleet.
    let caller = support::client(dir, 1);
    let last = format!("p{}", options.planes - 1);
    let url = format!(
        "https://127.0.0.1:{}/api/proxy/dataplane/{last}/default/{last}/agent/",
        gateway.internal
    );
    for _ in 0..50 {
        support::get(&caller, &url).await;
    }
    let mut samples = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        support::get(&caller, &url).await;
        samples.push(t.elapsed());
    }
    samples.sort();
    report.row(
        "request to one plane's agent, p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            samples[500].as_secs_f64() * 1e3,
            samples[990].as_secs_f64() * 1e3
        ),
        "",
        true,
    );

    // Restarts: the gateway goes, a new one takes its port, every agent must come back.
    for (run, (how, sig)) in [
        // The crash first: after a "going away" the agents redial promptly for a while.
        ("SIGKILL (crash)", libc::SIGKILL),
        ("SIGTERM (graceful, going-away)", libc::SIGTERM),
    ]
    .into_iter()
    .enumerate()
    {
        let stopped = Instant::now();
        signal(&procs.0[run], sig);
        until_exited(&mut procs.0[run]);
        let down = stopped.elapsed();
        fleet.until_disconnected().await;
        procs.0.push(gateway.start(dir, run + 1));
        let pid = procs.0[run + 1].id();
        let cpu_before = cpu_seconds(pid);
        let back = fleet.until_connected(options.agents, stopped).await;
        let cpu = cpu_seconds(pid) - cpu_before;
        report.row(
            format!("after {how}: all agents back"),
            seconds(back),
            &format!("<= {} s", GOAL_RECONNECT.as_secs()),
            back.is_some_and(|d| d <= GOAL_RECONNECT),
        );
        report.row(
            "  of which the old gateway took to exit",
            format!("{:.1} s", down.as_secs_f64()),
            "",
            true,
        );
        report.row(
            "  new gateway's CPU until then (incl. start)",
            format!("{cpu:.1} s"),
            "",
            true,
        );
        until_serving(&gateway, &mut procs.0[run + 1], dir, run + 1).await;
        let metrics = gateway.metrics().await.unwrap_or_default();
        report.row(
            format!("  refused: {}", rejections(&BTreeMap::new(), &metrics)),
            String::new(),
            "",
            true,
        );
    }
    fleet.stop.cancel();
    report.print()
}
