//! The registry: a snapshot of every registered plane CR with its resolved client CA,
//! published by a source and read by the gateway. The gateway never asks a source
//! anything; it reacts to each new snapshot, so a file edit and a Kubernetes watch
//! event take the same path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use k8s_openapi::api::core::v1::Secret;

use super::crd::{AnyPlane, DEFAULT_NAMESPACE, ValueFrom};
use super::{PlaneKind, PlaneType, Problem, Reason, secret_data};
use crate::trust::{self, Usage, diagnose};

/// What an agent names in its `/ws` request: `planeType` and `planeID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlaneKey {
    pub plane_type: PlaneType,
    pub plane_id: String,
}

/// The planeID comes from a peer: escaped (and bounded) wherever a key is shown.
impl std::fmt::Display for PlaneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.plane_type,
            crate::safe_text::escape(&self.plane_id)
        )
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
    pub kind: PlaneKind,
    pub cr: CrRef,
    pub generation: Option<i64>,
    pub client_ca: Result<Arc<Vec<CertificateDer<'static>>>, String>,
}

/// Everything registered at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Sorted by plane, then CR ([`Snapshot::resolve`] sorts them): lookups bisect.
    pub entries: Vec<PlaneEntry>,
}

/// The outcome of checking an agent's chain against every CR of its plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorisation {
    pub granted: Vec<CrRef>,
    /// CRs of the plane that did not verify the agent, with the reason.
    pub refused: Vec<(PlaneKind, CrRef, String)>,
}

impl Authorisation {
    /// One line saying why nothing was granted, for the 401/403 body and the log.
    pub fn refusal_summary(&self, key: &PlaneKey) -> String {
        if self.refused.is_empty() {
            return format!(
                "no {} with planeID {:?} is registered; create the plane resource (or check the agent's \
                 --plane-type and --plane-id)",
                key.plane_type.kinds_phrase(),
                key.plane_id
            );
        }
        let reasons: Vec<String> = self
            .refused
            .iter()
            .map(|(kind, cr, why)| format!("{kind} {cr}: {why}"))
            .collect();
        format!(
            "the client certificate is not trusted by any {} with planeID {:?}: {}",
            key.plane_type.kinds_phrase(),
            key.plane_id,
            reasons.join("; ")
        )
    }
}

impl Snapshot {
    pub fn entries_for<'a>(&'a self, key: &'a PlaneKey) -> impl Iterator<Item = &'a PlaneEntry> {
        // Entries are sorted by plane, then CR: a plane's are one run, found by bisection
        // (every handshake and every request looks up its plane).
        let start = self.entries.partition_point(|e| &e.key < key);
        self.entries[start..]
            .iter()
            .take_while(move |e| &e.key == key)
    }

    /// The entry of one CR of the plane.
    pub fn entry(&self, key: &PlaneKey, cr: &CrRef) -> Option<&PlaneEntry> {
        self.entries
            .binary_search_by(|e| (&e.key, &e.cr).cmp(&(key, cr)))
            .ok()
            .map(|i| &self.entries[i])
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
                Err(why) => result.refused.push((entry.kind, entry.cr.clone(), why)),
            }
        }
        result.granted.sort();
        // A BuildPlane and a WorkflowPlane of one name and namespace are one CR on the
        // wire (proxy paths do not name the kind).
        result.granted.dedup();
        result
    }

    /// Builds a snapshot from plane CRs and the Secrets they may refer to.
    pub fn resolve(planes: &[AnyPlane], secrets: &[Secret]) -> Snapshot {
        let data: HashMap<(String, String), BTreeMap<String, Vec<u8>>> = secrets
            .iter()
            .map(|s| {
                let meta = &s.metadata;
                let key = (
                    meta.namespace
                        .clone()
                        .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
                    meta.name.clone().unwrap_or_default(),
                );
                (key, secret_data(s))
            })
            .collect();
        let mut entries: Vec<PlaneEntry> = planes
            .iter()
            .filter(|p| p.agent_enabled())
            .map(|plane| {
                let cr = plane.cr();
                let client_ca = resolve_client_ca(
                    plane.kind(),
                    cr.namespace_or_cluster(),
                    plane.client_ca(),
                    |ns, name| data.get(&(ns.to_string(), name.to_string())),
                );
                PlaneEntry {
                    key: plane.key(),
                    kind: plane.kind(),
                    cr,
                    generation: plane.meta().generation,
                    client_ca: client_ca.map(Arc::new).map_err(|problem| problem.message),
                }
            })
            .collect();
        entries.sort_by(|a, b| (&a.key, &a.cr).cmp(&(&b.key, &b.cr)));
        Snapshot { entries }
    }
}

/// Where a value's Secret key is: the namespace defaults to the referring CR's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretKeyLocation {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// The Secret key a value reads, unless it is given inline.
pub fn secret_location(referrer_namespace: &str, value: &ValueFrom) -> Option<SecretKeyLocation> {
    if value.inline_value().is_some() {
        return None;
    }
    let reference = value.secret()?;
    if reference.namespace.is_none() && referrer_namespace == CLUSTER_SCOPE {
        // A cluster-scoped CR has no namespace to lend its references.
        return None;
    }
    Some(SecretKeyLocation {
        namespace: reference.namespace_or(referrer_namespace).to_string(),
        name: reference.name.clone(),
        key: reference.key_or_default().to_string(),
    })
}

/// Reads a value inline or from a Secret; `secret` looks a Secret's data up by namespace
/// and name. `field` names the value in messages; `missing` is the reason when the value
/// gives neither.
pub fn resolve_value<'a>(
    referrer_namespace: &str,
    value: &ValueFrom,
    field: &str,
    missing: Reason,
    secret: impl Fn(&str, &str) -> Option<&'a BTreeMap<String, Vec<u8>>>,
) -> Result<Vec<u8>, Problem> {
    if let Some(inline) = value.inline_value() {
        return Ok(inline.as_bytes().to_vec());
    }
    let Some(at) = secret_location(referrer_namespace, value) else {
        if value.secret().is_some() {
            return Err(Problem::new(
                missing,
                format!(
                    "{field}'s secretKeyRef names no namespace, and a cluster-scoped plane has \
                     none to lend it; add the Secret's namespace to the secretKeyRef"
                ),
            ));
        }
        return Err(Problem::new(
            missing,
            format!("{field} has neither value nor secretKeyRef; give one of them"),
        ));
    };
    let Some(data) = secret(&at.namespace, &at.name) else {
        return Err(Problem::new(
            Reason::SecretNotFound,
            format!(
                "Secret {}/{} referenced by {field} does not exist; create it",
                at.namespace, at.name
            ),
        ));
    };
    data.get(&at.key).cloned().ok_or_else(|| {
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        Problem::new(
            Reason::SecretKeyNotFound,
            format!(
                "Secret {}/{} has no key {:?} (it has: {}); point {field}'s key at it",
                at.namespace,
                at.name,
                at.key,
                keys.join(", ")
            ),
        )
    })
}

/// Resolves and parses a plane's `clientCA`; `secret` looks a Secret's data up by
/// namespace and name.
pub fn resolve_client_ca<'a>(
    kind: PlaneKind,
    namespace: &str,
    client_ca: Option<&ValueFrom>,
    secret: impl Fn(&str, &str) -> Option<&'a BTreeMap<String, Vec<u8>>>,
) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let Some(client_ca) = client_ca else {
        return Err(Problem::new(
            Reason::ClientCAMissing,
            format!(
                "{kind} has no spec.clusterAgent.clientCA; register the agent's CA (ca.crt of Secret \
                 cluster-agent-tls in the remote plane)"
            ),
        ));
    };
    let field = format!("{kind} clientCA");
    let bytes = resolve_value(
        namespace,
        client_ca,
        &field,
        Reason::ClientCAMissing,
        secret,
    )?;
    let certs = trust::parse_certificates(&bytes).map_err(|e| {
        Problem::new(
            Reason::ClientCAUnparseable,
            format!("clientCA: {e}; give the PEM of the agent's ca.crt"),
        )
    })?;
    match diagnose::leaf(client_ca_bundle(&certs), diagnose::Role::ClientCa) {
        Some(leaf) => Err(client_ca_problem(leaf)),
        None => Ok(certs),
    }
}

/// The checks beyond parsing that only the controller can make: every CA expired, or the
/// gateway's own server CA registered where the agent's client CA belongs.
pub fn check_client_ca(
    certs: &[CertificateDer<'_>],
    gateway_cas: &[CertificateDer<'_>],
    at: SystemTime,
) -> Result<(), Problem> {
    let findings = diagnose::ca_bundle(
        client_ca_bundle(certs),
        diagnose::Role::ClientCa,
        gateway_cas,
        at,
    );
    match diagnose::first_error(findings) {
        Some(mistake) => Err(client_ca_problem(mistake)),
        None => Ok(()),
    }
}

fn client_ca_bundle<'a>(certs: &'a [CertificateDer<'a>]) -> diagnose::Bundle<'a> {
    diagnose::Bundle {
        certificates: certs,
        origin: "clientCA",
    }
}

/// The trust diagnosis's verdict on a plane's client CA, as the reason its conditions
/// report.
fn client_ca_problem(mistake: diagnose::Finding) -> Problem {
    let reason = match mistake.code {
        diagnose::Code::CaIsLeaf => Reason::ClientCAIsLeaf,
        diagnose::Code::CaIsGatewayCa => Reason::ClientCAIsGatewayCA,
        diagnose::Code::CaExpired => Reason::ClientCAExpired,
        // A client CA bundle yields no other error; a new one would still be refused.
        _ => Reason::ClientCAUnparseable,
    };
    Problem::new(reason, mistake.sentence())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::crd::{PlaneBuilder, ValueFrom};

    /// The bisecting lookups find exactly what a scan of every entry finds, for planes of
    /// several types, IDs shared by CRs in several namespaces, and keys not registered.
    #[test]
    fn lookups_find_what_a_scan_finds() {
        let mut planes = Vec::new();
        for (plane_type, namespace, name, id) in [
            (PlaneType::DataPlane, "b", "edge", "shared"),
            (PlaneType::DataPlane, "a", "edge", "shared"),
            (PlaneType::DataPlane, "a", "core", "core"),
            (PlaneType::BuildPlane, "a", "edge", "shared"),
            (PlaneType::ObservabilityPlane, "z", "obs", "obs"),
            (PlaneType::DataPlane, "c", "zz", "zz"),
        ] {
            planes.push(
                PlaneBuilder::new(plane_type, namespace, name)
                    .plane_id(id)
                    .client_ca(ValueFrom::inline("not parsed by a lookup"))
                    .build(),
            );
        }
        let snapshot = Snapshot::resolve(&planes, &[]);
        assert_eq!(snapshot.entries.len(), 6);
        let mut keys: Vec<PlaneKey> = snapshot.entries.iter().map(|e| e.key.clone()).collect();
        keys.push(PlaneKey {
            plane_type: PlaneType::DataPlane,
            plane_id: "absent".into(),
        });
        keys.push(PlaneKey {
            plane_type: PlaneType::ObservabilityPlane,
            plane_id: "zzz".into(),
        });
        for key in &keys {
            let scanned: Vec<&CrRef> = snapshot
                .entries
                .iter()
                .filter(|e| &e.key == key)
                .map(|e| &e.cr)
                .collect();
            let found: Vec<&CrRef> = snapshot.entries_for(key).map(|e| &e.cr).collect();
            assert_eq!(found, scanned, "{key}");
            for cr in snapshot.entries.iter().map(|e| &e.cr) {
                let expected = snapshot
                    .entries
                    .iter()
                    .find(|e| &e.key == key && &e.cr == cr);
                assert_eq!(snapshot.entry(key, cr), expected, "{key} {cr}");
            }
        }
        let shared = PlaneKey {
            plane_type: PlaneType::DataPlane,
            plane_id: "shared".into(),
        };
        assert_eq!(snapshot.entries_for(&shared).count(), 2);
    }
}
