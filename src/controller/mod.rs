//! The controller role: reconciles DataPlane, BuildPlane and ObservabilityPlane (one
//! kube-runtime Controller per kind), keeps their status true from the gateway, and elects
//! one active replica with a Lease. It reaches the gateway through a [`GatewayLink`]:
//! [`run`] builds the remote one; `crate::compose` passes the gateway's own when both run
//! in one process.

pub mod args;
mod clients;
pub mod config;
mod leader;
mod metrics;
mod reconcile;
mod remote;
mod status;

pub use args::ControllerArgs;
pub use config::Config;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::core::DynamicObject;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource as _, ResourceExt as _};
use tokio_util::sync::CancellationToken;

use crate::planes::connection::GatewayLink;
use crate::planes::crd::{
    ClusterObservabilityPlane, Environment, ForEachKind, ObservabilityPlane, PlaneResource,
    ValueFrom,
};
use crate::planes::kubernetes::PlaneDecoder;
use crate::planes::{PlaneKind, Reason};
use clients::PlaneClients;
use reconcile::{Context, GatewayCa};

/// The listener the controller serves: health, readiness and metrics.
pub struct Listeners {
    pub health: tokio::net::TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let at = config.health;
        Ok(Listeners {
            health: crate::server::bind(at.ip(), at.port(), "--controller-health-port").await?,
        })
    }
}

/// Runs the controller until SIGTERM, with the gateway elsewhere (`--gateway-url`).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::signals::cancel_on_terminate(shutdown.clone()));
    let listeners = Listeners::bind(&config).await?;
    let client = crate::planes::kubernetes::kube_client(config.kubeconfig.as_deref(), None).await?;
    let secrets = Api::namespaced(client, &config.control_plane_namespace);
    let link = remote::link(&config.access, Some(secrets))?;
    start(config, listeners, link, shutdown).await
}

/// Reconciles every plane kind on `listeners` until `shutdown`, talking to the gateway
/// through `link`; an error when the leader Lease is lost.
pub async fn start(
    config: Config,
    listeners: Listeners,
    link: Arc<dyn GatewayLink>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = crate::planes::kubernetes::kube_client(config.kubeconfig.as_deref(), None).await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let health = crate::health::Health {
        ready: readiness.check(),
        metrics: Arc::new(registry),
    };
    tokio::spawn(crate::health::serve(
        listeners.health,
        health,
        shutdown.clone(),
    ));

    let lost = CancellationToken::new();
    let mut election = None;
    if let Some(lease) = &config.leader_election {
        let le = Arc::new(leader::LeaderElection::new(
            client.clone(),
            &config.control_plane_namespace,
            lease,
        ));
        readiness.set(Phase::Standby);
        if !le.acquire(&shutdown).await {
            return Ok(());
        }
        let keeper = le.clone();
        let (stop, lost2) = (shutdown.clone(), lost.clone());
        election = Some(tokio::spawn(async move { keeper.keep(stop, lost2).await }));
    }

    let reporter = Reporter {
        controller: "planelink-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        link,
        Recorder::new(client.clone(), reporter),
        PlaneClients::new(client.clone(), Some(config.access.clone())),
        GatewayCa {
            file: config.gateway_ca.clone(),
            secret: Some((
                config.control_plane_namespace.clone(),
                "cluster-gateway-ca".into(),
            )),
        },
        metrics,
        config.timing,
    ));
    tracing::info!(gateway = %ctx.link.describe(), namespace = ?config.namespace, "controller running");
    let stop = CancellationToken::new();
    let namespace = &config.namespace;
    readiness.set(Phase::Listing(PlaneKind::ALL.len()));
    let controllers = futures_util::future::join_all(PlaneKind::for_each(&mut RunKind {
        ctx: &ctx,
        namespace,
        stop: &stop,
        readiness: &readiness,
    }));
    tokio::pin!(controllers);
    let lost_leadership = tokio::select! {
        _ = &mut controllers => false,
        _ = shutdown.cancelled() => false,
        _ = lost.cancelled() => true,
    };
    stop.cancel();
    if lost_leadership {
        // No longer the leader: reconciles in flight must not write one more status, so
        // they are dropped here (with the controllers), not awaited.
        if let Some(election) = election {
            election.abort();
        }
        anyhow::bail!("lost the leader Lease; exiting so that a fresh replica takes over");
    }
    controllers.await;
    if let Some(election) = election {
        let _ = election.await;
    }
    Ok(())
}

/// Every Secret a plane reads: its client CA, and its direct-access credentials.
fn referenced_secrets<K: PlaneResource>(plane: &K) -> Vec<(String, String)> {
    let cr = plane.cr();
    let common = plane.common();
    let mut values: Vec<&ValueFrom> = Vec::new();
    if let Some(ca) = common.agent.and_then(|a| a.client_ca.as_ref()) {
        values.push(ca);
    }
    if let Some(cluster) = common.kubernetes_cluster {
        values.push(&cluster.tls.ca);
        if let Some(mtls) = &cluster.auth.mtls {
            values.push(&mtls.client_cert);
            values.push(&mtls.client_key);
        }
        if let Some(token) = &cluster.auth.bearer_token {
            values.push(token);
        }
    }
    values
        .into_iter()
        .filter_map(|v| crate::planes::registry::secret_location(cr.namespace_or_cluster(), v))
        .map(|at| (at.namespace, at.name))
        .collect()
}

fn planes_where<K: PlaneResource>(
    store: &Store<K>,
    matches: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|p| matches(p))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// What a reconcile reacts to: the spec, deletion and finalizers, not our own status
/// writes (which would otherwise bring every CR straight back).
fn relevant<K: PlaneResource>(plane: &K) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    plane.meta().generation.hash(&mut hasher);
    plane.meta().deletion_timestamp.is_some().hash(&mut hasher);
    plane.finalizers().hash(&mut hasher);
    Some(hasher.finish())
}

/// Where the controller is, as `/ready` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the leader Lease: ready, to take over when it frees (a standby that
    /// reported unready would stall every rolling update).
    Standby,
    /// Leading, with this many plane kinds not yet listed.
    Listing(usize),
}

#[derive(Clone)]
struct Readiness(Arc<std::sync::Mutex<Phase>>);

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness(Arc::new(std::sync::Mutex::new(Phase::Listing(
            PlaneKind::ALL.len(),
        ))))
    }
}

impl Readiness {
    fn set(&self, phase: Phase) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    /// One more plane kind listed (or found not installed).
    fn listed(&self) {
        let mut phase = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Phase::Listing(left) = *phase {
            *phase = Phase::Listing(left.saturating_sub(1));
        }
    }

    fn check(&self) -> crate::health::ReadyCheck {
        let phase = self.0.clone();
        Arc::new(
            move || match *phase.lock().unwrap_or_else(|p| p.into_inner()) {
                Phase::Standby | Phase::Listing(0) => Ok(()),
                Phase::Listing(left) => Err(format!(
                    "{left} plane kinds not listed from the Kubernetes API yet"
                )),
            },
        )
    }
}

/// A watch event of untyped plane objects as one of kind `K`; `None` for an object that
/// does not decode (reported once per version: a log line naming the field, a Warning
/// Event and `Ready=False` with reason `SpecUndecodable` on the object).
fn typed_event<K: PlaneResource>(
    event: watcher::Event<DynamicObject>,
    decoder: &PlaneDecoder,
    client: &kube::Client,
    recorder: &Recorder,
) -> Option<watcher::Event<K>> {
    use watcher::Event as E;
    let decode = |object: DynamicObject| match decoder.decode::<K>(&object) {
        Ok(plane) => Some(plane),
        Err(reason) => {
            if let Some(reason) = reason {
                tracing::warn!("{reason}: it is not reconciled; the other planes are");
                tokio::spawn(report_undecodable::<K>(
                    object,
                    reason,
                    client.clone(),
                    recorder.clone(),
                ));
            }
            None
        }
    };
    Some(match event {
        E::Apply(object) => E::Apply(decode(object)?),
        E::InitApply(object) => E::InitApply(decode(object)?),
        E::Delete(object) => E::Delete(decode(object)?),
        E::Init => E::Init,
        E::InitDone => E::InitDone,
    })
}

async fn report_undecodable<K: PlaneResource>(
    object: DynamicObject,
    reason: String,
    client: kube::Client,
    recorder: Recorder,
) {
    let resource = crate::planes::kubernetes::plane_resource(K::KIND);
    let event = Event {
        type_: EventType::Warning,
        reason: Reason::SpecUndecodable.as_str().into(),
        note: Some(reason.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder
        .publish(&event, &object.object_ref(&resource))
        .await
    {
        tracing::debug!("cannot record an Event: {e}");
    }
    let mut conditions = Vec::new();
    crate::planes::conditions::set(
        &mut conditions,
        crate::planes::conditions::READY,
        crate::planes::conditions::Truth::False,
        Reason::SpecUndecodable,
        &reason,
        object.metadata.generation,
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let api = crate::planes::kubernetes::plane_api(&client, K::KIND, object.namespace().as_deref());
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    let params = kube::api::PatchParams::default();
    if let Err(e) = api
        .patch_status(
            &object.name_any(),
            &params,
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!("cannot write the status of an undecodable plane: {e}");
    }
}

/// Starts the controller of each plane kind.
struct RunKind<'a> {
    ctx: &'a Arc<Context>,
    namespace: &'a Option<String>,
    stop: &'a CancellationToken,
    readiness: &'a Readiness,
}

impl ForEachKind for RunKind<'_> {
    type Output = futures_util::future::BoxFuture<'static, ()>;
    fn kind<K: PlaneResource>(&mut self) -> Self::Output {
        let (ctx, namespace) = (self.ctx.clone(), self.namespace.clone());
        run_kind::<K>(ctx, namespace, self.stop.clone(), self.readiness.clone()).boxed()
    }
}

async fn run_kind<K: PlaneResource>(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: CancellationToken,
    readiness: Readiness,
) {
    if K::KIND.cluster_scoped() && namespace.is_some() {
        // Watching one namespace: cluster-scoped planes are not in it (and the
        // controller's Role may not read them).
        readiness.listed();
        return;
    }
    let api = K::api(ctx.client.clone(), namespace.as_deref());
    if let Err(kube::Error::Api(e)) = api.list_metadata(&ListParams::default().limit(1)).await
        && e.code == 404
    {
        tracing::warn!(
            kind = %K::KIND,
            "the {} CRD is not installed: its planes are not reconciled (restart the controller \
             after installing it)",
            K::KIND
        );
        readiness.listed();
        return;
    }
    let (reader, writer) = reflector::store();
    let synced = reader.clone();
    tokio::spawn(async move {
        if synced.wait_until_ready().await.is_ok() {
            readiness.listed();
        }
    });
    // Watched untyped and decoded one by one: a CR that does not decode gets a Warning
    // Event and a log line, and the other planes of its kind are reconciled.
    let dynamic = crate::planes::kubernetes::plane_api(&ctx.client, K::KIND, namespace.as_deref());
    let decoder = Arc::new(PlaneDecoder::default());
    let (client, recorder) = (ctx.client.clone(), ctx.recorder.clone());
    let planes = watcher(dynamic, watcher::Config::default())
        .default_backoff()
        .try_filter_map(move |event| {
            let typed = typed_event::<K>(event, &decoder, &client, &recorder);
            async move { Ok(typed) }
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(relevant::<K>, Default::default());
    let mut controller = Controller::for_stream(planes, reader.clone());

    let store = reader.clone();
    controller = controller.watches(
        Api::<Secret>::all(ctx.client.clone()),
        watcher::Config::default()
            .fields("type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"),
        move |secret: Secret| {
            let key = (secret.namespace().unwrap_or_default(), secret.name_any());
            planes_where(&store, |p| referenced_secrets(p).contains(&key))
        },
    );
    let store = reader.clone();
    controller = controller.watches(
        Api::<ObservabilityPlane>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |op: ObservabilityPlane| {
            let (ns, name) = (op.namespace(), op.name_any());
            planes_where(&store, |p| {
                p.namespace() == ns
                    && p.common().observability_plane_ref.is_some_and(|r| {
                        r.name == name
                            && r.target_kind(K::KIND) == Some(PlaneKind::ObservabilityPlane)
                    })
            })
        },
    );
    let store = reader.clone();
    controller = controller.watches(
        Api::<ClusterObservabilityPlane>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |op: ClusterObservabilityPlane| {
            let name = op.name_any();
            planes_where(&store, |p| {
                p.common().observability_plane_ref.is_some_and(|r| {
                    r.name == name
                        && r.target_kind(K::KIND) == Some(PlaneKind::ClusterObservabilityPlane)
                })
            })
        },
    );
    if matches!(K::KIND, PlaneKind::DataPlane | PlaneKind::ClusterDataPlane) {
        controller = controller.watches(
            Api::<Environment>::all(ctx.client.clone()),
            watcher::Config::default(),
            |env: Environment| {
                let ns = env.namespace().unwrap_or_default();
                let (kind, name) = env.spec.data_plane_ref.as_ref()?.target();
                match kind {
                    _ if kind != K::KIND => None,
                    PlaneKind::ClusterDataPlane => Some(ObjectRef::<K>::new(name)),
                    _ => Some(ObjectRef::<K>::new(name).within(&ns)),
                }
            },
        );
    }
    let store = reader.clone();
    let changes = ctx.link.changes().flat_map(move |key| {
        futures_util::stream::iter(planes_where(&store, |p| {
            K::PLANE_TYPE == key.plane_type && p.plane_id() == key.plane_id
        }))
    });
    controller
        .reconcile_on(changes)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile::reconcile::<K>, reconcile::error_policy::<K>, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("controller: {e}");
            }
        })
        .await;
}
