//! The connected agents: who they are, which plane CRs they are authorised for, and
//! how to reach them. Re-verification against each new registry snapshot happens
//! here, so trust changes apply to agents already connected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use hyper::client::conn::http2::SendRequest;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::metrics::{Metrics, PlaneLabels};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::planes::connection::ConnectionStatus as PlaneStatus;
use crate::planes::crd::ConnectedAgent;
use crate::planes::registry::{Claim, PlaneRef};
use crate::planes::{Authorisation, CrRef, PlaneKey, Snapshot};
use crate::tunnel::{Body, Hello};

pub struct AgentConn {
    pub id: u64,
    pub key: PlaneKey,
    pub remote: SocketAddr,
    pub subject: String,
    pub hello: Hello,
    /// The tunnel protocol the agent speaks.
    pub protocol: &'static str,
    chain: Vec<CertificateDer<'static>>,
    /// When the client certificate expires (for the plane's status and `planelink status`).
    certificate_not_after: Option<k8s_openapi::jiff::Timestamp>,
    certificate_not_before: Option<k8s_openapi::jiff::Timestamp>,
    granted: RwLock<Vec<CrRef>>,
    /// The CRs the agent's plane lists (`--serve-planes`), if it lists any.
    serves: Option<Vec<PlaneRef>>,
    sender: SendRequest<Body>,
    open_streams: AtomicUsize,
    /// Set once a newer tunnel of the same agent replaced this one: no new requests.
    replaced: std::sync::atomic::AtomicBool,
    /// Cancelled to disconnect the agent (trust revoked, reconnect asked, shutdown).
    pub close: CancellationToken,
}

impl AgentConn {
    pub fn granted(&self) -> Vec<CrRef> {
        self.granted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the agent is authorised for `cr`.
    pub fn serves(&self, cr: &CrRef) -> bool {
        self.granted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(cr)
    }

    /// The agent as the plane API lists it.
    pub fn summary(&self) -> ConnectedAgent {
        ConnectedAgent {
            instance: self.hello.instance.clone(),
            protocol: self.protocol.to_string(),
            certificate_not_after: self.certificate_not_after.map(Time),
            certificate_not_before: self.certificate_not_before.map(Time),
        }
    }

    pub fn sender(&self) -> SendRequest<Body> {
        self.sender.clone()
    }

    /// Sends news for the agent itself (`planelink-control: kind`, with the gateway's
    /// hello when given) and waits at most `limit` for its answer.
    pub async fn send_control(
        &self,
        kind: &'static str,
        hello: Option<http::HeaderValue>,
        limit: std::time::Duration,
    ) -> Result<(), String> {
        use crate::tunnel::protocol::{CONTROL_HEADER, HELLO_HEADER, TARGET_HEADER};
        let mut request = http::Request::new(crate::tunnel::body::empty());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static("http://agent/");
        let headers = request.headers_mut();
        headers.insert(
            TARGET_HEADER,
            http::HeaderValue::from_static(crate::tunnel::proxy::Target::AGENT),
        );
        headers.insert(CONTROL_HEADER, http::HeaderValue::from_static(kind));
        if let Some(hello) = hello {
            headers.insert(HELLO_HEADER, hello);
        }
        let mut sender = self.sender();
        let sent = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        match tokio::time::timeout(limit, sent).await {
            Err(_) => Err("no answer in time".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Whether the agent is planelink's (not OpenChoreo's).
    pub fn speaks_planelink(&self) -> bool {
        self.protocol != crate::tunnel::openchoreo::PROTOCOL
    }

    pub fn is_usable(&self) -> bool {
        !self.close.is_cancelled()
            && !self.sender.is_closed()
            && !self.replaced.load(Ordering::Relaxed)
    }

    /// The client certificate chain the agent presented.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// When the client certificate expires.
    pub fn certificate_not_after(&self) -> Option<k8s_openapi::jiff::Timestamp> {
        self.certificate_not_after
    }

    /// Whether a newer tunnel of the same agent took this one's place.
    pub fn is_replaced(&self) -> bool {
        self.replaced.load(Ordering::Relaxed)
    }

    /// Streams in flight on this tunnel.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// Counts a stream in flight until the guard drops.
    pub fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            agent: self.clone(),
        }
    }
}

pub struct StreamGuard {
    agent: Arc<AgentConn>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.agent.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An agent's identity as the public listener established it, before registration.
pub struct NewAgent {
    pub key: PlaneKey,
    pub remote: SocketAddr,
    pub subject: String,
    pub hello: Hello,
    pub protocol: &'static str,
    pub chain: Vec<CertificateDer<'static>>,
    pub granted: Vec<CrRef>,
    pub serves: Option<Vec<PlaneRef>>,
    /// Cancelled when the gateway shuts down: the tunnel says "going away" and ends.
    pub going_away: CancellationToken,
}

/// A CA rollover an agent proposed, as the gateway holds it.
#[derive(Debug, Clone)]
pub struct PendingProposal {
    pub proposal: crate::trust::rollover::Proposal,
    /// SHA-256 fingerprints of the CR's CAs that verified the certificate being renewed.
    pub replaces: Vec<String>,
    /// The proposing agent's instance.
    pub agent: Option<String>,
    pub at: SystemTime,
}

/// A proposal not repeated for this long is forgotten: the agent repeats it on every
/// dial while its renewed certificate is refused.
pub const PROPOSAL_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

impl PendingProposal {
    fn is_fresh(&self, now: SystemTime) -> bool {
        now.duration_since(self.at).unwrap_or_default() < PROPOSAL_TTL
            && self.proposal.cas.iter().all(|ca| {
                crate::trust::CertInfo::from_der(ca)
                    .is_ok_and(|i| i.validity_at(now) == crate::trust::Validity::Valid)
            })
    }
}

/// What a re-verification changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reverified {
    pub disconnected_agents: usize,
    pub authorizations_granted: usize,
    pub authorizations_revoked: usize,
}

impl Reverified {
    fn add(&mut self, other: Reverified) {
        self.disconnected_agents += other.disconnected_agents;
        self.authorizations_granted += other.authorizations_granted;
        self.authorizations_revoked += other.authorizations_revoked;
    }
}

/// The tunnels, by plane: every per-request and per-handshake lookup touches one plane's
/// few agents, however many planes the gateway carries.
type ByPlane = HashMap<PlaneKey, Vec<Arc<AgentConn>>>;

pub struct Hub {
    agents: RwLock<ByPlane>,
    next_id: AtomicU64,
    rotation: AtomicUsize,
    last_seen: Mutex<HashMap<(PlaneKey, Option<CrRef>), SystemTime>>,
    metrics: Arc<Metrics>,
    /// Planes whose agents came or went, for a controller in the same process.
    changes: tokio::sync::broadcast::Sender<PlaneKey>,
    /// The newest CA rollover proposed for each plane CR by an agent authorised for it.
    proposals: Mutex<HashMap<(PlaneKey, CrRef), PendingProposal>>,
    /// Which namespace holds each plane's agents.
    holds: super::holds::Holds,
    /// Cancelled when the gateway shuts down; every tunnel's own token is a child, so a
    /// tunnel still in its handshake then is told "going away" as soon as it starts.
    going_away: CancellationToken,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub {
            agents: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            rotation: AtomicUsize::new(0),
            last_seen: Mutex::new(HashMap::new()),
            metrics,
            changes: tokio::sync::broadcast::channel(256).0,
            going_away: CancellationToken::new(),
            proposals: Mutex::new(HashMap::new()),
            holds: Default::default(),
        }
    }

    /// Records a verified CA proposal for the CRs its agent is authorised for, each with
    /// the CAs of that CR the proposal replaces.
    pub fn propose(
        &self,
        key: &PlaneKey,
        crs: &[(CrRef, Vec<String>)],
        proposal: crate::trust::rollover::Proposal,
        agent: Option<String>,
    ) {
        let mut proposals = self.proposals.lock().unwrap_or_else(|p| p.into_inner());
        for (cr, replaces) in crs {
            proposals.insert(
                (key.clone(), cr.clone()),
                PendingProposal {
                    proposal: proposal.clone(),
                    replaces: replaces.clone(),
                    agent: agent.clone(),
                    at: SystemTime::now(),
                },
            );
        }
        drop(proposals);
        let _ = self.changes.send(key.clone());
    }

    /// The newest proposal for a CR, while it is fresh (the agent repeats it on each dial
    /// with its previous certificate until the new CA is trusted) and its CAs are valid.
    pub fn proposal(&self, key: &PlaneKey, cr: &CrRef) -> Option<PendingProposal> {
        let now = SystemTime::now();
        self.proposals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(key.clone(), cr.clone()))
            .filter(|p| p.is_fresh(now))
            .cloned()
    }

    /// Forgets the proposals of CRs no longer registered, those already trusted, and
    /// stale ones: an old proposal must never bring back a CA removed since.
    fn prune_proposals(&self, snapshot: &Snapshot) {
        let now = SystemTime::now();
        self.proposals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(key, cr), pending| {
                let Some(entry) = snapshot.entry(key, cr) else {
                    return false;
                };
                let trusted = entry
                    .client_ca
                    .as_ref()
                    .is_ok_and(|cas| pending.proposal.cas.iter().all(|ca| cas.contains(ca)));
                !trusted && pending.is_fresh(now)
            });
    }

    /// The going-away token of a new tunnel.
    pub fn tunnel_going_away(&self) -> CancellationToken {
        self.going_away.child_token()
    }

    /// Tells every tunnel, present and future, that the gateway is going away.
    pub fn go_away(&self) {
        self.going_away.cancel();
    }

    fn labels(key: &PlaneKey) -> PlaneLabels {
        PlaneLabels {
            plane_type: key.plane_type.as_str().to_string(),
            plane_id: key.plane_id.clone(),
        }
    }

    fn tunnel_gauge(&self, agent: &AgentConn) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .tunnels
            .get_or_create(&super::metrics::ProtocolLabels {
                protocol: agent.protocol.to_string(),
            })
            .clone()
    }

    fn touch(&self, agent: &AgentConn) {
        let now = SystemTime::now();
        let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert((agent.key.clone(), None), now);
        for cr in agent.granted() {
            seen.insert((agent.key.clone(), Some(cr)), now);
        }
    }

    pub fn register(&self, new: NewAgent, sender: SendRequest<Body>) -> Arc<AgentConn> {
        let leaf = new
            .chain
            .first()
            .and_then(|leaf| crate::trust::CertInfo::from_der(leaf).ok());
        let timestamp = |t: time::OffsetDateTime| {
            k8s_openapi::jiff::Timestamp::from_second(t.unix_timestamp()).ok()
        };
        let certificate_not_after = leaf.as_ref().and_then(|info| timestamp(info.not_after));
        let certificate_not_before = leaf.as_ref().and_then(|info| timestamp(info.not_before));
        let agent = Arc::new(AgentConn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key: new.key,
            remote: new.remote,
            subject: new.subject,
            hello: new.hello,
            protocol: new.protocol,
            chain: new.chain,
            certificate_not_after,
            certificate_not_before,
            granted: RwLock::new(new.granted),
            serves: new.serves,
            sender,
            open_streams: AtomicUsize::new(0),
            replaced: std::sync::atomic::AtomicBool::new(false),
            close: CancellationToken::new(),
        });
        self.touch(&agent);
        self.metrics
            .agents_connected
            .get_or_create(&Self::labels(&agent.key))
            .inc();
        self.tunnel_gauge(&agent).inc();
        self.agents
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent.key.clone())
            .or_default()
            .push(agent.clone());
        let _ = self.changes.send(agent.key.clone());
        agent
    }

    /// The tunnels of one plane.
    fn of_plane(&self, key: &PlaneKey) -> Vec<Arc<AgentConn>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Marks the older tunnels `newer` replaces (the same agent process, by its hello's
    /// instance and its certificate's subject, renewing its certificate or redialling a tunnel it lost sight of) so
    /// that no request is sent on them, and returns them to be closed once drained. A
    /// tunnel authorised for a CR the newer one is not keeps serving.
    pub fn replace_older(&self, newer: &AgentConn) -> Vec<Arc<AgentConn>> {
        let Some(instance) = &newer.hello.instance else {
            return Vec::new();
        };
        let granted = newer.granted();
        let replaced: Vec<Arc<AgentConn>> = self
            .of_plane(&newer.key)
            .into_iter()
            .filter(|old| {
                old.id != newer.id
                    && old.hello.instance.as_ref() == Some(instance)
                    // The instance is no secret: another agent naming it must not take
                    // this one's place; a renewal keeps the certificate's subject.
                    && old.subject == newer.subject
                    && old.is_usable()
                    && old.granted().iter().all(|cr| granted.contains(cr))
            })
            .collect();
        for old in &replaced {
            // The gauge counts agents: a replaced tunnel no longer does.
            if !old.replaced.swap(true, Ordering::Relaxed) {
                self.metrics.tunnels_replaced.inc();
                self.metrics
                    .agents_connected
                    .get_or_create(&Self::labels(&old.key))
                    .dec();
            }
        }
        if !replaced.is_empty() {
            let _ = self.changes.send(newer.key.clone());
        }
        replaced
    }

    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<PlaneKey> {
        self.changes.subscribe()
    }

    pub fn unregister(&self, agent: &Arc<AgentConn>) {
        let mut by_plane = self.agents.write().unwrap_or_else(|p| p.into_inner());
        let Some(agents) = by_plane.get_mut(&agent.key) else {
            return;
        };
        let before = agents.len();
        agents.retain(|a| a.id != agent.id);
        // A tunnel that replaced another and ends first hands its place back, while the
        // replaced one is still open: the plane is not left without its agent.
        if !agent.replaced.load(Ordering::Relaxed)
            && let Some(previous) = agents
                .iter()
                .filter(|a| {
                    a.hello.instance.is_some()
                        && a.hello.instance == agent.hello.instance
                        && a.subject == agent.subject
                        && a.replaced.load(Ordering::Relaxed)
                        && !a.close.is_cancelled()
                })
                .max_by_key(|a| a.id)
            && previous.replaced.swap(false, Ordering::Relaxed)
        {
            self.metrics
                .agents_connected
                .get_or_create(&Self::labels(&previous.key))
                .inc();
            tracing::info!(agent = previous.id, plane = %previous.key,
                "the replacing tunnel ended first; the replaced one serves again");
        }
        let removed = agents.len() < before;
        if agents.is_empty() {
            by_plane.remove(&agent.key);
        }
        drop(by_plane);
        if removed {
            self.tunnel_gauge(agent).dec();
            if !agent.replaced.load(Ordering::Relaxed) {
                self.metrics
                    .agents_connected
                    .get_or_create(&Self::labels(&agent.key))
                    .dec();
            }
            // An agent whose trust was revoked is not "seen" for a plane that no longer
            // trusts it; recording it would bring back a plane just pruned as gone.
            if !agent.granted().is_empty() {
                self.touch(agent);
            }
            let _ = self.changes.send(agent.key.clone());
        }
    }

    /// Every tunnel, of every plane.
    pub fn agents(&self) -> Vec<Arc<AgentConn>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// The agent to carry a request for `cr`: among those authorised for it (planelink's
    /// agents before OpenChoreo's), the one with the fewest streams in flight, rotating
    /// among equals.
    pub fn pick(&self, key: &PlaneKey, cr: &CrRef) -> Option<Arc<AgentConn>> {
        let by_plane = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let mut candidates: Vec<&Arc<AgentConn>> = by_plane
            .get(key)?
            .iter()
            .filter(|a| a.is_usable() && a.serves(cr))
            .collect();
        // While a plane moves from OpenChoreo's agents to planelink's, requests go to
        // planelink's (they stream; OpenChoreo's hold bodies whole).
        if candidates.iter().any(|a| a.speaks_planelink()) {
            candidates.retain(|a| a.speaks_planelink());
        }
        if candidates.is_empty() {
            return None;
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % candidates.len();
        let chosen = (0..candidates.len())
            .map(|i| candidates[(start + i) % candidates.len()])
            .min_by_key(|a| a.open_streams.load(Ordering::Relaxed))?;
        Some(chosen.clone())
    }

    /// An OpenChoreo agent authorised for `cr` (wire logs: only those read Hubble Relay).
    pub fn pick_openchoreo(&self, key: &PlaneKey, cr: &CrRef) -> Option<Arc<AgentConn>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)?
            .iter()
            .filter(|a| a.is_usable() && a.serves(cr) && !a.speaks_planelink())
            .min_by_key(|a| a.open_streams.load(Ordering::Relaxed))
            .cloned()
    }

    /// Whether any agent is connected for the plane at all (to tell 403 from 502).
    pub fn any_connected(&self, key: &PlaneKey) -> bool {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|agents| agents.iter().any(|a| a.is_usable()))
    }

    /// Re-verifies the agents of `only` (or all) against `snapshot`: revoked CRs are
    /// dropped, newly trusting CRs granted, and agents left with none disconnected.
    pub fn reverify(&self, snapshot: &Snapshot, only: Option<&PlaneKey>) -> Reverified {
        let mut result = Reverified::default();
        let now = SystemTime::now();
        let agents = match only {
            Some(key) => self.of_plane(key),
            None => self.agents(),
        };
        for agent in agents {
            result.add(self.reverify_agent(snapshot, &agent, now));
        }
        result
    }

    /// Verifies a certificate chain against the plane's CRs in `snapshot`, for an agent
    /// that lists the CRs it `serves` (or not): every verification (on connect and on
    /// trust changes) passes here, is counted, and records the hold it establishes.
    pub fn verify(
        &self,
        snapshot: &Snapshot,
        key: &PlaneKey,
        chain: &[CertificateDer<'_>],
        at: SystemTime,
        serves: Option<&[PlaneRef]>,
    ) -> Authorisation {
        self.metrics.certificate_verifications.inc();
        let holds = self.holds.of(snapshot, key);
        let decision = snapshot.authorise(
            key,
            chain,
            at,
            Claim {
                serves,
                holds: &holds,
            },
        );
        if let Some(hold) = &decision.hold {
            self.holds.record(key, hold.clone());
        }
        decision
    }

    /// Re-verifies one agent (a newcomer: connecting costs one verification, not one per
    /// agent of its plane).
    pub fn reverify_one(&self, snapshot: &Snapshot, agent: &AgentConn) -> Reverified {
        self.reverify_agent(snapshot, agent, SystemTime::now())
    }

    fn reverify_agent(
        &self,
        snapshot: &Snapshot,
        agent: &AgentConn,
        now: SystemTime,
    ) -> Reverified {
        let mut result = Reverified::default();
        if agent.close.is_cancelled() {
            return result;
        }
        let decision = self.verify(
            snapshot,
            &agent.key,
            &agent.chain,
            now,
            agent.serves.as_deref(),
        );
        let mut granted = agent.granted.write().unwrap_or_else(|p| p.into_inner());
        let added = decision
            .granted
            .iter()
            .filter(|cr| !granted.contains(cr))
            .count();
        let removed = granted
            .iter()
            .filter(|cr| !decision.granted.contains(cr))
            .count();
        if added == 0 && removed == 0 {
            return result;
        }
        result.authorizations_granted += added;
        result.authorizations_revoked += removed;
        if decision.granted.is_empty() {
            tracing::warn!(agent = agent.id, plane = %agent.key, remote = %agent.remote,
                reason = %decision.refusal_summary(&agent.key),
                "trust revoked; disconnecting agent");
            result.disconnected_agents += 1;
            agent.close.cancel();
        } else {
            let crs: Vec<String> = decision.granted.iter().map(ToString::to_string).collect();
            tracing::info!(agent = agent.id, plane = %agent.key, added, removed,
                authorised_for = %crs.join(","), "agent re-verified");
        }
        *granted = decision.granted;
        result
    }

    /// Connected agents of a plane.
    pub fn count(&self, key: &PlaneKey) -> usize {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map_or(0, |agents| agents.iter().filter(|a| a.is_usable()).count())
    }

    /// Forgets when planes that are neither registered nor connected were last seen, so
    /// that planeIDs of departed agents do not accumulate.
    pub fn prune_last_seen(&self, snapshot: &Snapshot) {
        self.prune_proposals(snapshot);
        self.holds.sweep(snapshot);
        // Agents just disconnected by the re-verification before this are still listed
        // until their tunnels wind down; they no longer keep their plane.
        let connected: std::collections::HashSet<PlaneKey> = self
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, agents)| agents.iter().any(|a| !a.close.is_cancelled()))
            .map(|(key, _)| key.clone())
            .collect();
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(key, _), _| {
                connected.contains(key) || snapshot.entries_for(key).next().is_some()
            });
    }

    /// Disconnects every agent of a plane (the plane API's reconnect).
    pub fn disconnect(&self, key: &PlaneKey) -> usize {
        let mut n = 0;
        for agent in self.of_plane(key) {
            if !agent.close.is_cancelled() {
                agent.close.cancel();
                n += 1;
            }
        }
        n
    }

    pub fn status(&self, key: &PlaneKey, cr: Option<&CrRef>) -> PlaneStatus {
        let agents: Vec<ConnectedAgent> = self
            .of_plane(key)
            .iter()
            .filter(|a| a.is_usable() && cr.is_none_or(|cr| a.serves(cr)))
            .map(|a| a.summary())
            .collect();
        let connected_agents = agents.len();
        let last_seen = if connected_agents > 0 {
            Some(SystemTime::now())
        } else {
            self.last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(key.clone(), cr.cloned()))
                .copied()
        };
        PlaneStatus {
            plane_type: key.plane_type.as_str().to_string(),
            plane_id: key.plane_id.clone(),
            namespace: cr.map(|c| c.namespace_or_cluster().to_string()),
            name: cr.map(|c| c.name.clone()),
            connected: connected_agents > 0,
            connected_agents,
            last_seen: last_seen.map(crate::trust::inspect::format_system_time),
            agents: ConnectedAgent::distinct(agents),
            gateway_certificate_not_after: None,
            gateway_certificate_not_before: None,
            ca_proposal: None,
            client_ca_in_use: Vec::new(),
            partial: false,
            replicas: None,
        }
    }

    /// Every plane that is registered or has been seen, sorted.
    pub fn all_statuses(&self, snapshot: Option<&Snapshot>) -> Vec<PlaneStatus> {
        let mut keys: Vec<PlaneKey> = snapshot
            .map(|s| s.entries.iter().map(|e| e.key.clone()).collect())
            .unwrap_or_default();
        keys.extend(
            self.agents
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        keys.extend(
            self.last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .map(|(k, _)| k.clone()),
        );
        keys.sort();
        keys.dedup();
        keys.iter().map(|k| self.status(k, None)).collect()
    }
}
