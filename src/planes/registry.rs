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

/// A plane CR named with its kind: `Kind/namespace/name`, or `Kind/name` for a
/// cluster-scoped kind (`DataPlane/acme/prod`, `ClusterDataPlane/shared`). The one
/// format in which a remote plane lists the CRs its agent serves (`--serve-planes`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlaneRef {
    pub kind: PlaneKind,
    pub cr: CrRef,
}

/// The most CRs one agent may list: a remote plane serves a handful of namespaces.
pub const MAX_SERVED_PLANES: usize = 64;

impl std::str::FromStr for PlaneRef {
    type Err = String;

    fn from_str(text: &str) -> Result<PlaneRef, String> {
        let shown = crate::safe_text::escape(text);
        let parts: Vec<&str> = text.split('/').collect();
        let kind = PlaneKind::parse(parts[0]).ok_or_else(|| {
            let kinds: Vec<&str> = PlaneKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("{shown:?}: the kind must be one of {}", kinds.join(", "))
        })?;
        let (namespace, name) = match (kind.cluster_scoped(), parts.as_slice()) {
            (true, [_, name]) => (None, *name),
            (false, [_, namespace, name]) => (Some(*namespace), *name),
            (true, _) => return Err(format!("{shown:?}: a {kind} is named {kind}/NAME")),
            (false, _) => {
                return Err(format!(
                    "{shown:?}: a {kind} is named {kind}/NAMESPACE/NAME"
                ));
            }
        };
        for part in namespace.into_iter().chain([name]) {
            if !super::crd::is_dns_subdomain(part) {
                return Err(format!(
                    "{shown:?}: {:?} is not a Kubernetes object name",
                    crate::safe_text::escape(part)
                ));
            }
        }
        Ok(PlaneRef {
            kind,
            cr: CrRef {
                namespace: namespace.map(String::from),
                name: name.to_string(),
            },
        })
    }
}

impl std::fmt::Display for PlaneRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cr.namespace {
            Some(namespace) => write!(f, "{}/{namespace}/{}", self.kind, self.cr.name),
            None => write!(f, "{}/{}", self.kind, self.cr.name),
        }
    }
}

/// A comma-separated list of [`PlaneRef`]s, each checked, at most [`MAX_SERVED_PLANES`].
pub fn parse_plane_refs(list: &str) -> Result<Vec<PlaneRef>, String> {
    let refs = list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<PlaneRef>, String>>()?;
    if refs.len() > MAX_SERVED_PLANES {
        return Err(format!("more than {MAX_SERVED_PLANES} plane CRs listed"));
    }
    Ok(refs)
}

/// A namespace's hold on the agents of one plane that chain to these CAs (SHA-256
/// fingerprints): set when the gateway gives such an agent CRs of that namespace, so a
/// CR of another namespace naming the same planeID and the same (public) CA never gets
/// it, also while the holder's CR is deleted and recreated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub namespace: String,
    pub anchors: Vec<String>,
}

/// What decides, beyond their CAs, which of the CRs that trust an agent it serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claim<'a> {
    /// The CRs the agent's own plane lists (`--serve-planes`): exactly those are served,
    /// whatever their namespace.
    pub serves: Option<&'a [PlaneRef]>,
    /// The holds on the plane at this gateway.
    pub holds: &'a [Hold],
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
    /// CRs of the plane that did not verify the agent, or that another namespace's
    /// claim or the agent's own list excludes, with the reason.
    pub refused: Vec<(PlaneKind, CrRef, String)>,
    /// The hold the grant establishes, when it rested on the namespace rule (no list
    /// from the agent) and gave namespaced CRs.
    pub hold: Option<Hold>,
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

    /// Verifies `chain` (clientAuth) against each CR of the plane separately, then decides
    /// which of the CRs that trust it the agent serves. A CA is public, so trust alone
    /// cannot say whose agent it is:
    ///
    /// - an agent that lists its CRs (`claim.serves`) serves exactly those: the remote
    ///   plane decides;
    /// - otherwise cluster-scoped CRs (which only cluster admins write) are served, and
    ///   namespaced CRs of one namespace only: never one that another namespace's
    ///   [`Hold`] on the same CA excludes, and none at all while CRs of two namespaces
    ///   trust the agent with no hold to tell them apart (fails closed, never guesses).
    ///
    /// Each refused claim says [`Reason::PlaneClaimedElsewhere`] and the fix.
    pub fn authorise(
        &self,
        key: &PlaneKey,
        chain: &[CertificateDer<'_>],
        at: SystemTime,
        claim: Claim<'_>,
    ) -> Authorisation {
        let mut result = Authorisation::default();
        // Each CR that trusts the agent, with the fingerprints of its CAs that do.
        let mut trusting: Vec<(&PlaneEntry, Vec<String>)> = Vec::new();
        for entry in self.entries_for(key) {
            let verdict = match &entry.client_ca {
                Err(problem) => Err(problem.clone()),
                Ok(cas) => trust::verify_chain(chain, cas, Usage::ClientAuth, at)
                    .map(|()| {
                        trust::verify::issuing_cas(chain, cas, at)
                            .map(trust::inspect::fingerprint)
                            .collect()
                    })
                    .map_err(|e| e.to_string()),
            };
            match verdict {
                Ok(anchors) => trusting.push((entry, anchors)),
                Err(why) => result.refused.push((entry.kind, entry.cr.clone(), why)),
            }
        }
        let held_elsewhere = |entry: &PlaneEntry, anchors: &[String]| {
            claim.holds.iter().find(|hold| {
                entry.cr.namespace.as_deref() != Some(hold.namespace.as_str())
                    && hold.anchors.iter().any(|a| anchors.contains(a))
            })
        };
        let mut open: Vec<&str> = trusting
            .iter()
            .filter(|(entry, anchors)| held_elsewhere(entry, anchors).is_none())
            .filter_map(|(entry, _)| entry.cr.namespace.as_deref())
            .collect();
        open.sort();
        open.dedup();
        let mut hold = Hold {
            namespace: String::new(),
            anchors: Vec::new(),
        };
        for (entry, anchors) in &trusting {
            let refusal = match (claim.serves, &entry.cr.namespace) {
                (Some(list), _) => (!list
                    .iter()
                    .any(|r| r.kind == entry.kind && r.cr == entry.cr))
                .then_some(Contest::Unlisted),
                (None, None) => None,
                (None, Some(namespace)) => match held_elsewhere(entry, anchors) {
                    Some(hold) => Some(Contest::Held(&hold.namespace)),
                    None if open.len() > 1 => Some(Contest::Ambiguous(&open)),
                    None => {
                        hold.namespace.clone_from(namespace);
                        hold.anchors.extend(anchors.iter().cloned());
                        None
                    }
                },
            };
            match refusal {
                None => result.granted.push(entry.cr.clone()),
                Some(contest) => {
                    let why = contest.explain(key, entry);
                    result.refused.push((entry.kind, entry.cr.clone(), why));
                }
            }
        }
        result.granted.sort();
        // A BuildPlane and a WorkflowPlane of one name and namespace are one CR on the
        // wire (proxy paths do not name the kind).
        result.granted.dedup();
        if !hold.namespace.is_empty() {
            hold.anchors.sort();
            hold.anchors.dedup();
            result.hold = Some(hold);
        }
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

/// Why a CR whose CA trusts the agent is not given it.
enum Contest<'a> {
    /// The agent lists its CRs, and not this one.
    Unlisted,
    /// Another namespace holds the agents of this CA.
    Held(&'a str),
    /// CRs of these namespaces trust the agent, and nothing tells whose it is.
    Ambiguous(&'a [&'a str]),
}

impl Contest<'_> {
    fn explain(&self, key: &PlaneKey, entry: &PlaneEntry) -> String {
        let reason = Reason::PlaneClaimedElsewhere;
        let what = format!("{} {}", entry.kind, entry.cr);
        let share = "to share one agent between namespaces, list its CRs in the agent's \
                     --serve-planes, or register a cluster-scoped plane";
        let id = crate::safe_text::escape(&key.plane_id);
        match self {
            Contest::Unlisted => format!(
                "{reason}: the agent's --serve-planes does not list {what}; the remote plane \
                 decides which CRs its agent serves"
            ),
            Contest::Held(holder) => format!(
                "{reason}: the agents of planeID {id} with this CA are held by namespace \
                 {holder}, whose CRs this gateway gave them first, so {what} is not given \
                 them; {share}"
            ),
            Contest::Ambiguous(namespaces) => format!(
                "{reason}: CRs of namespaces {} claim planeID {id} with a CA that trusts the \
                 agent, so none of them is given it; delete the CRs that are not the plane's, \
                 or {share}",
                namespaces.join(", ")
            ),
        }
    }
}

/// Where a value's Secret key is: the namespace defaults to the referring CR's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretKeyLocation {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// Whether `value` of a CR in `referrer_namespace` names a Secret of another namespace:
/// allowed to cluster-scoped CRs only, which only cluster admins write.
fn reaches_outside(referrer_namespace: &str, value: &ValueFrom) -> bool {
    referrer_namespace != CLUSTER_SCOPE
        && value
            .secret()
            .and_then(|r| r.namespace.as_deref())
            .is_some_and(|ns| ns != referrer_namespace)
}

/// The Secret key a value reads, unless it is given inline (`None` too for a reference
/// a namespaced CR may not make: see [`resolve_value`]).
pub fn secret_location(referrer_namespace: &str, value: &ValueFrom) -> Option<SecretKeyLocation> {
    if value.inline_value().is_some() {
        return None;
    }
    let reference = value.secret()?;
    if reference.namespace.is_none() && referrer_namespace == CLUSTER_SCOPE {
        // A cluster-scoped CR has no namespace to lend its references.
        return None;
    }
    if reaches_outside(referrer_namespace, value) {
        // A tenant may write namespaced CRs: they never make planelink read, or say
        // anything of, a Secret of another namespace.
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
        if let Some(reference) = value
            .secret()
            .filter(|_| reaches_outside(referrer_namespace, value))
        {
            return Err(Problem::new(
                Reason::SecretOutsideNamespace,
                format!(
                    "{field}'s secretKeyRef names a Secret of namespace {}, and a plane in namespace \
                     {referrer_namespace} reads Secrets of its own namespace only: put Secret {} in \
                     {referrer_namespace}, or register a cluster-scoped plane",
                    reference.namespace.as_deref().unwrap_or_default(),
                    reference.name
                ),
            ));
        }
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

    /// Who gets an agent whose CA several CRs of one planeID trust: the namespace rule,
    /// the holds, cluster-scoped CRs and the agent's own list, each with its reason.
    #[test]
    fn a_ca_alone_never_decides_whose_agent_it_is() {
        use crate::trust::issue::{CaOptions, LeafOptions, issue_leaf, new_ca};
        let (ca_a, ca_b) = (
            new_ca(&CaOptions::agent("a")).unwrap(),
            new_ca(&CaOptions::agent("b")).unwrap(),
        );
        let chain = |ca| {
            let leaf = issue_leaf(ca, &LeafOptions::client("agent")).unwrap();
            trust::parse_certificates(leaf.cert_pem.as_bytes()).unwrap()
        };
        let (agent_a, agent_b) = (chain(&ca_a), chain(&ca_b));
        let anchor_a = trust::inspect::fingerprint(
            &trust::parse_certificates(ca_a.cert_pem.as_bytes()).unwrap()[0],
        );
        let plane = |kind: PlaneKind, namespace: &str, name: &str, ca: &str| {
            PlaneBuilder::new(kind, namespace, name)
                .plane_id("p")
                .client_ca(ValueFrom::inline(ca))
                .build()
        };
        let victim = plane(PlaneKind::DataPlane, "victim", "dp", &ca_a.cert_pem);
        let evil = plane(PlaneKind::DataPlane, "evil", "steal", &ca_a.cert_pem);
        let other = plane(PlaneKind::DataPlane, "other", "dp", &ca_b.cert_pem);
        let shared = plane(PlaneKind::ClusterDataPlane, "", "shared", &ca_a.cert_pem);
        let key = victim.key();
        let now = SystemTime::now();
        let cr = |namespace: Option<&str>, name: &str| CrRef {
            namespace: namespace.map(String::from),
            name: name.into(),
        };
        let refused = |a: &Authorisation| -> Vec<(String, String)> {
            let mut r: Vec<_> = a
                .refused
                .iter()
                .map(|(_, cr, why)| (cr.to_string(), why.clone()))
                .collect();
            r.sort();
            r
        };
        let share = "to share one agent between namespaces, list its CRs in the agent's \
                     --serve-planes, or register a cluster-scoped plane";

        // Two namespaces trust the agent and nothing tells them apart: neither gets it
        // (the cluster-scoped CR, an admin's, does), and no hold is taken.
        let all = Snapshot::resolve(&[victim.clone(), evil.clone(), other, shared], &[]);
        let contested = all.authorise(&key, &agent_a, now, Claim::default());
        assert_eq!(contested.granted, [cr(None, "shared")]);
        assert_eq!(contested.hold, None);
        let ambiguous = format!(
            "PlaneClaimedElsewhere: CRs of namespaces evil, victim claim planeID p with a CA that \
             trusts the agent, so none of them is given it; delete the CRs that are not the \
             plane's, or {share}"
        );
        let refusals = refused(&contested);
        assert_eq!(refusals.len(), 3, "{refusals:?}");
        assert!(refusals.contains(&("evil/steal".into(), ambiguous.clone())));
        assert!(refusals.contains(&("victim/dp".into(), ambiguous)));

        // The owner's agent, before the tenant's copy existed: its namespace holds it.
        let before = Snapshot::resolve(std::slice::from_ref(&victim), &[]);
        let first = before.authorise(&key, &agent_a, now, Claim::default());
        assert_eq!(first.granted, [cr(Some("victim"), "dp")]);
        let hold = first.hold.expect("a namespaced grant takes a hold");
        assert_eq!(
            hold,
            Hold {
                namespace: "victim".into(),
                anchors: vec![anchor_a]
            }
        );

        // With that hold the tenant's copy is refused, also with the owner's CR gone.
        let holds = [hold];
        let claim = Claim {
            serves: None,
            holds: &holds,
        };
        let held = format!(
            "PlaneClaimedElsewhere: the agents of planeID p with this CA are held by namespace \
             victim, whose CRs this gateway gave them first, so DataPlane evil/steal is not given \
             them; {share}"
        );
        let decided = all.authorise(&key, &agent_a, now, claim);
        assert_eq!(
            decided.granted,
            [cr(None, "shared"), cr(Some("victim"), "dp")]
        );
        assert!(refused(&decided).contains(&("evil/steal".into(), held.clone())));
        let gone = Snapshot::resolve(std::slice::from_ref(&evil), &[]);
        let decided = gone.authorise(&key, &agent_a, now, claim);
        assert_eq!(decided.granted, []);
        assert_eq!(refused(&decided), [("evil/steal".into(), held)]);

        // Another tenant's own agent of the same planeID (another CA) is not held.
        let decided = all.authorise(&key, &agent_b, now, claim);
        assert_eq!(decided.granted, [cr(Some("other"), "dp")]);

        // The agent's own list decides, whatever the holds say.
        let listed: Vec<PlaneRef> = parse_plane_refs("DataPlane/evil/steal").unwrap();
        let decided = all.authorise(
            &key,
            &agent_a,
            now,
            Claim {
                serves: Some(&listed),
                holds: &holds,
            },
        );
        assert_eq!(decided.granted, [cr(Some("evil"), "steal")]);
        assert_eq!(decided.hold, None);
        assert!(refused(&decided).contains(&(
            "victim/dp".into(),
            "PlaneClaimedElsewhere: the agent's --serve-planes does not list DataPlane victim/dp; \
             the remote plane decides which CRs its agent serves"
                .into()
        )));
    }

    #[test]
    fn plane_refs_parse_and_print_alike() {
        let refs = parse_plane_refs(" DataPlane/acme/prod, ClusterDataPlane/shared ,").unwrap();
        let printed: Vec<String> = refs.iter().map(ToString::to_string).collect();
        assert_eq!(printed, ["DataPlane/acme/prod", "ClusterDataPlane/shared"]);
        for (bad, why) in [
            (
                "DataPlane/prod",
                "\"DataPlane/prod\": a DataPlane is named DataPlane/NAMESPACE/NAME",
            ),
            (
                "ClusterDataPlane/a/b",
                "\"ClusterDataPlane/a/b\": a ClusterDataPlane is named ClusterDataPlane/NAME",
            ),
            (
                "DataPlane/acme/p;rod",
                "\"DataPlane/acme/p;rod\": \"p;rod\" is not a Kubernetes object name",
            ),
        ] {
            assert_eq!(parse_plane_refs(bad).unwrap_err(), why);
        }
        let many = vec!["ClusterDataPlane/x"; MAX_SERVED_PLANES + 1].join(",");
        assert_eq!(
            parse_plane_refs(&many).unwrap_err(),
            format!("more than {MAX_SERVED_PLANES} plane CRs listed")
        );
    }

    /// A namespaced CR never reads a Secret of another namespace: refused with a reason
    /// of its own, before any lookup (so nothing tells whether that Secret exists); the
    /// same reference from a cluster-scoped CR, or into its own namespace, is read.
    #[test]
    fn a_namespaced_plane_reads_secrets_of_its_own_namespace_only() {
        let victim = ValueFrom::from_secret(Some("kube-system"), "victim-token", "token");
        let data: BTreeMap<String, Vec<u8>> = [("token".to_string(), b"s3cr3t".to_vec())].into();
        let looked_up = std::cell::Cell::new(false);
        let lookup = |_: &str, _: &str| {
            looked_up.set(true);
            Some(&data)
        };
        let refused = resolve_value(
            "tenant-a",
            &victim,
            "auth.bearerToken",
            Reason::KubernetesClusterInvalid,
            lookup,
        )
        .unwrap_err();
        assert_eq!(
            (refused.reason, refused.message.as_str()),
            (
                Reason::SecretOutsideNamespace,
                "auth.bearerToken's secretKeyRef names a Secret of namespace kube-system, and a plane \
                 in namespace tenant-a reads Secrets of its own namespace only: put Secret victim-token \
                 in tenant-a, or register a cluster-scoped plane"
            )
        );
        assert!(!looked_up.get(), "the Secret was looked up");
        assert_eq!(secret_location("tenant-a", &victim), None);
        let own = ValueFrom::from_secret(Some("tenant-a"), "token", "token");
        assert_eq!(
            resolve_value(
                "tenant-a",
                &own,
                "f",
                Reason::KubernetesClusterInvalid,
                |_, _| Some(&data)
            )
            .unwrap(),
            b"s3cr3t"
        );
        assert_eq!(
            resolve_value(
                CLUSTER_SCOPE,
                &victim,
                "f",
                Reason::KubernetesClusterInvalid,
                |_, _| Some(&data)
            )
            .unwrap(),
            b"s3cr3t"
        );
    }
}
