//! The Kubernetes install, run: README "Install on Kubernetes" word for word on two real
//! API servers (a pair of its own: this binary's), with kubelet.rs running the pods of the
//! applied manifests as local planelink processes. Then kubectl reaches the remote cluster
//! through the gateway with the agent's RBAC, and the monitoring files reference only
//! metrics the running roles expose.

#[allow(dead_code)] // shared with the kube tests, which use all of it
#[path = "../kube/cluster.rs"]
mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod kubelet;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use cluster::*;
use kubelet::{Cluster, Kubelet};

/// What agents dial: a name outside both clusters, as a load balancer's DNS would give.
const GATEWAY_HOST: &str = "gateway.planelink.test";

/// The `sh` blocks of a README section, in order.
fn readme_blocks(section: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("README has no section {section:?}"));
    let body = &readme[start + 1..];
    let body = &body[..body[3..].find("\n## ").map_or(body.len(), |end| end + 3)];
    let mut blocks = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find("```sh\n") {
        let after = &rest[open + 6..];
        let close = after.find("```").unwrap();
        blocks.push(after[..close].to_string());
        rest = &after[close + 3..];
    }
    blocks
}

/// The operator's shell: bash with `planelink` and kubectl on PATH, the test clusters'
/// kubeconfig, `CP`, `REMOTE` and `GATEWAY_HOST` set, and an `/etc/hosts` (in a mount
/// namespace of its own) where the gateway's names resolve.
///
/// One adaptation: the test API servers are kube-apiserver 1.20, which serves
/// PodDisruptionBudgets only as policy/v1beta1 (policy/v1 came in 1.21, the manifests'
/// version since v1beta1 left in 1.25; the fields they use are the same in both). The
/// `kubectl` first on this shell's PATH renders `-k` overlays with kustomize, rewrites that
/// one apiVersion and hands everything else to the real kubectl unchanged.
struct Operator<'a> {
    clusters: &'a Clusters,
    hosts: PathBuf,
    /// Holds the `kubectl` wrapper.
    shims: PathBuf,
}

const KUBECTL_SHIM: &str = r#"#!/bin/bash
set -euo pipefail
real=$(PATH=${PATH#*:} command -v kubectl)
args=() overlay=
while [ $# -gt 0 ]; do
  case $1 in
    -k) overlay=$2; shift 2 ;;
    -k=*|--kustomize=*) overlay=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$overlay" ]; then exec "$real" "${args[@]}"; fi
"$real" kustomize "$overlay" | sed 's#^apiVersion: policy/v1$#apiVersion: policy/v1beta1#' |
  "$real" "${args[@]}" -f -
"#;

impl Operator<'_> {
    fn run(&self, script: &str, limit: Duration) -> Output {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_planelink")).parent().unwrap();
        let path = format!(
            "{}:{}:{}",
            self.shims.display(),
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        common::output_within(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(r#"mount --bind "$1" /etc/hosts && shift && exec bash -euo pipefail -c "$0""#)
                .arg(script)
                .arg(&self.hosts)
                .current_dir(root())
                .env("PATH", path)
                .env("KUBECONFIG", &self.clusters.kubeconfig)
                .env("CP", &self.clusters.control)
                .env("REMOTE", &self.clusters.remote)
                .env("GATEWAY_HOST", GATEWAY_HOST)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null()),
            limit,
        )
    }

    /// Runs `script`; its stdout, or the test fails with both outputs and the pods' logs.
    fn ok(&self, kubelet: &Kubelet, script: &str, limit: Duration) -> String {
        let out = self.run(script, limit);
        assert!(
            out.status.success(),
            "{script}\nexit {:?}\nstdout:\n{}\nstderr:\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            kubelet.report()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Whether a Prometheus text exposition has `name`: a sample of it, or (for a family with
/// no samples yet) its `# TYPE` line, whose name lacks `_total`, `_bucket`, … .
fn exposes(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|line| {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let base = declared.split(' ').next().unwrap_or_default();
            return ["", "_total", "_bucket", "_count", "_sum", "_created"]
                .iter()
                .any(|suffix| format!("{base}{suffix}") == name);
        }
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// Every `planelink_…` metric name a monitoring file mentions.
fn referenced_metrics(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("planelink_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The docs' flow from empty clusters to kubectl through the gateway, with the manifests'
/// pods running; and the monitoring files against the real `/metrics` of each role.
#[test]
fn readme_install_runs_on_two_clusters() {
    for tool in ["unshare", "setpriv", "chroot", "mount", "kubectl"] {
        common::require_tool(tool);
    }
    let clusters = clusters();
    let dir = tempfile::tempdir().unwrap();
    let external = vec![(
        GATEWAY_HOST.to_string(),
        0,
        "openchoreo-control-plane".to_string(),
        "cluster-gateway-external".to_string(),
    )];
    let kubelet = Kubelet::start(
        vec![
            Cluster::new(clusters, &clusters.control),
            Cluster::new(clusters, &clusters.remote),
        ],
        external,
        dir.path(),
    );
    let shims = dir.path().join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    std::fs::write(shims.join("kubectl"), KUBECTL_SHIM).unwrap();
    std::fs::set_permissions(
        shims.join("kubectl"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let operator = Operator {
        clusters,
        hosts: kubelet.operator_hosts.clone(),
        shims,
    };
    // The data plane's prerequisite (README): the Gateway API, here as a stand-in CRD.
    clusters.install_standin_crds(&clusters.remote);
    let blocks = readme_blocks("Install on Kubernetes");
    assert_eq!(
        blocks.len(),
        2,
        "README: a control-plane block and a remote-plane block"
    );
    for block in &blocks {
        operator.ok(&kubelet, block, Duration::from_secs(300));
    }

    // The plane is Ready: trusted, connected and configured.
    let ready = eventually(
        "DataPlane default/default Ready",
        Duration::from_secs(60),
        || {
            let plane = clusters
                .get(&clusters.control, "default", "dataplane/default")
                .ok_or("no DataPlane")?;
            let conditions = plane["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions
                .iter()
                .find(|c| c["type"] == "Ready" && c["status"] == "True")
                .cloned()
                .ok_or_else(|| format!("{conditions:?}"))
        },
    );
    assert_eq!(ready["reason"], "Ready", "{ready}");

    // kubectl through the gateway's internal API, with the controller's client certificate.
    let kubeconfig = dir.path().join("through-gateway.kubeconfig");
    let secret = clusters
        .get(
            &clusters.control,
            "openchoreo-control-plane",
            "secret/controller-manager-cluster-gateway-client-tls",
        )
        .expect("the certificate Job wrote the controller's client certificate");
    let ca = clusters
        .get(
            &clusters.control,
            "openchoreo-control-plane",
            "configmap/cluster-gateway-ca",
        )
        .expect("the certificate Job published the gateway CA");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    std::fs::write(
        &kubeconfig,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "through",
            "clusters": [{"name": "through", "cluster": {
                "server": "https://cluster-gateway.openchoreo-control-plane.svc.cluster.local:8444/api/proxy/dataplane/default/default/default/k8s",
                "certificate-authority-data": b64(ca["data"]["ca.crt"].as_str().unwrap()),
            }}],
            "users": [{"name": "controller", "user": {
                "client-certificate-data": secret["data"]["tls.crt"],
                "client-key-data": secret["data"]["tls.key"],
            }}],
            "contexts": [{"name": "through", "context": {"cluster": "through", "user": "controller"}}],
        })
        .to_string(),
    )
    .unwrap();
    let through = |args: &str| {
        operator.run(
            &format!("kubectl --kubeconfig {} {args}", kubeconfig.display()),
            Duration::from_secs(60),
        )
    };
    // Only the remote cluster has this Deployment in this namespace.
    let out = through("get deployment cluster-agent -n openchoreo-data-plane -o name");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deployment.apps/cluster-agent\n",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        kubelet.report()
    );
    // The agent's ClusterRole grants no nodes: the remote API server refuses it.
    let out = through("get nodes");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error from server (Forbidden): nodes is forbidden: User \
         \"system:serviceaccount:openchoreo-data-plane:cluster-agent\" cannot list resource \
         \"nodes\" in API group \"\" at the cluster scope\n"
    );

    let scrape = |cluster: usize, workload: &str| -> String {
        let mut text = String::new();
        for (name, ip) in kubelet.pods_of(cluster, workload) {
            let port = kubelet.with_pods(|pods| {
                pods.iter()
                    .find(|p| p.name == name && p.cluster == cluster)
                    .unwrap()
                    .port("health")
            });
            let (status, body) = kubelet::http_get(ip, port, "/metrics")
                .unwrap_or_else(|| panic!("{name}: no answer on {ip}:{port}/metrics"));
            assert_eq!(status, 200, "{name} /metrics: {body}");
            text += &body;
        }
        text
    };
    // A client without a certificate is refused on the agents' port, and counted.
    let ca_file = dir.path().join("gateway-ca.crt");
    std::fs::write(&ca_file, ca["data"]["ca.crt"].as_str().unwrap()).unwrap();
    let refusals = || {
        let metrics = scrape(0, "cluster-gateway");
        let series =
            "planelink_gateway_handshake_rejections_total{reason=\"no_client_certificate\"} ";
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = refusals();
    let out = operator.run(
        &format!(
            "curl -sS -o /dev/null --cacert {} 'https://{GATEWAY_HOST}:8443/ws'",
            ca_file.display()
        ),
        Duration::from_secs(30),
    );
    // 56: the TLS connection ended with the gateway's "certificate required" alert.
    assert_eq!(
        out.status.code(),
        Some(56),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(refusals(), before + 1);

    // The monitoring files reference only metrics the roles serve (by now each family they
    // use has a series: a Family without one is not exposed at all).
    let served = [
        ("planelink_gateway_", scrape(0, "cluster-gateway")),
        ("planelink_controller_", scrape(0, "controller-manager")),
        ("planelink_agent_", scrape(1, "cluster-agent")),
    ];
    for file in ["alerts.yaml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root().join("packaging/monitoring").join(file)).unwrap();
        let names = referenced_metrics(&text);
        assert!(!names.is_empty(), "{file} references no metric");
        for name in names {
            let (_, metrics) = served
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix))
                .unwrap_or_else(|| panic!("{file}: {name} belongs to no role"));
            assert!(
                exposes(metrics, &name),
                "{file}: {name} is not in /metrics:\n{metrics}"
            );
        }
    }
    status_and_check(&operator, &kubelet, clusters, dir.path());
    assert_eq!(
        kubelet.crashes(),
        Vec::<String>::new(),
        "{}",
        kubelet.report()
    );
}

/// Runs a command in the operator's shell that must exit with `code`; its stdout.
fn exits(operator: &Operator, kubelet: &Kubelet, script: &str, code: i32) -> String {
    let out = operator.run(script, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{script}\nstdout:\n{stdout}\nstderr:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        kubelet.report()
    );
    stdout
}

/// The line of `text` that starts with `prefix`, and the line after it.
fn line_and_next<'a>(text: &'a str, prefix: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{text}"));
    (lines[at], lines.get(at + 1).copied().unwrap_or_default())
}

fn has_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "no line {line:?} in\n{text}"
    );
}

/// The DataPlane's status as `planelink status -o json` reports it.
fn plane_row(operator: &Operator, kubelet: &Kubelet, name: &str) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_str(&operator.ok(
        kubelet,
        r#"planelink status --context "$CP" -o json"#,
        Duration::from_secs(30),
    ))
    .unwrap();
    report["planes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "DataPlane" && p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no DataPlane {name} in {report}"))
}

/// Waits until the DataPlane's Ready condition has `reason` and `connectedAgents` is `agents`.
fn wait_for_plane(clusters: &Clusters, name: &str, reason: &str, agents: i64) {
    eventually(
        &format!("DataPlane default/{name}: {reason}, {agents} agent(s)"),
        Duration::from_secs(60),
        || {
            let plane = clusters
                .get(&clusters.control, "default", &format!("dataplane/{name}"))
                .ok_or("no DataPlane")?;
            let status = &plane["status"];
            let ready = status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
                .unwrap_or_default();
            let connected = status["agentConnection"]["connectedAgents"]
                .as_i64()
                .unwrap_or(0);
            let replicas = status["agentConnection"]["gatewayReplicas"].as_str();
            let settled = agents == 0 || replicas == Some("2/2");
            (ready["reason"] == reason && connected == agents && settled)
                .then_some(())
                .ok_or_else(|| format!("{status}"))
        },
    );
}

/// `planelink status` and `planelink check` on the installed pair: the truth for the
/// healthy plane, then each mistake of the troubleshooting guide planted in turn and
/// undone with the command check names as the fix.
fn status_and_check(operator: &Operator, kubelet: &Kubelet, clusters: &Clusters, dir: &Path) {
    common::require_tool("script");
    wait_for_plane(clusters, "default", "Ready", 1);
    let check = r#"planelink check dataplane/default --context "$CP" --remote-context "$REMOTE""#;
    let healthy = exits(operator, kubelet, check, 0);
    for line in [
        "  ✔ CRD dataplanes.openchoreo.dev is installed and current",
        "  ✔ ConfigMap openchoreo-control-plane/cluster-gateway-ca matches the Secret",
        "  ✔ gateway Deployment openchoreo-control-plane/cluster-gateway: 2/2 replicas ready",
        "  ✔ the gateway's serving certificate (Secret openchoreo-control-plane/cluster-gateway-tls) chains to its CA",
        "  ✔ the gateway's serving certificate covers gateway.planelink.test (publicHost of ConfigMap cluster-gateway)",
        "  ✔ Ready",
        "  ✔ 1 agent(s) connected, to 2/2 gateway replicas",
        "  ✔ ConfigMap openchoreo-data-plane/cluster-gateway-ca matches the control plane's gateway CA",
        "  ✔ ca.crt of Secret openchoreo-data-plane/cluster-agent-tls is a CA of the agent's own",
        "  ✔ the plane's clientCA trusts the agent's certificate (Secret openchoreo-data-plane/cluster-agent-tls)",
        "  ✔ agent Deployment openchoreo-data-plane/cluster-agent: 1/1 replicas ready",
        "  ✔ the agent serves planeID default",
        "  ✔ the gateway's serving certificate covers gateway.planelink.test (the agent's --server-url)",
        "  ✔ the agent's ServiceAccount cluster-agent may do what the control plane needs",
    ] {
        has_line(&healthy, line);
    }
    let passed = healthy.lines().filter(|l| l.starts_with("  ✔ ")).count();
    assert_eq!(
        healthy.lines().last(),
        Some(format!("{passed} checks: {passed} passed, 0 warnings, 0 failed").as_str()),
        "{healthy}"
    );

    // The truth for a connected plane, for scripts and for people.
    let row = plane_row(operator, kubelet, "default");
    for (field, value) in [
        ("planeID", "default"),
        ("mode", "agent"),
        ("ready", "True"),
        ("reason", "Ready"),
        ("gatewayReplicas", "2/2"),
    ] {
        assert_eq!(row[field], value, "{field}: {row}");
    }
    assert_eq!(row["connectedAgents"], 1, "{row}");
    assert_eq!(
        row["protocols"],
        serde_json::json!(["planelink.v1-h2"]),
        "{row}"
    );
    assert_eq!(row["agents"][0]["protocol"], "planelink.v1-h2", "{row}");
    let ca_days = i64::from(planelink::trust::issue::DEFAULT_CA_DAYS) - 1;
    let leaf_days = i64::from(planelink::trust::issue::DEFAULT_LEAF_DAYS) - 1;
    assert_eq!(row["clientCA"]["daysLeft"], ca_days, "{row}");
    assert_eq!(row["clientCA"]["state"], "Valid", "{row}");
    assert_eq!(row["agentCertificate"]["daysLeft"], leaf_days, "{row}");
    assert_eq!(row["agentCertificate"]["state"], "Valid", "{row}");
    let table = operator.ok(
        kubelet,
        r#"planelink status --context "$CP""#,
        Duration::from_secs(30),
    );
    assert!(!table.contains('\x1b'), "colour in a pipe: {table:?}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "KIND",
            "NAMESPACE/NAME",
            "PLANE ID",
            "MODE",
            "READY",
            "REASON",
            "AGENTS",
            "PROTOCOL",
            "HEARTBEAT",
            "CLIENT CA",
            "AGENT CERT"
        ],
        "{table}"
    );
    let cells: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        [&cells[..10], &cells[11..]].concat(),
        [
            "DataPlane",
            "default/default",
            "default",
            "agent",
            "True",
            "Ready",
            "1",
            "on",
            "2/2",
            "planelink.v1-h2",
            &format!("{ca_days}d"),
            &format!("{leaf_days}d"),
        ],
        "{table}"
    );
    // On a terminal, the same table in colour.
    let terminal = operator.ok(
        kubelet,
        r#"env -u NO_COLOR TERM=xterm script -qec 'planelink status --context "$CP"' /dev/null"#,
        Duration::from_secs(30),
    );
    for painted in ["\x1b[1mKIND\x1b[0m", "\x1b[32mTrue\x1b[0m"] {
        assert!(terminal.contains(painted), "no {painted:?} in {terminal:?}");
    }

    // An agent dialling the gateway by an IP its certificate lacks.
    let by_ip = exits(
        operator,
        kubelet,
        r#"planelink check dataplane/default --context "$CP" --server-url wss://127.0.0.1:8443/ws"#,
        1,
    );
    let (_, fix) = line_and_next(
        &by_ip,
        "  ✘ the gateway's serving certificate does not cover 127.0.0.1 (--server-url): it has no IP SANs (valid for ",
    );
    assert_eq!(
        fix,
        "      fix: add 127.0.0.1 to the certificate's ipAddresses (bare hosts: planelink register certs \
         gateway --ip-address 127.0.0.1), or connect by a DNS name it lists"
    );

    // The remote plane's copy of the gateway CA replaced by a placeholder.
    operator.ok(
        kubelet,
        r#"kubectl --context "$REMOTE" -n openchoreo-data-plane create configmap cluster-gateway-ca \
             --from-literal=ca.crt=placeholder --dry-run=client -o yaml |
           kubectl --context "$REMOTE" replace -f -"#,
        Duration::from_secs(30),
    );
    let placeholder = exits(operator, kubelet, check, 1);
    let (_, fix) = line_and_next(
        &placeholder,
        "  ✘ ConfigMap openchoreo-data-plane/cluster-gateway-ca holds no CA (",
    );
    let register = format!(
        "planelink register dataplane default --control-plane-context {} --remote-context {} \
         --namespace default --public-virtual-host apps.example.com --organization-virtual-host apps.internal",
        clusters.control, clusters.remote
    );
    assert_eq!(
        fix,
        format!(
            "      fix: copy ca.crt of Secret cluster-gateway-ca from the control plane: {register}"
        )
    );
    operator.ok(kubelet, &register, Duration::from_secs(60));
    has_line(
        &exits(operator, kubelet, check, 0),
        "  ✔ ConfigMap openchoreo-data-plane/cluster-gateway-ca matches the control plane's gateway CA",
    );

    // The agent's leaf registered as its CA: refused, and the agent disconnected.
    let pem_of = |namespace: &str, what: &str, key: &str, cluster: &str| {
        let object = clusters.get(cluster, namespace, what).unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(object["data"][key].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let patch = |pem: &str| {
        let file = dir.join("client-ca.patch.json");
        std::fs::write(
            &file,
            serde_json::json!({"spec": {"clusterAgent": {"clientCA": {"value": pem}}}}).to_string(),
        )
        .unwrap();
        operator.ok(
            kubelet,
            &format!(
                r#"kubectl --context "$CP" -n default patch dataplane default --type merge --patch-file {}"#,
                file.display()
            ),
            Duration::from_secs(30),
        );
    };
    let agent_leaf = pem_of(
        "openchoreo-data-plane",
        "secret/cluster-agent-tls",
        "tls.crt",
        &clusters.remote,
    );
    patch(&agent_leaf);
    wait_for_plane(clusters, "default", "ClientCAIsLeaf", 0);
    let row = plane_row(operator, kubelet, "default");
    assert_eq!(
        (row["ready"].as_str(), row["connectedAgents"].as_i64()),
        (Some("False"), Some(0)),
        "{row}"
    );
    let leaf = exits(
        operator,
        kubelet,
        r#"planelink check dataplane/default --context "$CP""#,
        1,
    );
    let (_, fix) = line_and_next(&leaf, "  ✘ clientCA: clientCA holds a leaf certificate (");
    assert_eq!(
        fix,
        "      fix: `clientCA` holds a leaf: register `ca.crt` of Secret `cluster-agent-tls`, not `tls.crt`"
    );
    has_line(&leaf, "  ✘ no agent connected");
    let table = operator.ok(
        kubelet,
        r#"planelink status --context "$CP""#,
        Duration::from_secs(30),
    );
    let cells: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &cells[..7],
        [
            "DataPlane",
            "default/default",
            "default",
            "agent",
            "False",
            "ClientCAIsLeaf",
            "0"
        ],
        "{table}"
    );
    assert_eq!(cells[cells.len() - 2..], ["invalid", "-"], "{table}");

    // The gateway's own CA registered where the agent's belongs.
    let gateway_ca = pem_of(
        "openchoreo-control-plane",
        "secret/cluster-gateway-ca",
        "ca.crt",
        &clusters.control,
    );
    patch(&gateway_ca);
    wait_for_plane(clusters, "default", "ClientCAIsGatewayCA", 0);
    let wrong = exits(
        operator,
        kubelet,
        r#"planelink check dataplane/default --context "$CP""#,
        1,
    );
    let (_, fix) = line_and_next(
        &wrong,
        "  ✘ clientCA: clientCA is the gateway's own server CA (",
    );
    assert_eq!(
        fix,
        "      fix: `clientCA` is the gateway's own server CA: register the agent's CA from the remote plane"
    );
    // The register command undoes it, and the agent is back.
    operator.ok(kubelet, &register, Duration::from_secs(60));
    wait_for_plane(clusters, "default", "Ready", 1);
    exits(operator, kubelet, check, 0);

    // A client CA inside its warning window: shown, and warned about, not failed.
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expiring = planelink::trust::issue::new_ca(
        &planelink::trust::issue::CaOptions::agent("expiring").window(
            planelink::trust::issue::Window {
                not_before: now - 80 * day,
                not_after: now + 5 * day,
            },
        ),
    )
    .unwrap();
    let mut indented = String::new();
    for line in expiring.cert_pem.lines() {
        indented += &format!("          {line}\n");
    }
    clusters.apply(
        &clusters.control,
        &format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {{name: expiring, namespace: default}}\n\
             spec:\n  clusterAgent:\n    clientCA:\n      value: |\n{indented}  gateway:\n    \
             publicVirtualHost: apps.example.com\n    organizationVirtualHost: apps.internal\n"
        ),
    );
    wait_for_plane(clusters, "expiring", "AgentNotConnected", 0);
    let row = plane_row(operator, kubelet, "expiring");
    assert_eq!(row["clientCA"]["state"], "ExpiringSoon", "{row}");
    assert_eq!(row["clientCA"]["daysLeft"], 4, "{row}");
    let soon = exits(
        operator,
        kubelet,
        r#"planelink check dataplane/expiring --context "$CP""#,
        1,
    );
    let (_, fix) = line_and_next(&soon, "  ⚠ clientCA expires in 4 days (");
    assert_eq!(
        fix,
        "      fix: renew it before then (planelink register certs, or cert-manager's renewBefore)"
    );
    has_line(&soon, "  ✘ no agent connected");
}
