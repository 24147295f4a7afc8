//! packaging/kubernetes: every overlay renders with kubectl's kustomize, and a
//! server-side dry-run apply of each is accepted by a real API server; the names,
//! labels, mounts and flags the reference docs and the binary rely on are where they
//! must be.

use super::*;

/// Every overlay an operator may apply, and the cluster it goes to.
const OVERLAYS: [(&str, bool); 10] = [
    ("control-plane", true),
    ("expose/loadbalancer", true),
    ("expose/tlsroute", true),
    ("cert-manager/control-plane", true),
    ("remote-plane/dataplane", false),
    ("remote-plane/buildplane", false),
    ("remote-plane/observabilityplane", false),
    ("remote-plane/dataplane-read-only", false),
    ("cert-manager/dataplane", false),
    ("control-plane", false),
];

fn render(overlay: &str) -> String {
    let dir = root().join("packaging/kubernetes").join(overlay);
    let out = crate::common::output_within(
        Command::new("kubectl").arg("kustomize").arg(&dir),
        crate::common::COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rendered objects as the API server accepts them (server-side dry run), as JSON.
/// kube-apiserver 1.20 here predates policy/v1 (1.21), so PodDisruptionBudgets are sent
/// as policy/v1beta1, whose fields these manifests use identically.
fn dry_run(c: &Clusters, context: &str, overlay: &str) -> Vec<serde_json::Value> {
    let rendered =
        render(overlay).replace("apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n");
    let out = c.kubectl_with_input(
        context,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=planelink-test",
            "-o",
            "json",
            "-f",
            "-",
        ],
        Some(&rendered),
    );
    assert!(
        out.status.success(),
        "dry run of {overlay} on {context}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![list])
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn args(deployment: &serde_json::Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_overlay_renders_and_the_api_server_accepts_it() {
    let c = clusters();
    for context in [&c.control, &c.remote] {
        c.install_standin_crds(context);
        for ns in [
            "openchoreo-control-plane",
            "openchoreo-data-plane",
            "openchoreo-build-plane",
            "openchoreo-observability-plane",
        ] {
            let _ = c.kubectl(context, &["create", "namespace", ns]);
        }
    }
    eventually("the stand-in CRDs to be served", WAIT, || {
        let out = c.kubectl(&c.control, &["get", "tlsroutes,certificates", "-A"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    for (overlay, control) in OVERLAYS {
        let context = if control { &c.control } else { &c.remote };
        dry_run(c, context, overlay);
    }

    let cp = dry_run(c, &c.control, "control-plane");
    let gateway = find(&cp, "Deployment", "cluster-gateway");
    assert_eq!(gateway["metadata"]["namespace"], "openchoreo-control-plane");
    assert_eq!(
        gateway["spec"]["template"]["metadata"]["labels"]["app"],
        "cluster-gateway"
    );
    assert_eq!(
        gateway["spec"]["template"]["spec"]["serviceAccountName"],
        "cluster-gateway"
    );
    let gateway_args = args(gateway);
    for flag in [
        "--server-cert=/certs/tls.crt",
        "--server-key=/certs/tls.key",
        "--internal-client-ca-cert=/internal-ca/ca.crt",
    ] {
        assert!(
            gateway_args.contains(&flag.to_string()),
            "{flag} in {gateway_args:?}"
        );
    }
    let controller = find(&cp, "Deployment", "controller-manager");
    assert!(args(controller).contains(&"--gateway-url=https://cluster-gateway.openchoreo-control-plane.svc.cluster.local:8444".to_string()));
    let internal = find(&cp, "Service", "cluster-gateway");
    let ports: Vec<i64> = internal["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [8443, 8444]);
    let external = find(&cp, "Service", "cluster-gateway-external");
    assert_eq!(
        external["spec"]["ports"].as_array().unwrap().len(),
        1,
        "the internal port is never published"
    );
    let lb = dry_run(c, &c.control, "expose/loadbalancer");
    assert_eq!(
        find(&lb, "Service", "cluster-gateway-external")["spec"]["type"],
        "LoadBalancer"
    );
    let cm = dry_run(c, &c.control, "cert-manager/control-plane");
    assert!(
        !cm.iter().any(|o| o["kind"] == "Job"),
        "the cert-manager overlay runs no certificate Job"
    );

    let dp = dry_run(c, &c.remote, "remote-plane/dataplane");
    let agent = find(&dp, "Deployment", "cluster-agent");
    assert_eq!(agent["metadata"]["namespace"], "openchoreo-data-plane");
    assert_eq!(
        agent["spec"]["template"]["metadata"]["labels"]["app"],
        "cluster-agent"
    );
    assert!(args(agent).contains(&"--plane-type=dataplane".to_string()));
    let binding = find(&dp, "ClusterRoleBinding", "cluster-agent-dataplane");
    assert_eq!(binding["subjects"][0]["namespace"], "openchoreo-data-plane");
    for (overlay, plane_type) in [
        ("remote-plane/buildplane", "buildplane"),
        ("remote-plane/observabilityplane", "observabilityplane"),
    ] {
        let objects = dry_run(c, &c.remote, overlay);
        assert!(
            args(find(&objects, "Deployment", "cluster-agent"))
                .contains(&format!("--plane-type={plane_type}"))
        );
    }
}
