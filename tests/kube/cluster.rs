//! Two Kubernetes API servers for the tests: by default real kube-apiservers (1.20.2, built
//! from Debian's source by scripts/kube-apiserver.sh) on one etcd, started once per test
//! binary by scripts/test-clusters.sh and stopped when it exits. With
//! PLANELINK_TEST_KUBECONFIG set, an existing cluster (or two) is used instead:
//! PLANELINK_TEST_CONTROL_CONTEXT and PLANELINK_TEST_REMOTE_CONTEXT name the contexts
//! (both default to the current one). Each test works in namespaces of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Clusters {
    pub kubeconfig: PathBuf,
    pub control: String,
    pub remote: String,
    /// Where per-context kubeconfigs and logs go.
    pub dir: PathBuf,
}

static CLUSTERS: OnceLock<Clusters> = OnceLock::new();

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn current_context(kubeconfig: &Path) -> String {
    let out = crate::common::output_within(
        Command::new("kubectl")
            .args(["config", "current-context", "--kubeconfig"])
            .arg(kubeconfig),
        crate::common::COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "kubectl config current-context: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The clusters, started (and the CRDs installed) on first use.
pub fn clusters() -> &'static Clusters {
    CLUSTERS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("planelink-kube-")
            .tempdir()
            .unwrap()
            .keep();
        let (kubeconfig, control, remote) = match std::env::var_os("PLANELINK_TEST_KUBECONFIG") {
            Some(path) => {
                let path = PathBuf::from(path);
                let current = current_context(&path);
                let pick = |var: &str| std::env::var(var).unwrap_or_else(|_| current.clone());
                (
                    path.clone(),
                    pick("PLANELINK_TEST_CONTROL_CONTEXT"),
                    pick("PLANELINK_TEST_REMOTE_CONTEXT"),
                )
            }
            None => {
                let out = crate::common::output_within(Command::new("bash")
                    .arg(root().join("scripts/test-clusters.sh"))
                    .arg("up")
                    .arg(dir.join("clusters"))
                    .arg("--owner-pid")
                    .arg(std::process::id().to_string())
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit()), crate::common::COMMAND_LIMIT);
                assert!(
                    out.status.success(),
                    "scripts/test-clusters.sh could not start the test API servers (see its output \
                     above); it needs root for apt-get the first time, or set PLANELINK_TEST_KUBECONFIG \
                     to use an existing cluster"
                );
                let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                (path, "control-plane".to_string(), "remote".to_string())
            }
        };
        let clusters = Clusters {
            kubeconfig,
            control,
            remote,
            dir,
        };
        let crds = root().join("packaging/crds/openchoreo.dev.yaml");
        clusters.ok(&clusters.control, &["apply", "-f", crds.to_str().unwrap()]);
        for crd in [
            "dataplanes",
            "clusterdataplanes",
            "buildplanes",
            "workflowplanes",
            "clusterworkflowplanes",
            "observabilityplanes",
            "clusterobservabilityplanes",
            "environments",
        ] {
            clusters.ok(
                &clusters.control,
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=30s",
                    &format!("crd/{crd}.openchoreo.dev"),
                ],
            );
        }
        clusters
    })
}

impl Clusters {
    pub fn kubectl(&self, context: &str, args: &[&str]) -> Output {
        self.kubectl_with_input(context, args, None)
    }

    pub fn kubectl_with_input(&self, context: &str, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--context")
            .arg(context)
            .args(["--request-timeout", "20s"])
            .args(args);
        match input {
            None => {
                cmd.stdin(Stdio::null());
                crate::common::output_within(&mut cmd, crate::common::COMMAND_LIMIT)
            }
            Some(input) => {
                // kubectl reads stdin from a file here, so the bounded wait needs no writer thread.
                let file = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(file.path(), input).unwrap();
                cmd.stdin(std::fs::File::open(file.path()).unwrap());
                crate::common::output_within(&mut cmd, crate::common::COMMAND_LIMIT)
            }
        }
    }

    /// Runs kubectl and returns stdout; a failure fails the test with kubectl's stderr.
    pub fn ok(&self, context: &str, args: &[&str]) -> String {
        let out = self.kubectl(context, args);
        assert!(
            out.status.success(),
            "kubectl --context {context} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, context: &str, yaml: &str) {
        let out = self.kubectl_with_input(context, &["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// CRDs standing in for what the overlays need besides planelink's (Gateway API's
    /// TLSRoute, cert-manager's Issuer and Certificate): schemas that accept any object.
    pub fn install_standin_crds(&self, context: &str) {
        let crds = root().join("tests/kube/standin-crds.yaml");
        self.ok(context, &["apply", "-f", crds.to_str().unwrap()]);
    }

    /// An object as JSON, or `None` when it does not exist.
    pub fn get(&self, context: &str, namespace: &str, what: &str) -> Option<serde_json::Value> {
        let out = self.kubectl(context, &["get", "-n", namespace, what, "-o", "json"]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("NotFound") || err.contains("not found"),
                "kubectl get {what}: {err}"
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// A kubeconfig file whose current context is `context`, for planelink processes.
    pub fn kubeconfig_for(&self, context: &str) -> PathBuf {
        let path = self.dir.join(format!("{context}.kubeconfig"));
        if !path.exists() {
            let text = self.ok(
                context,
                &["config", "view", "--raw", "--minify", "--flatten"],
            );
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    /// A namespace in both clusters, named after the test.
    pub fn namespace(&self, name: &str) -> String {
        let ns = format!("t-{name}-{:04x}", rand::random::<u16>());
        for context in [&self.control, &self.remote] {
            let out = self.kubectl(context, &["create", "namespace", &ns]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || err.contains("AlreadyExists"),
                "{err}"
            );
        }
        ns
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails the test after `timeout`
/// naming what was awaited and the last thing seen.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            Ok(value) => return value,
            Err(seen) => last = seen,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: not within {timeout:?}; last seen: {last}");
}

/// A planelink process that is stopped (SIGTERM, then SIGKILL) when dropped; its output
/// goes to a log file that is shown when the test fails.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub fn start(name: &str, dir: &Path, args: &[String]) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_planelink"))
            .args(args)
            .env_remove("KUBECONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start planelink");
        Process {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the process runs");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (bounded by `limit`) for the process to exit by itself; its exit code.
    pub fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGTERM and wait (bounded); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
            if std::thread::panicking() {
                let text = self.log_text();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of {} ---", self.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
