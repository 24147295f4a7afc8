//! A kubelet (and the bits of the Job and Deployment controllers the docs' commands wait
//! on) for the test API servers, which run no nodes: it reads the Deployments and Jobs
//! stored in each cluster and runs their containers as local planelink processes, the way
//! a node would, so that any drift between the manifests and the binary fails the test.
//!
//! Each container gets what a real one gets:
//! - its own root filesystem: a tmpfs with the image's binary at `/planelink` (the image's
//!   entrypoint; `command` may name another path of the image), the host's `/usr` for the
//!   dynamically linked test binary, read-only when `readOnlyRootFilesystem` says so;
//! - its Secret and ConfigMap volumes (with `items`, modes and `fsGroup`) materialised from
//!   the API server and mounted read-only at their `mountPath`s, and its service-account
//!   token (`kubectl create token`), the API server's CA and its namespace at
//!   `/var/run/secrets/kubernetes.io/serviceaccount`;
//! - its environment: `envFrom`, `env` with `fieldRef`/`configMapKeyRef`/`secretKeyRef`,
//!   `$(VAR)` expansion in env, command and args, `KUBERNETES_SERVICE_HOST/PORT`, `HOSTNAME`;
//! - its user, group, `fsGroup`, no capabilities and no privilege escalation (`setpriv`).
//!
//! What it cannot give, and does instead (said here because it is not a real node):
//! - **Network.** Pods share the host's network namespace (the API servers listen on host
//!   loopback, which a pod namespace could not reach). Each pod gets its own loopback
//!   address (127.0.N.M) and `BIND_ADDRESS` set to it, which every planelink role reads as
//!   its default `--bind-address`; a manifest that set `BIND_ADDRESS` itself would win.
//! - **Services and DNS.** `/etc/hosts` (rewritten in place as pods come and go) maps
//!   `SERVICE.NAMESPACE.svc[.cluster.local]` straight to the ready pods the Service selects;
//!   the Service's port must therefore equal the container port it targets, which is
//!   asserted; a name with several ready pods resolves to all of them (`multi on`).
//!   Names outside the cluster (the gateway's public host) map to the endpoints
//!   of a Service the test names, as a load balancer's DNS would.
//! - **Seccomp** profiles are not applied.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::cluster::Clusters;

/// The image's default user (packaging/Dockerfile: `USER 65532:65532`).
const IMAGE_USER: u32 = 65532;
/// containerd's default PATH for an image that sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A Job's failed pod is retried after this long (Kubernetes backs off from 10 s).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// One cluster the kubelet serves.
pub struct Cluster {
    clusters: &'static Clusters,
    pub context: String,
    /// Where in-cluster clients reach the API server.
    pub api_host: String,
    pub api_port: u16,
    pub api_ca_pem: String,
}

impl Cluster {
    /// The API server of `context`, as pods of that cluster reach it.
    pub fn new(clusters: &'static Clusters, context: &str) -> Cluster {
        let mut cluster = Cluster {
            clusters,
            context: context.to_string(),
            api_host: String::new(),
            api_port: 0,
            api_ca_pem: String::new(),
        };
        let view = cluster.json(&["config", "view", "--raw", "--minify", "--flatten"]);
        let entry = &view["clusters"][0]["cluster"];
        let server = url::Url::parse(entry["server"].as_str().unwrap()).unwrap();
        let ca = base64::engine::general_purpose::STANDARD
            .decode(entry["certificate-authority-data"].as_str().unwrap())
            .unwrap();
        cluster.api_host = server.host_str().unwrap().to_string();
        cluster.api_port = server.port().unwrap();
        cluster.api_ca_pem = String::from_utf8(ca).unwrap();
        cluster
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        self.clusters.kubectl(&self.context, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.clusters.ok(&self.context, &all)).unwrap()
    }
}

/// A name outside the clusters that resolves to a Service's pods (as a load balancer's
/// DNS name would): `(host, cluster index, namespace, service)`.
pub type ExternalName = (String, usize, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Deployment,
    Job,
}

struct Container {
    name: String,
    /// Its environment, complete once the pod has its address.
    env: Vec<(String, String)>,
    /// The container's log, stdout and stderr.
    log: PathBuf,
    child: Option<Child>,
    /// How it exited in the current attempt.
    exit: Option<Option<i32>>,
    /// Every exit, for the crash report.
    exits: Vec<Option<i32>>,
}

pub struct Pod {
    pub cluster: usize,
    pub namespace: String,
    pub name: String,
    owner: Owner,
    owner_name: String,
    pub ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
    spec: Value,
    dir: PathBuf,
    /// Init containers (run in order) then the containers.
    init: Vec<Container>,
    containers: Vec<Container>,
    /// Job pods: attempts so far and how many failures the Job allows; any pod: when a
    /// container last failed (restarts wait a little, as a kubelet's back-off does).
    attempts: u32,
    backoff_limit: u32,
    failed_at: Option<Instant>,
    succeeded: bool,
    ready: bool,
    probe_failures: u32,
}

impl Pod {
    /// Gives the pod its address: `status.podIP`, and `BIND_ADDRESS` in place of its
    /// network namespace (see the module doc).
    fn assign_address(&mut self, ip: Ipv4Addr) {
        self.ip = ip;
        let ip = ip.to_string();
        for c in self.init.iter_mut().chain(self.containers.iter_mut()) {
            for (_, value) in c.env.iter_mut() {
                *value = value.replace("$(POD_IP)", &ip);
            }
            if !c.env.iter().any(|(k, _)| k == "BIND_ADDRESS") {
                c.env.insert(0, ("BIND_ADDRESS".into(), ip.clone()));
            }
        }
        std::fs::write(self.dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    }

    /// The pod's health (or other) port by name or number, from its first container.
    pub fn port(&self, name: &str) -> u16 {
        port_of(&self.spec["containers"][0], &Value::String(name.into()))
            .unwrap_or_else(|| panic!("pod {} has no port {name}", self.name))
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for c in self.init.iter().chain(&self.containers) {
            text += &format!(
                "--- {}/{} container {} ---\n{}",
                self.namespace,
                self.name,
                c.name,
                std::fs::read_to_string(&c.log).unwrap_or_default()
            );
        }
        text
    }
}

struct State {
    pods: Vec<Pod>,
    /// Why each workload that is not running yet waits.
    waiting: BTreeMap<String, String>,
    next_ip: HashMap<usize, u8>,
    /// The Deployment status last written, `(replicas, ready)`, to write only changes.
    reported: HashMap<(usize, String, String), (u64, u64)>,
}

pub struct Kubelet {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `/etc/hosts` for processes the test runs outside the clusters (the operator's shell).
    pub operator_hosts: PathBuf,
}

impl Kubelet {
    /// Starts serving `clusters`; pod directories go below `dir`.
    pub fn start(clusters: Vec<Cluster>, external: Vec<ExternalName>, dir: &Path) -> Kubelet {
        let clusters = Arc::new(clusters);
        let state = Arc::new(Mutex::new(State {
            pods: Vec::new(),
            waiting: BTreeMap::new(),
            next_ip: HashMap::new(),
            reported: HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let operator_hosts = dir.join("operator-hosts");
        let host_entries = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        std::fs::write(&operator_hosts, &host_entries).unwrap();
        let thread = {
            let (clusters, state, stop) = (clusters.clone(), state.clone(), stop.clone());
            let (dir, operator_hosts) = (dir.to_path_buf(), operator_hosts.clone());
            std::thread::spawn(move || {
                let node = Node {
                    clusters: &clusters,
                    state: &state,
                    external: &external,
                    dir: &dir,
                    operator_hosts: &operator_hosts,
                    host_entries: &host_entries,
                };
                while !stop.load(Ordering::Relaxed) {
                    node.tick();
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        };
        Kubelet {
            state,
            stop,
            thread: Some(thread),
            operator_hosts,
        }
    }

    /// Runs `f` on the pods as they are now.
    pub fn with_pods<T>(&self, f: impl FnOnce(&[Pod]) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()).pods)
    }

    /// The pods of a workload (`Deployment` or `Job` name) in a cluster: `(name, ip)`.
    pub fn pods_of(&self, cluster: usize, owner_name: &str) -> Vec<(String, Ipv4Addr)> {
        self.with_pods(|pods| {
            pods.iter()
                .filter(|p| p.cluster == cluster && p.owner_name == owner_name)
                .map(|p| (p.name.clone(), p.ip))
                .collect()
        })
    }

    /// Every Deployment container that exited while it should have kept running.
    pub fn crashes(&self) -> Vec<String> {
        self.with_pods(|pods| {
            pods.iter()
                .filter(|p| p.owner == Owner::Deployment)
                .flat_map(|p| {
                    p.containers.iter().flat_map(move |c| {
                        c.exits
                            .iter()
                            .map(move |code| format!("{}/{} exited {code:?}", p.name, c.name))
                    })
                })
                .collect()
        })
    }

    /// Every pod's logs and what each workload still waits for: shown when a test fails.
    pub fn report(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::new();
        for (workload, why) in &state.waiting {
            text += &format!("{workload} waits: {why}\n");
        }
        for pod in &state.pods {
            text += &pod.logs();
        }
        text
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for pod in &mut state.pods {
            for c in pod.init.iter_mut().chain(pod.containers.iter_mut()) {
                if let Some(child) = c.child.take() {
                    stop(child);
                }
            }
        }
    }
}

/// SIGTERM, a bounded wait, then SIGKILL.
fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The kubelet's loop body, borrowing the shared state.
struct Node<'a> {
    clusters: &'a [Cluster],
    state: &'a Mutex<State>,
    external: &'a [ExternalName],
    dir: &'a Path,
    operator_hosts: &'a Path,
    host_entries: &'a str,
}

impl Node<'_> {
    fn tick(&self) {
        let mut services = Vec::new();
        for (index, cluster) in self.clusters.iter().enumerate() {
            let objects = cluster.json(&["get", "deployments,jobs,services", "-A"]);
            let items = objects["items"].as_array().cloned().unwrap_or_default();
            for item in &items {
                match item["kind"].as_str() {
                    Some("Deployment") => self.schedule(index, item, Owner::Deployment),
                    Some("Job") => self.schedule(index, item, Owner::Job),
                    Some("Service") => services.push((index, item.clone())),
                    _ => {}
                }
            }
        }
        self.run_pods();
        self.report_status();
        self.write_hosts(&services);
    }

    /// Creates the pods of a workload once everything they mount and read exists.
    fn schedule(&self, cluster: usize, workload: &Value, owner: Owner) {
        let namespace = workload["metadata"]["namespace"]
            .as_str()
            .unwrap()
            .to_string();
        let owner_name = workload["metadata"]["name"].as_str().unwrap().to_string();
        let key = format!(
            "{:?} {}/{namespace}/{owner_name}",
            owner, self.clusters[cluster].context
        );
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.pods.iter().any(|p| {
                p.cluster == cluster && p.namespace == namespace && p.owner_name == owner_name
            }) {
                return;
            }
            if owner == Owner::Job && workload["status"]["succeeded"].as_i64().unwrap_or(0) > 0 {
                return;
            }
        }
        let template = &workload["spec"]["template"];
        let replicas = match owner {
            Owner::Deployment => workload["spec"]["replicas"].as_u64().unwrap_or(1),
            Owner::Job => 1,
        };
        let backoff_limit = workload["spec"]["backoffLimit"].as_u64().unwrap_or(6) as u32;
        let mut prepared = Vec::new();
        for replica in 0..replicas {
            let name = format!("{owner_name}-{replica}");
            match self.prepare(cluster, &namespace, &name, template) {
                Ok(pod) => prepared.push(pod),
                Err(why) => {
                    self.state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .waiting
                        .insert(key, why);
                    return;
                }
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting.remove(&key);
        for mut pod in prepared {
            let next = state.next_ip.entry(cluster).or_insert(1);
            pod.assign_address(Ipv4Addr::new(127, 20 + cluster as u8, 0, *next));
            *next += 1;
            pod.owner = owner;
            pod.owner_name = owner_name.clone();
            pod.backoff_limit = backoff_limit;
            state.pods.push(pod);
        }
    }

    /// A pod with everything it needs from the API server (its address comes later), or
    /// what is missing.
    fn prepare(
        &self,
        cluster: usize,
        namespace: &str,
        name: &str,
        template: &Value,
    ) -> Result<Pod, String> {
        let c = &self.clusters[cluster];
        let spec = &template["spec"];
        let dir = self.dir.join(format!("{}-{namespace}-{name}", c.context));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("volumes")).unwrap();
        let fs_group = spec["securityContext"]["fsGroup"]
            .as_u64()
            .map(|g| g as u32);
        // Volumes.
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            let vname = volume["name"].as_str().unwrap();
            let target = dir.join("volumes").join(vname);
            std::fs::create_dir_all(&target).unwrap();
            let (kind, source_name, data) = if let Some(secret) = volume.get("secret") {
                let sname = secret["secretName"].as_str().unwrap();
                (
                    "secret",
                    sname,
                    object_data(c, namespace, "secret", sname, secret)?,
                )
            } else if let Some(cm) = volume.get("configMap") {
                let cname = cm["name"].as_str().unwrap();
                (
                    "configmap",
                    cname,
                    object_data(c, namespace, "configmap", cname, cm)?,
                )
            } else if volume.get("emptyDir").is_some() {
                ("emptyDir", "", Some(BTreeMap::new()))
            } else {
                panic!("the test kubelet does not support volume {volume}");
            };
            let source = volume
                .get("secret")
                .or_else(|| volume.get("configMap"))
                .cloned()
                .unwrap_or(Value::Null);
            let Some(data) = data else {
                // optional and absent: an empty volume.
                continue;
            };
            let default_mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            let items: Vec<(String, String, u32)> = match source["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        (
                            i["key"].as_str().unwrap().to_string(),
                            i["path"].as_str().unwrap().to_string(),
                            i["mode"].as_u64().map(|m| m as u32).unwrap_or(default_mode),
                        )
                    })
                    .collect(),
                None => data
                    .keys()
                    .map(|k| (k.clone(), k.clone(), default_mode))
                    .collect(),
            };
            for (key, path, mode) in items {
                let bytes = data.get(&key).ok_or_else(|| {
                    format!("{kind} {namespace}/{source_name} has no key {key} (volume {vname})")
                })?;
                let file = target.join(&path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, bytes).unwrap();
                let mut mode = mode;
                if let Some(group) = fs_group {
                    std::os::unix::fs::chown(&file, Some(0), Some(group)).unwrap();
                    mode |= 0o040;
                }
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            if kind == "emptyDir" {
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
            }
        }
        // The service account's token, the API server's CA and the namespace.
        if spec["automountServiceAccountToken"].as_bool() != Some(false) {
            let account = spec["serviceAccountName"].as_str().unwrap_or("default");
            let out = c.kubectl(&["create", "token", account, "-n", namespace, "--duration=1h"]);
            if !out.status.success() {
                return Err(format!(
                    "no token for service account {namespace}/{account}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let sa = dir.join("serviceaccount");
            std::fs::create_dir_all(&sa).unwrap();
            std::fs::write(
                sa.join("token"),
                String::from_utf8_lossy(&out.stdout).trim(),
            )
            .unwrap();
            std::fs::write(sa.join("ca.crt"), &c.api_ca_pem).unwrap();
            std::fs::write(sa.join("namespace"), namespace).unwrap();
            for f in ["token", "ca.crt", "namespace"] {
                std::fs::set_permissions(sa.join(f), std::fs::Permissions::from_mode(0o644))
                    .unwrap();
            }
        }
        let mut init = Vec::new();
        let mut containers = Vec::new();
        for (list, out) in [
            ("initContainers", &mut init),
            ("containers", &mut containers),
        ] {
            for container in spec[list].as_array().into_iter().flatten() {
                let cname = container["name"].as_str().unwrap().to_string();
                // Resolve the environment now: a missing ConfigMap keeps the pod pending.
                let env = self.environment(cluster, namespace, name, container)?;
                out.push(Container {
                    env,
                    log: dir.join(format!("{cname}.log")),
                    name: cname,
                    child: None,
                    exit: None,
                    exits: Vec::new(),
                });
            }
        }
        let labels = template["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Pod {
            cluster,
            namespace: namespace.to_string(),
            name: name.to_string(),
            owner: Owner::Deployment,
            owner_name: String::new(),
            ip: Ipv4Addr::UNSPECIFIED,
            labels,
            spec: spec.clone(),
            dir,
            init,
            containers,
            attempts: 1,
            backoff_limit: 0,
            failed_at: None,
            succeeded: false,
            ready: false,
            probe_failures: 0,
        })
    }

    /// A container's environment, in the order Kubernetes builds it (`envFrom`, then
    /// `env`, each `$(VAR)` expanded against what came before).
    fn environment(
        &self,
        cluster: usize,
        namespace: &str,
        pod: &str,
        container: &Value,
    ) -> Result<Vec<(String, String)>, String> {
        let c = &self.clusters[cluster];
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOSTNAME".into(), pod.into()),
            ("KUBERNETES_SERVICE_HOST".into(), c.api_host.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), c.api_port.to_string()),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                c.api_port.to_string(),
            ),
            (
                "KUBERNETES_PORT".into(),
                format!("tcp://{}:{}", c.api_host, c.api_port),
            ),
        ];
        let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        };
        for from in container["envFrom"].as_array().into_iter().flatten() {
            let (kind, source) = match (from.get("configMapRef"), from.get("secretRef")) {
                (Some(cm), _) => ("configmap", cm),
                (_, Some(secret)) => ("secret", secret),
                _ => panic!("the test kubelet does not support envFrom {from}"),
            };
            let name = source["name"].as_str().unwrap();
            let prefix = from["prefix"].as_str().unwrap_or_default();
            if let Some(data) = object_data(c, namespace, kind, name, source)? {
                for (k, v) in data {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8(v).unwrap(),
                    );
                }
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap().to_string();
            let value = if let Some(value) = var.get("value") {
                expand(value.as_str().unwrap_or_default(), &env)
            } else if let Some(field) = var["valueFrom"].get("fieldRef") {
                match field["fieldPath"].as_str().unwrap() {
                    "metadata.name" => pod.to_string(),
                    "metadata.namespace" => namespace.to_string(),
                    "status.podIP" => "$(POD_IP)".to_string(),
                    other => panic!("the test kubelet does not support fieldRef {other}"),
                }
            } else if let Some(key_ref) = var["valueFrom"]
                .get("configMapKeyRef")
                .map(|r| ("configmap", r))
                .or_else(|| var["valueFrom"].get("secretKeyRef").map(|r| ("secret", r)))
            {
                let (kind, key_ref) = key_ref;
                let source = key_ref["name"].as_str().unwrap();
                let key = key_ref["key"].as_str().unwrap();
                match object_data(c, namespace, kind, source, key_ref)? {
                    Some(data) => match data.get(key) {
                        Some(v) => String::from_utf8(v.clone()).unwrap(),
                        None if key_ref["optional"].as_bool() == Some(true) => continue,
                        None => {
                            return Err(format!("{kind} {namespace}/{source} has no key {key}"));
                        }
                    },
                    None => continue,
                }
            } else {
                panic!("the test kubelet does not support env {var}");
            };
            set(&mut env, name, value);
        }
        Ok(env)
    }

    /// Starts what should run: a Job pod's init containers one after the other, then its
    /// containers, the whole pod again after a failure (`restartPolicy: OnFailure`, up to
    /// the Job's `backoffLimit`); a Deployment pod's containers, restarted when they exit.
    fn run_pods(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut completed = Vec::new();
        for pod in state.pods.iter_mut() {
            if pod.succeeded {
                continue;
            }
            let mut failed = false;
            for c in pod.init.iter_mut().chain(pod.containers.iter_mut()) {
                if let Some(child) = &mut c.child
                    && let Ok(Some(status)) = child.try_wait()
                {
                    c.child = None;
                    c.exit = Some(status.code());
                    c.exits.push(status.code());
                    failed |= status.code() != Some(0);
                }
            }
            if failed {
                pod.failed_at = Some(Instant::now());
            }
            if pod.failed_at.is_some_and(|t| t.elapsed() < RETRY_DELAY) {
                continue;
            }
            match pod.owner {
                Owner::Job => {
                    if pod.failed_at.is_some() {
                        // The Job gave up: its pod stays failed.
                        if pod.attempts > pod.backoff_limit {
                            continue;
                        }
                        pod.failed_at = None;
                        for c in pod.init.iter_mut().chain(pod.containers.iter_mut()) {
                            if let Some(child) = c.child.take() {
                                stop(child);
                            }
                            c.exit = None;
                        }
                        pod.attempts += 1;
                    }
                    if let Some(i) = pod.init.iter().position(|c| c.exit != Some(Some(0))) {
                        if pod.init[i].child.is_none() && pod.init[i].exit.is_none() {
                            pod.init[i].child = Some(spawn(pod, true, i));
                        }
                        continue;
                    }
                    for i in 0..pod.containers.len() {
                        if pod.containers[i].child.is_none() && pod.containers[i].exit.is_none() {
                            pod.containers[i].child = Some(spawn(pod, false, i));
                        }
                    }
                    if pod.containers.iter().all(|c| c.exit == Some(Some(0))) {
                        pod.succeeded = true;
                        completed.push((
                            pod.cluster,
                            pod.namespace.clone(),
                            pod.owner_name.clone(),
                        ));
                    }
                }
                Owner::Deployment => {
                    pod.failed_at = None;
                    for i in 0..pod.containers.len() {
                        if pod.containers[i].child.is_none() {
                            pod.containers[i].child = Some(spawn(pod, false, i));
                        }
                    }
                    // Like a kubelet: ready on a passing probe, not ready only after
                    // `failureThreshold` (3) failures in a row.
                    if probe(pod) {
                        pod.probe_failures = 0;
                        pod.ready = true;
                    } else {
                        pod.probe_failures += 1;
                        if pod.probe_failures >= 3 {
                            pod.ready = false;
                        }
                    }
                }
            }
        }
        drop(state);
        for (cluster, namespace, job) in completed {
            let now = time_now();
            let status = json!({"status": {
                "succeeded": 1,
                "startTime": now,
                "completionTime": now,
                "conditions": [{"type": "Complete", "status": "True",
                    "lastProbeTime": now, "lastTransitionTime": now}],
            }});
            patch_status(&self.clusters[cluster], &namespace, "job", &job, &status);
        }
    }

    /// A Deployment whose pods all pass their readiness probe is Available.
    fn report_status(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut deployments: BTreeMap<(usize, String, String), (u64, u64)> = BTreeMap::new();
        for pod in state.pods.iter().filter(|p| p.owner == Owner::Deployment) {
            let entry = deployments
                .entry((pod.cluster, pod.namespace.clone(), pod.owner_name.clone()))
                .or_default();
            entry.0 += 1;
            entry.1 += u64::from(pod.ready);
        }
        deployments.retain(|key, now| state.reported.insert(key.clone(), *now) != Some(*now));
        drop(state);
        for ((cluster, namespace, name), (replicas, ready)) in deployments {
            let available = if ready == replicas { "True" } else { "False" };
            let now = time_now();
            let status = json!({"status": {
                "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": ready, "availableReplicas": ready,
                "conditions": [{"type": "Available", "status": available,
                    "reason": "MinimumReplicasAvailable", "lastUpdateTime": now,
                    "lastTransitionTime": now}],
            }});
            patch_status(
                &self.clusters[cluster],
                &namespace,
                "deployment",
                &name,
                &status,
            );
        }
    }

    /// Every pod's `/etc/hosts`: Service names to the ready pods they select, and the
    /// external names; rewritten in place (the files are bind-mounted).
    fn write_hosts(&self, services: &[(usize, Value)]) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints = |cluster: usize, service: &Value| -> Vec<Ipv4Addr> {
            let namespace = service["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default();
            let Some(selector) = service["spec"]["selector"].as_object() else {
                return Vec::new();
            };
            state
                .pods
                .iter()
                .filter(|p| p.cluster == cluster && p.namespace == namespace && p.ready)
                .filter(|p| {
                    selector
                        .iter()
                        .all(|(k, v)| p.labels.get(k).map(String::as_str) == v.as_str())
                })
                .inspect(|p| check_service_ports(service, p))
                .map(|p| p.ip)
                .collect()
        };
        let mut per_cluster: HashMap<usize, String> = HashMap::new();
        let mut external = String::new();
        for (cluster, service) in services {
            let name = service["metadata"]["name"].as_str().unwrap_or_default();
            let namespace = service["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default();
            let ips = endpoints(*cluster, service);
            let lines = per_cluster.entry(*cluster).or_default();
            for ip in &ips {
                lines.push_str(&format!(
                    "{ip} {name}.{namespace}.svc {name}.{namespace}.svc.cluster.local\n"
                ));
            }
            for (host, c, ns, svc) in self.external {
                if c == cluster && ns == namespace && svc == name {
                    for ip in &ips {
                        external.push_str(&format!("{ip} {host}\n"));
                    }
                }
            }
        }
        for pod in &state.pods {
            let text = format!(
                "127.0.0.1 localhost\n{} {}\n{}{external}",
                pod.ip,
                pod.name,
                per_cluster
                    .get(&pod.cluster)
                    .map(String::as_str)
                    .unwrap_or_default()
            );
            rewrite(&pod.dir.join("hosts"), &text);
        }
        let mut operator = self.host_entries.to_string();
        for lines in per_cluster.values() {
            operator.push_str(lines);
        }
        operator.push_str(&external);
        rewrite(self.operator_hosts, &operator);
    }
}

/// Replaces a file's contents without replacing the file (it is bind-mounted).
fn rewrite(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Services reach pods directly here, so each port must be the container port it targets.
fn check_service_ports(service: &Value, pod: &Pod) {
    for port in service["spec"]["ports"].as_array().into_iter().flatten() {
        let number = port["port"].as_u64().unwrap() as u16;
        let target = port.get("targetPort").cloned().unwrap_or(json!(number));
        let resolved = pod.spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|c| port_of(c, &target));
        assert_eq!(
            resolved,
            Some(number),
            "Service {} port {number} targets {target} of pod {}: the test kubelet needs them equal",
            service["metadata"]["name"],
            pod.name
        );
    }
}

/// A container port by name or number.
fn port_of(container: &Value, port: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().map(|n| n as u16),
        Value::String(name) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .map(|n| n as u16)
            .or_else(|| name.parse().ok()),
        _ => None,
    }
}

/// The readiness probe of every container (HTTP GET; a container without one is ready
/// while it runs).
fn probe(pod: &Pod) -> bool {
    let containers = pod.spec["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    containers.iter().zip(&pod.containers).all(|(spec, c)| {
        if c.child.is_none() {
            return false;
        }
        let Some(get) = spec["readinessProbe"].get("httpGet") else {
            return true;
        };
        let Some(port) = port_of(spec, &get["port"]) else {
            return false;
        };
        http_status(pod.ip, port, get["path"].as_str().unwrap_or("/"))
            .is_some_and(|s| (200..400).contains(&s))
    })
}

/// The status code of `GET path` on `ip:port`, as the kubelet's prober sees it.
pub fn http_status(ip: Ipv4Addr, port: u16, path: &str) -> Option<u16> {
    http_get(ip, port, path).map(|(status, _)| status)
}

/// `GET path` on `ip:port` over plain HTTP/1.0: the status and body.
pub fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddrV4::new(ip, port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn time_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn patch_status(cluster: &Cluster, namespace: &str, kind: &str, name: &str, status: &Value) {
    let out = cluster.kubectl(&[
        "patch",
        kind,
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    assert!(
        out.status.success(),
        "kubectl patch {kind} {namespace}/{name} --subresource=status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The data of a Secret or ConfigMap (`None` when it is absent and `optional`), or what
/// is missing.
fn object_data(
    cluster: &Cluster,
    namespace: &str,
    kind: &str,
    name: &str,
    reference: &Value,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let out = cluster.kubectl(&["get", kind, name, "-n", namespace, "-o", "json"]);
    if !out.status.success() {
        if reference["optional"].as_bool() == Some(true) {
            return Ok(None);
        }
        return Err(format!(
            "{kind} {namespace}/{name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let object: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut data = BTreeMap::new();
    for (k, v) in object["data"].as_object().into_iter().flatten() {
        let v = v.as_str().unwrap_or_default();
        let bytes = if kind == "secret" {
            base64::engine::general_purpose::STANDARD.decode(v).unwrap()
        } else {
            v.as_bytes().to_vec()
        };
        data.insert(k.clone(), bytes);
    }
    Ok(Some(data))
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` escapes, anything
/// else stays as written.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(k, _)| k == &inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The script that builds a container's root inside its own mount namespace and runs
/// the entrypoint there as the container's user. Arguments: root, binary, image path of
/// the entrypoint, mounts file, read-only root (1/0), user, group, groups, then argv.
const CONTAINER_SCRIPT: &str = r#"
set -eu
root=$1 bin=$2 entry=$3 mounts=$4 ro=$5 uid=$6 gid=$7 groups=$8
shift 8
mount -t tmpfs -o mode=755 tmpfs "$root"
mkdir -p "$root/usr" "$root/proc" "$root/dev" "$root/etc"
mount --bind /usr "$root/usr"
mount -o remount,bind,ro "$root/usr"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
ln -s usr/bin "$root/bin"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc" 2>/dev/null || mount --rbind /proc "$root/proc"
echo "hosts: files" > "$root/etc/nsswitch.conf"
# A name with several addresses resolves to all of them, as DNS answers with every record
# (glibc's files backend returns only the first line's address without this).
echo "multi on" > "$root/etc/host.conf"
mkdir -p "$(dirname "$root$entry")"
touch "$root$entry"
mount --bind "$bin" "$root$entry"
while read -r src dst; do
  if [ -d "$src" ]; then mkdir -p "$root$dst"; else mkdir -p "$(dirname "$root$dst")"; touch "$root$dst"; fi
  mount --bind "$src" "$root$dst"
  mount -o remount,bind,ro "$root$dst"
done < "$mounts"
if [ "$ro" = 1 ]; then mount -o remount,ro "$root"; fi
exec chroot "$root" /usr/bin/setpriv --reuid="$uid" --regid="$gid" --groups="$groups" \
  --no-new-privs --inh-caps=-all --bounding-set=-all -- "$entry" "$@"
"#;

/// Starts container `index` (an init container when `init`) of `pod`.
fn spawn(pod: &Pod, init: bool, index: usize) -> Child {
    let list = if init { "initContainers" } else { "containers" };
    let spec = &pod.spec[list][index];
    let container = if init {
        &pod.init[index]
    } else {
        &pod.containers[index]
    };
    let env = &container.env;
    // The image's entrypoint is the binary; `command` may name it (or one of the names
    // packaging/build-static.sh links to it) by path.
    let command: Vec<String> = spec["command"]
        .as_array()
        .map(|a| a.iter().map(|v| expand(v.as_str().unwrap(), env)).collect())
        .unwrap_or_default();
    let (entry, mut argv) = match command.split_first() {
        Some((entry, rest)) => (entry.clone(), rest.to_vec()),
        None => ("/planelink".to_string(), Vec::new()),
    };
    argv.extend(
        spec["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| expand(v.as_str().unwrap(), env)),
    );
    // Mounts: volumes, the service account, /etc/hosts.
    let mut mounts = String::new();
    for m in spec["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod.dir.join("volumes").join(m["name"].as_str().unwrap());
        let path = match m["subPath"].as_str() {
            Some(sub) => volume.join(sub),
            None => volume,
        };
        mounts += &format!("{} {}\n", path.display(), m["mountPath"].as_str().unwrap());
    }
    if pod.dir.join("serviceaccount").exists() {
        mounts += &format!(
            "{} {SERVICE_ACCOUNT_DIR}\n",
            pod.dir.join("serviceaccount").display()
        );
    }
    mounts += &format!("{} /etc/hosts\n", pod.dir.join("hosts").display());
    let mounts_file = pod.dir.join(format!("{}.mounts", container.name));
    std::fs::write(&mounts_file, mounts).unwrap();
    let security = |field: &str| {
        spec["securityContext"]
            .get(field)
            .or_else(|| pod.spec["securityContext"].get(field))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let uid = security("runAsUser").as_u64().unwrap_or(IMAGE_USER.into());
    let gid = security("runAsGroup").as_u64().unwrap_or(IMAGE_USER.into());
    if security("runAsNonRoot").as_bool() == Some(true) {
        assert_ne!(uid, 0, "{}: runAsNonRoot with user 0", pod.name);
    }
    let groups = pod.spec["securityContext"]["fsGroup"]
        .as_u64()
        .map(|g| g.to_string())
        .unwrap_or_else(|| gid.to_string());
    let read_only = security("readOnlyRootFilesystem").as_bool() == Some(true);
    let root = pod.dir.join(format!("{}.root", container.name));
    std::fs::create_dir_all(&root).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&container.log)
        .unwrap();
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(CONTAINER_SCRIPT)
        .arg("container")
        .arg(&root)
        .arg(env!("CARGO_BIN_EXE_planelink"))
        .arg(&entry)
        .arg(&mounts_file)
        .arg(if read_only { "1" } else { "0" })
        .arg(uid.to_string())
        .arg(gid.to_string())
        .arg(groups)
        .args(&argv)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start unshare")
}
