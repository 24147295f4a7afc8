//! The custom resources of group `openchoreo.dev/v1alpha1`: DataPlane, BuildPlane,
//! ObservabilityPlane and Environment, with the fields of the reference docs. Both
//! spellings DESIGN.md lists are accepted (`clusterAgent` / `agent`, `secretKeyRef` /
//! `secretRef`); `planelink controller crds` prints the CRDs generated from these types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::core::{ClusterResourceScope, NamespaceResourceScope, Resource};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{CrRef, PlaneKey, PlaneKind, PlaneType};

/// A value given inline or read from a key of a Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    /// Inline value (not recommended for sensitive data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyReference>,
    /// The older spelling of `secretKeyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyReference {
    /// Name of the Secret.
    pub name: String,
    /// Namespace of the Secret; the referring resource's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Key within the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl ValueFrom {
    pub fn secret(&self) -> Option<&SecretKeyReference> {
        self.secret_key_ref.as_ref().or(self.secret_ref.as_ref())
    }

    /// A value given inline.
    pub fn inline(value: impl Into<String>) -> ValueFrom {
        ValueFrom {
            value: Some(value.into()),
            ..ValueFrom::default()
        }
    }

    /// A key of a Secret (`secretKeyRef`).
    pub fn from_secret(namespace: Option<&str>, name: &str, key: &str) -> ValueFrom {
        ValueFrom {
            secret_key_ref: Some(SecretKeyReference {
                name: name.to_string(),
                namespace: namespace.map(str::to_string),
                key: Some(key.to_string()),
            }),
            ..ValueFrom::default()
        }
    }

    /// The inline value, when one is given (an empty or blank value counts as none).
    pub fn inline_value(&self) -> Option<&str> {
        self.value.as_deref().filter(|v| !v.trim().is_empty())
    }
}

/// The key a `secretKeyRef` reads when it names none: the key cert-manager writes a CA to.
pub const DEFAULT_SECRET_KEY: &str = "ca.crt";

impl SecretKeyReference {
    /// The Secret's namespace: its own, or the referring resource's.
    pub fn namespace_or<'a>(&'a self, referrer: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(referrer)
    }

    pub fn key_or_default(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY)
    }
}

/// Agent-based communication with the remote cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// Whether agent-based communication is enabled (on when the block is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// CA certificate that verifies the agent's client certificate (PEM).
    #[serde(default, rename = "clientCA", skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<ValueFrom>,
}

/// Direct access to the remote cluster's API server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesClusterSpec {
    /// URL of the Kubernetes API server.
    pub server: String,
    pub tls: KubernetesTls,
    pub auth: KubernetesAuth,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubernetesTls {
    /// CA certificate of the API server.
    pub ca: ValueFrom,
}

/// Either `mtls` or `bearerToken`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<ValueFrom>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsAuth {
    pub client_cert: ValueFrom,
    pub client_key: ValueFrom,
}

/// An External Secrets Operator ClusterSecretStore in the remote plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretStoreRef {
    pub name: String,
}

/// Gateway settings of a DataPlane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Public virtual host for external traffic.
    pub public_virtual_host: String,
    /// Organization-specific virtual host for internal traffic.
    pub organization_virtual_host: String,
    /// Port the data plane gateway is externally reachable on for HTTP.
    #[serde(default = "default_public_http_port", rename = "publicHTTPPort")]
    #[schemars(range(min = 1, max = 65535))]
    pub public_http_port: i32,
    /// Port the data plane gateway is externally reachable on for HTTPS.
    #[serde(default = "default_public_https_port", rename = "publicHTTPSPort")]
    #[schemars(range(min = 1, max = 65535))]
    pub public_https_port: i32,
}

impl GatewaySpec {
    /// A data plane gateway answering on `host` for both virtual hosts, on the default
    /// ports: what a single-host setup (`planelink up`, tests) registers.
    pub fn local(host: &str) -> GatewaySpec {
        GatewaySpec {
            public_virtual_host: host.to_string(),
            organization_virtual_host: host.to_string(),
            public_http_port: DEFAULT_PUBLIC_HTTP_PORT,
            public_https_port: DEFAULT_PUBLIC_HTTPS_PORT,
        }
    }
}

pub const DEFAULT_PUBLIC_HTTP_PORT: i32 = 19080;
pub const DEFAULT_PUBLIC_HTTPS_PORT: i32 = 19443;

fn default_public_http_port() -> i32 {
    DEFAULT_PUBLIC_HTTP_PORT
}

fn default_public_https_port() -> i32 {
    DEFAULT_PUBLIC_HTTPS_PORT
}

/// Observer API integration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObserverApi {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<ObserverAuthentication>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObserverAuthentication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

/// Names the ObservabilityPlane a DataPlane or BuildPlane sends telemetry to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObservabilityPlaneRef {
    /// `ObservabilityPlane` or `ClusterObservabilityPlane`; by default the one of the
    /// referring plane's scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

impl ObservabilityPlaneRef {
    /// The kind named, or the default for a plane of `referrer`'s scope; `None` for a
    /// kind that is no observability plane.
    pub fn target_kind(&self, referrer: PlaneKind) -> Option<PlaneKind> {
        match self.kind.as_deref().filter(|k| !k.is_empty()) {
            None if referrer.cluster_scoped() => Some(PlaneKind::ClusterObservabilityPlane),
            None => Some(PlaneKind::ObservabilityPlane),
            Some(kind) => {
                PlaneKind::parse(kind).filter(|k| k.plane_type() == PlaneType::ObservabilityPlane)
            }
        }
    }
}

/// Connection of the plane's agents to the gateway, as the gateway last reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentConnectionStatus {
    pub connected: bool,
    pub connected_agents: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disconnected_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Gateway replicas holding a tunnel from the plane's agents, of the live replicas
    /// (e.g. `3/3`); absent when the replicas could not be asked one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_replicas: Option<String>,
    /// The connected agents (at most 16), each once however many replicas it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<ConnectedAgent>,
}

/// One connected agent as the gateway verified it: the plane API's and the status's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedAgent {
    /// The agent process's ID from its hello, the same on each of its tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The tunnel protocol it speaks: `planelink.v1-h2` (HTTP/2 on the TLS stream),
    /// `planelink.v1` (HTTP/2 inside WebSocket) or `openchoreo` (OpenChoreo's agent, JSON
    /// frames).
    pub protocol: String,
    /// When its client certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<Time>,
    /// When its client certificate became valid: with the expiry, the lifetime that
    /// scales the expiry warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_before: Option<Time>,
}

/// A Kubernetes time as the trust module's.
fn offset_time(t: &Time) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok()
}

/// The most agents a plane's status lists.
pub const MAX_LISTED_AGENTS: usize = 16;

impl ConnectedAgent {
    /// Where the agent's certificate stands against `warn` (a third of its lifetime when
    /// that is shorter).
    pub fn certificate_expiry(
        &self,
        now: std::time::SystemTime,
        warn: std::time::Duration,
    ) -> Option<crate::trust::Expiry> {
        let not_after = offset_time(self.certificate_not_after.as_ref()?)?;
        let not_before = self.certificate_not_before.as_ref().and_then(offset_time);
        Some(crate::trust::Expiry::at(not_before, not_after, now, warn))
    }

    /// Each agent once (an agent holds a tunnel to every replica), in a stable order, at
    /// most [`MAX_LISTED_AGENTS`].
    pub fn distinct(mut agents: Vec<ConnectedAgent>) -> Vec<ConnectedAgent> {
        let order = |a: &ConnectedAgent| {
            (
                a.instance.clone(),
                a.protocol.clone(),
                a.certificate_not_after.as_ref().map(|t| t.0),
            )
        };
        agents.sort_by_key(order);
        agents.dedup_by(|a, b| order(a) == order(b));
        agents.truncate(MAX_LISTED_AGENTS);
        agents
    }
}

/// Status shared by the three plane kinds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaneStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_connection: Option<AgentConnectionStatus>,
}

/// What a DataPlane or ClusterDataPlane says: a Kubernetes cluster where application
/// workloads run, reached through its agent or directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneFields {
    /// The ID agents send as planeID; the resource's name when unset (required on the
    /// cluster-scoped kind).
    #[serde(default, rename = "planeID", skip_serializing_if = "Option::is_none")]
    pub plane_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_agent: Option<AgentConfig>,
    /// The older spelling of `clusterAgent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_cluster: Option<KubernetesClusterSpec>,
    pub gateway: GatewaySpec,
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

/// The container registry a DataPlane pulls application images from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Registry prefix of application images.
    pub prefix: String,
    /// Name of the Secret holding the registry's pull credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

/// Declares one plane kind: its spec wraps the fields it shares with the other kinds of
/// its plane type (a namespaced kind and its cluster-scoped twin read the same).
macro_rules! plane_kind {
    ($spec:ident($fields:ty), kind = $kind:literal, doc = $doc:literal, short = $short:literal
     $(, $namespaced:ident)?) => {
        #[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[kube(
            group = "openchoreo.dev",
            version = "v1alpha1",
            kind = $kind,
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
    };
}

plane_kind!(
    DataPlaneSpec(DataPlaneFields),
    kind = "DataPlane",
    doc = "A DataPlane: a Kubernetes cluster where application workloads run, reached through its agent or directly",
    short = "dp",
    namespaced
);
plane_kind!(
    ClusterDataPlaneSpec(DataPlaneFields),
    kind = "ClusterDataPlane",
    doc = "A ClusterDataPlane: a DataPlane shared by every namespace (cluster-scoped; spec.planeID is required)",
    short = "cdp"
);
plane_kind!(
    BuildPlaneSpec(BuildPlaneFields),
    kind = "BuildPlane",
    doc = "A BuildPlane: a Kubernetes cluster that runs CI/CD workflows (WorkflowPlane is its newer name)",
    short = "bp",
    namespaced
);
plane_kind!(
    WorkflowPlaneSpec(BuildPlaneFields),
    kind = "WorkflowPlane",
    doc = "A WorkflowPlane: a Kubernetes cluster that runs CI/CD workflows",
    short = "wp",
    namespaced
);
plane_kind!(
    ClusterWorkflowPlaneSpec(BuildPlaneFields),
    kind = "ClusterWorkflowPlane",
    doc = "A ClusterWorkflowPlane: a WorkflowPlane shared by every namespace (cluster-scoped; spec.planeID is required)",
    short = "cwp"
);
plane_kind!(
    ObservabilityPlaneSpec(ObservabilityPlaneFields),
    kind = "ObservabilityPlane",
    doc = "An ObservabilityPlane: a Kubernetes cluster that holds logs, metrics and traces",
    short = "op",
    namespaced
);
plane_kind!(
    ClusterObservabilityPlaneSpec(ObservabilityPlaneFields),
    kind = "ClusterObservabilityPlane",
    doc = "A ClusterObservabilityPlane: an ObservabilityPlane shared by every namespace (cluster-scoped; spec.planeID is required)",
    short = "cop"
);

/// A deployment stage (development, staging, production) bound to a DataPlane.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "openchoreo.dev",
    version = "v1alpha1",
    kind = "Environment",
    doc = "An Environment: a deployment stage bound to a DataPlane",
    namespaced,
    shortname = "env",
    category = "openchoreo",
    printcolumn = r#"{"name":"DataPlane","type":"string","jsonPath":".spec.dataPlaneRef"}"#,
    printcolumn = r#"{"name":"Production","type":"boolean","jsonPath":".spec.isProduction"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// The data plane this environment deploys to: a DataPlane of its namespace by name,
    /// or (newer OpenChoreo) `{kind, name}` naming a DataPlane or ClusterDataPlane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub data_plane_ref: Option<DataPlaneRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_production: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<EnvironmentGateway>,
}

/// An Environment's `dataPlaneRef`, in either of OpenChoreo's shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataPlaneRef {
    Name(String),
    Object {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        name: String,
    },
}

impl DataPlaneRef {
    /// The plane named, and whether it is cluster-scoped (a ClusterDataPlane).
    pub fn target(&self) -> (PlaneKind, &str) {
        match self {
            DataPlaneRef::Name(name) => (PlaneKind::DataPlane, name),
            DataPlaneRef::Object { kind, name } => match kind.as_deref() {
                Some("ClusterDataPlane") => (PlaneKind::ClusterDataPlane, name),
                _ => (PlaneKind::DataPlane, name),
            },
        }
    }
}

/// A value of any JSON shape, kept as given (a field OpenChoreo's releases spell two ways).
fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentGateway {
    /// Subdomain prefix for deployed applications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_prefix: Option<String>,
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
trait PlaneFields {
    fn common(&self) -> CommonSpec<'_>;
    /// The data plane gateway settings; `None` for the other plane types.
    fn gateway(&self) -> Option<&GatewaySpec> {
        None
    }
}

impl PlaneFields for DataPlaneFields {
    fn common(&self) -> CommonSpec<'_> {
        CommonSpec {
            plane_id: self.plane_id.as_deref(),
            agent: agent_in_use(self.cluster_agent.as_ref(), self.agent.as_ref()),
            kubernetes_cluster: self.kubernetes_cluster.as_ref(),
            observability_plane_ref: self.observability_plane_ref.as_ref(),
        }
    }
    fn gateway(&self) -> Option<&GatewaySpec> {
        Some(&self.gateway)
    }
}

impl PlaneFields for BuildPlaneFields {
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
    fn common(&self) -> CommonSpec<'_> {
        CommonSpec {
            plane_id: self.plane_id.as_deref(),
            agent: agent_in_use(self.cluster_agent.as_ref(), self.agent.as_ref()),
            kubernetes_cluster: self.kubernetes_cluster.as_ref(),
            observability_plane_ref: None,
        }
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
    match namespace {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::all(client),
    }
}

fn cluster_api<K>(client: kube::Client, _namespace: Option<&str>) -> kube::Api<K>
where
    K: Resource<DynamicType = (), Scope = ClusterResourceScope>,
{
    kube::Api::all(client)
}

macro_rules! plane_resource {
    ($kind:ident, $api:ident) => {
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
                $api(client, namespace)
            }
        }
    };
}

plane_resource!(DataPlane, namespaced_api);
plane_resource!(ClusterDataPlane, cluster_api);
plane_resource!(BuildPlane, namespaced_api);
plane_resource!(WorkflowPlane, namespaced_api);
plane_resource!(ClusterWorkflowPlane, cluster_api);
plane_resource!(ObservabilityPlane, namespaced_api);
plane_resource!(ClusterObservabilityPlane, cluster_api);

/// A plane CR of any kind: what the registry and the planes directory hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AnyPlane {
    DataPlane(DataPlane),
    ClusterDataPlane(ClusterDataPlane),
    BuildPlane(BuildPlane),
    WorkflowPlane(WorkflowPlane),
    ClusterWorkflowPlane(ClusterWorkflowPlane),
    ObservabilityPlane(ObservabilityPlane),
    ClusterObservabilityPlane(ClusterObservabilityPlane),
}

macro_rules! each_plane {
    ($self:expr, |$plane:ident| $body:expr) => {
        match $self {
            AnyPlane::DataPlane($plane) => $body,
            AnyPlane::ClusterDataPlane($plane) => $body,
            AnyPlane::BuildPlane($plane) => $body,
            AnyPlane::WorkflowPlane($plane) => $body,
            AnyPlane::ClusterWorkflowPlane($plane) => $body,
            AnyPlane::ObservabilityPlane($plane) => $body,
            AnyPlane::ClusterObservabilityPlane($plane) => $body,
        }
    };
}

impl AnyPlane {
    pub fn kind(&self) -> PlaneKind {
        fn of<K: PlaneResource>(_: &K) -> PlaneKind {
            K::KIND
        }
        each_plane!(self, |p| of(p))
    }

    pub fn plane_type(&self) -> PlaneType {
        self.kind().plane_type()
    }

    pub fn meta(&self) -> &kube::core::ObjectMeta {
        each_plane!(self, |p| p.meta())
    }

    pub fn meta_mut(&mut self) -> &mut kube::core::ObjectMeta {
        each_plane!(self, |p| p.meta_mut())
    }

    pub fn key(&self) -> PlaneKey {
        each_plane!(self, |p| p.key())
    }

    pub fn cr(&self) -> CrRef {
        each_plane!(self, |p| p.cr())
    }

    /// Agents are in use: the agent block is given under either spelling and not disabled.
    pub fn agent_enabled(&self) -> bool {
        each_plane!(self, |p| p.agent().is_some())
    }

    pub fn client_ca(&self) -> Option<&ValueFrom> {
        each_plane!(self, |p| p.client_ca())
    }

    pub fn common(&self) -> CommonSpec<'_> {
        each_plane!(self, |p| p.common())
    }

    pub fn plane_status(&self) -> Option<&PlaneStatus> {
        each_plane!(self, |p| p.plane_status())
    }

    pub fn gateway_spec(&self) -> Option<&GatewaySpec> {
        each_plane!(self, |p| p.gateway_spec())
    }

    /// Decodes one plane object of `kind` from its JSON form.
    pub fn from_value(kind: PlaneKind, value: serde_json::Value) -> serde_json::Result<AnyPlane> {
        Ok(match kind {
            PlaneKind::DataPlane => AnyPlane::DataPlane(serde_json::from_value(value)?),
            PlaneKind::ClusterDataPlane => {
                AnyPlane::ClusterDataPlane(serde_json::from_value(value)?)
            }
            PlaneKind::BuildPlane => AnyPlane::BuildPlane(serde_json::from_value(value)?),
            PlaneKind::WorkflowPlane => AnyPlane::WorkflowPlane(serde_json::from_value(value)?),
            PlaneKind::ClusterWorkflowPlane => {
                AnyPlane::ClusterWorkflowPlane(serde_json::from_value(value)?)
            }
            PlaneKind::ObservabilityPlane => {
                AnyPlane::ObservabilityPlane(serde_json::from_value(value)?)
            }
            PlaneKind::ClusterObservabilityPlane => {
                AnyPlane::ClusterObservabilityPlane(serde_json::from_value(value)?)
            }
        })
    }
}

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
        let cluster_agent = (!direct || self.client_ca.is_some()).then(|| AgentConfig {
            enabled: None,
            client_ca: self.client_ca.clone(),
        });
        let kubernetes_cluster = self.kubernetes_cluster.clone();
        let secret_store_ref = self.secret_store.map(|name| SecretStoreRef { name });
        let observability_plane_ref = self.observability_plane.map(|name| ObservabilityPlaneRef {
            kind: Some("ObservabilityPlane".into()),
            name,
        });
        // A cluster-scoped CR has no name to fall back on: its planeID is written out.
        let plane_id = match self.plane_id {
            None if self.kind.cluster_scoped() => Some(self.name.clone()),
            given => given,
        };
        let name = &self.name;
        let data = || DataPlaneFields {
            plane_id: plane_id.clone(),
            cluster_agent: cluster_agent.clone(),
            agent: None,
            kubernetes_cluster: kubernetes_cluster.clone(),
            gateway: self
                .gateway
                .clone()
                .unwrap_or_else(|| GatewaySpec::local("localhost")),
            image_pull_secret_refs: Vec::new(),
            registry: None,
            secret_store_ref: secret_store_ref.clone(),
            observer: None,
            observability_plane_ref: observability_plane_ref.clone(),
        };
        let build = || BuildPlaneFields {
            plane_id: plane_id.clone(),
            cluster_agent: cluster_agent.clone(),
            kubernetes_cluster: kubernetes_cluster.clone(),
            secret_store_ref: secret_store_ref.clone(),
            observability_plane_ref: observability_plane_ref.clone(),
            ..BuildPlaneFields::default()
        };
        let observability = || ObservabilityPlaneFields {
            plane_id: plane_id.clone(),
            cluster_agent: cluster_agent.clone(),
            kubernetes_cluster: kubernetes_cluster.clone(),
            observer_url: self.observer_url.clone(),
            ..ObservabilityPlaneFields::default()
        };
        let mut plane = match self.kind {
            PlaneKind::DataPlane => {
                AnyPlane::DataPlane(DataPlane::new(name, DataPlaneSpec(data())))
            }
            PlaneKind::ClusterDataPlane => AnyPlane::ClusterDataPlane(ClusterDataPlane::new(
                name,
                ClusterDataPlaneSpec(data()),
            )),
            PlaneKind::BuildPlane => {
                AnyPlane::BuildPlane(BuildPlane::new(name, BuildPlaneSpec(build())))
            }
            PlaneKind::WorkflowPlane => {
                AnyPlane::WorkflowPlane(WorkflowPlane::new(name, WorkflowPlaneSpec(build())))
            }
            PlaneKind::ClusterWorkflowPlane => AnyPlane::ClusterWorkflowPlane(
                ClusterWorkflowPlane::new(name, ClusterWorkflowPlaneSpec(build())),
            ),
            PlaneKind::ObservabilityPlane => AnyPlane::ObservabilityPlane(ObservabilityPlane::new(
                name,
                ObservabilityPlaneSpec(observability()),
            )),
            PlaneKind::ClusterObservabilityPlane => {
                AnyPlane::ClusterObservabilityPlane(ClusterObservabilityPlane::new(
                    name,
                    ClusterObservabilityPlaneSpec(observability()),
                ))
            }
        };
        if !self.kind.cluster_scoped() {
            plane.meta_mut().namespace = Some(self.namespace.clone());
        }
        plane
    }
}

/// The CRDs of every kind, as `kubectl apply` takes them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt as _;
    let mut crds = vec![
        DataPlane::crd(),
        ClusterDataPlane::crd(),
        BuildPlane::crd(),
        WorkflowPlane::crd(),
        ClusterWorkflowPlane::crd(),
        ObservabilityPlane::crd(),
        ClusterObservabilityPlane::crd(),
        Environment::crd(),
    ];
    for crd in &mut crds {
        let cluster_scoped = crd.spec.scope == "Cluster";
        for version in &mut crd.spec.versions {
            let mut root = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut());
            for part in ["spec", "status"] {
                if let Some(schema) = root
                    .as_deref_mut()
                    .and_then(|r| r.properties.as_mut())
                    .and_then(|p| p.get_mut(part))
                {
                    preserve_unknown_fields(schema);
                    if part == "spec" {
                        default_agent_disabled(schema);
                    }
                    // OpenChoreo's gateway keys a cluster-scoped plane by its planeID
                    // alone: there is no namespaced name to fall back on.
                    if cluster_scoped && part == "spec" {
                        schema
                            .required
                            .get_or_insert_with(Vec::new)
                            .push("planeID".to_string());
                        if let Some(plane_id) = schema
                            .properties
                            .as_mut()
                            .and_then(|p| p.get_mut("planeID"))
                        {
                            plane_id.nullable = None;
                            plane_id.min_length = Some(1);
                        }
                    }
                }
            }
        }
    }
    crds
}

/// `spec.agent.enabled` defaults to false, as OpenChoreo documents it (`clusterAgent`,
/// the current spelling, is on when given).
fn default_agent_disabled(
    spec: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    if let Some(enabled) = spec
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("agent"))
        .and_then(|agent| agent.properties.as_mut())
        .and_then(|p| p.get_mut("enabled"))
    {
        enabled.default = Some(JSON(serde_json::Value::Bool(false)));
        enabled.description = Some(
            "Whether agent-based communication is enabled (default false, as documented)".into(),
        );
    }
}

/// Marks every object of a schema to keep fields it does not name: these CRDs replace
/// OpenChoreo's, whose controllers may use fields planelink does not know (and newer
/// OpenChoreo releases add some); the API server must not prune them on the way.
fn preserve_unknown_fields(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    if let Some(properties) = schema.properties.as_mut() {
        if schema.additional_properties.is_none() {
            schema.x_kubernetes_preserve_unknown_fields = Some(true);
        }
        properties.values_mut().for_each(preserve_unknown_fields);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => preserve_unknown_fields(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(preserve_unknown_fields)
        }
        None => {}
    }
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serialises"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(dp.spec.gateway.public_http_port, 19080);
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

    /// An Environment's dataPlaneRef in either shape, and an observabilityPlaneRef's kind
    /// by default the referrer's scope.
    #[test]
    fn references_in_every_shape() {
        let env = |spec: serde_json::Value| -> Environment {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "openchoreo.dev/v1alpha1", "kind": "Environment",
                "metadata": {"name": "dev", "namespace": "org"}, "spec": spec
            }))
            .unwrap()
        };
        let target = |e: Environment| {
            let r = e.spec.data_plane_ref.unwrap();
            let (kind, name) = r.target();
            (kind, name.to_string())
        };
        assert_eq!(
            target(env(serde_json::json!({"dataPlaneRef": "dp"}))),
            (PlaneKind::DataPlane, "dp".into())
        );
        assert_eq!(
            target(env(
                serde_json::json!({"dataPlaneRef": {"kind": "ClusterDataPlane", "name": "shared"}})
            )),
            (PlaneKind::ClusterDataPlane, "shared".into())
        );
        assert_eq!(
            target(env(serde_json::json!({"dataPlaneRef": {"name": "dp"}}))),
            (PlaneKind::DataPlane, "dp".into())
        );

        let named = |kind: Option<&str>| ObservabilityPlaneRef {
            kind: kind.map(str::to_string),
            name: "obs".into(),
        };
        assert_eq!(
            named(None).target_kind(PlaneKind::DataPlane),
            Some(PlaneKind::ObservabilityPlane)
        );
        assert_eq!(
            named(None).target_kind(PlaneKind::ClusterDataPlane),
            Some(PlaneKind::ClusterObservabilityPlane)
        );
        assert_eq!(
            named(Some("ClusterObservabilityPlane")).target_kind(PlaneKind::WorkflowPlane),
            Some(PlaneKind::ClusterObservabilityPlane)
        );
        assert_eq!(
            named(Some("DataPlane")).target_kind(PlaneKind::DataPlane),
            None
        );
    }

    #[test]
    fn crds_are_structural_and_name_both_spellings() {
        let yaml = crds_yaml();
        for needle in [
            "name: dataplanes.openchoreo.dev",
            "name: environments.openchoreo.dev",
            "clusterAgent:",
            "secretKeyRef:",
            "secretRef:",
            "planeID:",
            "observerURL:",
            "default: 19080",
            "subresources:",
            "x-kubernetes-preserve-unknown-fields: true",
            "default: false\n                    description: Whether agent-based communication is enabled (default false, as documented)",
        ] {
            assert!(yaml.contains(needle), "{needle} missing from:\n{yaml}");
        }
    }
}
