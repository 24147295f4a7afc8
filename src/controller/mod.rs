//! The controller role: reconciles DataPlane, BuildPlane and ObservabilityPlane (one
//! kube-runtime Controller per kind), keeps their status true from the gateway, and elects
//! one active replica with a Lease.

mod clients;
mod conditions;
mod leader;
mod metrics;
mod reconcile;
mod remote;
mod status;

pub use conditions::{CONNECTED, GATEWAY_PROVISIONED, READY};
pub use status::GATEWAY_API_GROUP;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;

use crate::cli::ControllerArgs;
use crate::config::{self, ConfigError};
use crate::planes::connection::GatewayLink;
use crate::planes::crd::{
    BuildPlane, DataPlane, Environment, ObservabilityPlane, PlaneResource, ValueFrom,
};
use clients::{GatewayAccess, PlaneClients};
use reconcile::{Context, GatewayCa};

/// Validates the controller's flags (and the gateway's, with --with-gateway).
pub fn validate(args: &ControllerArgs) -> Result<(), ConfigError> {
    if args.with_gateway {
        return crate::gateway::validate(&args.gateway);
    }
    let url = url::Url::parse(&args.gateway_url).map_err(|e| {
        ConfigError::new(
            "--gateway-url",
            format!(
                "{:?} is not a URL ({e}); e.g. https://cluster-gateway:8444",
                args.gateway_url
            ),
        )
    })?;
    if url.scheme() != "https" {
        return Err(ConfigError::new(
            "--gateway-url",
            "the gateway's internal listener speaks TLS; use https://HOST:8444",
        ));
    }
    match (&args.gateway_client_cert, &args.gateway_client_key) {
        (Some(cert), Some(key)) => {
            config::check_key_pair("--gateway-client-cert", cert, "--gateway-client-key", key)?
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(ConfigError::new(
                "--gateway-client-key",
                "required with --gateway-client-cert",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "--gateway-client-cert",
                "required with --gateway-client-key",
            ));
        }
    }
    match &args.gateway_ca {
        Some(ca) => config::check_existing_file("--gateway-ca", ca)?,
        None => {
            return Err(ConfigError::new(
                "--gateway-ca",
                format!(
                    "required to reach the gateway at {} over TLS: give ca.crt of Secret \
                     cluster-gateway-ca (or run the gateway in this process with --with-gateway)",
                    args.gateway_url
                ),
            ));
        }
    }
    if let Some(kubeconfig) = &args.gateway.kubeconfig {
        config::check_existing_file("--kubeconfig", kubeconfig)?;
    }
    Ok(())
}

/// The namespace of the control plane's own objects: the Lease and Secret
/// `cluster-gateway-ca`.
fn control_plane_namespace(args: &ControllerArgs) -> String {
    args.leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "openchoreo-control-plane".into())
}

fn read_optional(path: Option<&std::path::Path>, flag: &str) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("{flag} {}", p.display())))
        .transpose()
}

/// Runs the controller until SIGTERM; with `--with-gateway`, the gateway too, in this
/// process (they meet through the gateway's public [`GatewayLink`]).
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::signals::cancel_on_terminate(shutdown.clone()));
    let client =
        crate::planes::kubernetes::kube_client(args.gateway.kubeconfig.as_deref(), None).await?;
    let mut access = GatewayAccess {
        url: args.gateway_url.clone(),
        ca_pem: read_optional(args.gateway_ca.as_deref(), "--gateway-ca")?,
        client_cert_pem: read_optional(
            args.gateway_client_cert.as_deref(),
            "--gateway-client-cert",
        )?,
        client_key_pem: read_optional(args.gateway_client_key.as_deref(), "--gateway-client-key")?,
    };
    let mut gateway = None;
    let link: Arc<dyn GatewayLink> = if args.with_gateway {
        let registry = crate::planes::Registry::spawn(Box::new(
            crate::planes::kubernetes::KubernetesSource::new(
                client.clone(),
                args.namespace.clone(),
            ),
        ));
        let started = crate::gateway::start(&args.gateway, registry, shutdown.clone()).await?;
        let internal = started.internal_addr;
        let host = if internal.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            internal.ip().to_string()
        };
        access.url = format!(
            "https://{}",
            std::net::SocketAddr::new(host.parse()?, internal.port())
        );
        let link = started.link();
        gateway = Some(started);
        link
    } else {
        remote::link(&access)?
    };
    let result = run_controllers(&args, client, link, access, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(gateway) = gateway {
        gateway.wait().await;
    }
    result
}

async fn run_controllers(
    args: &ControllerArgs,
    client: Client,
    link: Arc<dyn GatewayLink>,
    access: GatewayAccess,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let health_listener =
        tokio::net::TcpListener::bind((args.gateway.bind_address, args.controller_health_port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on port {} (--controller-health-port)",
                    args.controller_health_port
                )
            })?;
    let health = crate::health::Health {
        ready: Arc::new(|| Ok(())),
        metrics: Arc::new(registry),
    };
    tokio::spawn(crate::health::serve(
        health_listener,
        health,
        shutdown.clone(),
    ));

    let namespace = control_plane_namespace(args);
    let lost = CancellationToken::new();
    let mut election = None;
    if args.leader_elect {
        let le = Arc::new(leader::LeaderElection::new(
            client.clone(),
            &namespace,
            &args.leader_election_id,
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
        PlaneClients::new(client.clone(), Some(access)),
        GatewayCa {
            file: args.gateway_ca.clone(),
            secret: Some((namespace, "cluster-gateway-ca".into())),
        },
        metrics,
        args.resync_period,
    ));
    tracing::info!(gateway = %ctx.link.describe(), namespace = ?args.namespace, "controller running");
    let stop = CancellationToken::new();
    let controllers = futures_util::future::join3(
        run_kind::<DataPlane>(ctx.clone(), args.namespace.clone(), stop.clone()),
        run_kind::<BuildPlane>(ctx.clone(), args.namespace.clone(), stop.clone()),
        run_kind::<ObservabilityPlane>(ctx.clone(), args.namespace.clone(), stop.clone()),
    );
    tokio::pin!(controllers);
    let lost_leadership = tokio::select! {
        _ = &mut controllers => false,
        _ = shutdown.cancelled() => false,
        _ = lost.cancelled() => true,
    };
    stop.cancel();
    controllers.await;
    if let Some(election) = election {
        let _ = election.await;
    }
    if lost_leadership {
        anyhow::bail!("lost the leader Lease; exiting so that a fresh replica takes over");
    }
    Ok(())
}

/// Every Secret a plane reads: its client CA, and its direct-access credentials.
fn referenced_secrets<K: PlaneResource>(plane: &K) -> Vec<(String, String)> {
    let namespace = plane.namespace().unwrap_or_default();
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
        .filter_map(|v| v.secret())
        .map(|r| {
            (
                r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                r.name.clone(),
            )
        })
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

async fn run_kind<K: PlaneResource>(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: CancellationToken,
) {
    let api: Api<K> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
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
                    && p.common()
                        .observability_plane_ref
                        .is_some_and(|r| r.name == name)
            })
        },
    );
    if K::PLANE_TYPE == crate::planes::PlaneType::DataPlane {
        controller = controller.watches(
            Api::<Environment>::all(ctx.client.clone()),
            watcher::Config::default(),
            |env: Environment| {
                let ns = env.namespace().unwrap_or_default();
                env.spec
                    .data_plane_ref
                    .map(|name| ObjectRef::<K>::new(&name).within(&ns))
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
