//! `planelink register <plane> NAME`: the full trust exchange between the two API servers,
//! and every documented mistake it must catch before it bites.

use super::*;

fn planelink(args: &[String]) -> std::process::Output {
    crate::common::output_within(
        Command::new(env!("CARGO_BIN_EXE_planelink"))
            .args(args)
            .env_remove("KUBECONFIG")
            .env("NO_COLOR", "1"),
        crate::common::COMMAND_LIMIT,
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Plants the objects the two installs would have made: the gateway CA Secret in the
/// control plane and the agent's cert-manager Secret in the remote plane.
fn plant(c: &Clusters, ns: &str, gateway_ca: &str, agent_ca: &str, agent_tls: &str) {
    c.apply(
        &c.control,
        &secret(ns, "cluster-gateway-ca", "ca.crt", gateway_ca),
    );
    c.apply(
        &c.remote,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: cluster-agent-tls, namespace: {ns}}}\ntype: kubernetes.io/tls\n\
             stringData:\n  ca.crt: |\n{}  tls.crt: |\n{}  tls.key: placeholder\n",
            indent(agent_ca, 4),
            indent(agent_tls, 4)
        ),
    );
}

fn register_args(c: &Clusters, ns: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "register".into(),
        "dataplane".into(),
        name.into(),
        format!("--kubeconfig={}", c.kubeconfig.display()),
        format!("--control-plane-context={}", c.control),
        format!("--remote-context={}", c.remote),
        format!("--namespace={ns}"),
        format!("--control-plane-namespace={ns}"),
        format!("--remote-namespace={ns}"),
        format!("--plane-id={name}-{ns}"),
        "--public-virtual-host=apps.example.com".into(),
        "--organization-virtual-host=apps.internal".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn resource_version(c: &Clusters, context: &str, ns: &str, what: &str) -> String {
    let object = c
        .get(context, ns, what)
        .unwrap_or_else(|| panic!("{what} missing"));
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Dry run writes nothing; the real run writes the ConfigMap and the DataPlane (with the
/// CA in a Secret), waits for the agent to connect, and a rerun changes nothing.
#[test]
fn register_exchange_happy_path() {
    let c = clusters();
    let ns = c.namespace("register");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let agent_ca = pki.agent("agent");
    let agent_tls = std::fs::read_to_string(pki.dir.join("agent/tls.crt")).unwrap();
    plant(c, &ns, &pki.gateway_ca.cert_pem, &agent_ca, &agent_tls);

    let out = planelink(&register_args(
        c,
        &ns,
        "dp",
        &["--dry-run", "--ca-from-secret"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "kind: ConfigMap",
        "kind: DataPlane",
        "kind: Secret",
        "secretKeyRef:",
        "name: dp-agent-ca",
    ] {
        assert!(
            printed.contains(needle),
            "{needle} not in the dry run:\n{printed}"
        );
    }
    assert!(
        c.get(&c.remote, &ns, "configmap/cluster-gateway-ca")
            .is_none(),
        "dry run wrote the ConfigMap"
    );
    assert!(
        c.get(&c.control, &ns, "dataplane/dp").is_none(),
        "dry run wrote the DataPlane"
    );

    let (_controller, ports) = with_gateway_controller(c, &pki, &ns, "controller", &[]);
    let _agent = start_agent(
        &pki,
        &ports,
        "agent",
        &format!("dp-{ns}"),
        &c.kubeconfig_for(&c.remote),
    );
    let out = planelink(&register_args(
        c,
        &ns,
        "dp",
        &["--ca-from-secret", "--wait=30s"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("connected to control plane"));
    let map = c
        .get(&c.remote, &ns, "configmap/cluster-gateway-ca")
        .unwrap();
    assert_eq!(
        map["data"]["ca.crt"].as_str().unwrap().trim(),
        pki.gateway_ca.cert_pem.trim()
    );
    let stored = c.get(&c.control, &ns, "secret/dp-agent-ca").unwrap();
    assert!(stored["data"]["ca.crt"].is_string());

    let before = (
        resource_version(c, &c.control, &ns, "dataplane/dp"),
        resource_version(c, &c.remote, &ns, "configmap/cluster-gateway-ca"),
        resource_version(c, &c.control, &ns, "secret/dp-agent-ca"),
    );
    let out = planelink(&register_args(c, &ns, "dp", &["--ca-from-secret"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let after = (
        resource_version(c, &c.control, &ns, "dataplane/dp"),
        resource_version(c, &c.remote, &ns, "configmap/cluster-gateway-ca"),
        resource_version(c, &c.control, &ns, "secret/dp-agent-ca"),
    );
    assert_eq!(before, after, "a rerun changed objects");
}

/// Each mistake of the troubleshooting guide, planted, is refused with its fix; the
/// placeholder ConfigMap is warned about and the Secret used; a Secret that never
/// appears times out with the diagnosis.
#[test]
fn register_diagnoses_each_documented_mistake() {
    let c = clusters();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let agent_ca = pki.agent("agent");
    let agent_tls = std::fs::read_to_string(pki.dir.join("agent/tls.crt")).unwrap();

    // The leaf registered where the CA belongs.
    let ns = c.namespace("leaf");
    plant(c, &ns, &pki.gateway_ca.cert_pem, &agent_tls, &agent_tls);
    let out = planelink(&register_args(c, &ns, "dp", &[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("step 3") && stderr(&out).contains("holds a leaf certificate"),
        "{}",
        stderr(&out)
    );
    assert!(c.get(&c.control, &ns, "dataplane/dp").is_none());

    // The gateway's server CA in place of the agent's client CA.
    let ns = c.namespace("serverca");
    plant(
        c,
        &ns,
        &pki.gateway_ca.cert_pem,
        &pki.gateway_ca.cert_pem,
        &agent_tls,
    );
    let out = planelink(&register_args(c, &ns, "dp", &[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is the control plane's gateway CA"),
        "{}",
        stderr(&out)
    );

    // A placeholder in the ConfigMap of the same name: warned, and the Secret is used.
    let ns = c.namespace("placeholder");
    plant(c, &ns, &pki.gateway_ca.cert_pem, &agent_ca, &agent_tls);
    c.apply(
        &c.control,
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cluster-gateway-ca, namespace: {ns}}}\ndata: {{ca.crt: placeholder}}\n"),
    );
    let out = planelink(&register_args(c, &ns, "dp", &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).lines().any(|line| line.starts_with(&format!(
            "warning: ConfigMap {ns}/cluster-gateway-ca holds no CA ("
        )) && line.ends_with(
            "): a placeholder, so agents cannot verify the gateway; planelink uses the Secret"
        )),
        "{}",
        stderr(&out)
    );
    let map = c
        .get(&c.remote, &ns, "configmap/cluster-gateway-ca")
        .unwrap();
    assert!(
        map["data"]["ca.crt"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    // The agent's Secret never appears.
    let ns = c.namespace("nosecret");
    c.apply(
        &c.control,
        &secret(
            &ns,
            "cluster-gateway-ca",
            "ca.crt",
            &pki.gateway_ca.cert_pem,
        ),
    );
    let out = planelink(&register_args(c, &ns, "dp", &["--wait=2s"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not appear within 2s") && stderr(&out).contains("generateCerts"),
        "{}",
        stderr(&out)
    );

    // A gateway certificate without the IP agents dial.
    let ns = c.namespace("ipsan");
    plant(c, &ns, &pki.gateway_ca.cert_pem, &agent_ca, &agent_tls);
    let dns_only = issue::issue_leaf(
        &pki.gateway_ca,
        &LeafOptions::server("gw", vec!["cluster-gateway.example.com".into()], vec![]),
    )
    .unwrap();
    let gw = pki.dir.join("dns-only");
    std::fs::create_dir_all(&gw).unwrap();
    issue::write_bundle(&gw, &pki.gateway_ca, true, &dns_only).unwrap();
    let planes = pki.dir.join("planes-empty");
    std::fs::create_dir_all(&planes).unwrap();
    let port = free_port();
    let _gateway = Process::start(
        "dns-only-gateway",
        &pki.dir,
        &[
            "gateway".into(),
            format!("--planes-dir={}", planes.display()),
            format!("--server-cert={}", gw.join("tls.crt").display()),
            format!("--server-key={}", gw.join("tls.key").display()),
            format!("--port={port}"),
            format!("--internal-port={}", free_port()),
            format!("--health-port={}", free_port()),
            "--bind-address=127.0.0.1".into(),
            "--internal-mtls=false".into(),
        ],
    );
    let url = format!("--server-url=wss://127.0.0.1:{port}/ws");
    eventually("the gateway to listen", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let out = planelink(&register_args(c, &ns, "dp", &[&url]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.contains("IP"), "{said}");
    assert!(
        stderr(&out).contains("step 1 (gateway certificate)"),
        "{}",
        stderr(&out)
    );
    assert!(
        c.get(&c.control, &ns, "dataplane/dp").is_none(),
        "a failed check still registered the plane"
    );
}

/// Bare hosts: --planes-dir writes the manifest a real gateway reads; the agent is then
/// accepted.
#[test]
fn register_into_a_planes_directory_feeds_a_gateway() {
    let c = clusters();
    let ns = c.namespace("planesdir");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let agent_ca = pki.agent("agent");
    let agent_tls = std::fs::read_to_string(pki.dir.join("agent/tls.crt")).unwrap();
    plant(c, &ns, &pki.gateway_ca.cert_pem, &agent_ca, &agent_tls);
    let planes = pki.dir.join("planes");
    std::fs::create_dir_all(&planes).unwrap();
    let ports = Ports::new();
    let mut gateway_args = vec![
        "gateway".to_string(),
        format!("--planes-dir={}", planes.display()),
    ];
    gateway_args.extend(gateway_flags(&pki, &ports, Path::new("/nonexistent")));
    gateway_args.retain(|a| !a.starts_with("--kubeconfig"));
    let _gateway = Process::start("gateway", &pki.dir, &gateway_args);

    let out = planelink(&[
        "register".into(),
        "dataplane".into(),
        "bare".into(),
        format!("--kubeconfig={}", c.kubeconfig.display()),
        format!("--remote-context={}", c.remote),
        format!("--remote-namespace={ns}"),
        format!("--planes-dir={}", planes.display()),
        format!("--gateway-ca={}", pki.path("gateway/ca.crt")),
        "--public-virtual-host=apps.example.com".into(),
        "--organization-virtual-host=apps.internal".into(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(planes.join("dataplane-bare.yaml").is_file());
    let agent = start_agent(&pki, &ports, "agent", "bare", &c.kubeconfig_for(&c.remote));
    eventually("the agent to connect", WAIT, || {
        if agent.log_text().contains("connected to control plane") {
            Ok(())
        } else {
            Err(agent.log_text())
        }
    });
}

/// The server, CA and client certificate of a kubeconfig context, as `kubectl config view
/// --raw --flatten` gives them (base64 of PEM).
fn context_credentials(c: &Clusters, context: &str) -> serde_json::Value {
    let view = config_view(c, context);
    serde_json::json!({
        "server": view["clusters"][0]["cluster"]["server"],
        "ca": view["clusters"][0]["cluster"]["certificate-authority-data"],
        "cert": view["users"][0]["user"]["client-certificate-data"],
        "key": view["users"][0]["user"]["client-key-data"],
    })
}

/// Direct mode with client certificates, which the test API servers verify against their
/// client CA: `register dataplane --direct` builds the plane from a kubeconfig context
/// (a client certificate, then a bearer token) and waits until the controller reaches the
/// API server; a DataPlane with the certificate and key inline and base64-encoded (as
/// OpenChoreo's add-default-dataplane.sh writes them) connects too; a certificate from a
/// CA the API server does not trust is refused before anything is written.
#[test]
fn register_direct_mode_from_a_context() {
    let c = clusters();
    let ns = c.namespace("direct-mtls");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mtls = format!("{}-mtls", c.remote);
    let remote = context_credentials(c, &mtls);
    assert!(
        remote["cert"].is_string(),
        "context {mtls} has no client certificate (scripts/test-clusters.sh writes one): {remote}"
    );
    let (_controller, _) = with_gateway_controller(c, &pki, &ns, "controller", &[]);
    let direct = |name: &str, context: &str, kubeconfig: &str| {
        planelink(&[
            "register".into(),
            "dataplane".into(),
            name.into(),
            "--direct".into(),
            format!("--kubeconfig={kubeconfig}"),
            format!("--control-plane-context={}", c.control),
            format!("--remote-context={context}"),
            format!("--namespace={ns}"),
            "--public-virtual-host=apps.example.com".into(),
            "--organization-virtual-host=apps.internal".into(),
            "--wait=60s".into(),
        ])
    };
    let kubeconfig = c.kubeconfig.display().to_string();

    let out = direct("by-certificate", &mtls, &kubeconfig);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("connected to the remote API server: by-certificate: "),
        "{stdout}"
    );
    let dp = c.get(&c.control, &ns, "dataplane/by-certificate").unwrap();
    let spec = &dp["spec"];
    assert_eq!(spec["kubernetesCluster"]["server"], remote["server"]);
    assert_eq!(
        spec["kubernetesCluster"]["auth"]["mtls"]["clientKey"]["secretKeyRef"],
        serde_json::json!({"name": "by-certificate-kubernetes-cluster", "namespace": ns, "key": "tls.key"})
    );
    assert!(
        spec.get("clusterAgent").is_none(),
        "direct mode has no agent: {spec}"
    );
    let secret = c
        .get(&c.control, &ns, "secret/by-certificate-kubernetes-cluster")
        .unwrap();
    let mut keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);

    let out = direct("by-token", &c.remote, &kubeconfig);
    assert!(out.status.success(), "{}", stderr(&out));
    let dp = c.get(&c.control, &ns, "dataplane/by-token").unwrap();
    assert_eq!(
        dp["spec"]["kubernetesCluster"]["auth"]["bearerToken"]["secretKeyRef"]["key"],
        "token"
    );

    // As OpenChoreo's script writes it: every value inline, base64 of PEM.
    c.apply(
        &c.control,
        &format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {{name: inline-mtls, namespace: {ns}}}\nspec:\n  \
             kubernetesCluster:\n    server: {}\n    tls:\n      ca: {{value: {}}}\n    auth:\n      mtls:\n        \
             clientCert: {{value: {}}}\n        clientKey: {{value: {}}}\n  gateway:\n    \
             publicVirtualHost: apps.example.com\n    organizationVirtualHost: apps.internal\n",
            remote["server"].as_str().unwrap(),
            remote["ca"].as_str().unwrap(),
            remote["cert"].as_str().unwrap(),
            remote["key"].as_str().unwrap(),
        ),
    );
    await_condition(
        c,
        &ns,
        "dataplane/inline-mtls",
        "Connected",
        "True",
        "APIServerReachable",
    );

    // A client certificate the API server's client CA did not issue.
    pki.agent("stranger");
    let stranger = dir.path().join("stranger.kubeconfig");
    std::fs::write(
        &stranger,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stranger\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\nusers:\n- name: stranger\n  user:\n    client-certificate: {}\n    \
             client-key: {}\ncontexts:\n- name: stranger\n  context: {{cluster: stranger, user: stranger}}\n",
            remote["server"].as_str().unwrap(),
            remote["ca"].as_str().unwrap(),
            pki.path("stranger/tls.crt"),
            pki.path("stranger/tls.key"),
        ),
    )
    .unwrap();
    let out = direct(
        "stranger",
        "stranger",
        &format!("{}:{kubeconfig}", stranger.display()),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let expected = format!(
        "error: step 3 (reach the remote API server): {} refused context stranger's credentials \
         (401 Unauthorized); the controller would be refused the same way: give credentials the \
         remote cluster accepts\n",
        remote["server"].as_str().unwrap().trim_end_matches('/')
    );
    assert!(stderr(&out).ends_with(&expected), "{}", stderr(&out));
    assert!(c.get(&c.control, &ns, "dataplane/stranger").is_none());
    assert!(
        c.get(&c.control, &ns, "secret/stranger-kubernetes-cluster")
            .is_none()
    );
}

/// `register workflowplane` writes a WorkflowPlane (OpenChoreo's current kind), and
/// `buildplane` stays the older BuildPlane.
#[test]
fn register_workflowplane_writes_a_workflow_plane() {
    let c = clusters();
    let ns = c.namespace("register-wf");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let agent_ca = pki.agent("agent");
    let agent_tls = std::fs::read_to_string(pki.dir.join("agent/tls.crt")).unwrap();
    plant(c, &ns, &pki.gateway_ca.cert_pem, &agent_ca, &agent_tls);
    for (command, kind) in [
        ("workflowplane", "WorkflowPlane"),
        ("buildplane", "BuildPlane"),
    ] {
        let mut args = register_args(c, &ns, "wf", &["--dry-run"]);
        args[1] = command.into();
        args.retain(|a| !a.contains("virtual-host"));
        let out = planelink(&args);
        assert!(out.status.success(), "{command}: {}", stderr(&out));
        let printed = String::from_utf8_lossy(&out.stdout);
        let kinds: Vec<&str> = printed
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(kinds, ["Namespace", "ConfigMap", kind], "{printed}");
    }
}
