//! One reconciler for the three plane kinds: finalizer, client CA validation, connection
//! status from the gateway (agent mode) or the remote API server (direct mode), the
//! DataPlane's gateway prerequisites, references, conditions, Events and notify calls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, ResourceExt as _};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::clients::PlaneClients;
use super::conditions::{self, CONNECTED, GATEWAY_PROVISIONED, Problem, READY, Truth};
use super::metrics::Metrics;
use crate::planes::connection::{ConnectionStatus, GatewayLink, Notification};
use crate::planes::crd::{
    AgentConnectionStatus, Environment, GatewaySpec, ObservabilityPlane, PlaneResource, PlaneStatus,
};
use crate::planes::registry::{check_client_ca, resolve_client_ca};
use crate::planes::{CrRef, PlaneKey};

/// The group of the Gateway API, which the reference lists as a data plane prerequisite.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// How often `lastHeartbeatTime` is refreshed while connected; more often would write
/// status on every resync for no reader's benefit.
const HEARTBEAT_REFRESH: Duration = Duration::from_secs(60);
/// How soon a blocked deletion is looked at again.
const DELETION_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serde(#[from] serde_json::Error),
}

/// Where the gateway's own server CA is, to catch it registered as a client CA.
pub struct GatewayCa {
    pub file: Option<PathBuf>,
    pub secret: Option<(String, String)>,
}

pub struct Context {
    pub client: Client,
    pub link: Arc<dyn GatewayLink>,
    pub recorder: Recorder,
    pub planes: PlaneClients,
    pub gateway_ca: GatewayCa,
    pub metrics: Metrics,
    pub resync: Duration,
    /// What each CR's trust material was when the gateway was last notified.
    notified: Mutex<HashMap<String, String>>,
}

impl Context {
    pub fn new(
        client: Client,
        link: Arc<dyn GatewayLink>,
        recorder: Recorder,
        planes: PlaneClients,
        gateway_ca: GatewayCa,
        metrics: Metrics,
        resync: Duration,
    ) -> Context {
        Context {
            client,
            link,
            recorder,
            planes,
            gateway_ca,
            metrics,
            resync,
            notified: Mutex::new(HashMap::new()),
        }
    }

    async fn gateway_cas(&self) -> Vec<CertificateDer<'static>> {
        let mut out = Vec::new();
        if let Some(file) = &self.gateway_ca.file
            && let Ok(certs) = crate::trust::load_certificates(file)
        {
            out.extend(certs);
        }
        if let Some((ns, name)) = &self.gateway_ca.secret
            && let Ok(Some(secret)) = Api::<Secret>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
            && let Some(bytes) = crate::planes::kubernetes::secret_object(&secret)
                .data
                .get("ca.crt")
            && let Ok(certs) = crate::trust::parse_certificates(bytes)
        {
            out.extend(certs);
        }
        out
    }
}

pub fn finalizer_name<K: PlaneResource>() -> String {
    format!(
        "openchoreo.dev/{}-cleanup",
        K::kind(&()).to_ascii_lowercase()
    )
}

fn cache_key<K: PlaneResource>(plane: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        plane.namespace().unwrap_or_default(),
        plane.name_any()
    )
}

pub async fn reconcile<K: PlaneResource>(
    plane: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    tracing::debug!(kind = %K::kind(&()), name = %plane.name_any(), namespace = ?plane.namespace(), "reconciling");
    let result = reconcile_plane(plane.as_ref(), &ctx).await;
    ctx.metrics
        .observe(&K::kind(&()), started.elapsed(), result.is_ok());
    result
}

pub fn error_policy<K: PlaneResource>(plane: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        kind = %K::kind(&()),
        name = %plane.name_any(),
        namespace = ?plane.namespace(),
        "reconcile failed: {error}; retrying"
    );
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile_plane<K: PlaneResource>(plane: &K, ctx: &Context) -> Result<Action, Error> {
    let namespace = plane.namespace().unwrap_or_default();
    let name = plane.name_any();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let finalizer = finalizer_name::<K>();
    let has_finalizer = plane.finalizers().iter().any(|f| f == &finalizer);
    if plane.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        return cleanup(plane, ctx, &api, &finalizer).await;
    }
    if !has_finalizer {
        let patch = if plane.meta().finalizers.is_none() {
            serde_json::json!([{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}])
        } else {
            serde_json::json!([{"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}])
        };
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(patch)?),
        )
        .await?;
        tracing::debug!(%name, "finalizer added");
        // The change brings this CR back with the finalizer in place.
        return Ok(Action::await_change());
    }
    let status = observe(plane, ctx).await;
    write_status(plane, ctx, &api, status).await?;
    Ok(Action::requeue(ctx.resync))
}

/// Deleting: a DataPlane that Environments still name stays until they are gone.
async fn cleanup<K: PlaneResource>(
    plane: &K,
    ctx: &Context,
    api: &Api<K>,
    finalizer: &str,
) -> Result<Action, Error> {
    let namespace = plane.namespace().unwrap_or_default();
    let name = plane.name_any();
    if K::kind(&()) == "DataPlane" {
        let environments: Vec<String> =
            Api::<Environment>::namespaced(ctx.client.clone(), &namespace)
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.spec.data_plane_ref.as_deref() == Some(name.as_str()))
                .map(|e| e.name_any())
                .collect();
        if !environments.is_empty() {
            let (count, verb, pronoun) = match environments.len() {
                1 => ("1 Environment".to_string(), "references", "it"),
                n => (format!("{n} Environments"), "reference", "them"),
            };
            let message = format!(
                "deletion waits for {count} that {verb} this DataPlane ({}); delete {pronoun} or \
                 recreate {pronoun} on another DataPlane (dataPlaneRef is immutable)",
                environments.join(", "),
            );
            let mut status = plane.plane_status().cloned().unwrap_or_default();
            let now = Time(Timestamp::now());
            conditions::set(
                &mut status.conditions,
                READY,
                Truth::False,
                "DeletionBlocked",
                &message,
                plane.meta().generation,
                &now,
            );
            write_status(plane, ctx, api, status).await?;
            return Ok(Action::requeue(DELETION_RETRY));
        }
    }
    let notification = Notification {
        plane_type: K::PLANE_TYPE.as_str().to_string(),
        plane_id: plane.plane_id(),
        event: "deleted".into(),
        namespace: namespace.clone(),
        name: name.clone(),
    };
    if let Err(e) = ctx.link.notify(notification).await {
        tracing::warn!(%name, %namespace, "cannot notify {} of the deletion: {e:#}", ctx.link.describe());
    }
    ctx.notified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&cache_key(plane));
    ctx.planes.forget(&cache_key(plane));
    let finalizers: Vec<String> = plane
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch = serde_json::json!([
        {"op": "test", "path": "/metadata/finalizers", "value": plane.finalizers()},
        {"op": "replace", "path": "/metadata/finalizers", "value": finalizers},
    ]);
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(patch)?),
    )
    .await?;
    tracing::info!(kind = %K::kind(&()), %namespace, %name, "finalizer removed; deletion proceeds");
    Ok(Action::await_change())
}

/// The trust material the gateway verifies against, as one fingerprint.
fn fingerprint(
    generation: Option<i64>,
    certs: &Result<Vec<CertificateDer<'_>>, Problem>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{generation:?}"));
    match certs {
        Ok(certs) => certs.iter().for_each(|c| hasher.update(c.as_ref())),
        Err(problem) => hasher.update(problem.reason),
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks the agent's client CA exactly as the gateway will, then the mistakes only the
/// controller can see.
async fn validate_client_ca<K: PlaneResource>(
    plane: &K,
    ctx: &Context,
) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let object = plane.to_plane_object();
    let secret = match crate::planes::registry::client_ca_secret(&object) {
        Some((ns, name, _)) => Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(|e| {
                Problem::new(
                    "SecretNotReadable",
                    format!("cannot read Secret {ns}/{name}: {e}"),
                )
            })?
            .map(|s| crate::planes::kubernetes::secret_object(&s)),
        None => None,
    };
    let certs = resolve_client_ca(&object, |ns, name| {
        secret
            .as_ref()
            .filter(|s| s.namespace == ns && s.name == name)
            .map(|s| &s.data)
    })
    .map_err(|p| Problem::new(p.kind.reason(), p.message))?;
    let gateway_cas = ctx.gateway_cas().await;
    check_client_ca(&certs, &gateway_cas, SystemTime::now())
        .map_err(|p| Problem::new(p.kind.reason(), p.message))?;
    Ok(certs)
}

fn parse_time(rfc3339: Option<&str>) -> Option<Time> {
    rfc3339.and_then(|t| t.parse::<Timestamp>().ok()).map(Time)
}

fn agents_message(count: usize) -> String {
    match count {
        0 => "no agent connected".into(),
        1 => "1 agent connected".into(),
        n => format!("{n} agents connected (HA mode)"),
    }
}

/// `status.agentConnection`: times move on transitions only.
fn agent_connection(
    before: Option<&AgentConnectionStatus>,
    now: &ConnectionStatus,
    at: &Time,
) -> AgentConnectionStatus {
    let was = before.is_some_and(|b| b.connected);
    let heartbeat = if now.connected {
        let previous = before.and_then(|b| b.last_heartbeat_time.clone());
        let fresh = previous.as_ref().is_some_and(|p| {
            at.0.duration_since(p.0).as_secs() < HEARTBEAT_REFRESH.as_secs() as i64
        });
        if fresh {
            previous
        } else {
            parse_time(now.last_seen.as_deref()).or(Some(at.clone()))
        }
    } else {
        before.and_then(|b| b.last_heartbeat_time.clone())
    };
    AgentConnectionStatus {
        connected: now.connected,
        connected_agents: now.connected_agents as i32,
        last_connected_time: if now.connected && !was {
            Some(at.clone())
        } else {
            before.and_then(|b| b.last_connected_time.clone())
        },
        last_disconnected_time: if !now.connected && was {
            Some(at.clone())
        } else {
            before.and_then(|b| b.last_disconnected_time.clone())
        },
        last_heartbeat_time: heartbeat,
        message: Some(agents_message(now.connected_agents)),
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn check_gateway_spec(gateway: &GatewaySpec) -> Result<(), Problem> {
    for (field, host) in [
        ("publicVirtualHost", &gateway.public_virtual_host),
        (
            "organizationVirtualHost",
            &gateway.organization_virtual_host,
        ),
    ] {
        if !valid_host(host) {
            return Err(Problem::new(
                "GatewaySpecInvalid",
                format!(
                    "spec.gateway.{field} {host:?} is not a DNS name; write e.g. apps.example.com"
                ),
            ));
        }
    }
    if gateway.public_http_port == gateway.public_https_port {
        return Err(Problem::new(
            "GatewaySpecInvalid",
            format!(
                "spec.gateway.publicHTTPPort and publicHTTPSPort are both {}; give the ports the data \
                 plane's gateway is reachable on (defaults 19080 and 19443)",
                gateway.public_http_port
            ),
        ));
    }
    Ok(())
}

/// Works out the whole status of one plane.
async fn observe<K: PlaneResource>(plane: &K, ctx: &Context) -> PlaneStatus {
    let now = Time(Timestamp::now());
    let generation = plane.meta().generation;
    let namespace = plane.namespace().unwrap_or_default();
    let name = plane.name_any();
    let before = plane.plane_status().cloned().unwrap_or_default();
    let mut status = PlaneStatus {
        observed_generation: generation.unwrap_or_default(),
        conditions: before.conditions.clone(),
        agent_connection: None,
    };
    // Configuration problems first: a missing connection is often their consequence.
    let mut blockers: Vec<Problem> = Vec::new();
    let mut waiting: Vec<Problem> = Vec::new();
    let mut remote: Option<Client> = None;
    let common = plane.common();
    let set = |status: &mut PlaneStatus, type_: &str, truth: Truth, reason: &str, message: &str| {
        conditions::set(
            &mut status.conditions,
            type_,
            truth,
            reason,
            message,
            generation,
            &now,
        )
    };

    if plane.agent().is_some() {
        let key = PlaneKey {
            plane_type: K::PLANE_TYPE,
            plane_id: plane.plane_id(),
        };
        let cr = CrRef {
            namespace: Some(namespace.clone()),
            name: name.clone(),
        };
        let ca = validate_client_ca(plane, ctx).await;
        notify_if_changed(plane, ctx, fingerprint(generation, &ca)).await;
        if let Err(problem) = ca {
            blockers.push(problem);
        }
        match ctx.link.status(&key, &cr).await {
            Ok(connection) => {
                let agents = agent_connection(before.agent_connection.as_ref(), &connection, &now);
                if connection.connected {
                    set(
                        &mut status,
                        CONNECTED,
                        Truth::True,
                        "AgentConnected",
                        &agents_message(connection.connected_agents),
                    );
                    match ctx.planes.through_gateway(&cache_key(plane), &key, &cr) {
                        Ok(client) => remote = Some(client),
                        Err(problem) => tracing::debug!("{}", problem.message),
                    }
                } else {
                    let message = format!(
                        "no agent of {} planeID {:?} is connected to {}; check the agent's logs in the \
                         remote cluster for \"connected to control plane\" or its error",
                        K::kind(&()),
                        key.plane_id,
                        ctx.link.describe()
                    );
                    set(
                        &mut status,
                        CONNECTED,
                        Truth::False,
                        "AgentNotConnected",
                        &message,
                    );
                    waiting.push(Problem::new("AgentNotConnected", message));
                }
                status.agent_connection = Some(agents);
            }
            Err(e) => {
                let message = format!(
                    "cannot ask {} for the agents' status: {e:#}",
                    ctx.link.describe()
                );
                set(
                    &mut status,
                    CONNECTED,
                    Truth::Unknown,
                    "GatewayUnreachable",
                    &message,
                );
                status.agent_connection = before.agent_connection.clone();
                waiting.push(Problem::new("GatewayUnreachable", message));
            }
        }
    } else if let Some(cluster) = common.kubernetes_cluster {
        let client = ctx
            .planes
            .direct(&cache_key(plane), &namespace, generation, cluster)
            .await;
        match client {
            Ok(client) => match client.apiserver_version().await {
                Ok(version) => {
                    let message = format!(
                        "Kubernetes {} answers at {}",
                        version.git_version, cluster.server
                    );
                    set(
                        &mut status,
                        CONNECTED,
                        Truth::True,
                        "APIServerReachable",
                        &message,
                    );
                    remote = Some(client);
                }
                Err(e) => {
                    let message = format!("{} does not answer /version: {e}", cluster.server);
                    set(
                        &mut status,
                        CONNECTED,
                        Truth::False,
                        "APIServerUnreachable",
                        &message,
                    );
                    waiting.push(Problem::new("APIServerUnreachable", message));
                }
            },
            Err(problem) => {
                set(
                    &mut status,
                    CONNECTED,
                    Truth::False,
                    problem.reason,
                    &problem.message,
                );
                blockers.push(problem);
            }
        }
    } else {
        let message = "neither spec.clusterAgent (agent mode, recommended) nor spec.kubernetesCluster \
                       (direct access) is given; add one";
        set(
            &mut status,
            CONNECTED,
            Truth::False,
            "NoConnectionMode",
            message,
        );
        blockers.push(Problem::new("NoConnectionMode", message));
    }

    if let Some(reference) = common.observability_plane_ref {
        let kind = reference.kind.as_deref().unwrap_or("ObservabilityPlane");
        let found = if kind == "ObservabilityPlane" {
            Api::<ObservabilityPlane>::namespaced(ctx.client.clone(), &namespace)
                .get_opt(&reference.name)
                .await
                .ok()
                .flatten()
                .is_some()
        } else {
            false
        };
        if !found {
            blockers.push(Problem::new(
                "ObservabilityPlaneNotFound",
                format!(
                    "spec.observabilityPlaneRef names {kind} {namespace}/{} which does not exist; create \
                     it or fix the name",
                    reference.name
                ),
            ));
        }
    }

    if let Some(gateway) = plane.gateway_spec() {
        let (truth, problem) = match (check_gateway_spec(gateway), &remote) {
            (Err(problem), _) => (Truth::False, problem),
            (Ok(()), None) => (
                Truth::Unknown,
                Problem::new(
                    "AwaitingConnection",
                    "gateway spec valid; the remote cluster is probed for the Gateway API once connected",
                ),
            ),
            (Ok(()), Some(client)) => match client.list_api_groups().await {
                Ok(groups) if groups.groups.iter().any(|g| g.name == GATEWAY_API_GROUP) => (
                    Truth::True,
                    Problem::new(
                        "GatewayAPIAvailable",
                        format!(
                            "gateway spec valid; the remote cluster serves {GATEWAY_API_GROUP}"
                        ),
                    ),
                ),
                Ok(_) => (
                    Truth::False,
                    Problem::new(
                        "GatewayAPIMissing",
                        format!(
                            "the remote cluster does not serve {GATEWAY_API_GROUP}; install the Gateway \
                             API CRDs there (a prerequisite of the data plane)"
                        ),
                    ),
                ),
                Err(e) => (
                    Truth::Unknown,
                    Problem::new(
                        "GatewayAPIUnknown",
                        format!("cannot list the remote cluster's API groups: {e}"),
                    ),
                ),
            },
        };
        set(
            &mut status,
            GATEWAY_PROVISIONED,
            truth,
            problem.reason,
            &problem.message,
        );
        if truth == Truth::False {
            blockers.push(problem);
        }
    }

    blockers.extend(waiting);
    match blockers.first() {
        None => set(
            &mut status,
            READY,
            Truth::True,
            "Ready",
            "connected, trusted and configured",
        ),
        Some(problem) => {
            let reason = problem.reason;
            let message = problem.message.clone();
            set(&mut status, READY, Truth::False, reason, &message)
        }
    }
    status
}

/// Sends the plane API's `notify` when the trust material changed, so a gateway that does
/// not watch Kubernetes (OpenChoreo's) re-verifies its agents.
async fn notify_if_changed<K: PlaneResource>(plane: &K, ctx: &Context, fingerprint: String) {
    let key = cache_key(plane);
    let previous = ctx
        .notified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if previous.as_deref() == Some(fingerprint.as_str()) {
        return;
    }
    let notification = Notification {
        plane_type: K::PLANE_TYPE.as_str().to_string(),
        plane_id: plane.plane_id(),
        event: if previous.is_none() {
            "created"
        } else {
            "updated"
        }
        .into(),
        namespace: plane.namespace().unwrap_or_default(),
        name: plane.name_any(),
    };
    match ctx.link.notify(notification).await {
        Ok(()) => {
            ctx.notified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, fingerprint);
        }
        Err(e) => tracing::warn!(cr = %key, "cannot notify {}: {e:#}", ctx.link.describe()),
    }
}

/// Patches `status` when it changed, and records an Event for each condition that moved.
async fn write_status<K: PlaneResource>(
    plane: &K,
    ctx: &Context,
    api: &Api<K>,
    status: PlaneStatus,
) -> Result<(), Error> {
    let before = plane.plane_status().cloned().unwrap_or_default();
    if before == status {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &plane.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let reference: ObjectReference = plane.object_ref(&());
    for condition in conditions::changed(&before.conditions, &status.conditions) {
        if condition.status == "Unknown" {
            continue;
        }
        let event = Event {
            type_: if condition.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: condition.reason.clone(),
            note: Some(format!(
                "{}={}: {}",
                condition.type_, condition.status, condition.message
            )),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!("cannot record an Event: {e}");
        }
    }
    Ok(())
}
