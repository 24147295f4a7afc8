//! The value types plane specs are built of: values inline or from Secrets, direct
//! access to an API server, the data plane gateway, observer and registry settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::planes::{PlaneKind, PlaneType};

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
