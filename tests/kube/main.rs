//! The controller and the gateway on real Kubernetes API servers: CRDs, examples, agent
//! mode through the gateway watching Kubernetes, every bad-CA reason, deletion blocked by
//! an Environment, direct mode, leader election, and kubectl through the gateway's proxy.
//! Real planelink processes, real kubectl; see cluster.rs for where the API servers come
//! from.

mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use cluster::*;
use planelink::trust::issue::{self, CaOptions, FileKind, Issued, LeafOptions, Window};

const WAIT: Duration = Duration::from_secs(30);

fn write(path: &Path, text: &str) {
    issue::write_file(path, text, FileKind::Public).unwrap();
}

/// The gateway's CA, serving certificate (127.0.0.1) and a caller client certificate.
struct Pki {
    dir: PathBuf,
    gateway_ca: Issued,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let gateway_ca = issue::new_ca(&CaOptions::gateway()).unwrap();
        let serving = issue::issue_leaf(
            &gateway_ca,
            &LeafOptions::server(
                "gw",
                vec!["localhost".into()],
                vec!["127.0.0.1".parse().unwrap()],
            ),
        )
        .unwrap();
        let gw = dir.join("gateway");
        std::fs::create_dir_all(&gw).unwrap();
        issue::write_bundle(&gw, &gateway_ca, true, &serving).unwrap();
        let caller = issue::issue_leaf(&gateway_ca, &LeafOptions::client("controller")).unwrap();
        write(&dir.join("caller.crt"), &caller.cert_pem);
        issue::write_file(&dir.join("caller.key"), caller.key_pem(), FileKind::Secret).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            gateway_ca,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// An agent identity: its own CA and a client certificate; returns the CA's PEM.
    fn agent(&self, name: &str) -> String {
        let ca = issue::new_ca(&CaOptions::agent(name)).unwrap();
        let leaf = issue::issue_leaf(&ca, &LeafOptions::client(name)).unwrap();
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        issue::write_bundle(&d, &ca, true, &leaf).unwrap();
        ca.cert_pem
    }
}

struct Ports {
    public: u16,
    internal: u16,
    health: u16,
    controller_health: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            public: free_port(),
            internal: free_port(),
            health: free_port(),
            controller_health: free_port(),
        }
    }
}

fn gateway_flags(pki: &Pki, ports: &Ports, kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--server-cert={}", pki.path("gateway/tls.crt")),
        format!("--server-key={}", pki.path("gateway/tls.key")),
        format!("--port={}", ports.public),
        format!("--internal-port={}", ports.internal),
        format!("--health-port={}", ports.health),
        "--bind-address=127.0.0.1".into(),
        "--internal-mtls=true".into(),
        format!("--internal-client-ca-cert={}", pki.path("gateway/ca.crt")),
    ]
}

fn controller_flags(pki: &Pki, ports: &Ports, ns: &str) -> Vec<String> {
    vec![
        "controller".into(),
        format!("--namespace={ns}"),
        format!("--leader-election-namespace={ns}"),
        format!("--controller-health-port={}", ports.controller_health),
        format!("--gateway-ca={}", pki.path("gateway/ca.crt")),
        format!("--gateway-client-cert={}", pki.path("caller.crt")),
        format!("--gateway-client-key={}", pki.path("caller.key")),
        "--resync-period=2s".into(),
    ]
}

fn start_agent(
    pki: &Pki,
    ports: &Ports,
    identity: &str,
    plane_id: &str,
    kubeconfig: &Path,
) -> Process {
    let id = pki.dir.join(identity);
    Process::start(
        &format!("agent-{identity}"),
        &pki.dir,
        &[
            "agent".into(),
            format!("--server-url=wss://127.0.0.1:{}/ws", ports.public),
            "--plane-type=dataplane".into(),
            format!("--plane-id={plane_id}"),
            format!("--client-cert={}", id.join("tls.crt").display()),
            format!("--client-key={}", id.join("tls.key").display()),
            format!("--server-ca={}", pki.path("gateway/ca.crt")),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--health-port=0".into(),
            "--reconnect-delay=200ms".into(),
            "--max-reconnect-delay=1s".into(),
        ],
    )
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn dataplane(ns: &str, name: &str, client_ca: &str) -> String {
    format!(
        "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  planeID: {name}-{ns}\n  clusterAgent:\n    clientCA:\n{}  gateway:\n    publicVirtualHost: apps.example.com\n    \
         organizationVirtualHost: apps.internal\n",
        indent(client_ca, 6)
    )
}

fn secret(ns: &str, name: &str, key: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\nstringData:\n  {key}: |\n{}",
        indent(value, 4)
    )
}

/// `(status, reason, message)` of a condition.
fn condition(object: &serde_json::Value, type_: &str) -> Option<(String, String, String)> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
}

/// Waits until `kind/name` has condition `type_` with `status` and `reason`; returns the message.
fn await_condition(
    c: &Clusters,
    ns: &str,
    what: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    eventually(&format!("{what} {type_}={status} ({reason})"), WAIT, || {
        let object = c.get(&c.control, ns, what).ok_or("object missing")?;
        match condition(&object, type_) {
            Some((s, r, m)) if s == status && r == reason => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
}

/// Every example manifest of the reference docs applies to the CRDs, and the docs'
/// `kubectl patch` that links planes to the observability plane works on them.
#[test]
fn crds_install_and_every_example_applies() {
    let c = clusters();
    let examples = root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "examples/ lost manifests: {files:?}");
    let _ = c.kubectl(&c.control, &["create", "namespace", "my-org"]);
    for file in &files {
        let out = c.kubectl(&c.control, &["apply", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} does not apply: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for kind in ["dataplane", "buildplane"] {
        c.ok(
            &c.control,
            &[
                "patch", kind, "default", "-n", "default", "--type", "merge", "-p",
                r#"{"spec":{"observabilityPlaneRef":{"kind":"ObservabilityPlane","name":"default"}}}"#,
            ],
        );
    }
    let names = c.ok(
        &c.control,
        &["get", "dataplanes", "-n", "my-org", "-o", "name"],
    );
    for name in [
        "agent-dataplane",
        "production-dataplane",
        "dev-dataplane",
        "secure-dataplane",
        "my-dataplane",
    ] {
        assert!(
            names.contains(&format!("dataplane.openchoreo.dev/{name}\n")),
            "{name} missing: {names}"
        );
    }
    // The CRD defaults the ports the reference names.
    let dp = c
        .get(&c.control, "my-org", "dataplane/agent-dataplane")
        .unwrap();
    assert_eq!(dp["spec"]["gateway"]["publicHTTPPort"], 19080);
    assert_eq!(dp["spec"]["gateway"]["publicHTTPSPort"], 19443);
    // A DataPlane without its required gateway settings is refused by the API server.
    let out = c.kubectl_with_input(
        &c.control,
        &["apply", "-f", "-"],
        Some("apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: bad, namespace: my-org}\nspec: {}\n"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing required field") && err.contains("gateway"),
        "{err}"
    );
}

/// The whole agent-mode path on two API servers: the gateway (in the controller's
/// process) learns the DataPlane and its CA Secret from Kubernetes, accepts the agent,
/// the CR reports it, kubectl reaches the remote cluster through the proxy (watch
/// included), and rotating the CA in the Secret disconnects the agent and flips the status.
#[test]
fn agent_mode_end_to_end() {
    let c = clusters();
    let ns = c.namespace("agent");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.agent("agent1");
    c.apply(&c.control, &secret(&ns, "agent-ca", "ca.crt", &ca));
    c.apply(
        &c.control,
        &dataplane(
            &ns,
            "dp",
            "secretKeyRef:\n  name: agent-ca\n  key: ca.crt\n",
        ),
    );
    let ports = Ports::new();
    let mut args = controller_flags(&pki, &ports, &ns);
    args.push("--with-gateway".into());
    args.extend(gateway_flags(&pki, &ports, &c.kubeconfig_for(&c.control)));
    let _controller = Process::start("controller", dir.path(), &args);
    let plane_id = format!("dp-{ns}");
    let _agent = start_agent(
        &pki,
        &ports,
        "agent1",
        &plane_id,
        &c.kubeconfig_for(&c.remote),
    );

    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Connected",
        "True",
        "AgentConnected",
    );
    let dp = c.get(&c.control, &ns, "dataplane/dp").unwrap();
    let connection = &dp["status"]["agentConnection"];
    assert_eq!(connection["connected"], true, "{dp}");
    assert_eq!(connection["connectedAgents"], 1, "{dp}");
    assert_eq!(connection["message"], "1 agent connected");
    assert!(connection["lastConnectedTime"].is_string(), "{dp}");
    assert!(
        dp["metadata"]["finalizers"]
            .to_string()
            .contains("openchoreo.dev/dataplane-cleanup")
    );
    assert_eq!(
        dp["status"]["observedGeneration"],
        dp["metadata"]["generation"]
    );

    // kubectl through https://gateway/api/proxy/dataplane/…/k8s reaches the remote cluster.
    let proxy_kubeconfig = dir.path().join("proxy.kubeconfig");
    std::fs::write(
        &proxy_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gw\n  cluster:\n    server: https://127.0.0.1:{}/api/proxy/dataplane/{plane_id}/{ns}/dp/k8s\n    \
             certificate-authority: {}\nusers:\n- name: caller\n  user:\n    client-certificate: {}\n    client-key: {}\n\
             contexts:\n- name: gw\n  context: {{cluster: gw, user: caller}}\ncurrent-context: gw\n",
            ports.internal,
            pki.path("gateway/ca.crt"),
            pki.path("caller.crt"),
            pki.path("caller.key"),
        ),
    )
    .unwrap();
    let through = |args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&proxy_kubeconfig)
            .args(["--request-timeout", "20s"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = through(&["get", "namespaces", "-o", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains(&format!("namespace/{ns}\n")), "{listed}");
    assert!(listed.contains("namespace/kube-system\n"), "{listed}");

    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&proxy_kubeconfig)
        .args(["get", "namespaces", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The initial list arrives first; then a namespace created in the remote cluster.
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("kube-system"))
        && std::time::Instant::now() < deadline
    {
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
        }
    }
    assert!(!seen.is_empty(), "the watch listed nothing");
    let created = format!("{ns}-watched");
    c.ok(&c.remote, &["create", "namespace", &created]);
    let event = eventually(
        "the watch event of the created namespace",
        WAIT,
        || match lines_rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) if line.contains(&created) => Ok(line),
            Ok(line) => {
                seen.push(line);
                Err(seen.join(" | "))
            }
            Err(_) => Err(seen.join(" | ")),
        },
    );
    assert_eq!(event, format!("namespace/{created}"));
    let _ = watch.kill();
    let _ = watch.wait();

    // Rotating the CA in the referenced Secret disconnects the agent and flips the status.
    let other = pki.agent("someone-else");
    c.apply(&c.control, &secret(&ns, "agent-ca", "ca.crt", &other));
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Connected",
        "False",
        "AgentNotConnected",
    );
    let dp = c.get(&c.control, &ns, "dataplane/dp").unwrap();
    assert_eq!(dp["status"]["agentConnection"]["connected"], false, "{dp}");
    assert_eq!(
        dp["status"]["agentConnection"]["connectedAgents"], 0,
        "{dp}"
    );
    assert!(
        dp["status"]["agentConnection"]["lastDisconnectedTime"].is_string(),
        "{dp}"
    );
    let out = through(&["get", "namespaces"]);
    assert!(
        !out.status.success(),
        "the proxy still reaches a plane whose agent lost trust"
    );

    // Restoring it lets the agent back in.
    c.apply(&c.control, &secret(&ns, "agent-ca", "ca.crt", &ca));
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Connected",
        "True",
        "AgentConnected",
    );
}

/// A separate gateway (watching Kubernetes) and a controller that reaches it through the
/// plane API with the internal mTLS certificate. Each documented client-CA mistake gets
/// its own condition reason naming the fix, while a correct plane beside them connects.
#[test]
fn remote_gateway_and_every_bad_ca_reason() {
    let c = clusters();
    let ns = c.namespace("reasons");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ports = Ports::new();
    let mut gateway_args = vec!["gateway".to_string()];
    gateway_args.extend(gateway_flags(&pki, &ports, &c.kubeconfig_for(&c.control)));
    let _gateway = Process::start("gateway", dir.path(), &gateway_args);
    let mut args = controller_flags(&pki, &ports, &ns);
    args.push(format!(
        "--gateway-url=https://127.0.0.1:{}",
        ports.internal
    ));
    args.push(format!(
        "--kubeconfig={}",
        c.kubeconfig_for(&c.control).display()
    ));
    let _controller = Process::start("controller", dir.path(), &args);

    let good = pki.agent("good");
    let expired_ca = issue::new_ca(&CaOptions::agent("old").window(Window {
        not_before: SystemTime::now() - Duration::from_secs(7200),
        not_after: SystemTime::now() - Duration::from_secs(3600),
    }))
    .unwrap();
    let leaf = std::fs::read_to_string(pki.dir.join("good/tls.crt")).unwrap();
    let value = |pem: &str| format!("value: |\n{}", indent(pem, 2));
    let cases = [
        (
            "missing",
            "ClientCAMissing",
            "{}\n".to_string(),
            "neither value nor secretKeyRef",
        ),
        (
            "garbage",
            "ClientCAUnparseable",
            value("not a certificate"),
            "PEM",
        ),
        (
            "leaf",
            "ClientCAIsLeaf",
            value(&leaf),
            "register ca.crt of Secret cluster-agent-tls, not tls.crt",
        ),
        (
            "expired",
            "ClientCAExpired",
            value(&expired_ca.cert_pem),
            "expired",
        ),
        (
            "gateway",
            "ClientCAIsGatewayCA",
            value(&pki.gateway_ca.cert_pem),
            "not the agent's client CA",
        ),
        (
            "nosecret",
            "SecretNotFound",
            "secretKeyRef: {name: absent, key: ca.crt}\n".to_string(),
            "does not exist",
        ),
    ];
    for (name, _, client_ca, _) in &cases {
        c.apply(&c.control, &dataplane(&ns, name, client_ca));
    }
    c.apply(&c.control, &dataplane(&ns, "good", &value(&good)));
    let _agent = start_agent(
        &pki,
        &ports,
        "good",
        &format!("good-{ns}"),
        &c.kubeconfig_for(&c.remote),
    );

    for (name, reason, _, fix) in &cases {
        let message = await_condition(
            c,
            &ns,
            &format!("dataplane/{name}"),
            "Ready",
            "False",
            reason,
        );
        assert!(
            message.contains(fix),
            "{name}: {message:?} does not say {fix:?}"
        );
    }
    await_condition(
        c,
        &ns,
        "dataplane/good",
        "Connected",
        "True",
        "AgentConnected",
    );
    // An Event records the transition for `kubectl describe`.
    eventually("a ClientCAIsLeaf event", WAIT, || {
        let events = c.ok(&c.control, &["get", "events", "-n", &ns, "-o", "json"]);
        if events.contains("ClientCAIsLeaf") {
            Ok(())
        } else {
            Err("no event yet".into())
        }
    });
    // Fixing a mistake clears it.
    c.apply(&c.control, &secret(&ns, "absent", "ca.crt", &good));
    await_condition(
        c,
        &ns,
        "dataplane/nosecret",
        "Connected",
        "False",
        "AgentNotConnected",
    );
    let dp = c.get(&c.control, &ns, "dataplane/nosecret").unwrap();
    assert_eq!(
        condition(&dp, "Ready").unwrap().1,
        "AgentNotConnected",
        "{dp}"
    );
}

/// A DataPlane that an Environment names is not deleted until the Environment is gone;
/// an observabilityPlaneRef to nothing is reported.
#[test]
fn deletion_waits_for_environments_and_references_are_checked() {
    let c = clusters();
    let ns = c.namespace("delete");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ports = Ports::new();
    let mut args = controller_flags(&pki, &ports, &ns);
    args.push("--with-gateway".into());
    args.extend(gateway_flags(&pki, &ports, &c.kubeconfig_for(&c.control)));
    let _controller = Process::start("controller", dir.path(), &args);
    let ca = pki.agent("a");
    let mut yaml = dataplane(&ns, "dp", &format!("value: |\n{}", indent(&ca, 2)));
    yaml.push_str("  observabilityPlaneRef:\n    kind: ObservabilityPlane\n    name: observer\n");
    c.apply(&c.control, &yaml);
    for env in ["dev", "prod"] {
        c.apply(
            &c.control,
            &format!(
                "apiVersion: openchoreo.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {env}, namespace: {ns}}}\nspec: {{dataPlaneRef: dp}}\n"
            ),
        );
    }
    let message = await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Ready",
        "False",
        "ObservabilityPlaneNotFound",
    );
    assert!(
        message.contains(&format!("ObservabilityPlane {ns}/observer")),
        "{message}"
    );
    c.apply(
        &c.control,
        &format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: ObservabilityPlane\nmetadata: {{name: observer, namespace: {ns}}}\n\
             spec: {{observerURL: 'https://observer.example.com'}}\n"
        ),
    );
    let message = await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Ready",
        "False",
        "AgentNotConnected",
    );
    assert!(message.contains("no agent"), "{message}");
    c.ok(
        &c.control,
        &["delete", "dataplane", "dp", "-n", &ns, "--wait=false"],
    );
    let message = await_condition(c, &ns, "dataplane/dp", "Ready", "False", "DeletionBlocked");
    assert!(
        message.contains("2 Environments") && message.contains("dev, prod"),
        "{message}"
    );
    c.ok(&c.control, &["delete", "environment", "dev", "-n", &ns]);
    let message = await_condition(c, &ns, "dataplane/dp", "Ready", "False", "DeletionBlocked");
    assert!(
        message.contains("1 Environment ") && message.contains("prod"),
        "{message}"
    );
    c.ok(&c.control, &["delete", "environment", "prod", "-n", &ns]);
    eventually("the DataPlane to be deleted", WAIT, || {
        match c.get(&c.control, &ns, "dataplane/dp") {
            None => Ok(()),
            Some(dp) => Err(dp["status"].to_string()),
        }
    });
}
