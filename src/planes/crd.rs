//! The custom resources of group `openchoreo.dev/v1alpha1`: DataPlane, BuildPlane,
//! ObservabilityPlane and Environment, with the fields of the reference docs. Both
//! spellings DESIGN.md lists are accepted (`clusterAgent` / `agent`, `secretKeyRef` /
//! `secretRef`); `planelink controller crds` prints the CRDs generated from these types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::core::{NamespaceResourceScope, Resource};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{CrRef, PlaneKey, PlaneType};

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
    /// `ObservabilityPlane` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
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

/// A Kubernetes cluster where application workloads run.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "openchoreo.dev",
    version = "v1alpha1",
    kind = "DataPlane",
    doc = "A DataPlane: a Kubernetes cluster where application workloads run, reached through its agent or directly",
    namespaced,
    status = "PlaneStatus",
    derive = "PartialEq",
    shortname = "dp",
    category = "openchoreo",
    printcolumn = r#"{"name":"PlaneID","type":"string","jsonPath":".spec.planeID"}"#,
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.agentConnection.connected"}"#,
    printcolumn = r#"{"name":"Agents","type":"integer","jsonPath":".status.agentConnection.connectedAgents"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneSpec {
    /// The ID agents send as planeID; the resource's name when unset.
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
    pub secret_store_ref: Option<SecretStoreRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<ObserverApi>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability_plane_ref: Option<ObservabilityPlaneRef>,
}

/// A Kubernetes cluster that runs CI/CD workflows.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "openchoreo.dev",
    version = "v1alpha1",
    kind = "BuildPlane",
    doc = "A BuildPlane: a Kubernetes cluster that runs CI/CD workflows",
    namespaced,
    status = "PlaneStatus",
    derive = "PartialEq",
    shortname = "bp",
    category = "openchoreo",
    printcolumn = r#"{"name":"PlaneID","type":"string","jsonPath":".spec.planeID"}"#,
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.agentConnection.connected"}"#,
    printcolumn = r#"{"name":"Agents","type":"integer","jsonPath":".status.agentConnection.connectedAgents"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BuildPlaneSpec {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability_plane_ref: Option<ObservabilityPlaneRef>,
}

/// A Kubernetes cluster that holds logs, metrics and traces.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "openchoreo.dev",
    version = "v1alpha1",
    kind = "ObservabilityPlane",
    doc = "An ObservabilityPlane: a Kubernetes cluster that holds logs, metrics and traces",
    namespaced,
    status = "PlaneStatus",
    derive = "PartialEq",
    shortname = "op",
    category = "openchoreo",
    printcolumn = r#"{"name":"PlaneID","type":"string","jsonPath":".spec.planeID"}"#,
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.agentConnection.connected"}"#,
    printcolumn = r#"{"name":"Agents","type":"integer","jsonPath":".status.agentConnection.connectedAgents"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilityPlaneSpec {
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
    /// Name of the DataPlane in the same namespace this environment deploys to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_production: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<EnvironmentGateway>,
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
    pub agent: Option<&'a AgentConfig>,
    pub kubernetes_cluster: Option<&'a KubernetesClusterSpec>,
    pub observability_plane_ref: Option<&'a ObservabilityPlaneRef>,
}

/// What the controller and the gateway need from any of the three plane kinds.
pub trait PlaneResource:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const PLANE_TYPE: PlaneType;
    fn common(&self) -> CommonSpec<'_>;
    fn plane_status(&self) -> Option<&PlaneStatus>;
    /// The DataPlane's gateway settings; `None` for the other kinds.
    fn gateway_spec(&self) -> Option<&GatewaySpec>;

    /// `spec.planeID`, or the name when unset.
    fn plane_id(&self) -> String {
        self.common()
            .plane_id
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| self.meta().name.clone().unwrap_or_default())
    }

    /// The agent block under either spelling, when agents are in use.
    fn agent(&self) -> Option<&AgentConfig> {
        self.common().agent.filter(|a| a.enabled != Some(false))
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
            namespace: Some(
                self.meta()
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            ),
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

macro_rules! plane_resource {
    ($kind:ident, $plane_type:expr, |$spec:ident| $observability:expr, $gateway:expr) => {
        impl PlaneResource for $kind {
            const PLANE_TYPE: PlaneType = $plane_type;
            fn into_any(self) -> AnyPlane {
                AnyPlane::$kind(self)
            }
            fn common(&self) -> CommonSpec<'_> {
                let $spec = &self.spec;
                CommonSpec {
                    plane_id: $spec.plane_id.as_deref(),
                    agent: $spec.cluster_agent.as_ref().or($spec.agent.as_ref()),
                    kubernetes_cluster: $spec.kubernetes_cluster.as_ref(),
                    observability_plane_ref: $observability,
                }
            }
            fn plane_status(&self) -> Option<&PlaneStatus> {
                self.status.as_ref()
            }
            #[allow(unused_variables)]
            fn gateway_spec(&self) -> Option<&GatewaySpec> {
                let $spec = &self.spec;
                $gateway
            }
        }
    };
}

plane_resource!(
    DataPlane,
    PlaneType::DataPlane,
    |spec| spec.observability_plane_ref.as_ref(),
    Some(&spec.gateway)
);
plane_resource!(
    BuildPlane,
    PlaneType::BuildPlane,
    |spec| spec.observability_plane_ref.as_ref(),
    None
);
plane_resource!(
    ObservabilityPlane,
    PlaneType::ObservabilityPlane,
    |_spec| None,
    None
);

/// A plane CR of any of the three kinds: what the registry and the planes directory hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AnyPlane {
    DataPlane(DataPlane),
    BuildPlane(BuildPlane),
    ObservabilityPlane(ObservabilityPlane),
}

macro_rules! each_plane {
    ($self:expr, |$plane:ident| $body:expr) => {
        match $self {
            AnyPlane::DataPlane($plane) => $body,
            AnyPlane::BuildPlane($plane) => $body,
            AnyPlane::ObservabilityPlane($plane) => $body,
        }
    };
}

impl AnyPlane {
    pub fn plane_type(&self) -> PlaneType {
        match self {
            AnyPlane::DataPlane(_) => PlaneType::DataPlane,
            AnyPlane::BuildPlane(_) => PlaneType::BuildPlane,
            AnyPlane::ObservabilityPlane(_) => PlaneType::ObservabilityPlane,
        }
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
    pub fn from_value(kind: PlaneType, value: serde_json::Value) -> serde_json::Result<AnyPlane> {
        Ok(match kind {
            PlaneType::DataPlane => AnyPlane::DataPlane(serde_json::from_value(value)?),
            PlaneType::BuildPlane => AnyPlane::BuildPlane(serde_json::from_value(value)?),
            PlaneType::ObservabilityPlane => {
                AnyPlane::ObservabilityPlane(serde_json::from_value(value)?)
            }
        })
    }
}

/// Builds a plane CR in agent mode, the way `register`, `up` and tests create them.
#[derive(Debug, Clone)]
pub struct PlaneBuilder {
    plane_type: PlaneType,
    namespace: String,
    name: String,
    plane_id: Option<String>,
    client_ca: Option<ValueFrom>,
    gateway: Option<GatewaySpec>,
    secret_store: Option<String>,
    observability_plane: Option<String>,
    observer_url: Option<String>,
}

impl PlaneBuilder {
    pub fn new(plane_type: PlaneType, namespace: &str, name: &str) -> PlaneBuilder {
        PlaneBuilder {
            plane_type,
            namespace: namespace.to_string(),
            name: name.to_string(),
            plane_id: None,
            client_ca: None,
            gateway: None,
            secret_store: None,
            observability_plane: None,
            observer_url: None,
        }
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

    /// DataPlane only: the gateway settings; [`GatewaySpec::local`] of `localhost` when unset.
    pub fn gateway(mut self, gateway: GatewaySpec) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// DataPlane and BuildPlane: `spec.secretStoreRef.name`.
    pub fn secret_store(mut self, name: Option<&str>) -> Self {
        self.secret_store = name.map(str::to_string);
        self
    }

    /// DataPlane and BuildPlane: `spec.observabilityPlaneRef`.
    pub fn observability_plane(mut self, name: Option<&str>) -> Self {
        self.observability_plane = name.map(str::to_string);
        self
    }

    /// ObservabilityPlane only: `spec.observerURL`.
    pub fn observer_url(mut self, url: Option<&str>) -> Self {
        self.observer_url = url.map(str::to_string);
        self
    }

    pub fn build(self) -> AnyPlane {
        let agent = Some(AgentConfig {
            enabled: None,
            client_ca: self.client_ca,
        });
        let secret_store_ref = self.secret_store.map(|name| SecretStoreRef { name });
        let observability_plane_ref = self.observability_plane.map(|name| ObservabilityPlaneRef {
            kind: Some("ObservabilityPlane".into()),
            name,
        });
        let mut plane = match self.plane_type {
            PlaneType::DataPlane => AnyPlane::DataPlane(DataPlane::new(
                &self.name,
                DataPlaneSpec {
                    plane_id: self.plane_id,
                    cluster_agent: agent,
                    agent: None,
                    kubernetes_cluster: None,
                    gateway: self
                        .gateway
                        .unwrap_or_else(|| GatewaySpec::local("localhost")),
                    image_pull_secret_refs: Vec::new(),
                    secret_store_ref,
                    observer: None,
                    observability_plane_ref,
                },
            )),
            PlaneType::BuildPlane => AnyPlane::BuildPlane(BuildPlane::new(
                &self.name,
                BuildPlaneSpec {
                    plane_id: self.plane_id,
                    cluster_agent: agent,
                    secret_store_ref,
                    observability_plane_ref,
                    ..BuildPlaneSpec::default()
                },
            )),
            PlaneType::ObservabilityPlane => AnyPlane::ObservabilityPlane(ObservabilityPlane::new(
                &self.name,
                ObservabilityPlaneSpec {
                    plane_id: self.plane_id,
                    cluster_agent: agent,
                    observer_url: self.observer_url,
                    ..ObservabilityPlaneSpec::default()
                },
            )),
        };
        plane.meta_mut().namespace = Some(self.namespace);
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
        BuildPlane::crd(),
        ObservabilityPlane::crd(),
        Environment::crd(),
    ];
    for crd in &mut crds {
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
                }
            }
        }
    }
    crds
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
        ] {
            assert!(yaml.contains(needle), "{needle} missing from:\n{yaml}");
        }
    }
}
