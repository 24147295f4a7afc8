//! The controller role: reconciles DataPlane, BuildPlane and ObservabilityPlane (one
//! kube-runtime Controller per kind), keeps their status true from the gateway, and elects
//! one active replica with a Lease.

pub mod args;
mod clients;
pub mod config;
mod leader;
mod metrics;
mod reconcile;
mod remote;
mod status;

pub use args::{ControllerArgs, ControllerCommand};
pub use config::{Config, GatewayMode};
pub use status::GATEWAY_API_GROUP;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;

use crate::planes::PlaneKind;
use crate::planes::connection::GatewayLink;
use crate::planes::crd::{
    ClusterObservabilityPlane, Environment, ForEachKind, ObservabilityPlane, PlaneResource,
    ValueFrom,
};
use clients::PlaneClients;
use reconcile::{Context, GatewayCa};

/// Runs the controller until SIGTERM; with `--with-gateway`, the gateway too, in this
/// process (they meet through the gateway's public [`GatewayLink`]).
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::signals::cancel_on_terminate(shutdown.clone()));
    let health = crate::server::bind(
        config.health.ip(),
        config.health.port(),
        "--controller-health-port",
    )
    .await?;
    let client = crate::planes::kubernetes::kube_client(config.kubeconfig.as_deref(), None).await?;
    let mut gateway = None;
    let link: Arc<dyn GatewayLink> = match &config.gateway {
        GatewayMode::Embedded(server) => {
            let listeners = crate::gateway::Listeners::bind(server).await?;
            let registry = crate::planes::Registry::spawn(Box::new(
                crate::planes::kubernetes::KubernetesSource::new(
                    client.clone(),
                    config.namespace.clone(),
                ),
            ));
            let started =
                crate::gateway::start(server, listeners, registry, shutdown.clone()).await?;
            let internal = started.internal_addr;
            let ip = if internal.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                internal.ip()
            };
            config.access.url =
                format!("https://{}", std::net::SocketAddr::new(ip, internal.port()));
            let link = started.link();
            gateway = Some(started);
            link
        }
        GatewayMode::Remote => remote::link(
            &config.access,
            Some(Api::namespaced(
                client.clone(),
                &config.control_plane_namespace,
            )),
        )?,
    };
    let result = run_controllers(&config, client, health, link, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(gateway) = gateway {
        gateway.wait().await;
    }
    result
}

async fn run_controllers(
    config: &Config,
    client: Client,
    health_listener: tokio::net::TcpListener,
    link: Arc<dyn GatewayLink>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let health = crate::health::Health {
        ready: Arc::new(|| Ok(())),
        metrics: Arc::new(registry),
    };
    tokio::spawn(crate::health::serve(
        health_listener,
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
    let controllers = futures_util::future::join_all(PlaneKind::for_each(&mut RunKind {
        ctx: &ctx,
        namespace,
        stop: &stop,
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

/// Starts the controller of each plane kind.
struct RunKind<'a> {
    ctx: &'a Arc<Context>,
    namespace: &'a Option<String>,
    stop: &'a CancellationToken,
}

impl ForEachKind for RunKind<'_> {
    type Output = futures_util::future::BoxFuture<'static, ()>;
    fn kind<K: PlaneResource>(&mut self) -> Self::Output {
        run_kind::<K>(self.ctx.clone(), self.namespace.clone(), self.stop.clone()).boxed()
    }
}

async fn run_kind<K: PlaneResource>(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: CancellationToken,
) {
    if K::KIND.cluster_scoped() && namespace.is_some() {
        // Watching one namespace: cluster-scoped planes are not in it (and the
        // controller's Role may not read them).
        return;
    }
    let api = K::api(ctx.client.clone(), namespace.as_deref());
    let (reader, writer) = reflector::store();
    let planes = watcher(api, watcher::Config::default())
        .default_backoff()
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
