//! The controller and the gateway on real Kubernetes API servers: CRDs, examples, agent
//! mode through the gateway watching Kubernetes, every bad-CA reason, deletion blocked by
//! an Environment, direct mode, leader election, and kubectl through the gateway's proxy.
//! Real planelink processes, real kubectl; see cluster.rs for where the API servers come
//! from.

mod certs;
mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod install;
mod model;
mod register;
mod rollover;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use cluster::*;
use planelink::planes::PlaneType;
use planelink::planes::crd::{GatewaySpec, PlaneBuilder, ValueFrom};
use planelink::planes::manifest::to_yaml;
use planelink::trust::issue::{self, CaOptions, Issued, LeafOptions, Window};

const WAIT: Duration = Duration::from_secs(30);

/// The gateway's CA, serving certificate (127.0.0.1) and a caller client certificate.
struct Pki {
    dir: PathBuf,
    gateway_ca: Issued,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
            gateway_ca: common::gateway_files(dir),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// An agent identity: its own CA and a client certificate; returns the CA's PEM.
    fn agent(&self, name: &str) -> String {
        common::agent_files(&self.dir, name)
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

/// A gateway of its own (not embedded in the controller): its replica Lease goes into the
/// test's namespace, so the gateways of tests running side by side do not count each other.
fn gateway_command(pki: &Pki, ports: &Ports, kubeconfig: &Path, ns: &str) -> Vec<String> {
    let mut args = vec!["gateway".to_string()];
    args.extend(gateway_flags(pki, ports, kubeconfig));
    args.push(format!("--lease-namespace={ns}"));
    args
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

/// A DataPlane in agent mode with planeID `NAME-NS`.
fn dataplane_builder(ns: &str, name: &str, client_ca: ValueFrom) -> PlaneBuilder {
    PlaneBuilder::new(PlaneType::DataPlane, ns, name)
        .plane_id(&format!("{name}-{ns}"))
        .client_ca(client_ca)
        .gateway(GatewaySpec::virtual_hosts(
            "apps.example.com",
            "apps.internal",
            19080,
            19443,
        ))
}

fn dataplane(ns: &str, name: &str, client_ca: ValueFrom) -> String {
    to_yaml(&[dataplane_builder(ns, name, client_ca).build()])
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
    // OpenChoreo's current shape is accepted beside the older one; an endpoint without
    // its Gateway's name is refused by the API server.
    c.apply(
        &c.control,
        "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: current, namespace: my-org}\n\
         spec: {planeID: current, clusterAgent: {clientCA: {value: PEM}}, gateway: {ingress: {external: \
         {name: gateway-default, namespace: openchoreo-data-plane, http: {host: openchoreoapis.localhost, \
         listenerName: http, port: 19080}}}}}\n",
    );
    let current = c.get(&c.control, "my-org", "dataplane/current").unwrap();
    assert_eq!(
        current["spec"]["gateway"]["ingress"]["external"]["http"]["port"],
        19080
    );
    let out = c.kubectl_with_input(
        &c.control,
        &["apply", "-f", "-"],
        Some("apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: bad, namespace: my-org}\n\
              spec: {gateway: {ingress: {external: {namespace: openchoreo-data-plane}}}}\n"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The API server's own validation (the CRDs keep unknown fields, so kubectl's
    // client-side schema check no longer speaks first).
    assert!(
        err.contains("spec.gateway.ingress.external.name: Required value"),
        "{err}"
    );
    // A planeID carries OpenChoreo's pattern on every kind: no shell command or terminal
    // escape can be stored in one, to be printed later by status or check.
    for kind in ["DataPlane", "WorkflowPlane", "ObservabilityPlane"] {
        let out = c.kubectl_with_input(
            &c.control,
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: openchoreo.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: bad-id, namespace: my-org}}\n\
                 spec: {{planeID: 'p1; curl x|sh #', clusterAgent: {{clientCA: {{value: PEM}}}}}}\n"
            )),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{kind}: {err}");
        assert!(
            err.contains(
                "spec.planeID: Invalid value: \"p1; curl x|sh #\": spec.planeID in body should match \
                 '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"
            ),
            "{kind}: {err}"
        );
    }
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
            ValueFrom::from_secret(None, "agent-ca", "ca.crt"),
        ),
    );
    let (_controller, ports, _agent, plane_id) = controller_and_agent(c, &pki, &ns, "agent1", &[]);

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
        crate::common::output_within(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&proxy_kubeconfig)
                .args(["--request-timeout", "20s"])
                .args(args),
            crate::common::COMMAND_LIMIT,
        )
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
    let rotated = std::time::Instant::now();
    c.apply(&c.control, &secret(&ns, "agent-ca", "ca.crt", &other));
    // The gateway itself drops the agent from its watch, with no notify call: its plane
    // API says so long before the controller's next resync. (Promised within 2 s; the
    // bound leaves room for a loaded CI machine.)
    let status_url = format!(
        "https://127.0.0.1:{}/api/v1/planes/dataplane/{plane_id}/status",
        ports.internal
    );
    eventually(
        "the gateway to drop the agent",
        Duration::from_secs(5),
        || {
            let out = crate::common::output_within(
                Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "5",
                        "--cacert",
                        &pki.path("gateway/ca.crt"),
                    ])
                    .args([
                        "--cert",
                        &pki.path("caller.crt"),
                        "--key",
                        &pki.path("caller.key"),
                    ])
                    .arg(&status_url),
                crate::common::COMMAND_LIMIT,
            );
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if body.contains("\"connected\":false") {
                Ok(())
            } else {
                Err(body)
            }
        },
    );
    eprintln!(
        "gateway re-verified after the CA Secret changed in {:?}",
        rotated.elapsed()
    );
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
    let gateway_args = gateway_command(&pki, &ports, &c.kubeconfig_for(&c.control), &ns);
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
    let value = |pem: &str| ValueFrom::inline(pem);
    let cases = [
        (
            "missing",
            "ClientCAMissing",
            ValueFrom::default(),
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
            "register ca.crt, the CA that issued it (",
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
            ValueFrom::from_secret(None, "absent", "ca.crt"),
            "does not exist",
        ),
    ];
    for (name, _, client_ca, _) in &cases {
        c.apply(&c.control, &dataplane(&ns, name, client_ca.clone()));
    }
    c.apply(&c.control, &dataplane(&ns, "good", value(&good)));
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
    let (_controller, _ports) = with_gateway_controller(c, &pki, &ns, "controller", &[]);
    let ca = pki.agent("a");
    let plane = dataplane_builder(&ns, "dp", ValueFrom::inline(&ca))
        .observability_plane(Some("observer"))
        .build();
    c.apply(&c.control, &to_yaml(&[plane]));
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

fn with_gateway_controller(
    c: &Clusters,
    pki: &Pki,
    ns: &str,
    name: &str,
    extra: &[&str],
) -> (Process, Ports) {
    let ports = Ports::new();
    let mut args = controller_flags(pki, &ports, ns);
    args.push("--with-gateway".into());
    args.extend(gateway_flags(pki, &ports, &c.kubeconfig_for(&c.control)));
    args.extend(extra.iter().map(|s| s.to_string()));
    (Process::start(name, &pki.dir, &args), ports)
}

/// A controller with an embedded gateway (`extra` flags) and an agent of `identity` for
/// the DataPlane whose planeID is `dp-NS`; the planeID is returned last.
fn controller_and_agent(
    c: &Clusters,
    pki: &Pki,
    ns: &str,
    identity: &str,
    extra: &[&str],
) -> (Process, Ports, Process, String) {
    let (controller, ports) = with_gateway_controller(c, pki, ns, "controller", extra);
    let plane_id = format!("dp-{ns}");
    let agent = start_agent(
        pki,
        &ports,
        identity,
        &plane_id,
        &c.kubeconfig_for(&c.remote),
    );
    (controller, ports, agent, plane_id)
}

/// Four callers of `/version` on the remote API server through the gateway's proxy, for
/// DataPlane `dp` of `ns` (the caller certificate of `dir`).
fn proxy_callers(dir: &Path, ports: &Ports, plane_id: &str, ns: &str) -> common::CallerThread {
    common::CallerThread::start(
        dir,
        format!(
            "https://127.0.0.1:{}/api/proxy/dataplane/{plane_id}/{ns}/dp/k8s/version",
            ports.internal
        ),
        4,
    )
}

/// Direct access mode: the controller builds a client from `kubernetesCluster` (server,
/// CA and bearer token from Secrets, or inline and base64-encoded as OpenChoreo's script
/// writes them), reports `Connected` when `/version` answers, probes
/// the Gateway API group, and rebuilds the client when the token Secret changes.
#[test]
fn direct_mode_reports_connected() {
    let c = clusters();
    let ns = c.namespace("direct");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let remote = config_view(c, &c.remote);
    let server = remote["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_string();
    let ca_b64 = remote["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .expect("the remote context has a CA (certificate-authority-data)");
    let token = remote["users"][0]["user"]["token"]
        .as_str()
        .expect("direct mode is tested with a bearer token; the remote context must use one")
        .to_string();
    use base64::Engine as _;
    let ca = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(ca_b64)
            .unwrap(),
    )
    .unwrap();
    c.apply(&c.control, &secret(&ns, "remote-ca", "ca.crt", &ca));
    c.apply(&c.control, &secret(&ns, "remote-token", "token", &token));
    c.apply(
        &c.control,
        &format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {{name: direct, namespace: {ns}}}\nspec:\n  \
             kubernetesCluster:\n    server: {server}\n    tls:\n      ca: {{secretRef: {{name: remote-ca, key: ca.crt}}}}\n    \
             auth:\n      bearerToken: {{secretRef: {{name: remote-token, key: token}}}}\n  gateway:\n    \
             publicVirtualHost: apps.example.com\n    organizationVirtualHost: apps.internal\n"
        ),
    );
    // As OpenChoreo's add-default-dataplane.sh writes it: the kubeconfig's values
    // inline, the CA as base64 of PEM, the token base64-encoded as the docs say.
    let token_b64 = base64::engine::general_purpose::STANDARD.encode(&token);
    c.apply(
        &c.control,
        &format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {{name: direct-inline, namespace: {ns}}}\nspec:\n  \
             kubernetesCluster:\n    server: {server}\n    tls:\n      ca: {{value: {ca_b64}}}\n    \
             auth:\n      bearerToken: {{value: {token_b64}}}\n  gateway:\n    \
             publicVirtualHost: apps.example.com\n    organizationVirtualHost: apps.internal\n"
        ),
    );
    // A tenant's DataPlane naming a Secret of another namespace (here a real, working
    // token): never read, never sent to the tenant's server, refused with its own reason.
    let victim = c.namespace("direct-victim");
    c.apply(
        &c.control,
        &secret(&victim, "victim-token", "token", &token),
    );
    c.apply(
        &c.control,
        &format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {{name: direct-foreign, namespace: {ns}}}\nspec:\n  \
             kubernetesCluster:\n    server: {server}\n    tls:\n      ca: {{secretRef: {{name: remote-ca, key: ca.crt}}}}\n    \
             auth:\n      bearerToken: {{secretRef: {{namespace: {victim}, name: victim-token, key: token}}}}\n  gateway:\n    \
             publicVirtualHost: apps.example.com\n    organizationVirtualHost: apps.internal\n"
        ),
    );
    let (_controller, _) = with_gateway_controller(c, &pki, &ns, "controller", &[]);
    let message = await_condition(
        c,
        &ns,
        "dataplane/direct",
        "Connected",
        "True",
        "APIServerReachable",
    );
    assert!(message.contains(&server), "{message}");
    let message = await_condition(
        c,
        &ns,
        "dataplane/direct-inline",
        "Connected",
        "True",
        "APIServerReachable",
    );
    assert!(message.contains(&server), "{message}");
    let message = await_condition(
        c,
        &ns,
        "dataplane/direct-foreign",
        "Connected",
        "False",
        "SecretOutsideNamespace",
    );
    assert_eq!(
        message,
        format!(
            "auth.bearerToken's secretKeyRef names a Secret of namespace {victim}, and a plane in \
             namespace {ns} reads Secrets of its own namespace only: put Secret victim-token in {ns}, \
             or register a cluster-scoped plane"
        )
    );

    let served = c.ok(&c.remote, &["api-versions"]);
    if !served.contains("gateway.networking.k8s.io/") {
        let message = await_condition(
            c,
            &ns,
            "dataplane/direct",
            "GatewayProvisioned",
            "False",
            "GatewayAPIMissing",
        );
        assert!(
            message.contains("install the Gateway API CRDs"),
            "{message}"
        );
        c.apply(
            &c.remote,
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gateways.gateway.networking.k8s.io\n  \
             annotations: {api-approved.kubernetes.io: 'https://github.com/kubernetes-sigs/gateway-api/pull/2466'}\n\
             spec:\n  group: gateway.networking.k8s.io\n  scope: Namespaced\n  names: {plural: gateways, singular: gateway, kind: Gateway}\n  \
             versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        \
             x-kubernetes-preserve-unknown-fields: true\n",
        );
    }
    await_condition(
        c,
        &ns,
        "dataplane/direct",
        "GatewayProvisioned",
        "True",
        "GatewayAPIAvailable",
    );
    await_condition(c, &ns, "dataplane/direct", "Ready", "True", "Ready");

    // A wrong token in the Secret: the cached client is replaced and the status flips.
    c.apply(
        &c.control,
        &secret(&ns, "remote-token", "token", "not-a-valid-token"),
    );
    let message = await_condition(
        c,
        &ns,
        "dataplane/direct",
        "Connected",
        "False",
        "APIServerUnreachable",
    );
    assert!(message.contains("Unauthorized"), "{message}");
}

/// Context `context` of the test kubeconfig as `kubectl config view --raw --minify
/// --flatten` gives it: its one cluster and user, file contents inlined as base64.
fn config_view(c: &Clusters, context: &str) -> serde_json::Value {
    let view = c.ok(
        context,
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ],
    );
    serde_json::from_str(&view).unwrap()
}

/// The current holder of the controller's leader Lease in `ns`.
fn lease_holder(c: &Clusters, ns: &str) -> Result<String, String> {
    let lease = c
        .get(&c.control, ns, "lease/planelink-controller")
        .ok_or("no Lease yet")?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| lease.to_string())
}

/// Two controllers with --leader-elect: the first leads (its Lease identity is returned),
/// the second stands by.
fn leader_and_standby(c: &Clusters, pki: &Pki, ns: &str) -> (Process, Process, String) {
    let (first, _) = with_gateway_controller(c, pki, ns, "first", &["--leader-elect"]);
    let holder = eventually("a Lease holder", WAIT, || lease_holder(c, ns));
    let (second, _) = with_gateway_controller(c, pki, ns, "second", &["--leader-elect"]);
    eventually("the second replica to stand by", WAIT, || {
        if second.log_text().contains("another replica leads") {
            Ok(())
        } else {
            Err(second.log_text())
        }
    });
    (first, second, holder)
}

/// Two controller replicas with --leader-elect: one holds the Lease and reconciles; when
/// it stops, it releases the Lease and the other takes over.
#[test]
fn leader_election_hands_over() {
    let c = clusters();
    let ns = c.namespace("leader");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (mut first, second, holder) = leader_and_standby(c, &pki, &ns);
    let ca = pki.agent("a");
    c.apply(&c.control, &dataplane(&ns, "dp", ValueFrom::inline(&ca)));
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Ready",
        "False",
        "AgentNotConnected",
    );

    assert_eq!(first.stop(), Some(0), "the leader exits cleanly on SIGTERM");
    assert!(
        first.log_text().contains("leadership released"),
        "{}",
        first.log_text()
    );
    let next = eventually("the standby to take the Lease", WAIT, || {
        let lease = c
            .get(&c.control, &ns, "lease/planelink-controller")
            .ok_or("Lease gone")?;
        match lease["spec"]["holderIdentity"].as_str() {
            Some(h) if h != holder => Ok(h.to_string()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(
        second.log_text().contains("became the leader"),
        "{}",
        second.log_text()
    );
    assert_ne!(next, holder);
    // The new leader reconciles: a new plane gets its status.
    c.apply(&c.control, &dataplane(&ns, "dp2", ValueFrom::inline(&ca)));
    await_condition(
        c,
        &ns,
        "dataplane/dp2",
        "Ready",
        "False",
        "AgentNotConnected",
    );
}

/// A leader that stalls (SIGSTOP) loses the Lease to the standby once the lease expires,
/// and on waking it gives up at once (exit 1) instead of reconciling beside the new
/// leader: never two leaders.
#[test]
fn a_stalled_leader_gives_way() {
    let c = clusters();
    let ns = c.namespace("stalled");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (mut first, second, holder) = leader_and_standby(c, &pki, &ns);
    first.signal("STOP");
    let next = eventually(
        "the standby to take the expired Lease",
        WAIT,
        || match lease_holder(c, &ns)? {
            h if h != holder => Ok(h),
            h => Err(h),
        },
    );
    assert!(
        second.log_text().contains("became the leader"),
        "{}",
        second.log_text()
    );
    first.signal("CONT");
    let code = first.exit_within(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(1),
        "the stalled leader must give up: {}",
        first.log_text()
    );
    assert!(
        first.log_text().contains("lost the leader Lease"),
        "{}",
        first.log_text()
    );
    assert_eq!(
        lease_holder(c, &ns).unwrap(),
        next,
        "the new leader keeps the Lease"
    );
}

/// A kubeconfig for the control plane that authenticates as a service account, with a
/// token from the TokenRequest API (`kubectl create token`).
fn service_account_kubeconfig(c: &Clusters, dir: &Path, namespace: &str, account: &str) -> PathBuf {
    let token = c.ok(
        &c.control,
        &["create", "token", account, "-n", namespace, "--duration=1h"],
    );
    let base = config_view(c, &c.control);
    let cluster = &base["clusters"][0]["cluster"];
    let path = dir.join(format!("{account}.kubeconfig"));
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cp", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token.trim()}}],
        "contexts": [{"name": "cp", "context": {"cluster": "cp", "user": account}}],
        "current-context": "cp",
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// The RBAC of packaging/kubernetes/control-plane holds everything the roles need: a gateway and a controller running
/// with those service accounts' tokens (and nothing more) accept an agent, elect a leader,
/// and report the plane's status.
#[test]
fn rbac_manifests_grant_what_the_roles_need() {
    let c = clusters();
    let ns = c.namespace("rbac");
    let _ = c.kubectl(
        &c.control,
        &["create", "namespace", "openchoreo-control-plane"],
    );
    for file in ["controller-rbac.yaml", "gateway-rbac.yaml"] {
        let path = root().join("packaging/kubernetes/control-plane").join(file);
        c.ok(&c.control, &["apply", "-f", path.to_str().unwrap()]);
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let gateway_kubeconfig =
        service_account_kubeconfig(c, dir.path(), "openchoreo-control-plane", "cluster-gateway");
    let controller_kubeconfig = service_account_kubeconfig(
        c,
        dir.path(),
        "openchoreo-control-plane",
        "planelink-controller",
    );
    // The gateway may read but not write plane resources.
    let denied = crate::common::output_within(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&gateway_kubeconfig)
            .args([
                "auth",
                "can-i",
                "patch",
                "dataplanes.openchoreo.dev",
                "-n",
                &ns,
            ]),
        crate::common::COMMAND_LIMIT,
    );
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "no");
    // Secrets only where plane CRs reference them: a RoleBinding in the test namespace;
    // the gateway cannot list Secrets cluster-wide, and does not need to.
    c.ok(
        &c.control,
        &[
            "create",
            "rolebinding",
            "planelink-gateway-ca-secrets",
            "-n",
            &ns,
            "--clusterrole=planelink-gateway-ca-secrets",
            "--serviceaccount=openchoreo-control-plane:cluster-gateway",
        ],
    );
    let cluster_wide = crate::common::output_within(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&gateway_kubeconfig)
            .args(["auth", "can-i", "list", "secrets", "--all-namespaces"]),
        crate::common::COMMAND_LIMIT,
    );
    assert_eq!(String::from_utf8_lossy(&cluster_wide.stdout).trim(), "no");
    eventually("the RoleBinding to take effect", WAIT, || {
        let out = crate::common::output_within(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&gateway_kubeconfig)
                .args(["auth", "can-i", "watch", "secrets", "-n", &ns]),
            crate::common::COMMAND_LIMIT,
        );
        match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => Ok(()),
            other => Err(other.to_string()),
        }
    });

    let ports = Ports::new();
    let gateway_args = gateway_command(
        &pki,
        &ports,
        &gateway_kubeconfig,
        "openchoreo-control-plane",
    );
    let _gateway = Process::start("gateway", dir.path(), &gateway_args);
    let mut args = controller_flags(&pki, &ports, &ns);
    args.retain(|a| !a.starts_with("--leader-election-namespace"));
    args.extend([
        format!("--gateway-url=https://127.0.0.1:{}", ports.internal),
        format!("--kubeconfig={}", controller_kubeconfig.display()),
        "--leader-elect".into(),
        "--leader-election-namespace=openchoreo-control-plane".into(),
        format!("--leader-election-id=planelink-{ns}"),
    ]);
    let _controller = Process::start("controller", dir.path(), &args);
    let ca = pki.agent("agent");
    c.apply(&c.control, &secret(&ns, "agent-ca", "ca.crt", &ca));
    c.apply(
        &c.control,
        &dataplane(
            &ns,
            "dp",
            ValueFrom::from_secret(None, "agent-ca", "ca.crt"),
        ),
    );
    let _agent = start_agent(
        &pki,
        &ports,
        "agent",
        &format!("dp-{ns}"),
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
    // The gateway keeps its replica Lease, and the controller asks the replica it names.
    eventually("gatewayReplicas 1/1 in the plane's status", WAIT, || {
        let dp = c
            .get(&c.control, &ns, "dataplane/dp")
            .ok_or("no DataPlane dp")?;
        match dp["status"]["agentConnection"]["gatewayReplicas"].as_str() {
            Some("1/1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eventually(
        "a Connected event recorded by the controller's account",
        WAIT,
        || {
            let events = c.ok(&c.control, &["get", "events", "-n", &ns, "-o", "json"]);
            if events.contains("AgentConnected") {
                Ok(())
            } else {
                Err("none yet".into())
            }
        },
    );
}

/// The `/metrics` text of the health listener on `port`.
fn scrape(port: u16) -> Result<String, String> {
    let out = crate::common::output_within(
        std::process::Command::new("curl").args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/metrics"),
        ]),
        crate::common::COMMAND_LIMIT,
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Certificates issued with short lifetimes show before they bite: the condition
/// `CertificatesCurrent` names the first to expire (an Event records it), the gateway
/// exports each not-after time; renewing the agent's files and then the gateway's, with
/// both processes running, clears the warnings one by one, and no request fails.
#[test]
fn expiring_certificates_are_reported_and_renewals_clear_them() {
    let c = clusters();
    let ns = c.namespace("expiry");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca_pem = pki.agent("short");
    let agent_ca = Issued::load_ca(&dir.path().join("short")).unwrap();
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    let hour = Duration::from_secs(3600);
    // Twelve days of life, two left: inside a third of its lifetime.
    let short = issue::issue_leaf(
        &agent_ca,
        &LeafOptions::client("short").window(Window {
            not_before: now - 10 * day,
            not_after: now + 2 * day + hour,
        }),
    )
    .unwrap();
    issue::write_bundle(&dir.path().join("short"), &agent_ca, true, &short).unwrap();
    // A serving certificate with 29 of its 89 days left: inside --expiry-warning too.
    let serving = common::server_leaf(
        &pki.gateway_ca,
        &["localhost"],
        &["127.0.0.1"],
        Window {
            not_before: now - 60 * day,
            not_after: now + 29 * day + hour,
        },
    );
    issue::write_bundle(&dir.path().join("gateway"), &pki.gateway_ca, true, &serving).unwrap();
    c.apply(
        &c.control,
        &dataplane(&ns, "dp", ValueFrom::inline(&ca_pem)),
    );
    let (_controller, ports, _agent, plane_id) =
        controller_and_agent(c, &pki, &ns, "short", &["--expiry-warning=1000h"]);

    let message = await_condition(
        c,
        &ns,
        "dataplane/dp",
        "CertificatesCurrent",
        "False",
        "AgentCertExpiringSoon",
    );
    let unix = |pem: &str| {
        let der = planelink::trust::parse_certificates(pem.as_bytes()).unwrap();
        planelink::trust::CertInfo::from_der(&der[0])
            .unwrap()
            .not_after
    };
    let agent_not_after = unix(&short.cert_pem);
    let fmt = planelink::trust::inspect::format_time;
    let gateway_pem = std::fs::read_to_string(pki.path("gateway/tls.crt")).unwrap();
    assert!(
        message.starts_with("the certificate of agent "),
        "{message}"
    );
    for part in [
        format!(" expires on {} (2 days left); ", fmt(agent_not_after)),
        format!(
            "the gateway's serving certificate expires on {} (29 days left); ",
            fmt(unix(&gateway_pem))
        ),
        planelink::planes::reason::AGENT_CERT_RENEWAL.to_string(),
    ] {
        assert!(message.contains(&part), "{part:?} missing from {message:?}");
    }
    eventually("an AgentCertExpiringSoon Event", WAIT, || {
        let events = c.ok(
            &c.control,
            &[
                "get",
                "events",
                "-n",
                &ns,
                "--field-selector",
                "reason=AgentCertExpiringSoon",
                "-o",
                "name",
            ],
        );
        if events.trim().is_empty() {
            Err("none yet".into())
        } else {
            Ok(())
        }
    });
    let metrics = scrape(ports.health).unwrap();
    let ca_not_after = unix(&ca_pem).unix_timestamp();
    for series in [
        format!(
            "planelink_gateway_client_ca_expiry_timestamp_seconds{{plane_type=\"dataplane\",plane_id=\"{plane_id}\",namespace=\"{ns}\",name=\"dp\"}} {ca_not_after}\n"
        ),
        format!(
            "planelink_gateway_serving_certificate_expiry_timestamp_seconds {}\n",
            unix(&gateway_pem).unix_timestamp()
        ),
    ] {
        assert!(metrics.contains(&series), "{series} missing from {metrics}");
    }
    let agent_series = metrics
        .lines()
        .find(|l| l.starts_with(&format!("planelink_gateway_agent_certificate_expiry_timestamp_seconds{{plane_type=\"dataplane\",plane_id=\"{plane_id}\",instance=")))
        .unwrap_or_else(|| panic!("no agent certificate series in {metrics}"));
    assert!(
        agent_series.ends_with(&format!("}} {}", agent_not_after.unix_timestamp())),
        "{agent_series}"
    );

    // The agent's certificate renewed on disk (written in place, file by file, as a bare
    // host might): the running agent replaces its tunnel, and the gateway's certificate is
    // what is left to renew. Callers keep sending requests through both renewals.
    let callers = proxy_callers(dir.path(), &ports, &plane_id, &ns);
    let renewed = issue::issue_leaf(&agent_ca, &LeafOptions::client("short")).unwrap();
    issue::write_bundle(&dir.path().join("short"), &agent_ca, true, &renewed).unwrap();
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "CertificatesCurrent",
        "False",
        "GatewayCertExpiringSoon",
    );
    // The gateway's renewed too: nothing left to warn about.
    let serving = common::server_leaf(
        &pki.gateway_ca,
        &["localhost"],
        &["127.0.0.1"],
        Window::days(365),
    );
    issue::write_bundle(&dir.path().join("gateway"), &pki.gateway_ca, true, &serving).unwrap();
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "CertificatesCurrent",
        "True",
        "CertificatesCurrent",
    );
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Connected",
        "True",
        "AgentConnected",
    );
    callers.finish_without_failures(100);
}

/// OpenChoreo's shape as its charts and installer write it today: a DataPlane with
/// `gateway.ingress` and `clusterAgent`, and as `clientCA` the agent's own self-signed
/// end-entity certificate (cert-manager's `selfSigned` issuer, `isCA: false`: Secret
/// `cluster-agent-tls` holds it as both `ca.crt` and `tls.crt`). The agent presenting
/// exactly that certificate is accepted, the plane is Ready, and an agent with another
/// self-signed certificate of the same name is not.
#[test]
fn openchoreo_current_shape_with_a_pinned_agent_certificate() {
    let c = clusters();
    let ns = c.namespace("oc-shape");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let plane_id = format!("dp-{ns}");
    let write_identity = |name: &str| {
        let pinned = issue::self_signed_leaf(&LeafOptions::client(&plane_id)).unwrap();
        let id = dir.path().join(name);
        std::fs::create_dir_all(&id).unwrap();
        std::fs::write(id.join("tls.crt"), &pinned.cert_pem).unwrap();
        std::fs::write(id.join("ca.crt"), &pinned.cert_pem).unwrap();
        std::fs::write(id.join("tls.key"), pinned.key_pem()).unwrap();
        pinned.cert_pem
    };
    let pinned = write_identity("chart-agent");
    write_identity("impostor");
    c.apply(
        &c.control,
        &format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {{name: dp, namespace: {ns}}}\n\
             spec:\n  planeID: {plane_id}\n  secretStoreRef: {{name: default}}\n  clusterAgent:\n    clientCA:\n      value: |\n{}\
             \x20 gateway:\n    ingress:\n      external:\n        name: gateway-default\n        namespace: openchoreo-data-plane\n        \
             http: {{host: openchoreoapis.localhost, listenerName: http, port: 19080}}\n",
            indent(&pinned, 8)
        ),
    );
    let (controller, ports) = with_gateway_controller(c, &pki, &ns, "controller", &[]);
    let remote = c.kubeconfig_for(&c.remote);
    let _agent = start_agent(&pki, &ports, "chart-agent", &plane_id, &remote);
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Connected",
        "True",
        "AgentConnected",
    );
    let dp = c.get(&c.control, &ns, "dataplane/dp").unwrap();
    assert_eq!(
        dp["status"]["agentConnection"]["connectedAgents"], 1,
        "{dp}"
    );

    // Same subject, another key: not the pinned certificate, so refused.
    let _impostor = start_agent(&pki, &ports, "impostor", &plane_id, &remote);
    let refusal = "is not the pinned self-signed certificate the plane registered";
    eventually("the impostor refused", WAIT, || {
        let log = controller.log_text();
        match log
            .lines()
            .any(|l| l.contains("agent refused") && l.contains(refusal))
        {
            true => Ok(()),
            false => Err(log.lines().last().unwrap_or_default().to_string()),
        }
    });
    let dp = c.get(&c.control, &ns, "dataplane/dp").unwrap();
    assert_eq!(
        dp["status"]["agentConnection"]["connectedAgents"], 1,
        "{dp}"
    );
}

/// The gateway under RBAC shaped like OpenChoreo's chart grants its gateway (read the plane
/// kinds; get and list Secrets, no watch; no Leases, no BuildPlanes): it serves a plane
/// whose clientCA is inline, says once that it cannot keep a replica Lease, and runs on
/// as one replica instead of failing.
#[test]
fn the_gateway_runs_under_openchoreo_chart_rbac() {
    let c = clusters();
    let ns = c.namespace("chart-rbac");
    let account = "chart-gateway";
    let role = format!("{account}-{ns}");
    c.apply(
        &c.control,
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}, namespace: {ns}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {role}}}\nrules:\n\
             - apiGroups: [openchoreo.dev]\n  resources: [dataplanes, clusterdataplanes, workflowplanes, \
             clusterworkflowplanes, observabilityplanes, clusterobservabilityplanes]\n  verbs: [get, list, watch]\n\
             - apiGroups: [\"\"]\n  resources: [secrets]\n  verbs: [get, list]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {role}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\n\
             subjects: [{{kind: ServiceAccount, name: {account}, namespace: {ns}}}]\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let kubeconfig = service_account_kubeconfig(c, dir.path(), &ns, account);
    let ca = pki.agent("agent");
    c.apply(&c.control, &dataplane(&ns, "dp", ValueFrom::inline(&ca)));
    let ports = Ports::new();
    let mut gateway = Process::start(
        "gateway",
        dir.path(),
        &gateway_command(&pki, &ports, &kubeconfig, &ns),
    );
    let _agent = start_agent(
        &pki,
        &ports,
        "agent",
        &format!("dp-{ns}"),
        &c.kubeconfig_for(&c.remote),
    );
    let lease_refused = "the gateway may not write Leases here";
    eventually(
        "the agent connected, and the Lease refusal said",
        WAIT,
        || {
            let log = gateway.log_text();
            match (
                log.contains("agent connected"),
                log.matches(lease_refused).count(),
            ) {
                (true, 1) => Ok(()),
                seen => Err(format!(
                    "{seen:?}: {}",
                    log.lines().last().unwrap_or_default()
                )),
            }
        },
    );
    // Still running a renewal period later, and said it once.
    assert_eq!(
        gateway.exit_within(Duration::from_secs(6)),
        None,
        "{}",
        gateway.log_text()
    );
    assert_eq!(gateway.log_text().matches(lease_refused).count(), 1);
    c.ok(
        &c.control,
        &["delete", "clusterrolebinding,clusterrole", &role],
    );
}

/// One CR planelink cannot read never takes the others down. On an API server whose
/// only plane CRD is permissive (as another OpenChoreo version's may be: here the remote
/// test server plays that control plane, with no other plane kinds installed), a DataPlane
/// whose `gateway.ingress.external` lacks its `name` is reported on its own (a log line
/// and a Warning Event naming the field, `Ready=False` with `SpecUndecodable`) while the
/// good DataPlane beside it is served and reconciled, and every missing kind is skipped.
#[test]
fn one_undecodable_plane_never_takes_the_others_down() {
    let c = clusters();
    let ns = c.namespace("undecodable");
    let cp = &c.remote;
    c.apply(
        cp,
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: dataplanes.openchoreo.dev}\n\
         spec:\n  group: openchoreo.dev\n  scope: Namespaced\n  names: {kind: DataPlane, plural: dataplanes, singular: dataplane, listKind: DataPlaneList}\n  \
         versions:\n  - name: v1alpha1\n    served: true\n    storage: true\n    subresources: {status: {}}\n    \
         schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n",
    );
    c.ok(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/dataplanes.openchoreo.dev",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.agent("agent");
    c.apply(cp, &dataplane(&ns, "dp", ValueFrom::inline(&ca)));
    c.apply(
        cp,
        &format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {{name: bad, namespace: {ns}}}\n\
             spec: {{planeID: bad, gateway: {{ingress: {{external: {{namespace: openchoreo-data-plane}}}}}}}}\n"
        ),
    );
    let ports = Ports::new();
    let remote_kubeconfig = c.kubeconfig_for(cp);
    let mut args = controller_flags(&pki, &ports, &ns);
    args.push("--with-gateway".into());
    args.extend(gateway_flags(&pki, &ports, &remote_kubeconfig));
    let controller = Process::start("controller", &pki.dir, &args);
    let _agent = start_agent(
        &pki,
        &ports,
        "agent",
        &format!("dp-{ns}"),
        &remote_kubeconfig,
    );

    let field = "spec.gateway.ingress.external: missing field `name`";
    let condition_of = |name: &str, type_: &str| {
        let object = c.get(cp, &ns, &format!("dataplane/{name}"))?;
        condition(&object, type_)
    };
    // A CRD created moments ago answers its first lists slowly on a loaded machine
    // (seconds, seen in the full suite): a longer bound than WAIT, not a longer sleep.
    eventually(
        "the good plane Connected and the bad one SpecUndecodable",
        3 * WAIT,
        || match (
            condition_of("dp", "Connected"),
            condition_of("bad", "Ready"),
        ) {
            (Some((good, _, _)), Some((bad, reason, message)))
                if good == "True" && bad == "False" && reason == "SpecUndecodable" =>
            {
                Ok(message)
            }
            seen => Err(format!("{seen:?}")),
        },
    );
    let (_, _, message) = condition_of("bad", "Ready").unwrap();
    assert_eq!(
        message,
        format!("DataPlane {ns}/bad does not decode: {field}")
    );
    let events = c.ok(
        cp,
        &[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector=reason=SpecUndecodable",
            "-o",
            "name",
        ],
    );
    assert_eq!(events.lines().count(), 1, "{events}");
    let log = controller.log_text();
    let gateway_line = format!("DataPlane {ns}/bad does not decode: {field}: it is not served");
    assert_eq!(log.matches(&gateway_line).count(), 1, "{log}");
    // Leave the remote server without plane CRDs, as the other tests expect it.
    drop(controller);
    c.ok(
        cp,
        &[
            "patch",
            "dataplane",
            "dp",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
    );
    c.ok(cp, &["delete", "crd", "dataplanes.openchoreo.dev"]);
}
