//! What the control plane's API server says about every plane: the CRs, their status as
//! the controller wrote it, and their client CAs resolved the way the gateway resolves
//! them. `status` renders these facts; `check` judges them.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use crate::planes::kubernetes::plane_api;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ListParams};
use rustls_pki_types::CertificateDer;

use crate::planes::crd::{AgentConnectionStatus, AnyPlane};
use crate::planes::registry::{check_client_ca, resolve_client_ca, secret_location};
use crate::planes::{PlaneKind, Problem, Reason, conditions, secret_data};
use crate::trust;

/// The Secret holding the control plane's gateway CA (`ca.crt`).
pub const GATEWAY_CA: &str = "cluster-gateway-ca";

/// How the control plane reaches a plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Agent,
    Direct,
    /// Neither block is given (reason `NoConnectionMode`).
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Agent => "agent",
            Mode::Direct => "direct",
            Mode::None => "none",
        }
    }
}

/// One plane CR and what is known about it.
pub struct PlaneFacts {
    pub plane: AnyPlane,
    pub namespace: String,
    pub name: String,
    pub plane_id: String,
    pub mode: Mode,
    /// The `Ready` condition, once a controller has written one.
    pub ready: Option<Condition>,
    pub connection: Option<AgentConnectionStatus>,
    /// Agent mode: the client CA's certificates, or why they cannot be had.
    pub client_ca: Option<Result<Vec<CertificateDer<'static>>, Problem>>,
}

impl PlaneFacts {
    pub fn kind(&self) -> &'static str {
        self.plane.kind().as_str()
    }

    /// `Kind namespace/name`, as messages name a plane.
    pub fn title(&self) -> String {
        if self.namespace == crate::planes::registry::CLUSTER_SCOPE {
            return format!("{} {}", self.kind(), self.name);
        }
        format!("{} {}/{}", self.kind(), self.namespace, self.name)
    }

    /// The latest expiry among the client CAs: until then some agent can be trusted.
    pub fn client_ca_expiry(
        &self,
        now: SystemTime,
        warn: std::time::Duration,
    ) -> Option<trust::Expiry> {
        let certs = self.client_ca.as_ref()?.as_ref().ok()?;
        certs
            .iter()
            .filter_map(|c| trust::CertInfo::from_der(c).ok())
            .map(|info| info.expiry(now, warn))
            .max_by_key(|e| e.not_after)
    }

    /// The earliest expiry among the connected agents' certificates: the first to break.
    pub fn agent_certificate_expiry(
        &self,
        now: SystemTime,
        warn: std::time::Duration,
    ) -> Option<trust::Expiry> {
        self.connection
            .as_ref()?
            .agents
            .iter()
            .filter_map(|a| a.certificate_expiry(now, warn))
            .min_by_key(|e| e.not_after)
    }

    /// The `Ready` condition's reason, when it is one planelink knows.
    pub fn ready_reason(&self) -> Option<Reason> {
        let reason = self.ready.as_ref()?.reason.as_str();
        Reason::ALL.into_iter().find(|r| r.as_str() == reason)
    }
}

/// Every plane CR in scope, and what could not be read.
pub struct Inventory {
    pub planes: Vec<PlaneFacts>,
    /// Kinds whose CRD the API server does not serve.
    pub missing_kinds: Vec<PlaneKind>,
    /// Objects that are not valid plane CRs: `Kind namespace/name: error`.
    pub undecodable: Vec<String>,
}

/// The gateway CA certificates from Secret `cluster-gateway-ca`, when readable.
pub async fn gateway_ca(client: &Client, namespace: &str) -> Result<Option<Secret>, kube::Error> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(GATEWAY_CA)
        .await
}

/// Reads every plane CR of `namespace` (all when `None`), sorted by kind, namespace, name.
pub async fn inventory(
    client: &Client,
    namespace: Option<&str>,
    gateway_cas: &[CertificateDer<'static>],
) -> anyhow::Result<Inventory> {
    let mut inventory = Inventory {
        planes: Vec::new(),
        missing_kinds: Vec::new(),
        undecodable: Vec::new(),
    };
    // Cluster-scoped planes are in no namespace: listed only when every namespace is.
    let kinds = PlaneKind::ALL
        .into_iter()
        .filter(|k| namespace.is_none() || !k.cluster_scoped());
    for kind in kinds {
        let list = match plane_api(client, kind, namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                inventory.missing_kinds.push(kind);
                continue;
            }
            Err(e) => anyhow::bail!("cannot list {kind}s: {e}"),
        };
        for object in list.items {
            let title = format!(
                "{kind} {}/{}",
                object.metadata.namespace.as_deref().unwrap_or_default(),
                object.metadata.name.as_deref().unwrap_or_default()
            );
            let value = serde_json::to_value(&object).unwrap_or_default();
            match AnyPlane::from_value(kind, value) {
                Ok(plane) => inventory.planes.push(facts_of(plane)),
                Err(e) => inventory.undecodable.push(format!("{title}: {e}")),
            }
        }
    }
    let secrets = referenced_secrets(client, &inventory.planes).await;
    let now = SystemTime::now();
    for facts in &mut inventory.planes {
        if facts.mode != Mode::Agent {
            continue;
        }
        let resolved = resolve(facts, &secrets).and_then(|certs| {
            check_client_ca(&certs, gateway_cas, now)?;
            Ok(certs)
        });
        facts.client_ca = Some(resolved);
    }
    inventory
        .planes
        .sort_by(|a, b| (a.kind(), &a.namespace, &a.name).cmp(&(b.kind(), &b.namespace, &b.name)));
    Ok(inventory)
}

fn facts_of(plane: AnyPlane) -> PlaneFacts {
    let cr = plane.cr();
    let common = plane.common();
    let mode = if plane.agent_enabled() {
        Mode::Agent
    } else if common.kubernetes_cluster.is_some() {
        Mode::Direct
    } else {
        Mode::None
    };
    let plane_id = plane.key().plane_id;
    let status = plane.plane_status();
    let ready = status.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == conditions::READY)
            .cloned()
    });
    let connection = status.and_then(|s| s.agent_connection.clone());
    PlaneFacts {
        namespace: cr.namespace_or_cluster().to_string(),
        name: cr.name.clone(),
        plane_id,
        mode,
        ready,
        connection,
        client_ca: None,
        plane,
    }
}

/// A referenced Secret's data, or why it could not be read.
type SecretLookup = HashMap<(String, String), Result<Option<BTreeMap<String, Vec<u8>>>, String>>;

async fn referenced_secrets(client: &Client, planes: &[PlaneFacts]) -> SecretLookup {
    let mut secrets = SecretLookup::new();
    for facts in planes {
        let Some(at) = facts
            .plane
            .client_ca()
            .and_then(|value| secret_location(&facts.namespace, value))
        else {
            continue;
        };
        let id = (at.namespace.clone(), at.name.clone());
        if secrets.contains_key(&id) {
            continue;
        }
        let read = Api::<Secret>::namespaced(client.clone(), &at.namespace)
            .get_opt(&at.name)
            .await
            .map(|s| s.as_ref().map(secret_data))
            .map_err(|e| e.to_string());
        secrets.insert(id, read);
    }
    secrets
}

fn resolve(
    facts: &PlaneFacts,
    secrets: &SecretLookup,
) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let client_ca = facts.plane.client_ca();
    if let Some(at) = client_ca.and_then(|value| secret_location(&facts.namespace, value))
        && let Some(Err(e)) = secrets.get(&(at.namespace.clone(), at.name.clone()))
    {
        return Err(Problem::new(
            Reason::SecretNotReadable,
            format!(
                "cannot read Secret {}/{} referenced by clientCA: {e}",
                at.namespace, at.name
            ),
        ));
    }
    resolve_client_ca(
        facts.plane.kind(),
        &facts.namespace,
        client_ca,
        |ns, name| {
            secrets
                .get(&(ns.to_string(), name.to_string()))
                .and_then(|read| read.as_ref().ok())
                .and_then(Option::as_ref)
        },
    )
}
