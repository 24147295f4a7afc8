//! Gateway replicas behind a real load balancer: three (then four) gateway processes on
//! loopback behind HAProxy (TCP mode, round robin; agents on one frontend, callers on
//! another that health-checks `/ready`), membership through Leases on a real API server,
//! two agents and a controller. The agents hold a tunnel to every replica, a rolling
//! restart under a continuous request loop fails (almost) nothing and never hangs, a
//! replica killed outright costs only the requests it held, and the controller's
//! `Connected` stays True throughout. A test binary of its own: its own API servers, and
//! no other test's load beside its request loop.

#[allow(dead_code)] // shared with the kube tests, which use all of it
#[path = "../kube/cluster.rs"]
mod cluster;
#[path = "../common/mod.rs"]
mod common;

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::*;
use planelink::planes::PlaneType;
use planelink::planes::crd::{PlaneBuilder, ValueFrom};
use planelink::planes::manifest::to_yaml;

const WAIT: Duration = Duration::from_secs(30);
/// A request with no answer within this is a hang.
const HANG: Duration = Duration::from_secs(10);
const CALLERS: usize = 8;

struct Replica {
    id: String,
    public: u16,
    internal: u16,
    health: u16,
    process: Option<Process>,
}

struct Setup {
    dir: PathBuf,
    ns: String,
    lb_public: u16,
    lb_internal: u16,
    haproxy_socket: PathBuf,
}

impl Setup {
    fn gateway_args(&self, replica: &Replica) -> Vec<String> {
        let c = clusters();
        let path = |p: &str| self.dir.join(p).display().to_string();
        vec![
            "gateway".into(),
            format!("--kubeconfig={}", c.kubeconfig_for(&c.control).display()),
            format!("--lease-namespace={}", self.ns),
            format!("--replica-id={}", replica.id),
            "--bind-address=127.0.0.1".into(),
            format!("--port={}", replica.public),
            format!("--internal-port={}", replica.internal),
            format!("--health-port={}", replica.health),
            format!("--server-cert={}", path("gateway/tls.crt")),
            format!("--server-key={}", path("gateway/tls.key")),
            "--internal-mtls=true".into(),
            format!("--internal-client-ca-cert={}", path("gateway/ca.crt")),
            "--shutdown-timeout=10s".into(),
            "--shutdown-delay=1s".into(),
        ]
    }

    fn start(&self, replica: &mut Replica) {
        replica.process = Some(Process::start(
            &replica.id,
            &self.dir,
            &self.gateway_args(replica),
        ));
    }

    /// Whether HAProxy sees `server` of `backend` up.
    fn haproxy_up(&self, backend: &str, server: &str) -> bool {
        let Ok(mut socket) = std::os::unix::net::UnixStream::connect(&self.haproxy_socket) else {
            return false;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = socket.write_all(format!("show servers state {backend}\n").as_bytes());
        let mut out = String::new();
        let _ = socket.read_to_string(&mut out);
        // Columns: be_id be_name srv_id srv_name srv_addr srv_op_state ... (2 = running).
        out.lines().any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 5 && cols[1] == backend && cols[3] == server && cols[5] == "2"
        })
    }
}

/// HAProxy in front of the replicas: `agents` (TCP check) and `callers` (`/ready` on the
/// health port), round robin; a failed connect is retried on another replica.
fn haproxy_config(setup: &Setup, replicas: &[Replica]) -> String {
    let mut config = format!(
        "global\n  stats socket {} mode 600 level admin\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  \
         retries 3\n  option redispatch\n  balance roundrobin\n\
         frontend agents\n  bind 127.0.0.1:{}\n  default_backend agents\n\
         frontend callers\n  bind 127.0.0.1:{}\n  default_backend callers\n\
         backend agents\n",
        setup.haproxy_socket.display(),
        setup.lb_public,
        setup.lb_internal
    );
    for r in replicas {
        config.push_str(&format!(
            "  server {} 127.0.0.1:{} check inter 300ms fall 1 rise 1\n",
            r.id, r.public
        ));
    }
    config.push_str("backend callers\n  option httpchk GET /ready\n");
    for r in replicas {
        config.push_str(&format!(
            "  server {} 127.0.0.1:{} check port {} inter 300ms fall 1 rise 1\n",
            r.id, r.internal, r.health
        ));
    }
    config
}

/// A GET of a plain-HTTP endpoint (health ports), bounded.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    stream.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {out:?}"))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of an unlabelled metric (or the sum over its series) on an agent.
fn agent_metric(health: u16, name: &str) -> Result<f64, String> {
    let (_, body) = http_get(health, "/metrics")?;
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    if values.is_empty() {
        return Err(format!("no {name} in /metrics"));
    }
    Ok(values.iter().sum())
}

fn await_tunnels(agents: &[(Process, u16)], count: f64, limit: Duration, what: &str) {
    eventually(what, limit, || {
        for (agent, health) in agents {
            let tunnels = agent_metric(*health, "planelink_agent_tunnels")?;
            if tunnels != count {
                return Err(format!("{} holds {tunnels} tunnels", agent.name));
            }
        }
        Ok(())
    });
}

fn gateway_replicas_status(ns: &str) -> Result<(String, String), String> {
    let c = clusters();
    let dp = c
        .get(&c.control, ns, "dataplane/dp")
        .ok_or("no DataPlane dp")?;
    let replicas = dp["status"]["agentConnection"]["gatewayReplicas"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let connected = dp["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Connected"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string();
    Ok((replicas, connected))
}

/// What the request loop saw.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    /// Status codes other than 200, with counts.
    statuses: std::collections::BTreeMap<u16, usize>,
    /// Transport errors (connection reset, …), with when they happened.
    errors: Vec<(Instant, String)>,
    hangs: usize,
    /// When each non-200 answer came.
    failures_at: Vec<Instant>,
}

impl Tally {
    fn total(&self) -> usize {
        self.ok + self.statuses.values().sum::<usize>() + self.errors.len() + self.hangs
    }
}

/// `CALLERS` callers sending requests through HAProxy to the `k8s` target until `stop`,
/// each on a keep-alive connection (hyper's pooled client, as a controller would).
fn request_loop(
    setup: &Setup,
    plane_id: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Tally> {
    let url = format!(
        "https://127.0.0.1:{}/api/proxy/dataplane/{plane_id}/{}/dp/k8s/version",
        setup.lb_internal, setup.ns
    );
    let dir = setup.dir.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = common::caller_client(&dir);
            let tally = Arc::new(Mutex::new(Tally::default()));
            let mut callers = Vec::new();
            for _ in 0..CALLERS {
                let (client, url, stop, tally) =
                    (client.clone(), url.clone(), stop.clone(), tally.clone());
                callers.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::get(&url)
                            .body(planelink::tunnel::body::empty())
                            .unwrap();
                        let answer = tokio::time::timeout(HANG, async {
                            let response = client.request(request).await?;
                            let status = response.status().as_u16();
                            http_body_util::BodyExt::collect(response.into_body())
                                .await
                                .map_err(|e| anyhow::anyhow!("{e}"))?;
                            anyhow::Ok(status)
                        })
                        .await;
                        let mut t = tally.lock().unwrap();
                        match answer {
                            Ok(Ok(200)) => t.ok += 1,
                            Ok(Ok(status)) => {
                                *t.statuses.entry(status).or_default() += 1;
                                t.failures_at.push(Instant::now());
                            }
                            Ok(Err(e)) => t.errors.push((Instant::now(), format!("{e:#}"))),
                            Err(_) => t.hangs += 1,
                        }
                    }
                }));
            }
            for caller in callers {
                caller.await.unwrap();
            }
            std::mem::take(&mut *tally.lock().unwrap())
        })
    })
}

/// Records every moment the controller's `Connected` condition was not True, until `stop`.
fn watch_connected(ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match gateway_replicas_status(&ns) {
                Ok((_, connected)) if connected == "True" => {}
                Ok((replicas, connected)) => {
                    seen.push(format!("Connected={connected} ({replicas})"))
                }
                Err(e) => seen.push(e),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        seen
    })
}

fn assert_clean(tally: &Tally, phase: &str) {
    let total = tally.total();
    assert!(total > 500, "{phase}: only {total} requests: {tally:?}");
    assert_eq!(tally.hangs, 0, "{phase}: requests hung: {tally:?}");
    let unclean: Vec<&u16> = tally
        .statuses
        .keys()
        .filter(|s| **s != 502 && **s != 503)
        .collect();
    assert!(
        unclean.is_empty(),
        "{phase}: failures other than 502/503: {tally:?}"
    );
    assert!(
        tally.errors.is_empty(),
        "{phase}: transport errors: {:?}",
        tally.errors
    );
    let success = tally.ok as f64 / total as f64;
    assert!(
        success >= 0.999,
        "{phase}: {:.3}% of {total} requests succeeded: {tally:?}",
        success * 100.0
    );
    eprintln!(
        "{phase}: {total} requests, {} failed ({:?})",
        total - tally.ok,
        tally.statuses
    );
}

#[test]
fn replicas_behind_haproxy() {
    let haproxy = common::require_tool("haproxy");
    let c = clusters();
    let ns = c.namespace("replicas");
    let dir = tempfile::tempdir().unwrap();
    common::gateway_files(dir.path());
    let agent_ca = common::agent_files(dir.path(), "agent");
    let plane_id = format!("dp-{ns}");
    c.apply(
        &c.control,
        &to_yaml(&[PlaneBuilder::new(PlaneType::DataPlane, &ns, "dp")
            .plane_id(&plane_id)
            .client_ca(ValueFrom::inline(&agent_ca))
            .build()]),
    );

    let setup = Setup {
        dir: dir.path().to_path_buf(),
        ns: ns.clone(),
        lb_public: free_port(),
        lb_internal: free_port(),
        haproxy_socket: dir.path().join("haproxy.sock"),
    };
    let mut replicas: Vec<Replica> = (0..4)
        .map(|i| Replica {
            id: format!("g{i}"),
            public: free_port(),
            internal: free_port(),
            health: free_port(),
            process: None,
        })
        .collect();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(&setup, &replicas)).unwrap();
    let haproxy_log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
    let mut lb = std::process::Command::new(&haproxy)
        .arg("-f")
        .arg(&config)
        .arg("-db")
        .stdout(haproxy_log.try_clone().unwrap())
        .stderr(haproxy_log)
        .spawn()
        .expect("start haproxy");
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _lb = KillOnDrop(&mut lb);

    for replica in replicas.iter_mut().take(3) {
        setup.start(replica);
    }
    eventually("three replica Leases", WAIT, || {
        let names = c.ok(
            &c.control,
            &[
                "get",
                "leases",
                "-n",
                &ns,
                "-l",
                "planelink.dev/gateway-replica=true",
                "-o",
                "name",
            ],
        );
        let mut names: Vec<&str> = names.lines().collect();
        names.sort();
        match names[..] {
            [
                "lease.coordination.k8s.io/planelink-gateway-g0",
                "lease.coordination.k8s.io/planelink-gateway-g1",
                "lease.coordination.k8s.io/planelink-gateway-g2",
            ] => Ok(()),
            _ => Err(format!("{names:?}")),
        }
    });
    eventually("HAProxy to see three replicas", WAIT, || {
        match (0..3).all(|i| setup.haproxy_up("agents", &format!("g{i}"))) {
            true => Ok(()),
            false => Err("not all up".into()),
        }
    });

    // 1. Each agent holds a tunnel to each of the three replicas within 5 s of start.
    let mut agents = Vec::new();
    for name in ["a1", "a2"] {
        let health = free_port();
        let id = dir.path().join("agent");
        let process = Process::start(
            name,
            dir.path(),
            &[
                "agent".into(),
                format!("--server-url=wss://127.0.0.1:{}/ws", setup.lb_public),
                "--plane-type=dataplane".into(),
                format!("--plane-id={plane_id}"),
                format!("--client-cert={}", id.join("tls.crt").display()),
                format!("--client-key={}", id.join("tls.key").display()),
                format!(
                    "--server-ca={}",
                    dir.path().join("gateway/ca.crt").display()
                ),
                format!("--kubeconfig={}", c.kubeconfig_for(&c.remote).display()),
                "--bind-address=127.0.0.1".into(),
                format!("--health-port={health}"),
                "--reconnect-delay=1s".into(),
            ],
        );
        agents.push((process, health));
    }
    await_tunnels(
        &agents,
        3.0,
        Duration::from_secs(5),
        "each agent to hold 3 tunnels within 5 s",
    );

    // The controller asks every replica at the address in its Lease.
    let controller_health = free_port();
    let _controller = Process::start(
        "controller",
        dir.path(),
        &[
            "controller".into(),
            format!("--kubeconfig={}", c.kubeconfig_for(&c.control).display()),
            format!("--namespace={ns}"),
            format!("--leader-election-namespace={ns}"),
            format!("--controller-health-port={controller_health}"),
            format!("--gateway-url=https://127.0.0.1:{}", setup.lb_internal),
            format!(
                "--gateway-ca={}",
                dir.path().join("gateway/ca.crt").display()
            ),
            format!(
                "--gateway-client-cert={}",
                dir.path().join("caller.crt").display()
            ),
            format!(
                "--gateway-client-key={}",
                dir.path().join("caller.key").display()
            ),
            "--resync-period=2s".into(),
        ],
    );
    eventually(
        "status gatewayReplicas 3/3 and Connected",
        WAIT,
        || match gateway_replicas_status(&ns)? {
            (r, c) if r == "3/3" && c == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Scaling to four replicas: four tunnels each, no flag anywhere.
    setup.start(&mut replicas[3]);
    await_tunnels(&agents, 4.0, WAIT, "each agent to hold 4 tunnels");
    eventually(
        "status gatewayReplicas 4/4",
        WAIT,
        || match gateway_replicas_status(&ns)? {
            (r, _) if r == "4/4" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // And back to three: the fourth drains and leaves.
    assert_eq!(replicas[3].process.as_mut().unwrap().stop(), Some(0));
    replicas[3].process = None;
    await_tunnels(&agents, 3.0, WAIT, "each agent back to 3 tunnels");

    // 2. A rolling restart under a continuous request loop.
    let stop_watching = Arc::new(AtomicBool::new(false));
    let connected_watch = watch_connected(&ns, stop_watching.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let load = request_loop(&setup, &plane_id, stop.clone());
    eventually("the request loop to get going", WAIT, || {
        match http_get(replicas[0].health, "/metrics")?
            .1
            .contains("code=\"200\"")
        {
            true => Ok(()),
            false => Err("no 200 yet".into()),
        }
    });
    for replica in replicas.iter_mut().take(3) {
        assert_eq!(
            replica.process.as_mut().unwrap().stop(),
            Some(0),
            "{} exit",
            replica.id
        );
        setup.start(replica);
        eventually(
            &format!("{} ready again", replica.id),
            WAIT,
            || match http_get(replica.health, "/ready")? {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            },
        );
        await_tunnels(&agents, 3.0, WAIT, "each agent to hold 3 tunnels again");
    }
    stop.store(true, Ordering::Relaxed);
    let rolling = load.join().unwrap();
    assert_clean(&rolling, "rolling restart");

    // 3. kill -9 of one replica: once HAProxy has marked it down, requests through the
    // others all succeed; its Lease expires, the agents stop dialling for it, and the
    // status says 2/2.
    let stop = Arc::new(AtomicBool::new(false));
    let load = request_loop(&setup, &plane_id, stop.clone());
    let killed = replicas[1].process.take().unwrap();
    killed.signal("KILL");
    drop(killed);
    eventually("HAProxy to mark g1 down", WAIT, || {
        match setup.haproxy_up("callers", "g1") {
            false => Ok(()),
            true => Err("still up".into()),
        }
    });
    let marked_down = Instant::now();
    eventually(
        "status gatewayReplicas 2/2",
        Duration::from_secs(45),
        || match gateway_replicas_status(&ns)? {
            (r, _) if r == "2/2" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    eventually("the agents to learn of 2 replicas", WAIT, || {
        for (agent, health) in &agents {
            let n = agent_metric(*health, "planelink_agent_gateway_replicas")?;
            if n != 2.0 {
                return Err(format!("{}: {n}", agent.name));
            }
        }
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    let after_kill = load.join().unwrap();
    let late: Vec<&Instant> = after_kill
        .failures_at
        .iter()
        .chain(after_kill.errors.iter().map(|(at, _)| at))
        .filter(|at| **at > marked_down + Duration::from_millis(500))
        .collect();
    assert!(
        late.is_empty(),
        "requests failed after HAProxy marked the killed replica down: {after_kill:?}"
    );
    assert_eq!(after_kill.hangs, 0, "{after_kill:?}");
    // No more dials for the gone replica: the dial count stays put over a few seconds.
    let dials = |agents: &[(Process, u16)]| -> f64 {
        agents
            .iter()
            .map(|(_, h)| agent_metric(*h, "planelink_agent_dials_total").unwrap())
            .sum()
    };
    let before = dials(&agents);
    std::thread::sleep(Duration::from_secs(3)); // an observation window, not a wait
    assert_eq!(dials(&agents), before, "the agents keep dialling");
    await_tunnels(&agents, 2.0, WAIT, "each agent to hold 2 tunnels");

    // 4. Connected never flipped during 2 and 3.
    stop_watching.store(true, Ordering::Relaxed);
    let not_connected = connected_watch.join().unwrap();
    assert!(
        not_connected.is_empty(),
        "the controller's Connected was not True: {not_connected:?}"
    );
}
