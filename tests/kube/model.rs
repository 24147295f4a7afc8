//! One plane model: the same manifests fed to both registry sources (a planes directory and
//! the Kubernetes API) give the same snapshot and the same accept/refuse decision for
//! every agent, including planes without an agent block, disabled agents, a leaf as CA,
//! a Secret reference, and the same planeID in two namespaces.

use std::time::SystemTime;

use planelink::planes::crd::{AnyPlane, PlaneBuilder, ValueFrom};
use planelink::planes::directory::DirectorySource;
use planelink::planes::kubernetes::{KubernetesSource, kube_client};
use planelink::planes::manifest::to_yaml;
use planelink::planes::{PlaneKey, PlaneKind, PlaneType, Registry, Snapshot};

use super::cluster::clusters;
use super::{Pki, WAIT};

/// Waits (bounded) until `registry` publishes a snapshot with `entries` planes.
async fn snapshot_with(registry: &Registry, entries: usize, what: &str) -> Snapshot {
    let mut changes = registry.subscribe();
    let wait = async {
        loop {
            if let Some(snapshot) = changes.borrow_and_update().clone()
                && snapshot.entries.len() == entries
            {
                return (*snapshot).clone();
            }
            if changes.changed().await.is_err() {
                panic!("{what}: the source stopped");
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: no snapshot with {entries} planes within {WAIT:?}"))
}

fn manifests(ns: &str, other_ns: &str, pki: &Pki) -> String {
    let (a, b, c) = (
        pki.agent("model-a"),
        pki.agent("model-b"),
        pki.agent("model-c"),
    );
    let leaf = std::fs::read_to_string(pki.dir.join("model-a/tls.crt")).unwrap();
    let mut no_agent = PlaneBuilder::new(PlaneType::ObservabilityPlane, ns, "no-agent").build();
    if let AnyPlane::ObservabilityPlane(p) = &mut no_agent {
        p.spec.cluster_agent = None;
    }
    let mut disabled = PlaneBuilder::new(PlaneType::DataPlane, ns, "disabled")
        .client_ca(ValueFrom::inline(&a))
        .build();
    if let AnyPlane::DataPlane(p) = &mut disabled {
        p.spec.cluster_agent.as_mut().unwrap().enabled = Some(false);
    }
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: b-ca, namespace: {ns}}}\nstringData:\n  ca.crt: |\n{}",
        b.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    let planes = [
        PlaneBuilder::new(PlaneType::DataPlane, ns, "inline")
            .plane_id("shared")
            .client_ca(ValueFrom::inline(&a))
            .build(),
        PlaneBuilder::new(PlaneType::DataPlane, ns, "from-secret")
            .plane_id("shared")
            .client_ca(ValueFrom::from_secret(None, "b-ca", "ca.crt"))
            .build(),
        PlaneBuilder::new(PlaneType::DataPlane, other_ns, "tenant")
            .plane_id("shared")
            .client_ca(ValueFrom::inline(&c))
            .build(),
        PlaneBuilder::new(PlaneType::BuildPlane, ns, "leaf")
            .client_ca(ValueFrom::inline(&leaf))
            .build(),
        PlaneBuilder::new(PlaneType::BuildPlane, ns, "missing-secret")
            .client_ca(ValueFrom::from_secret(None, "absent", "ca.crt"))
            .build(),
        no_agent,
        disabled,
        // OpenChoreo's newer kinds: a WorkflowPlane serves build-plane agents; a
        // cluster-scoped plane names its Secret's namespace, or has none to read.
        PlaneBuilder::new(PlaneKind::WorkflowPlane, ns, "workflows")
            .client_ca(ValueFrom::inline(&c))
            .build(),
        PlaneBuilder::new(PlaneKind::ClusterDataPlane, "", &format!("{ns}-shared"))
            .plane_id("cluster-wide")
            .client_ca(ValueFrom::from_secret(Some(ns), "b-ca", "ca.crt"))
            .build(),
        PlaneBuilder::new(PlaneKind::ClusterWorkflowPlane, "", &format!("{ns}-builds"))
            .client_ca(ValueFrom::from_secret(None, "b-ca", "ca.crt"))
            .build(),
    ];
    format!("{secret}{}", to_yaml(&planes))
}

/// What a snapshot says, without what only a server sets (generation).
fn comparable(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .entries
        .iter()
        .map(|e| format!("{} {} {:?}", e.key, e.cr, e.client_ca))
        .collect()
}

#[test]
fn both_sources_give_the_same_snapshot_and_decisions() {
    let c = clusters();
    let (ns, other_ns) = (c.namespace("model"), c.namespace("model-tenant"));
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let yaml = manifests(&ns, &other_ns, &pki);
    c.apply(&c.control, &yaml);
    let planes_dir = dir.path().join("planes");
    std::fs::create_dir_all(&planes_dir).unwrap();
    std::fs::write(planes_dir.join("planes.yaml"), &yaml).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // 8 agent-enabled planes: inline, from-secret, tenant, leaf, missing-secret,
        // workflows and the two cluster-scoped ones.
        let from_dir = Registry::spawn(Box::new(DirectorySource::new(&planes_dir)));
        let directory = snapshot_with(&from_dir, 8, "planes directory").await;
        let mut seen = Vec::new();
        for namespace in [&ns, &other_ns] {
            let client = kube_client(Some(&c.kubeconfig_for(&c.control)), None)
                .await
                .unwrap();
            let source = KubernetesSource::new(client, Some(namespace.clone()));
            let registry = Registry::spawn(Box::new(source));
            let expected = if namespace == &ns { 5 } else { 1 };
            seen.extend(
                snapshot_with(&registry, expected, "Kubernetes")
                    .await
                    .entries,
            );
        }
        // Cluster-scoped planes are seen only by a source of every namespace (where the
        // other tests' planes are too: only this test's are kept).
        let client = kube_client(Some(&c.kubeconfig_for(&c.control)), None)
            .await
            .unwrap();
        let everywhere = Registry::spawn(Box::new(KubernetesSource::new(client, None)));
        let ours = |snapshot: &Snapshot| -> Vec<_> {
            snapshot
                .entries
                .iter()
                .filter(|e| e.cr.namespace.is_none() && e.cr.name.starts_with(&format!("{ns}-")))
                .cloned()
                .collect()
        };
        let mut changes = everywhere.subscribe();
        let cluster_scoped = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(snapshot) = changes.borrow_and_update().clone()
                    && ours(&snapshot).len() == 2
                {
                    return ours(&snapshot);
                }
                changes.changed().await.expect("the source runs");
            }
        })
        .await
        .expect("the cluster-scoped planes within the wait");
        seen.extend(cluster_scoped);
        seen.sort_by(|a, b| (&a.key, &a.cr).cmp(&(&b.key, &b.cr)));
        let kubernetes = Snapshot { entries: seen };
        assert_eq!(comparable(&directory), comparable(&kubernetes));

        let now = SystemTime::now();
        let keys = [
            PlaneKey {
                plane_type: PlaneType::DataPlane,
                plane_id: "shared".into(),
            },
            PlaneKey {
                plane_type: PlaneType::BuildPlane,
                plane_id: "leaf".into(),
            },
            PlaneKey {
                plane_type: PlaneType::ObservabilityPlane,
                plane_id: "no-agent".into(),
            },
            PlaneKey {
                plane_type: PlaneType::DataPlane,
                plane_id: "disabled".into(),
            },
            PlaneKey {
                plane_type: PlaneType::BuildPlane,
                plane_id: "workflows".into(),
            },
            PlaneKey {
                plane_type: PlaneType::DataPlane,
                plane_id: "cluster-wide".into(),
            },
            PlaneKey {
                plane_type: PlaneType::BuildPlane,
                plane_id: format!("{ns}-builds"),
            },
        ];
        for agent in ["model-a", "model-b", "model-c"] {
            let chain =
                planelink::trust::load_certificates(&pki.dir.join(agent).join("tls.crt")).unwrap();
            for key in &keys {
                let (d, k) = (
                    directory.authorise(key, &chain, now, Default::default()),
                    kubernetes.authorise(key, &chain, now, Default::default()),
                );
                assert_eq!(d, k, "agent {agent} for {key}");
            }
            let granted = directory
                .authorise(&keys[0], &chain, now, Default::default())
                .granted;
            assert_eq!(
                granted.len(),
                1,
                "agent {agent} is trusted by exactly one CR of planeID shared"
            );
        }
        let chain_of = |agent: &str| {
            planelink::trust::load_certificates(&pki.dir.join(agent).join("tls.crt")).unwrap()
        };
        let granted = |key: &PlaneKey, agent: &str| -> Vec<String> {
            kubernetes
                .authorise(key, &chain_of(agent), now, Default::default())
                .granted
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(granted(&keys[4], "model-c"), [format!("{ns}/workflows")]);
        assert_eq!(
            granted(&keys[5], "model-b"),
            [format!("_cluster/{ns}-shared")]
        );
        assert!(granted(&keys[5], "model-a").is_empty());
        let unnamed = kubernetes.entries_for(&keys[6]).next().expect("listed");
        assert_eq!(
            unnamed.client_ca.as_ref().unwrap_err(),
            "ClusterWorkflowPlane clientCA's secretKeyRef names no namespace, and a \
             cluster-scoped plane has none to lend it; add the Secret's namespace to the \
             secretKeyRef"
        );
    });
}

/// Every field of OpenChoreo's documented plane kinds (DataPlane, BuildPlane, WorkflowPlane,
/// ObservabilityPlane and the cluster-scoped ClusterDataPlane, ClusterWorkflowPlane and
/// ClusterObservabilityPlane), and fields no planelink type names (a newer OpenChoreo's),
/// at every depth of spec and status: planelink's CRDs on a real API server keep them all, so they can replace
/// OpenChoreo's and be replaced by them again without losing data.
#[test]
fn openchoreo_shaped_planes_keep_every_field() {
    let c = clusters();
    let ns = c.namespace("crd-parity");
    let planes = serde_json::json!([
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "DataPlane",
         "metadata": {"name": "agent-dataplane", "namespace": ns},
         "spec": {
            "agent": {"enabled": true, "clientCA": {"secretRef": {"name": "cluster-agent-ca", "key": "ca.crt"}}},
            "gateway": {"publicVirtualHost": "api.example.com", "organizationVirtualHost": "internal.example.com",
                        "ingressClassName": "a-newer-field"},
            "secretStoreRef": {"name": "vault-backend"},
            "imagePullSecretRefs": ["docker-registry-credentials"],
            "registry": {"prefix": "registry.example.com/acme", "secretRef": "registry-credentials"},
            "observer": {"url": "https://observer.example.com",
                         "authentication": {"basicAuth": {"username": "admin", "password": "secretpassword"}}},
            "aNewerBlock": {"nested": {"deeper": [1, 2, 3]}}
         }},
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "DataPlane",
         "metadata": {"name": "production-dataplane", "namespace": ns},
         "spec": {
            "kubernetesCluster": {"server": "https://k8s-api.example.com:6443",
                "tls": {"ca": {"secretRef": {"name": "k8s-ca-cert", "key": "ca.crt"}}},
                "auth": {"mtls": {"clientCert": {"secretRef": {"name": "k8s-client-cert", "key": "tls.crt"}},
                                  "clientKey": {"secretRef": {"name": "k8s-client-cert", "key": "tls.key"}}}}},
            "gateway": {"publicVirtualHost": "api.example.com", "organizationVirtualHost": "internal.example.com"}
         }},
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "BuildPlane",
         "metadata": {"name": "builds", "namespace": ns},
         "spec": {"planeID": "builds", "clusterAgent": {"clientCA": {"value": "PEM"}},
                  "observer": {"url": "https://observer.example.com"},
                  "secretStoreRef": {"name": "default"}}},
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "ObservabilityPlane",
         "metadata": {"name": "obs", "namespace": ns},
         "spec": {"observerURL": "https://observer.example.com", "aNewerField": "kept"}},
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "WorkflowPlane",
         "metadata": {"name": "workflows", "namespace": ns},
         "spec": {"planeID": "workflows", "clusterAgent": {"enabled": true, "clientCA": {"value": "PEM"}},
                  "observer": {"url": "https://observer.example.com",
                               "authentication": {"basicAuth": {"username": "u", "password": "p"}}},
                  "secretStoreRef": {"name": "default"},
                  "observabilityPlaneRef": {"kind": "ClusterObservabilityPlane", "name": "shared"}}},
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "ClusterDataPlane",
         "metadata": {"name": format!("{ns}-shared")},
         "spec": {"planeID": "shared-data",
                  "clusterAgent": {"clientCA": {"secretKeyRef": {"name": "ca", "namespace": ns, "key": "ca.crt"}}},
                  "gateway": {"publicVirtualHost": "api.example.com", "organizationVirtualHost": "internal.example.com",
                              "publicHTTPPort": 80, "publicHTTPSPort": 443},
                  "registry": {"prefix": "registry.example.com/acme", "secretRef": "registry-credentials"},
                  "imagePullSecretRefs": ["docker-registry-credentials"],
                  "aNewerBlock": {"kept": true}}},
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "ClusterWorkflowPlane",
         "metadata": {"name": format!("{ns}-builds")},
         "spec": {"planeID": "shared-builds", "agent": {"enabled": false},
                  "observer": {"url": "https://observer.example.com"}}},
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "ClusterObservabilityPlane",
         "metadata": {"name": format!("{ns}-obs")},
         "spec": {"planeID": "shared-obs", "observerURL": "https://observer.example.com",
                  "clusterAgent": {"clientCA": {"value": "PEM"}}}},
        // Environments name their data plane in both of OpenChoreo's shapes.
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "Environment",
         "metadata": {"name": "development", "namespace": ns},
         "spec": {"dataPlaneRef": "agent-dataplane", "isProduction": false}},
        {"apiVersion": "openchoreo.dev/v1alpha1", "kind": "Environment",
         "metadata": {"name": "production", "namespace": ns},
         "spec": {"dataPlaneRef": {"kind": "ClusterDataPlane", "name": format!("{ns}-shared")},
                  "isProduction": true, "gateway": {"dnsPrefix": "prod"}}}
    ]);
    for plane in planes.as_array().unwrap() {
        c.apply(&c.control, &plane.to_string());
        let what = format!(
            "{}/{}",
            plane["kind"].as_str().unwrap().to_lowercase(),
            plane["metadata"]["name"].as_str().unwrap()
        );
        let stored = c
            .get(&c.control, &ns, &what)
            .expect("the plane was created");
        assert_contains(&stored["spec"], &plane["spec"], &format!("{what} spec"));
        if plane["kind"] == "Environment" {
            // Kept whole, and decodable by the controller in either shape.
            let environment: planelink::planes::crd::Environment =
                serde_json::from_value(stored.clone()).expect("the controller reads it");
            assert!(environment.spec.data_plane_ref.is_some(), "{what}");
            continue;
        }
        // Status written by OpenChoreo's controllers, with fields planelink does not know.
        let status = serde_json::json!({"status": {"observedGeneration": 1,
            "aNewerStatus": {"phase": "Ready", "counts": [1, 2]}}});
        c.ok(
            &c.control,
            &[
                "patch",
                "-n",
                &ns,
                &what,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
        );
        let stored = c.get(&c.control, &ns, &what).unwrap();
        assert_contains(
            &stored["status"],
            &status["status"],
            &format!("{what} status"),
        );
        // Round trip: what was read, written back, reads the same.
        c.apply(&c.control, &stored.to_string());
        let again = c.get(&c.control, &ns, &what).unwrap();
        assert_eq!(
            again["spec"], stored["spec"],
            "{what} spec after a round trip"
        );
        assert_eq!(
            again["status"], stored["status"],
            "{what} status after a round trip"
        );
    }
    // OpenChoreo's gateway keys a cluster-scoped plane by planeID alone: required.
    let out = c.kubectl_with_input(
        &c.control,
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: ClusterDataPlane\nmetadata: {{name: {ns}-no-id}}\n\
             spec: {{gateway: {{publicVirtualHost: a, organizationVirtualHost: b}}}}\n"
        )),
    );
    assert!(
        !out.status.success(),
        "a ClusterDataPlane without planeID was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.planeID: Required value"), "{err}");
}

/// Every field of `wanted` is in `stored` with the same value (the API server may add
/// defaults, never drop or change what was given).
fn assert_contains(stored: &serde_json::Value, wanted: &serde_json::Value, at: &str) {
    match (stored, wanted) {
        (serde_json::Value::Object(stored), serde_json::Value::Object(wanted)) => {
            for (key, value) in wanted {
                let here = format!("{at}.{key}");
                let kept = stored
                    .get(key)
                    .unwrap_or_else(|| panic!("{here} was dropped; stored: {stored:?}"));
                assert_contains(kept, value, &here);
            }
        }
        _ => assert_eq!(stored, wanted, "{at}"),
    }
}
