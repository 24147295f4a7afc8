//! Plane CRs built in code: `register`, `up` and tests create them this way.

use super::fields::SpecParts;
use super::kinds::AnyPlane;
use super::values::{
    AgentConfig, GatewaySpec, KubernetesClusterSpec, ObservabilityPlaneRef, SecretStoreRef,
    ValueFrom,
};
use crate::planes::PlaneKind;

/// Builds a plane CR in agent mode, the way `register`, `up` and tests create them.
#[derive(Debug, Clone)]
pub struct PlaneBuilder {
    kind: PlaneKind,
    namespace: String,
    name: String,
    plane_id: Option<String>,
    client_ca: Option<ValueFrom>,
    gateway: Option<GatewaySpec>,
    secret_store: Option<String>,
    observability_plane: Option<String>,
    observer_url: Option<String>,
    kubernetes_cluster: Option<KubernetesClusterSpec>,
}

impl PlaneBuilder {
    /// A plane of `kind` (a plane type builds its namespaced kind); `namespace` is not
    /// used by a cluster-scoped kind.
    pub fn new(kind: impl Into<PlaneKind>, namespace: &str, name: &str) -> PlaneBuilder {
        PlaneBuilder {
            kind: kind.into(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            plane_id: None,
            client_ca: None,
            gateway: None,
            secret_store: None,
            observability_plane: None,
            observer_url: None,
            kubernetes_cluster: None,
        }
    }

    /// Direct mode: the controller reaches the plane's API server itself, with these
    /// credentials; the plane has no agent block unless [`Self::client_ca`] is called.
    pub fn kubernetes_cluster(mut self, cluster: KubernetesClusterSpec) -> Self {
        self.kubernetes_cluster = Some(cluster);
        self
    }

    /// `spec.planeID`; the name is the plane ID when this is not called.
    pub fn plane_id(mut self, plane_id: &str) -> Self {
        self.plane_id = Some(plane_id.to_string());
        self
    }

    /// `spec.clusterAgent.clientCA`: the agents' CA, inline or from a Secret.
    pub fn client_ca(mut self, client_ca: ValueFrom) -> Self {
        self.client_ca = Some(client_ca);
        self
    }

    /// Data planes only: the gateway settings; [`GatewaySpec::local`] of `localhost` when unset.
    pub fn gateway(mut self, gateway: GatewaySpec) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Data and build planes: `spec.secretStoreRef.name`.
    pub fn secret_store(mut self, name: Option<&str>) -> Self {
        self.secret_store = name.map(str::to_string);
        self
    }

    /// Data and build planes: `spec.observabilityPlaneRef`.
    pub fn observability_plane(mut self, name: Option<&str>) -> Self {
        self.observability_plane = name.map(str::to_string);
        self
    }

    /// Observability planes only: `spec.observerURL`.
    pub fn observer_url(mut self, url: Option<&str>) -> Self {
        self.observer_url = url.map(str::to_string);
        self
    }

    pub fn build(self) -> AnyPlane {
        let direct = self.kubernetes_cluster.is_some();
        // A cluster-scoped CR has no name to fall back on: its planeID is written out.
        let plane_id = match self.plane_id {
            None if self.kind.cluster_scoped() => Some(self.name.clone()),
            given => given,
        };
        let parts = SpecParts {
            plane_id,
            cluster_agent: (!direct || self.client_ca.is_some()).then(|| AgentConfig {
                enabled: None,
                client_ca: self.client_ca.clone(),
            }),
            kubernetes_cluster: self.kubernetes_cluster,
            gateway: self.gateway,
            secret_store_ref: self.secret_store.map(|name| SecretStoreRef { name }),
            observability_plane_ref: self.observability_plane.map(|name| ObservabilityPlaneRef {
                kind: Some("ObservabilityPlane".into()),
                name,
            }),
            observer_url: self.observer_url,
        };
        let mut plane = AnyPlane::assemble(self.kind, &self.name, &parts);
        if !self.kind.cluster_scoped() {
            plane.meta_mut().namespace = Some(self.namespace);
        }
        plane
    }
}
