//! The registry: a snapshot of every registered plane CR with its resolved client CA,
//! published by a source and read by the gateway. The gateway never asks a source
//! anything; it reacts to each new snapshot, so a file edit and a Kubernetes watch
//! event take the same path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use super::PlaneType;
use super::manifest::{PlaneObject, SecretObject};
use crate::trust::{self, Usage};

/// What an agent names in its `/ws` request: `planeType` and `planeID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlaneKey {
    pub plane_type: PlaneType,
    pub plane_id: String,
}

impl std::fmt::Display for PlaneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.plane_type, self.plane_id)
    }
}

/// Which custom resource: `namespace` is `None` for a cluster-scoped one (`_cluster`
/// in proxy paths).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CrRef {
    pub namespace: Option<String>,
    pub name: String,
}

/// How proxy paths spell the namespace of a cluster-scoped CR.
pub const CLUSTER_SCOPE: &str = "_cluster";

impl CrRef {
    pub fn new(namespace: &str, name: &str) -> CrRef {
        CrRef {
            namespace: (namespace != CLUSTER_SCOPE).then(|| namespace.to_string()),
            name: name.to_string(),
        }
    }

    pub fn namespace_or_cluster(&self) -> &str {
        self.namespace.as_deref().unwrap_or(CLUSTER_SCOPE)
    }
}

impl std::fmt::Display for CrRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace_or_cluster(), self.name)
    }
}

/// One plane CR and the CA its agents must chain to, or why there is none usable.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaneEntry {
    pub key: PlaneKey,
    pub cr: CrRef,
    pub generation: Option<i64>,
    pub client_ca: Result<Arc<Vec<CertificateDer<'static>>>, String>,
}

/// Everything registered at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub entries: Vec<PlaneEntry>,
}

/// The outcome of checking an agent's chain against every CR of its plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorisation {
    pub granted: Vec<CrRef>,
    /// CRs of the plane that did not verify the agent, with the reason.
    pub refused: Vec<(CrRef, String)>,
}

impl Authorisation {
    /// One line saying why nothing was granted, for the 401/403 body and the log.
    pub fn refusal_summary(&self, key: &PlaneKey) -> String {
        if self.refused.is_empty() {
            return format!(
                "no {} with planeID {:?} is registered; create the plane resource (or check the agent's \
                 --plane-type and --plane-id)",
                key.plane_type.kind(),
                key.plane_id
            );
        }
        let reasons: Vec<String> = self
            .refused
            .iter()
            .map(|(cr, why)| format!("{} {cr}: {why}", key.plane_type.kind()))
            .collect();
        format!(
            "the client certificate is not trusted by any {} with planeID {:?}: {}",
            key.plane_type.kind(),
            key.plane_id,
            reasons.join("; ")
        )
    }
}

impl Snapshot {
    pub fn entries_for<'a>(&'a self, key: &'a PlaneKey) -> impl Iterator<Item = &'a PlaneEntry> {
        self.entries.iter().filter(move |e| &e.key == key)
    }

    /// Verifies `chain` (clientAuth) against each CR of the plane separately; the agent
    /// is authorised for exactly the CRs whose CA verified it.
    pub fn authorise(
        &self,
        key: &PlaneKey,
        chain: &[CertificateDer<'_>],
        at: SystemTime,
    ) -> Authorisation {
        let mut result = Authorisation::default();
        for entry in self.entries_for(key) {
            let verdict = match &entry.client_ca {
                Err(problem) => Err(problem.clone()),
                Ok(cas) => trust::verify_chain(chain, cas, Usage::ClientAuth, at)
                    .map_err(|e| e.to_string()),
            };
            match verdict {
                Ok(()) => result.granted.push(entry.cr.clone()),
                Err(why) => result.refused.push((entry.cr.clone(), why)),
            }
        }
        result.granted.sort();
        result
    }

    /// Builds a snapshot from plane objects and the Secrets they may refer to.
    pub fn resolve(planes: &[PlaneObject], secrets: &[SecretObject]) -> Snapshot {
        let by_name: HashMap<(&str, &str), &SecretObject> = secrets
            .iter()
            .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
            .collect();
        let entries = planes
            .iter()
            .filter(|p| p.agent_enabled)
            .map(|plane| PlaneEntry {
                key: PlaneKey {
                    plane_type: plane.plane_type,
                    plane_id: plane.plane_id.clone(),
                },
                cr: CrRef {
                    namespace: plane.namespace.clone(),
                    name: plane.name.clone(),
                },
                generation: plane.generation,
                client_ca: resolve_client_ca(plane, |ns, name| {
                    by_name.get(&(ns, name)).map(|s| &s.data)
                })
                .map(Arc::new)
                .map_err(|problem| problem.message),
            })
            .collect();
        Snapshot { entries }
    }
}

/// Why a plane's `clientCA` cannot verify agents; `reason` is the condition reason the
/// controller writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaProblemKind {
    Missing,
    SecretNotFound,
    SecretKeyNotFound,
    Unparseable,
    IsLeaf,
    Expired,
    IsGatewayCa,
}

impl CaProblemKind {
    pub fn reason(self) -> &'static str {
        match self {
            CaProblemKind::Missing => "ClientCAMissing",
            CaProblemKind::SecretNotFound => "SecretNotFound",
            CaProblemKind::SecretKeyNotFound => "SecretKeyNotFound",
            CaProblemKind::Unparseable => "ClientCAUnparseable",
            CaProblemKind::IsLeaf => "ClientCAIsLeaf",
            CaProblemKind::Expired => "ClientCAExpired",
            CaProblemKind::IsGatewayCa => "ClientCAIsGatewayCA",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaProblem {
    pub kind: CaProblemKind,
    pub message: String,
}

impl CaProblem {
    fn new(kind: CaProblemKind, message: String) -> CaProblem {
        CaProblem { kind, message }
    }
}

impl std::fmt::Display for CaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where a plane's `clientCA` Secret is: the namespace defaults to the plane's.
pub fn client_ca_secret(plane: &PlaneObject) -> Option<(String, String, String)> {
    let client_ca = plane.client_ca.as_ref()?;
    if client_ca
        .value
        .as_deref()
        .is_some_and(|v| !v.trim().is_empty())
    {
        return None;
    }
    let reference = client_ca.secret()?;
    let namespace = reference
        .namespace
        .as_deref()
        .or(plane.namespace.as_deref())
        .unwrap_or(super::manifest::DEFAULT_NAMESPACE);
    Some((
        namespace.to_string(),
        reference.name.clone(),
        reference
            .key
            .clone()
            .unwrap_or_else(|| "ca.crt".to_string()),
    ))
}

/// Resolves and parses a plane's `clientCA`; `secret` looks a Secret's data up by
/// namespace and name.
pub fn resolve_client_ca<'a>(
    plane: &PlaneObject,
    secret: impl Fn(&str, &str) -> Option<&'a std::collections::BTreeMap<String, Vec<u8>>>,
) -> Result<Vec<CertificateDer<'static>>, CaProblem> {
    let kind = plane.plane_type.kind();
    let Some(client_ca) = &plane.client_ca else {
        return Err(CaProblem::new(
            CaProblemKind::Missing,
            format!(
                "{kind} has no spec.clusterAgent.clientCA; register the agent's CA (ca.crt of Secret \
                 cluster-agent-tls in the remote plane)"
            ),
        ));
    };
    let bytes: Vec<u8> = match (&client_ca.value, client_ca_secret(plane)) {
        (Some(value), _) if !value.trim().is_empty() => value.clone().into_bytes(),
        (_, None) => {
            return Err(CaProblem::new(
                CaProblemKind::Missing,
                format!("{kind} clientCA has neither value nor secretKeyRef; give one of them"),
            ));
        }
        (_, Some((namespace, name, key))) => {
            let Some(data) = secret(&namespace, &name) else {
                return Err(CaProblem::new(
                    CaProblemKind::SecretNotFound,
                    format!(
                        "Secret {namespace}/{name} referenced by clientCA does not exist; create it \
                         with the agent's ca.crt"
                    ),
                ));
            };
            let Some(value) = data.get(&key) else {
                let keys: Vec<&str> = data.keys().map(String::as_str).collect();
                return Err(CaProblem::new(
                    CaProblemKind::SecretKeyNotFound,
                    format!(
                        "Secret {namespace}/{name} has no key {key:?} (it has: {}); point clientCA's \
                         key at the CA",
                        keys.join(", ")
                    ),
                ));
            };
            value.clone()
        }
    };
    let certs = trust::parse_certificates(&bytes).map_err(|e| {
        CaProblem::new(
            CaProblemKind::Unparseable,
            format!("clientCA: {e}; give the PEM of the agent's ca.crt"),
        )
    })?;
    if let Some(leaf) = certs
        .iter()
        .filter_map(|c| trust::CertInfo::from_der(c).ok())
        .find(|info| !info.can_issue())
    {
        return Err(CaProblem::new(
            CaProblemKind::IsLeaf,
            format!(
                "clientCA holds a leaf certificate ({}), not a CA: register ca.crt of Secret \
                 cluster-agent-tls, not tls.crt",
                leaf.subject
            ),
        ));
    }
    Ok(certs)
}

/// The checks beyond parsing that only the controller can make: every CA expired, or the
/// gateway's own server CA registered where the agent's client CA belongs.
pub fn check_client_ca(
    certs: &[CertificateDer<'_>],
    gateway_cas: &[CertificateDer<'_>],
    at: SystemTime,
) -> Result<(), CaProblem> {
    if let Some(same) = certs.iter().find(|c| gateway_cas.iter().any(|g| g == *c)) {
        let subject = trust::CertInfo::from_der(same)
            .map(|i| i.subject)
            .unwrap_or_default();
        return Err(CaProblem::new(
            CaProblemKind::IsGatewayCa,
            format!(
                "clientCA is the gateway's own server CA ({subject}), not the agent's client CA: \
                 register ca.crt of Secret cluster-agent-tls from the remote plane, not \
                 cluster-gateway-ca"
            ),
        ));
    }
    let infos: Vec<trust::CertInfo> = certs
        .iter()
        .filter_map(|c| trust::CertInfo::from_der(c).ok())
        .collect();
    if !infos.is_empty()
        && infos
            .iter()
            .all(|i| i.validity_at(at) == trust::Validity::Expired)
    {
        let latest = infos.iter().map(|i| i.not_after).max().expect("not empty");
        return Err(CaProblem::new(
            CaProblemKind::Expired,
            format!(
                "clientCA expired on {}; the agent's CA was renewed: register its current ca.crt",
                trust::inspect::format_time(latest)
            ),
        ));
    }
    Ok(())
}

/// A source of snapshots. It publishes a first snapshot once loaded (the gateway is
/// ready from then on) and a new one on every change, until the returned future ends.
pub trait PlaneSource: Send + 'static {
    /// Where the planes come from, for logs.
    fn describe(&self) -> String;
    fn run(
        self: Box<Self>,
        publish: watch::Sender<Option<Arc<Snapshot>>>,
    ) -> BoxFuture<'static, ()>;
}

/// The reading side handed to the gateway: `None` until the source has loaded.
#[derive(Clone, Debug)]
pub struct Registry {
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
}

impl Registry {
    /// Starts `source` on the current runtime and returns the registry it feeds.
    pub fn spawn(source: Box<dyn PlaneSource>) -> Registry {
        let (tx, rx) = watch::channel(None);
        tracing::info!(source = %source.describe(), "plane registry starting");
        tokio::spawn(source.run(tx));
        Registry { rx }
    }

    /// A registry with fixed content, for embedding and tests.
    pub fn fixed(snapshot: Snapshot) -> Registry {
        // A receiver keeps the last value after its sender is gone.
        let (_tx, rx) = watch::channel(Some(Arc::new(snapshot)));
        Registry { rx }
    }

    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.rx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.rx.clone()
    }
}
