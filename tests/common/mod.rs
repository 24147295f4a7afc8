//! Helpers shared by the integration tests: the real binary under its names, and
//! certificate fixtures issued per run with planelink's own trust module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use planelink::trust::issue::{self, CaOptions, FileKind, Issued, LeafOptions, Window};

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_planelink"))
}

/// The binary linked under `name` inside `dir`, as a package or image would install it.
pub fn linked(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(binary(), &link).expect("symlink the binary");
    }
    link
}

/// How long any one-shot command of a test may run.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` to completion with its output captured, killing it (and failing the test)
/// if it runs longer than `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let (pid, done, overran) = (
        child.id(),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let watchdog = {
        let (done, overran) = (done.clone(), overran.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + limit;
            while !done.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !done.load(Ordering::Acquire) {
                overran.store(true, Ordering::Release);
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        })
    };
    let out = child.wait_with_output().expect("wait for the command");
    done.store(true, Ordering::Release);
    let _ = watchdog.join();
    assert!(
        !overran.load(Ordering::Acquire),
        "{cmd:?} did not finish within {limit:?}; killed"
    );
    out
}

pub fn run(program: &Path, args: &[&str]) -> Output {
    output_within(
        Command::new(program)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("KUBECONFIG"),
        COMMAND_LIMIT,
    )
}

/// Runs a long-lived role for `duration`, then sends SIGTERM and collects its exit
/// and output (bounded: a role that ignores SIGTERM is killed after 20 s more).
pub fn run_for(program: &Path, args: &[&str], duration: Duration) -> Output {
    let child = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start planelink");
    std::thread::sleep(duration);
    terminate(&child);
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    });
    let out = child.wait_with_output().expect("wait for planelink");
    drop(watchdog);
    out
}

/// Sends SIGTERM, as Kubernetes and systemd do.
pub fn terminate(child: &std::process::Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

pub fn planelink(args: &[&str]) -> Output {
    run(&binary(), args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code, not a signal")
}

pub fn write(path: &Path, text: &str) {
    issue::write_file(path, text, FileKind::Public).expect("write fixture");
}

pub fn write_key(path: &Path, issued: &Issued) {
    issue::write_file(path, issued.key_pem(), FileKind::Secret).expect("write key");
}

pub fn agent_pki(plane: &str) -> (Issued, Issued) {
    let ca = issue::new_ca(&CaOptions::agent(plane)).expect("agent CA");
    let leaf = issue::issue_leaf(&ca, &LeafOptions::client(&format!("agent {plane}")))
        .expect("agent leaf");
    (ca, leaf)
}

pub fn gateway_pki(dns: &[&str], ips: &[&str]) -> (Issued, Issued) {
    let ca = issue::new_ca(&CaOptions::gateway()).expect("gateway CA");
    let leaf = server_leaf(&ca, dns, ips, Window::days(30));
    (ca, leaf)
}

pub fn server_leaf(ca: &Issued, dns: &[&str], ips: &[&str], window: Window) -> Issued {
    let opts = LeafOptions::server(
        "cluster-gateway",
        dns.iter().map(|s| s.to_string()).collect(),
        ips.iter().map(|s| s.parse().expect("ip")).collect(),
    )
    .window(window);
    issue::issue_leaf(ca, &opts).expect("server leaf")
}

/// A window that ended an hour ago.
pub fn expired_window() -> Window {
    let now = SystemTime::now();
    Window {
        not_before: now - Duration::from_secs(7200),
        not_after: now - Duration::from_secs(3600),
    }
}

/// A window that starts in an hour.
pub fn future_window() -> Window {
    let now = SystemTime::now();
    Window {
        not_before: now + Duration::from_secs(3600),
        not_after: now + Duration::from_secs(7200),
    }
}

/// Fails the test with the reason when a required tool is missing: never skip silently.
pub fn require_tool(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{tool} is not installed; .ci/run installs it (apt-get install {tool})")
    })
}

/// Asserts the exit code and that stderr names `needle`, showing stderr on failure.
pub fn expect_stderr(out: &Output, exit: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(code(out), exit, "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// The gateway's CA and serving certificate (127.0.0.1, localhost) in `DIR/gateway`, and a
/// caller client certificate signed by that CA at `DIR/caller.crt` and `DIR/caller.key`.
pub fn gateway_files(dir: &Path) -> Issued {
    let ca = issue::new_ca(&CaOptions::gateway()).expect("gateway CA");
    let serving = server_leaf(&ca, &["localhost"], &["127.0.0.1"], Window::days(30));
    let gateway = dir.join("gateway");
    std::fs::create_dir_all(&gateway).unwrap();
    issue::write_bundle(&gateway, &ca, true, &serving).unwrap();
    let caller = issue::issue_leaf(&ca, &LeafOptions::client("caller")).unwrap();
    write(&dir.join("caller.crt"), &caller.cert_pem);
    write_key(&dir.join("caller.key"), &caller);
    ca
}

/// An agent identity in `DIR/NAME`: its own CA and a client certificate (ca.crt, ca.key,
/// tls.crt, tls.key). Returns the CA's PEM.
pub fn agent_files(dir: &Path, name: &str) -> String {
    let ca = issue::new_ca(&CaOptions::agent(name)).unwrap();
    let leaf = issue::issue_leaf(&ca, &LeafOptions::client(name)).unwrap();
    let identity = dir.join(name);
    std::fs::create_dir_all(&identity).unwrap();
    issue::write_bundle(&identity, &ca, true, &leaf).unwrap();
    ca.cert_pem
}

/// A pooled HTTPS client presenting the caller certificate of `dir` (caller.crt,
/// caller.key), trusting the gateway CA (gateway/ca.crt).
pub fn caller_client(dir: &Path) -> planelink::tunnel::client::HttpsClient {
    let read = |p: &str| std::fs::read(dir.join(p)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in planelink::trust::parse_certificates(&read("gateway/ca.crt")).unwrap() {
        roots.add(cert).unwrap();
    }
    let chain = planelink::trust::parse_certificates(&read("caller.crt")).unwrap();
    let key = planelink::trust::parse_private_key(&read("caller.key"))
        .unwrap()
        .into_der();
    let tls = rustls::ClientConfig::builder_with_provider(planelink::trust::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    planelink::tunnel::client::http_client(planelink::tunnel::client::connector(tls, None))
}

/// Writes `files` the way the kubelet updates a mounted Secret: into a new hidden
/// directory, then one rename of the `..data` symlink; each file is a symlink through
/// `..data`, so a reader sees the old set or the new one, never half of each.
pub fn mount_secret(dir: &Path, version: u32, files: &[(&str, &str)]) {
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&data).unwrap();
    for (name, contents) in files {
        issue::write_file(&data.join(name), contents, FileKind::Secret).unwrap();
    }
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(format!("..v{version}"), &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

/// Sends `GET url` with `client` until `stop`, counting each 200 in `ok`; every other
/// answer (status and body, transport error, no answer within 10 s) is returned.
pub async fn call_until(
    client: planelink::tunnel::client::HttpsClient,
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<String> {
    use http_body_util::BodyExt as _;
    let mut failures = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let request = http::Request::get(&url)
            .body(planelink::tunnel::body::empty())
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let response = client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        })
        .await;
        match answer {
            Ok(Ok((http::StatusCode::OK, _))) => {
                ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Ok((status, body))) => {
                failures.push(format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
            Ok(Err(e)) => failures.push(format!("transport error: {e:#}")),
            Err(_) => failures.push("no answer within 10 s".into()),
        }
    }
    failures
}

/// [`call_until`] for tests without a runtime: callers on a thread of their own.
pub struct CallerThread {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl CallerThread {
    /// `callers` callers of `url`, presenting the caller certificate of `dir`.
    pub fn start(dir: &Path, url: String, callers: usize) -> CallerThread {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (dir, thread_stop, thread_ok) = (dir.to_path_buf(), stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = caller_client(&dir);
                let tasks: Vec<_> = (0..callers)
                    .map(|_| {
                        tokio::spawn(call_until(
                            client.clone(),
                            url.clone(),
                            thread_stop.clone(),
                            thread_ok.clone(),
                        ))
                    })
                    .collect();
                let mut failures = Vec::new();
                for task in tasks {
                    failures.extend(task.await.unwrap());
                }
                failures
            })
        });
        CallerThread { stop, ok, thread }
    }

    pub fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the callers and asserts that every request succeeded and at least `least` did.
    pub fn finish_without_failures(self, least: usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let failures = self.thread.join().unwrap();
        let ok = self.ok.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {failures:?}",
            failures.len(),
            ok + failures.len()
        );
        assert!(
            ok >= least,
            "only {ok} requests succeeded, fewer than {least}"
        );
        eprintln!("request loop: {ok} requests, none failed");
    }
}
