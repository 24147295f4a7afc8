//! One reconciler for the three plane kinds: the finalizer (kube-runtime's), then gather
//! the facts with API calls, decide the status with [`status::decide`] (pure), write it,
//! record Events, and notify the gateway when the trust material changed.

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
use kube::runtime::finalizer::{self, finalizer};
use kube::{Client, ResourceExt as _};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::clients::{PlaneClients, read_secret};
use super::metrics::Metrics;
use super::status::{self, CertificateExpiry, Facts, GATEWAY_API_GROUP, GatewayProbe, Mode};
use crate::planes::conditions;
use crate::planes::connection::{ConnectionStatus, GatewayLink, Notification};
use crate::planes::crd::{
    ClusterObservabilityPlane, Environment, ObservabilityPlane, PlaneResource, PlaneStatus,
    namespaced_api,
};
use crate::planes::registry::{check_client_ca, resolve_client_ca, secret_location};
use crate::planes::rollover::{self, Step};
use crate::planes::{PlaneKind, Problem, Reason, secret_data};
use base64::Engine as _;

/// How soon a blocked deletion is looked at again.
const DELETION_RETRY: Duration = Duration::from_secs(5);
/// How soon a failed reconcile is retried.
const ERROR_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Environments still name the DataPlane; the finalizer stays until they are gone.
    #[error("deletion waits for {0} Environment(s)")]
    DeletionBlocked(usize),
    #[error("finalizer: {0}")]
    Finalizer(Box<finalizer::Error<Error>>),
}

impl Error {
    /// The `result` label of the reconcile metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_error",
            Error::DeletionBlocked(_) => "deletion_blocked",
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer_error",
            },
        }
    }
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
    pub timing: super::config::Timing,
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
        timing: super::config::Timing,
    ) -> Context {
        Context {
            client,
            link,
            recorder,
            planes,
            gateway_ca,
            metrics,
            timing,
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
            && let Some(bytes) = secret_data(&secret).get("ca.crt")
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
    let api = K::api(ctx.client.clone(), plane.namespace().as_deref());
    let result = finalizer(&api, &finalizer_name::<K>(), plane, |event| async {
        match event {
            finalizer::Event::Apply(plane) => apply(plane.as_ref(), &ctx, &api).await,
            finalizer::Event::Cleanup(plane) => cleanup(plane.as_ref(), &ctx, &api).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner,
        other => Error::Finalizer(Box::new(other)),
    });
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    ctx.metrics.observe(&K::kind(&()), started.elapsed(), label);
    result
}

pub fn error_policy<K: PlaneResource>(plane: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::DeletionBlocked(_) = error {
        return Action::requeue(DELETION_RETRY);
    }
    tracing::warn!(
        kind = %K::kind(&()),
        name = %plane.name_any(),
        namespace = ?plane.namespace(),
        "reconcile failed: {error}; retrying"
    );
    Action::requeue(ERROR_RETRY)
}

async fn apply<K: PlaneResource>(plane: &K, ctx: &Context, api: &Api<K>) -> Result<Action, Error> {
    let facts = gather(plane, ctx).await;
    advance_rollover(plane, ctx, &facts.rollover).await?;
    let before = plane.plane_status().cloned().unwrap_or_default();
    let status = status::decide(&before, &facts, &Time(Timestamp::now()));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY);
    let (is_ready, reason) = match ready {
        Some(c) => (c.status == "True", c.reason.clone()),
        None => (false, String::new()),
    };
    write_status(plane, ctx, api, status).await?;
    ctx.metrics.plane_ready(
        &K::kind(&()),
        &plane.namespace().unwrap_or_default(),
        &plane.name_any(),
        is_ready,
        &reason,
    );
    Ok(Action::requeue(ctx.timing.resync))
}

/// Deleting: a data plane that Environments still name stays until they are gone.
async fn cleanup<K: PlaneResource>(
    plane: &K,
    ctx: &Context,
    api: &Api<K>,
) -> Result<Action, Error> {
    let namespace = plane.namespace().unwrap_or_default();
    let name = plane.name_any();
    // Environments name a DataPlane of their own namespace, or a ClusterDataPlane from any.
    if matches!(K::KIND, PlaneKind::DataPlane | PlaneKind::ClusterDataPlane) {
        let cluster_scoped = K::KIND.cluster_scoped();
        let environments: Vec<String> = namespaced_api::<Environment>(
            ctx.client.clone(),
            (!cluster_scoped).then_some(namespace.as_str()),
        )
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.spec.data_plane_ref.as_ref().map(|r| r.target()) == Some((K::KIND, name.as_str()))
        })
        .map(|e| match cluster_scoped {
            true => format!("{}/{}", e.namespace().unwrap_or_default(), e.name_any()),
            false => e.name_any(),
        })
        .collect();
        if !environments.is_empty() {
            let before = plane.plane_status().cloned().unwrap_or_default();
            let status = status::decide_blocked_deletion(
                &before,
                &environments,
                plane.meta().generation,
                &Time(Timestamp::now()),
            );
            write_status(plane, ctx, api, status).await?;
            return Err(Error::DeletionBlocked(environments.len()));
        }
    }
    let notification = notification(plane, "deleted");
    if let Err(e) = ctx.link.notify(notification).await {
        tracing::warn!(%name, %namespace, "cannot notify {} of the deletion: {e:#}", ctx.link.describe());
    }
    ctx.notified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&cache_key(plane));
    ctx.planes.forget(&cache_key(plane));
    ctx.metrics.plane_gone(&K::kind(&()), &namespace, &name);
    tracing::info!(kind = %K::kind(&()), %namespace, %name, "cleaned up; deletion proceeds");
    Ok(Action::await_change())
}

fn notification<K: PlaneResource>(plane: &K, event: &str) -> Notification {
    Notification {
        plane_type: K::PLANE_TYPE.as_str().to_string(),
        plane_id: plane.plane_id(),
        event: event.into(),
        namespace: plane.namespace().unwrap_or_default(),
        name: plane.name_any(),
    }
}

/// Everything [`status::decide`] needs, found out with API calls.
async fn gather<K: PlaneResource>(plane: &K, ctx: &Context) -> Facts {
    let namespace = plane.cr().namespace_or_cluster().to_string();
    let common = plane.common();
    let mut remote: Option<Client> = None;
    let mut certificates = Vec::new();
    let mut rollover = Step::Idle;
    let mode = if plane.agent().is_some() {
        let ca = validate_client_ca(plane, ctx).await;
        if let Ok(cas) = &ca {
            certificates.extend(client_ca_expiry(cas, ctx.timing.expiry_warning));
        }
        notify_if_changed(plane, ctx, fingerprint(plane.meta().generation, &ca)).await;
        let (key, cr) = (plane.key(), plane.cr());
        let connection = ctx
            .link
            .status(&key, &cr)
            .await
            .map_err(|e| format!("{e:#}"));
        if let Ok(status) = &connection {
            certificates.extend(connection_expiries(status, ctx.timing.expiry_warning));
        }
        if let Ok(cas) = &ca {
            rollover = rollover::next_step(
                K::KIND,
                (&namespace, &plane.name_any()),
                plane.annotations(),
                cas,
                connection.as_ref().ok(),
                (SystemTime::now(), ctx.timing.ca_rotation_grace),
            );
        }
        if connection.as_ref().is_ok_and(|c| c.connected) {
            match ctx.planes.through_gateway(&cache_key(plane), &key, &cr) {
                Ok(client) => remote = Some(client),
                Err(problem) => tracing::debug!("{problem}"),
            }
        }
        Mode::Agent {
            key,
            client_ca: ca.map(|_| ()),
            connection,
            gateway: ctx.link.describe(),
        }
    } else if let Some(cluster) = common.kubernetes_cluster {
        let client = ctx
            .planes
            .direct(
                &cache_key(plane),
                &namespace,
                plane.meta().generation,
                cluster,
            )
            .await;
        let version = match client {
            Ok(client) => match client.apiserver_version().await {
                Ok(version) => {
                    remote = Some(client);
                    Ok(version.git_version)
                }
                Err(e) => Err(Problem::new(
                    Reason::APIServerUnreachable,
                    format!("{} does not answer /version: {e}", cluster.server),
                )),
            },
            Err(problem) => Err(problem),
        };
        Mode::Direct {
            server: cluster.server.clone(),
            version,
        }
    } else {
        Mode::Unconfigured
    };
    let observability_plane = match common.observability_plane_ref {
        Some(reference) => {
            let name = &reference.name;
            Some(match reference.target_kind(K::KIND) {
                Some(PlaneKind::ClusterObservabilityPlane) => (
                    format!("ClusterObservabilityPlane {name}"),
                    Api::<ClusterObservabilityPlane>::all(ctx.client.clone())
                        .get_opt(name)
                        .await
                        .is_ok_and(|found| found.is_some()),
                ),
                Some(_) if !K::KIND.cluster_scoped() => (
                    format!("ObservabilityPlane {namespace}/{name}"),
                    Api::<ObservabilityPlane>::namespaced(ctx.client.clone(), &namespace)
                        .get_opt(name)
                        .await
                        .is_ok_and(|found| found.is_some()),
                ),
                // A cluster-scoped plane has no namespace to find a namespaced one in.
                Some(_) => (format!("ObservabilityPlane {name} (no namespace)"), false),
                None => (
                    format!(
                        "{} {name} (not an observability plane kind)",
                        reference.kind.as_deref().unwrap_or_default()
                    ),
                    false,
                ),
            })
        }
        None => None,
    };
    let gateway = match plane.gateway_spec() {
        Some(spec) => Some((spec.clone(), probe_gateway_api(remote.as_ref()).await)),
        None => None,
    };
    Facts {
        generation: plane.meta().generation,
        mode,
        observability_plane,
        gateway,
        certificates,
        rollover,
    }
}

/// Takes the rollover step the facts call for: the writes, and an Event for each.
async fn advance_rollover<K: PlaneResource>(
    plane: &K,
    ctx: &Context,
    step: &Step,
) -> Result<(), Error> {
    let namespace = plane.cr().namespace_or_cluster().to_string();
    let name = plane.name_any();
    let Some(client_ca) = plane.client_ca() else {
        return Ok(());
    };
    let version = plane.resource_version();
    let at = (namespace.as_str(), name.as_str(), version.as_deref());
    let note = match step {
        Step::Idle => return Ok(()),
        Step::Waiting(why) => {
            tracing::info!(%namespace, %name, "CA rollover: the old CA stays: {why}");
            return Ok(());
        }
        Step::Mark { unused_since } => {
            let marks = [(rollover::UNUSED_SINCE, unused_since.clone())];
            rollover::write(&ctx.client, K::KIND, at, client_ca, None, &marks).await?;
            return Ok(());
        }
        Step::Proposed { proposal, .. } => {
            // Kept on the CR for `planelink register rotate` (the condition names it).
            let encoded = base64::engine::general_purpose::STANDARD.encode(&proposal.ca_bundle);
            if plane.annotations().get(rollover::PROPOSED) != Some(&encoded) {
                let marks = [(rollover::PROPOSED, Some(encoded))];
                rollover::write(&ctx.client, K::KIND, at, client_ca, None, &marks).await?;
            }
            return Ok(());
        }
        Step::Extend {
            bundle,
            retiring,
            agent,
        } => {
            let started = crate::trust::inspect::format_system_time(SystemTime::now());
            rollover::write(
                &ctx.client,
                K::KIND,
                at,
                client_ca,
                Some(bundle),
                &[
                    (rollover::RETIRING, Some(retiring.join(","))),
                    (rollover::STARTED, Some(started)),
                    (rollover::UNUSED_SINCE, None),
                    (rollover::PROPOSED, None),
                ],
            )
            .await?;
            (
                "ClientCAExtended",
                format!(
                    "agent {} proposed the CA of its renewed certificate: clientCA now trusts it next to \
                 the current CA ({}), which is removed once no connected agent uses it and {} have passed",
                    agent.as_deref().unwrap_or("(unnamed)"),
                    retiring.join(", "),
                    humantime::format_duration(ctx.timing.ca_rotation_grace),
                ),
            )
        }
        Step::Retire { bundle, retired } => {
            rollover::write(
                &ctx.client,
                K::KIND,
                at,
                client_ca,
                (!retired.is_empty()).then_some(bundle.as_slice()),
                &[
                    (rollover::RETIRING, None),
                    (rollover::STARTED, None),
                    (rollover::UNUSED_SINCE, None),
                    (rollover::PROPOSED, None),
                ],
            )
            .await?;
            (
                "ClientCARetired",
                format!(
                    "the old CA ({}) is used by no connected agent: clientCA now trusts only {}",
                    retired.join(", "),
                    bundle
                        .iter()
                        .map(crate::trust::inspect::fingerprint)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            )
        }
    };
    let (reason, message) = note;
    tracing::info!(kind = %K::kind(&()), %namespace, %name, reason, "{message}");
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(message),
        action: "RollClientCA".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &plane.object_ref(&())).await {
        tracing::debug!("cannot record an Event: {e}");
    }
    Ok(())
}

/// The client CA bundle lasts as long as its longest-lived CA.
fn client_ca_expiry(cas: &[CertificateDer<'_>], warn: Duration) -> Option<CertificateExpiry> {
    let last = cas
        .iter()
        .filter_map(|c| crate::trust::CertInfo::from_der(c).ok())
        .max_by_key(|info| info.not_after)?;
    Some(CertificateExpiry {
        reason: Reason::ClientCAExpiringSoon,
        what: format!("clientCA {:?}", last.subject),
        expiry: last.expiry(SystemTime::now(), warn),
    })
}

/// The connected agents' certificates and the gateway's serving certificate, as the
/// gateway reports them.
fn connection_expiries(status: &ConnectionStatus, warn: Duration) -> Vec<CertificateExpiry> {
    let now = SystemTime::now();
    let mut out: Vec<CertificateExpiry> = status
        .agents
        .iter()
        .filter_map(|agent| {
            Some(CertificateExpiry {
                reason: Reason::AgentCertExpiringSoon,
                what: format!(
                    "the certificate of agent {}",
                    agent.instance.as_deref().unwrap_or("(unnamed)")
                ),
                expiry: agent.certificate_expiry(now, warn)?,
            })
        })
        .collect();
    if let Some(expiry) = status.gateway_certificate_expiry(now, warn) {
        out.push(CertificateExpiry {
            reason: Reason::GatewayCertExpiringSoon,
            what: "the gateway's serving certificate".into(),
            expiry,
        });
    }
    out
}

async fn probe_gateway_api(remote: Option<&Client>) -> GatewayProbe {
    match remote {
        None => GatewayProbe::NotConnected,
        Some(client) => GatewayProbe::Groups(
            client
                .list_api_groups()
                .await
                .map(|groups| groups.groups.iter().any(|g| g.name == GATEWAY_API_GROUP))
                .map_err(|e| e.to_string()),
        ),
    }
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
        Err(problem) => hasher.update(problem.reason.as_str()),
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
    let namespace = plane.cr().namespace_or_cluster().to_string();
    let location = plane
        .client_ca()
        .and_then(|value| secret_location(&namespace, value));
    let data = read_secret(&ctx.client, location.as_ref()).await?;
    let certs = resolve_client_ca(K::KIND, &namespace, plane.client_ca(), |_, _| data.as_ref())?;
    let gateway_cas = ctx.gateway_cas().await;
    check_client_ca(&certs, &gateway_cas, SystemTime::now())?;
    Ok(certs)
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
    let event = if previous.is_none() {
        "created"
    } else {
        "updated"
    };
    match ctx.link.notify(notification(plane, event)).await {
        Ok(()) => {
            ctx.notified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, fingerprint);
        }
        Err(e) => tracing::warn!(cr = %key, "cannot notify {}: {e:#}", ctx.link.describe()),
    }
}

/// A JSON merge patch from `before` to `after`: `after`, with `null` for every field
/// `after` leaves out (an omitted field is kept by a merge patch, so a list that became
/// empty or a value that became unknown would otherwise stay as it was).
fn merge_patch(before: &serde_json::Value, after: &serde_json::Value) -> serde_json::Value {
    match (before, after) {
        (serde_json::Value::Object(old), serde_json::Value::Object(new)) => {
            let mut patch = serde_json::Map::new();
            for (key, value) in new {
                let previous = old.get(key).unwrap_or(&serde_json::Value::Null);
                patch.insert(key.clone(), merge_patch(previous, value));
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(key.clone(), serde_json::Value::Null);
            }
            serde_json::Value::Object(patch)
        }
        _ => after.clone(),
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
    let patch = serde_json::json!({
        "status": merge_patch(
            &serde_json::to_value(&before).unwrap_or_default(),
            &serde_json::to_value(&status).unwrap_or_default(),
        )
    });
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

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn a_field_left_out_is_removed_and_the_rest_is_replaced() {
        let before = json!({"agentConnection": {"connected": true, "gatewayReplicas": "2/2",
            "agents": [{"protocol": "planelink.v1"}]}, "observedGeneration": 1});
        let after = json!({"agentConnection": {"connected": false}, "observedGeneration": 2});
        assert_eq!(
            merge_patch(&before, &after),
            json!({"agentConnection": {"connected": false, "gatewayReplicas": null, "agents": null},
                "observedGeneration": 2})
        );
    }
}
