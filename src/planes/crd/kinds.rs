//! The table of plane kinds. Everything planelink enumerates per kind comes from the one
//! `plane_kinds!` invocation below: the custom resource types, [`PlaneKind`], the
//! [`PlaneResource`] impls, [`AnyPlane`] and its decoding, the builder's constructors,
//! the CRD list and [`PlaneKind::for_each`] (the controller's and the gateway's
//! per-kind watches). A new kind is one row.

use kube::CustomResource;
use kube::core::{ClusterResourceScope, NamespaceResourceScope, Resource};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::fields::{
    BuildPlaneFields, CommonSpec, DataPlaneFields, ObservabilityPlaneFields, PlaneFields, SpecParts,
};
use super::status::PlaneStatus;
use super::values::{AgentConfig, GatewaySpec, ValueFrom};
use crate::planes::{CrRef, PlaneKey, PlaneType};

/// How a kind's scope reaches its API: every namespace, one, or the cluster.
pub trait KindScope {
    const CLUSTER_SCOPED: bool;
    /// The API of a kind of this scope for `namespace` (every namespace when `None`; a
    /// cluster-scoped kind has the one API whatever the namespace).
    fn api<K: Resource<DynamicType = (), Scope = Self>>(
        client: kube::Client,
        namespace: Option<&str>,
    ) -> kube::Api<K>
    where
        Self: Sized;
}

impl KindScope for NamespaceResourceScope {
    const CLUSTER_SCOPED: bool = false;
    fn api<K: Resource<DynamicType = (), Scope = Self>>(
        client: kube::Client,
        namespace: Option<&str>,
    ) -> kube::Api<K> {
        match namespace {
            Some(ns) => kube::Api::namespaced(client, ns),
            None => kube::Api::all(client),
        }
    }
}

impl KindScope for ClusterResourceScope {
    const CLUSTER_SCOPED: bool = true;
    fn api<K: Resource<DynamicType = (), Scope = Self>>(
        client: kube::Client,
        _namespace: Option<&str>,
    ) -> kube::Api<K> {
        kube::Api::all(client)
    }
}

/// Something done once for each plane kind, with the kind's Rust type in hand (a
/// closure cannot be generic over the kind).
pub trait ForEachKind {
    type Output;
    fn kind<K: PlaneResource>(&mut self) -> Self::Output;
}

/// Declares every plane kind from one row each: the Kubernetes kind (kube's derive takes
/// only a literal; the type it generates is the row's name, so the two cannot differ),
/// a spec wrapping the fields of its plane type, `scope: [namespaced]` or `scope: []`
/// (cluster-scoped).
macro_rules! plane_kinds {
    ($($kind:ident {
        kind: $kind_name:literal,
        spec: $spec:ident($fields:ty),
        plane_type: $plane_type:ident,
        short: $short:literal,
        scope: [$($namespaced:ident)?],
        doc: $doc:literal $(,)?
    }),+ $(,)?) => {
        $(
            #[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
            #[kube(
                group = "openchoreo.dev",
                version = "v1alpha1",
                kind = $kind_name,
                doc = $doc,
                $($namespaced,)?
                status = "PlaneStatus",
                derive = "PartialEq",
                shortname = $short,
                category = "openchoreo",
                printcolumn = r#"{"name":"PlaneID","type":"string","jsonPath":".spec.planeID"}"#,
                printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.agentConnection.connected"}"#,
                printcolumn = r#"{"name":"Agents","type":"integer","jsonPath":".status.agentConnection.connectedAgents"}"#,
                printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
                printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
            )]
            #[serde(transparent)]
            pub struct $spec(pub $fields);

            impl std::ops::Deref for $spec {
                type Target = $fields;
                fn deref(&self) -> &$fields {
                    &self.0
                }
            }

            impl std::ops::DerefMut for $spec {
                fn deref_mut(&mut self) -> &mut $fields {
                    &mut self.0
                }
            }

            impl PlaneResource for $kind {
                const KIND: PlaneKind = PlaneKind::$kind;
                fn into_any(self) -> AnyPlane {
                    AnyPlane::$kind(self)
                }
                fn common(&self) -> CommonSpec<'_> {
                    self.spec.0.common()
                }
                fn plane_status(&self) -> Option<&PlaneStatus> {
                    self.status.as_ref()
                }
                fn gateway_spec(&self) -> Option<&GatewaySpec> {
                    self.spec.0.gateway()
                }
                fn api(client: kube::Client, namespace: Option<&str>) -> kube::Api<Self> {
                    <<Self as Resource>::Scope as KindScope>::api(client, namespace)
                }
            }
        )+

        /// The custom resource kinds of remote planes. Each serves one [`PlaneType`]:
        /// `WorkflowPlane` is the newer name of `BuildPlane`, and the `Cluster*` kinds are
        /// cluster-scoped twins (OpenChoreo's gateway reads all of them).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum PlaneKind {
            $($kind,)+
        }

        impl PlaneKind {
            pub const ALL: [PlaneKind; [$($kind_name),+].len()] = [$(PlaneKind::$kind,)+];

            /// The Kubernetes kind.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(PlaneKind::$kind => $kind_name,)+
                }
            }

            pub const fn plane_type(self) -> PlaneType {
                match self {
                    $(PlaneKind::$kind => PlaneType::$plane_type,)+
                }
            }

            pub const fn cluster_scoped(self) -> bool {
                match self {
                    $(PlaneKind::$kind =>
                        <<$kind as Resource>::Scope as KindScope>::CLUSTER_SCOPED,)+
                }
            }

            /// Runs `visitor` once per kind, in the table's order.
            pub fn for_each<V: ForEachKind>(visitor: &mut V) -> Vec<V::Output> {
                vec![$(visitor.kind::<$kind>(),)+]
            }
        }

        /// A plane CR of any kind: what the registry and the planes directory hold.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum AnyPlane {
            $($kind($kind),)+
        }

        impl AnyPlane {
            pub fn meta(&self) -> &kube::core::ObjectMeta {
                match self {
                    $(AnyPlane::$kind(p) => p.meta(),)+
                }
            }

            pub fn meta_mut(&mut self) -> &mut kube::core::ObjectMeta {
                match self {
                    $(AnyPlane::$kind(p) => p.meta_mut(),)+
                }
            }

            pub fn kind(&self) -> PlaneKind {
                match self {
                    $(AnyPlane::$kind(_) => PlaneKind::$kind,)+
                }
            }

            pub fn key(&self) -> PlaneKey {
                match self {
                    $(AnyPlane::$kind(p) => p.key(),)+
                }
            }

            pub fn cr(&self) -> CrRef {
                match self {
                    $(AnyPlane::$kind(p) => p.cr(),)+
                }
            }

            /// Agents are in use: the agent block is given under either spelling and not disabled.
            pub fn agent_enabled(&self) -> bool {
                match self {
                    $(AnyPlane::$kind(p) => p.agent().is_some(),)+
                }
            }

            pub fn client_ca(&self) -> Option<&ValueFrom> {
                match self {
                    $(AnyPlane::$kind(p) => p.client_ca(),)+
                }
            }

            pub fn common(&self) -> CommonSpec<'_> {
                match self {
                    $(AnyPlane::$kind(p) => p.common(),)+
                }
            }

            pub fn plane_status(&self) -> Option<&PlaneStatus> {
                match self {
                    $(AnyPlane::$kind(p) => p.plane_status(),)+
                }
            }

            pub fn gateway_spec(&self) -> Option<&GatewaySpec> {
                match self {
                    $(AnyPlane::$kind(p) => p.gateway_spec(),)+
                }
            }
        }

        impl AnyPlane {
            /// Decodes one plane object of `kind` from its JSON form; an error names the
            /// field path (`spec.gateway.ingress.external: missing field `name``).
            pub fn from_value(
                kind: PlaneKind,
                value: serde_json::Value,
            ) -> Result<AnyPlane, serde_path_to_error::Error<serde_json::Error>> {
                Ok(match kind {
                    $(PlaneKind::$kind => AnyPlane::$kind(serde_path_to_error::deserialize(value)?),)+
                })
            }

            /// A new CR of `kind` named `name`, its spec assembled from `parts`.
            pub(super) fn assemble(kind: PlaneKind, name: &str, parts: &SpecParts) -> AnyPlane {
                match kind {
                    $(PlaneKind::$kind => AnyPlane::$kind($kind::new(
                        name,
                        $spec(<$fields as PlaneFields>::assemble(parts)),
                    )),)+
                }
            }
        }

        /// The CRD of every plane kind, in the table's order.
        pub(super) fn plane_crds()
        -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
        {
            use kube::CustomResourceExt as _;
            vec![$($kind::crd(),)+]
        }
    };
}

plane_kinds! {
    DataPlane {
        kind: "DataPlane",
        spec: DataPlaneSpec(DataPlaneFields),
        plane_type: DataPlane,
        short: "dp",
        scope: [namespaced],
        doc: "A DataPlane: a Kubernetes cluster where application workloads run, reached through its agent or directly",
    },
    ClusterDataPlane {
        kind: "ClusterDataPlane",
        spec: ClusterDataPlaneSpec(DataPlaneFields),
        plane_type: DataPlane,
        short: "cdp",
        scope: [],
        doc: "A ClusterDataPlane: a DataPlane shared by every namespace (cluster-scoped; spec.planeID is required)",
    },
    BuildPlane {
        kind: "BuildPlane",
        spec: BuildPlaneSpec(BuildPlaneFields),
        plane_type: BuildPlane,
        short: "bp",
        scope: [namespaced],
        doc: "A BuildPlane: a Kubernetes cluster that runs CI/CD workflows (WorkflowPlane is its newer name)",
    },
    WorkflowPlane {
        kind: "WorkflowPlane",
        spec: WorkflowPlaneSpec(BuildPlaneFields),
        plane_type: BuildPlane,
        short: "wp",
        scope: [namespaced],
        doc: "A WorkflowPlane: a Kubernetes cluster that runs CI/CD workflows",
    },
    ClusterWorkflowPlane {
        kind: "ClusterWorkflowPlane",
        spec: ClusterWorkflowPlaneSpec(BuildPlaneFields),
        plane_type: BuildPlane,
        short: "cwp",
        scope: [],
        doc: "A ClusterWorkflowPlane: a WorkflowPlane shared by every namespace (cluster-scoped; spec.planeID is required)",
    },
    ObservabilityPlane {
        kind: "ObservabilityPlane",
        spec: ObservabilityPlaneSpec(ObservabilityPlaneFields),
        plane_type: ObservabilityPlane,
        short: "op",
        scope: [namespaced],
        doc: "An ObservabilityPlane: a Kubernetes cluster that holds logs, metrics and traces",
    },
    ClusterObservabilityPlane {
        kind: "ClusterObservabilityPlane",
        spec: ClusterObservabilityPlaneSpec(ObservabilityPlaneFields),
        plane_type: ObservabilityPlane,
        short: "cop",
        scope: [],
        doc: "A ClusterObservabilityPlane: an ObservabilityPlane shared by every namespace (cluster-scoped; spec.planeID is required)",
    },
}

impl PlaneKind {
    /// The kind named exactly (Kubernetes kinds are case-sensitive).
    pub fn parse(kind: &str) -> Option<PlaneKind> {
        PlaneKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// A plane type's namespaced kind (`BuildPlane` for build planes).
impl From<PlaneType> for PlaneKind {
    fn from(plane_type: PlaneType) -> PlaneKind {
        match plane_type {
            PlaneType::DataPlane => PlaneKind::DataPlane,
            PlaneType::BuildPlane => PlaneKind::BuildPlane,
            PlaneType::ObservabilityPlane => PlaneKind::ObservabilityPlane,
        }
    }
}

impl std::fmt::Display for PlaneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the controller and the gateway need from any of the plane kinds.
pub trait PlaneResource:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: PlaneKind;
    const PLANE_TYPE: PlaneType = Self::KIND.plane_type();
    fn common(&self) -> CommonSpec<'_>;
    fn plane_status(&self) -> Option<&PlaneStatus>;
    /// The DataPlane's gateway settings; `None` for the other plane types.
    fn gateway_spec(&self) -> Option<&GatewaySpec>;
    /// The API of this kind for `namespace` (every namespace when `None`); a cluster-scoped
    /// kind has the one API whatever the namespace.
    fn api(client: kube::Client, namespace: Option<&str>) -> kube::Api<Self>;

    /// `spec.planeID`; a namespaced CR's name when unset (a cluster-scoped CR must give
    /// one, as OpenChoreo's gateway requires).
    fn plane_id(&self) -> String {
        let given = self.common().plane_id.filter(|id| !id.is_empty());
        if Self::KIND.cluster_scoped() {
            return given.unwrap_or_default().to_string();
        }
        given
            .map(str::to_string)
            .unwrap_or_else(|| self.meta().name.clone().unwrap_or_default())
    }

    /// The agent block under either spelling, when agents are in use.
    fn agent(&self) -> Option<&AgentConfig> {
        self.common().agent
    }

    /// What an agent of this CR names in its `/ws` request.
    fn key(&self) -> PlaneKey {
        PlaneKey {
            plane_type: Self::PLANE_TYPE,
            plane_id: self.plane_id(),
        }
    }

    /// Which CR this is.
    fn cr(&self) -> CrRef {
        CrRef {
            namespace: (!Self::KIND.cluster_scoped()).then(|| {
                self.meta()
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
            }),
            name: self.meta().name.clone().unwrap_or_default(),
        }
    }

    /// The client CA agents of this CR must chain to, when agents are in use.
    fn client_ca(&self) -> Option<&ValueFrom> {
        self.agent().and_then(|a| a.client_ca.as_ref())
    }

    fn into_any(self) -> AnyPlane;
}

/// The namespace kubectl uses for a namespaced object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A namespaced kind's API for `namespace`, or for every namespace.
pub fn namespaced_api<K>(client: kube::Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    NamespaceResourceScope::api(client, namespace)
}

impl AnyPlane {
    pub fn plane_type(&self) -> PlaneType {
        self.kind().plane_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's derived facts agree with the resource types kube generated.
    #[test]
    fn the_table_agrees_with_the_types() {
        struct Facts;
        impl ForEachKind for Facts {
            type Output = (PlaneKind, String, bool);
            fn kind<K: PlaneResource>(&mut self) -> Self::Output {
                (K::KIND, K::kind(&()).to_string(), K::KIND.cluster_scoped())
            }
        }
        let facts = PlaneKind::for_each(&mut Facts);
        assert_eq!(facts.len(), PlaneKind::ALL.len());
        for (kind, name, cluster_scoped) in facts {
            assert_eq!(kind.as_str(), name);
            assert_eq!(PlaneKind::parse(&name), Some(kind));
            assert_eq!(cluster_scoped, name.starts_with("Cluster"), "{name}");
        }
    }
}
