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

/// Gateway settings of a data plane, in either of OpenChoreo's shapes: the current one
/// (`ingress` and `egress`, each with `external` and `internal` endpoints naming a Gateway
/// API Gateway and its listeners) or the documented older one (two virtual hosts and their
/// ports). One type reads both and writes back what it read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Where traffic enters the data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<GatewayEndpoints>,
    /// Where traffic leaves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<GatewayEndpoints>,
    /// Older shape: public virtual host for external traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_virtual_host: Option<String>,
    /// Older shape: organization-specific virtual host for internal traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_virtual_host: Option<String>,
    /// Older shape: the port the data plane gateway is reachable on for HTTP (19080 when unset).
    #[serde(
        default,
        rename = "publicHTTPPort",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 65535), extend("default" = 19080))]
    pub public_http_port: Option<i32>,
    /// Older shape: the port for HTTPS (19443 when unset).
    #[serde(
        default,
        rename = "publicHTTPSPort",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 65535), extend("default" = 19443))]
    pub public_https_port: Option<i32>,
}

/// The external and internal endpoints of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GatewayEndpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<GatewayEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<GatewayEndpoint>,
}

/// A Gateway API Gateway in the data plane and the listeners it offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GatewayEndpoint {
    /// Name of the Gateway object.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<GatewayListener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<GatewayListener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayListener>,
}

/// One listener of a Gateway: where it is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    /// The listener's name on the Gateway object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_name: Option<String>,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    pub host: String,
}

/// Which shape a [`GatewaySpec`] is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayShape {
    /// `ingress`/`egress` (OpenChoreo today).
    Endpoints,
    /// `publicVirtualHost`/`organizationVirtualHost` (the documented older API).
    VirtualHosts,
    /// Neither: no gateway settings.
    Empty,
}

impl GatewaySpec {
    /// A data plane gateway answering on `host` for both virtual hosts, on the default
    /// ports: what a single-host setup (`planelink up`, tests) registers.
    pub fn local(host: &str) -> GatewaySpec {
        GatewaySpec::virtual_hosts(
            host,
            host,
            DEFAULT_PUBLIC_HTTP_PORT,
            DEFAULT_PUBLIC_HTTPS_PORT,
        )
    }

    /// The older shape: two virtual hosts and their ports.
    pub fn virtual_hosts(public: &str, organization: &str, http: i32, https: i32) -> GatewaySpec {
        GatewaySpec {
            public_virtual_host: Some(public.to_string()),
            organization_virtual_host: Some(organization.to_string()),
            public_http_port: Some(http),
            public_https_port: Some(https),
            ..GatewaySpec::default()
        }
    }

    pub fn shape(&self) -> GatewayShape {
        if self.ingress.is_some() || self.egress.is_some() {
            GatewayShape::Endpoints
        } else if self.public_virtual_host.is_some()
            || self.organization_virtual_host.is_some()
            || self.public_http_port.is_some()
            || self.public_https_port.is_some()
        {
            GatewayShape::VirtualHosts
        } else {
            GatewayShape::Empty
        }
    }

    pub fn http_port(&self) -> i32 {
        self.public_http_port.unwrap_or(DEFAULT_PUBLIC_HTTP_PORT)
    }

    pub fn https_port(&self) -> i32 {
        self.public_https_port.unwrap_or(DEFAULT_PUBLIC_HTTPS_PORT)
    }

    /// Every endpoint of the current shape, named by its field path (`ingress.external`).
    pub fn endpoints(&self) -> Vec<(String, &GatewayEndpoint)> {
        [("ingress", &self.ingress), ("egress", &self.egress)]
            .into_iter()
            .filter_map(|(direction, endpoints)| Some((direction, endpoints.as_ref()?)))
            .flat_map(|(direction, endpoints)| {
                [
                    ("external", &endpoints.external),
                    ("internal", &endpoints.internal),
                ]
                .into_iter()
                .filter_map(move |(side, endpoint)| {
                    Some((format!("{direction}.{side}"), endpoint.as_ref()?))
                })
            })
            .collect()
    }
}

impl GatewayEndpoint {
    /// The listeners given, named by their field (`http`, `https`, `tls`).
    pub fn listeners(&self) -> Vec<(&'static str, &GatewayListener)> {
        [
            ("http", &self.http),
            ("https", &self.https),
            ("tls", &self.tls),
        ]
        .into_iter()
        .filter_map(|(name, listener)| Some((name, listener.as_ref()?)))
        .collect()
    }
}

pub const DEFAULT_PUBLIC_HTTP_PORT: i32 = 19080;
pub const DEFAULT_PUBLIC_HTTPS_PORT: i32 = 19443;

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
