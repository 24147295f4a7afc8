//! The spec fields of each plane type, shared by the kinds of that type (a namespaced
//! kind and its cluster-scoped twin read the same), and what every kind reads of them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::values::{
    AgentConfig, GatewaySpec, KubernetesClusterSpec, ObservabilityPlaneRef, ObserverApi,
    RegistrySpec, SecretStoreRef,
};

/// OpenChoreo's pattern for `spec.planeID`, a DNS label (the CRD's `pattern`).
const PLANE_ID_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Whether `name` is what Kubernetes takes as an object's name: a DNS subdomain (labels
/// of lowercase letters, digits and '-' joined by dots, at most 253 characters).
pub fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// Whether an agent's planeID can name a plane: a CR's `spec.planeID` (a DNS label, at
/// most 63) or, where that is unset, the CR's name (a DNS subdomain: dots too, at most
/// 253). Nothing else reaches a registry key, a log line or a printed command.
pub fn check_plane_id(id: &str) -> Result<(), String> {
    if !is_dns_subdomain(id) {
        return Err(
            "a planeID is lowercase letters, digits and '-' (dots between labels too, as a CR \
             name has), starts and ends with a letter or digit, and is at most 253 characters: \
             give the plane CR's spec.planeID (or its name)"
                .into(),
        );
    }
    Ok(())
}

/// What a DataPlane or ClusterDataPlane says: a Kubernetes cluster where application
/// workloads run, reached through its agent or directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneFields {
    /// The ID agents send as planeID; the resource's name when unset (required on the
    /// cluster-scoped kind).
    #[serde(default, rename = "planeID", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = PLANE_ID_PATTERN, "maxLength" = 63))]
    pub plane_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_agent: Option<AgentConfig>,
    /// The older spelling of `clusterAgent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_cluster: Option<KubernetesClusterSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secret_refs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_store_ref: Option<SecretStoreRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<ObserverApi>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability_plane_ref: Option<ObservabilityPlaneRef>,
}

/// What a BuildPlane, WorkflowPlane or ClusterWorkflowPlane says: a Kubernetes cluster
/// that runs CI/CD workflows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildPlaneFields {
    #[serde(default, rename = "planeID", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = PLANE_ID_PATTERN, "maxLength" = 63))]
    pub plane_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_agent: Option<AgentConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_cluster: Option<KubernetesClusterSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_store_ref: Option<SecretStoreRef>,
    /// Where build logs are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<ObserverApi>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability_plane_ref: Option<ObservabilityPlaneRef>,
}

/// What an ObservabilityPlane or ClusterObservabilityPlane says: a Kubernetes cluster
/// that holds logs, metrics and traces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilityPlaneFields {
    #[serde(default, rename = "planeID", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = PLANE_ID_PATTERN, "maxLength" = 63))]
    pub plane_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_agent: Option<AgentConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_cluster: Option<KubernetesClusterSpec>,
    /// The Observer service endpoint; must be reachable from the control plane.
    #[serde(
        default,
        rename = "observerURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub observer_url: Option<String>,
}

/// What a new CR's spec is assembled from, whatever its kind (see `PlaneBuilder`).
pub(super) struct SpecParts {
    pub plane_id: Option<String>,
    pub cluster_agent: Option<AgentConfig>,
    pub kubernetes_cluster: Option<KubernetesClusterSpec>,
    /// Data planes only; [`GatewaySpec::local`] of `localhost` when unset.
    pub gateway: Option<GatewaySpec>,
    pub secret_store_ref: Option<SecretStoreRef>,
    pub observability_plane_ref: Option<ObservabilityPlaneRef>,
    /// Observability planes only.
    pub observer_url: Option<String>,
}

/// The spec fields every plane kind shares, borrowed.
pub struct CommonSpec<'a> {
    pub plane_id: Option<&'a str>,
    /// The agent block in use, if any (see [`agent_in_use`]).
    pub agent: Option<&'a AgentConfig>,
    pub kubernetes_cluster: Option<&'a KubernetesClusterSpec>,
    pub observability_plane_ref: Option<&'a ObservabilityPlaneRef>,
}

/// The agent block in use: `clusterAgent` (the current spelling) unless it says
/// `enabled: false`; the older `agent` only with `enabled: true`, its documented default
/// being false (the CRD writes that default).
fn agent_in_use<'a>(
    cluster_agent: Option<&'a AgentConfig>,
    agent: Option<&'a AgentConfig>,
) -> Option<&'a AgentConfig> {
    cluster_agent
        .filter(|a| a.enabled != Some(false))
        .or(agent.filter(|a| a.enabled == Some(true)))
}

/// What the fields of a plane type give every kind that wraps them.
pub(super) trait PlaneFields {
    fn common(&self) -> CommonSpec<'_>;
    /// These fields for a new CR (the builder's); each plane type takes what it has.
    fn assemble(parts: &SpecParts) -> Self;
    /// The data plane gateway settings; `None` for the other plane types.
    fn gateway(&self) -> Option<&GatewaySpec> {
        None
    }
}

impl PlaneFields for DataPlaneFields {
    fn assemble(parts: &SpecParts) -> Self {
        DataPlaneFields {
            plane_id: parts.plane_id.clone(),
            cluster_agent: parts.cluster_agent.clone(),
            agent: None,
            kubernetes_cluster: parts.kubernetes_cluster.clone(),
            gateway: Some(
                parts
                    .gateway
                    .clone()
                    .unwrap_or_else(|| GatewaySpec::local("localhost")),
            ),
            image_pull_secret_refs: Vec::new(),
            registry: None,
            secret_store_ref: parts.secret_store_ref.clone(),
            observer: None,
            observability_plane_ref: parts.observability_plane_ref.clone(),
        }
    }
    fn common(&self) -> CommonSpec<'_> {
        CommonSpec {
            plane_id: self.plane_id.as_deref(),
            agent: agent_in_use(self.cluster_agent.as_ref(), self.agent.as_ref()),
            kubernetes_cluster: self.kubernetes_cluster.as_ref(),
            observability_plane_ref: self.observability_plane_ref.as_ref(),
        }
    }
    fn gateway(&self) -> Option<&GatewaySpec> {
        self.gateway.as_ref()
    }
}

impl PlaneFields for BuildPlaneFields {
    fn assemble(parts: &SpecParts) -> Self {
        BuildPlaneFields {
            plane_id: parts.plane_id.clone(),
            cluster_agent: parts.cluster_agent.clone(),
            kubernetes_cluster: parts.kubernetes_cluster.clone(),
            secret_store_ref: parts.secret_store_ref.clone(),
            observability_plane_ref: parts.observability_plane_ref.clone(),
            ..BuildPlaneFields::default()
        }
    }
    fn common(&self) -> CommonSpec<'_> {
        CommonSpec {
            plane_id: self.plane_id.as_deref(),
            agent: agent_in_use(self.cluster_agent.as_ref(), self.agent.as_ref()),
            kubernetes_cluster: self.kubernetes_cluster.as_ref(),
            observability_plane_ref: self.observability_plane_ref.as_ref(),
        }
    }
}

impl PlaneFields for ObservabilityPlaneFields {
    fn assemble(parts: &SpecParts) -> Self {
        ObservabilityPlaneFields {
            plane_id: parts.plane_id.clone(),
            cluster_agent: parts.cluster_agent.clone(),
            kubernetes_cluster: parts.kubernetes_cluster.clone(),
            observer_url: parts.observer_url.clone(),
            ..ObservabilityPlaneFields::default()
        }
    }
    fn common(&self) -> CommonSpec<'_> {
        CommonSpec {
            plane_id: self.plane_id.as_deref(),
            agent: agent_in_use(self.cluster_agent.as_ref(), self.agent.as_ref()),
            kubernetes_cluster: self.kubernetes_cluster.as_ref(),
            observability_plane_ref: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::planes::crd::{BuildPlane, DataPlane, PlaneResource};

    #[test]
    fn plane_ids_are_what_a_cr_can_hold() {
        for good in ["default", "p1", "dp-prod-eu", "prod.eu-1", &"a".repeat(63)] {
            assert_eq!(super::check_plane_id(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "P1",
            "p_1",
            "-p1",
            "p1-",
            "p1..eu",
            "p1; curl x|sh #",
            "p1\u{1b}]0;owned\u{7}",
            &"a".repeat(64),
            &format!("{}.b", "a.".repeat(126)),
        ] {
            assert!(super::check_plane_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn both_spellings_and_plane_id_default() {
        let dp: DataPlane = serde_json::from_value(serde_json::json!({
            "apiVersion": "openchoreo.dev/v1alpha1", "kind": "DataPlane",
            "metadata": {"name": "prod", "namespace": "org", "generation": 3},
            "spec": {"agent": {"enabled": true, "clientCA": {"secretRef": {"name": "ca", "key": "ca.crt"}}},
                     "gateway": {"publicVirtualHost": "a", "organizationVirtualHost": "b"}}
        }))
        .unwrap();
        assert_eq!(dp.plane_id(), "prod");
        assert_eq!(dp.spec.gateway.as_ref().unwrap().http_port(), 19080);
        assert!(dp.agent().is_some());
        assert_eq!(dp.client_ca().unwrap().secret().unwrap().name, "ca");

        let bp: BuildPlane = serde_json::from_value(serde_json::json!({
            "apiVersion": "openchoreo.dev/v1alpha1", "kind": "BuildPlane",
            "metadata": {"name": "b", "namespace": "org"},
            "spec": {"planeID": "builds", "clusterAgent": {"clientCA": {"value": "PEM"}}}
        }))
        .unwrap();
        assert_eq!(bp.plane_id(), "builds");
        assert!(
            bp.agent().is_some(),
            "a clusterAgent block without enabled is on"
        );
    }

    /// OpenChoreo's current shape: `gateway.ingress` endpoints, `clusterAgent`, the
    /// cluster-scoped kind without `kubernetesCluster`; read and written back unchanged.
    #[test]
    fn the_current_shape_round_trips() {
        let spec = serde_json::json!({
            "planeID": "default",
            "clusterAgent": {"clientCA": {"value": "PEM"}},
            "secretStoreRef": {"name": "default"},
            "gateway": {"ingress": {"external": {
                "name": "gateway-default", "namespace": "openchoreo-data-plane",
                "http": {"host": "openchoreoapis.localhost", "listenerName": "http", "port": 19080}
            }}}
        });
        let object = serde_json::json!({
            "apiVersion": "openchoreo.dev/v1alpha1", "kind": "ClusterDataPlane",
            "metadata": {"name": "default"}, "spec": spec
        });
        let plane: crate::planes::crd::ClusterDataPlane =
            serde_json::from_value(object.clone()).unwrap();
        let gateway = plane.spec.0.gateway.as_ref().unwrap();
        assert_eq!(gateway.shape(), crate::planes::crd::GatewayShape::Endpoints);
        let endpoints = gateway.endpoints();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].0, "ingress.external");
        assert_eq!(endpoints[0].1.listeners()[0].1.port, 19080);
        assert_eq!(serde_json::to_value(&plane).unwrap()["spec"], spec);
    }

    /// `clusterAgent` is on when given; the older `agent` only with `enabled: true`, as
    /// OpenChoreo documents its default (false).
    #[test]
    fn which_agent_block_is_in_use() {
        let plane = |spec: serde_json::Value| -> DataPlane {
            let mut spec = spec;
            spec["gateway"] =
                serde_json::json!({"publicVirtualHost": "a", "organizationVirtualHost": "b"});
            serde_json::from_value(serde_json::json!({
                "apiVersion": "openchoreo.dev/v1alpha1", "kind": "DataPlane",
                "metadata": {"name": "p", "namespace": "org"}, "spec": spec
            }))
            .unwrap()
        };
        let ca = serde_json::json!({"value": "PEM"});
        for (spec, in_use) in [
            (serde_json::json!({"clusterAgent": {"clientCA": ca}}), true),
            (
                serde_json::json!({"clusterAgent": {"enabled": false, "clientCA": ca}}),
                false,
            ),
            (serde_json::json!({"agent": {"clientCA": ca}}), false),
            (
                serde_json::json!({"agent": {"enabled": false, "clientCA": ca}}),
                false,
            ),
            (
                serde_json::json!({"agent": {"enabled": true, "clientCA": ca}}),
                true,
            ),
            (serde_json::json!({}), false),
        ] {
            assert_eq!(plane(spec.clone()).agent().is_some(), in_use, "{spec}");
        }
    }
}
