//! The gateway role: accepts agents on the public listener (`/ws`, mutual TLS) and
//! serves callers on the internal one (the proxy into every plane, the plane API),
//! with health and metrics on a third.

mod api;
pub mod args;
mod checks;
pub mod config;
mod holds;
mod hub;
mod internal;
mod link;
mod membership;
mod metrics;
mod openchoreo;
pub mod paths;
mod public;
mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::planes::connection::ConnectionStatus as PlaneStatus;
pub use args::{GatewayArgs, ServerArgs};
pub use checks::{DEFAULT_BLOCKED_PATHS, DEFAULT_TARGETS, RequestChecks};
pub use config::{Config, Listeners, RegistrySource, ReplicaConfig, ReplicaCount, ServerConfig};
pub use hub::Reverified;
pub use public::UNVERIFIED_REFUSAL;

use crate::health::{self, Health};
use crate::planes::{CrRef, PlaneKey, Registry};
use crate::trust::danger::DeferredClientVerifier;
use crate::trust::tls::{self, ReloadingCert};

/// Callers' connections served at once on the internal listener.
const MAX_CALLER_CONNECTIONS: usize = 4096;

/// What every listener of one gateway shares.
pub(crate) struct Core {
    hub: hub::Hub,
    registry: Registry,
    metrics: Arc<metrics::Metrics>,
    config: ServerConfig,
    /// Callers' connections and upgraded streams, which shutdown waits for.
    tracker: TaskTracker,
    membership: membership::Membership,
    started: std::time::Instant,
    /// Set on shutdown: `/ready` fails at once, so load balancers send callers elsewhere.
    draining: std::sync::atomic::AtomicBool,
    /// The serving certificate, for its expiry in plane status.
    cert: Arc<ReloadingCert>,
}

/// A new replica among others waits this long at most for the agents of every
/// registered plane before it says it is ready for callers.
const REPLICA_WARMUP: Duration = Duration::from_secs(5);

impl Core {
    /// The fingerprints of the CAs in `trusted` that some connected agent of `cr` chains to.
    fn client_cas_in_use(
        &self,
        key: &PlaneKey,
        cr: &CrRef,
        trusted: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Vec<String> {
        let agents: Vec<_> = self
            .hub
            .agents()
            .into_iter()
            .filter(|a| &a.key == key && a.is_usable() && a.serves(cr))
            .collect();
        let now = std::time::SystemTime::now();
        trusted
            .iter()
            .filter(|ca| {
                agents.iter().any(|a| {
                    crate::trust::verify::issuing_cas(a.chain(), std::slice::from_ref(*ca), now)
                        .next()
                        .is_some()
                })
            })
            .map(crate::trust::inspect::fingerprint)
            .collect()
    }

    /// The plane API's status of a plane (or one CR of it), with the serving
    /// certificate's expiry.
    fn plane_status(&self, key: &PlaneKey, cr: Option<&CrRef>) -> PlaneStatus {
        let mut status = self.hub.status(key, cr);
        if let (Some(cr), Some(snapshot)) = (cr, self.registry.current())
            && let Some(Ok(trusted)) = snapshot.entry(key, cr).map(|e| e.client_ca.clone())
        {
            status.client_ca_in_use = self.client_cas_in_use(key, cr, &trusted);
            status.ca_proposal = self.hub.proposal(key, cr).and_then(|pending| {
                // Pending while some proposed CA is not trusted yet.
                let new = pending.proposal.cas.iter().any(|ca| !trusted.contains(ca));
                new.then(|| crate::planes::connection::CaProposal {
                    ca_bundle: pending.proposal.ca_pem(),
                    fingerprints: pending.proposal.fingerprints(),
                    replaces: pending.replaces,
                    agent: pending.agent,
                    proposed_at: crate::trust::inspect::format_time(pending.at.into()),
                })
            });
        }
        let validity = self.cert.validity();
        let format = crate::trust::inspect::format_time;
        status.gateway_certificate_not_before = validity.map(|(from, _)| format(from));
        status.gateway_certificate_not_after = validity.map(|(_, until)| format(until));
        status
    }

    /// Ready for callers: the registry is loaded, the gateway is not draining, and (when
    /// other replicas can serve meanwhile) every registered plane has an agent here or
    /// [`REPLICA_WARMUP`] has passed, so a restarted replica does not answer 503s for
    /// planes whose agents are still on their way.
    fn ready(&self) -> Result<(), String> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        let Some(snapshot) = self.registry.current() else {
            return Err("the plane registry has not loaded yet".into());
        };
        if self.membership.count() <= 1 || self.started.elapsed() >= REPLICA_WARMUP {
            return Ok(());
        }
        let mut waiting: Vec<String> = snapshot
            .entries
            .iter()
            .filter(|e| e.client_ca.is_ok() && self.hub.count(&e.key) == 0)
            .map(|e| e.key.to_string())
            .collect();
        waiting.sort();
        waiting.dedup();
        if waiting.is_empty() {
            return Ok(());
        }
        Err(format!(
            "waiting up to {} for the agents of {} plane(s) to connect to this replica: {}",
            humantime::format_duration(REPLICA_WARMUP),
            waiting.len(),
            waiting
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// A running gateway: its bound addresses and the status view other roles in the
/// same process (`up`, `controller --with-gateway`) use.
pub struct Gateway {
    core: Arc<Core>,
    pub public_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    pub health_addr: SocketAddr,
    done: tokio::task::JoinHandle<()>,
}

impl Gateway {
    pub fn status(&self, key: &PlaneKey, cr: Option<&CrRef>) -> PlaneStatus {
        self.core.plane_status(key, cr)
    }

    pub fn all_statuses(&self) -> Vec<PlaneStatus> {
        self.core
            .hub
            .all_statuses(self.core.registry.current().as_deref())
    }

    /// The link a controller in the same process reads connection status through.
    pub fn link(&self) -> std::sync::Arc<dyn crate::planes::connection::GatewayLink> {
        std::sync::Arc::new(link::LocalLink {
            core: self.core.clone(),
        })
    }

    /// Waits until the gateway has shut down (after its shutdown token was cancelled).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Starts serving on the listeners the caller bound; `shutdown` stops accepting, lets
/// open streams finish for up to `--shutdown-timeout`, then closes the agents.
pub async fn start(
    config: &ServerConfig,
    listeners: Listeners,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<Gateway> {
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut metrics_registry));
    let cert = ReloadingCert::load(&config.server_cert, &config.server_key)
        .context("--server-cert/--server-key")?;
    cert.spawn_watcher();
    metrics::ServingCertificateExpiry::register(&mut metrics_registry, cert.clone());
    let public_tls = tls::server_config(
        cert.clone(),
        Some(DeferredClientVerifier::new(crate::trust::crypto_provider())),
        &[b"http/1.1"],
    )?;
    let internal_verifier = match &config.internal_client_ca {
        Some(ca) => Some(tls::client_ca_verifier(ca).context("--internal-client-ca-cert")?),
        None => None,
    };
    let internal_tls = tls::server_config(cert.clone(), internal_verifier, &[b"h2", b"http/1.1"])?;
    let (public_addr, internal_addr, health_addr) = (
        listeners.public.local_addr()?,
        listeners.internal.local_addr()?,
        listeners.health.local_addr()?,
    );
    let core = Arc::new(Core {
        hub: hub::Hub::new(metrics.clone()),
        registry: registry.clone(),
        metrics,
        config: config.clone(),
        tracker: TaskTracker::new(),
        membership: membership::Membership::new(&config.replicas),
        started: std::time::Instant::now(),
        draining: std::sync::atomic::AtomicBool::new(false),
        cert,
    });
    metrics::PlaneCertificateExpiry::register(&mut metrics_registry, core.clone());

    let ready_core = core.clone();
    let health = Health {
        ready: Arc::new(move || ready_core.ready()),
        metrics: Arc::new(metrics_registry),
    };
    tokio::spawn(membership::run(core.clone(), internal_addr));
    tokio::spawn(health::serve(listeners.health, health, shutdown.clone()));
    tokio::spawn(reverify_on_change(core.clone(), shutdown.clone()));

    let listeners_stop = CancellationToken::new();
    let public_task = tokio::spawn(public::serve(
        core.clone(),
        listeners.public,
        TlsAcceptor::from(Arc::new(public_tls)),
        listeners_stop.clone(),
    ));
    let internal_task = tokio::spawn(internal::serve(
        core.clone(),
        listeners.internal,
        TlsAcceptor::from(Arc::new(internal_tls)),
        listeners_stop.clone(),
    ));
    tracing::info!(public = %public_addr, internal = %internal_addr,
        health = %health_addr, internal_mtls = config.internal_client_ca.is_some(),
        replica = %core.membership.replica(), "gateway listening");
    let done = tokio::spawn(drain(
        core.clone(),
        shutdown,
        listeners_stop,
        [public_task, internal_task],
    ));
    Ok(Gateway {
        core,
        public_addr,
        internal_addr,
        health_addr,
        done,
    })
}

/// How long tunnels told "going away" have to end before they are cut.
const GOING_AWAY_GRACE: Duration = Duration::from_secs(2);

/// On shutdown: stop accepting, let open streams finish for `--shutdown-timeout`, then
/// close the agents.
async fn drain(
    core: Arc<Core>,
    shutdown: CancellationToken,
    listeners_stop: CancellationToken,
    listeners: [tokio::task::JoinHandle<()>; 2],
) {
    shutdown.cancelled().await;
    // First out of the membership: callers (readiness) and the other replicas (the
    // Lease) stop counting on this one while it finishes what it has.
    core.draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    core.membership.leave(Duration::from_secs(2)).await;
    if !core.config.shutdown_delay.is_zero() {
        tracing::info!(
            "shutting down: not ready; serving on for {} (--shutdown-delay)",
            humantime::format_duration(core.config.shutdown_delay)
        );
        tokio::time::sleep(core.config.shutdown_delay).await;
    }
    let limit = core.config.shutdown_timeout;
    tracing::info!(
        "shutting down: no new connections; open streams may finish for {}",
        humantime::format_duration(limit)
    );
    listeners_stop.cancel();
    for listener in listeners {
        let _ = listener.await;
    }
    core.tracker.close();
    if tokio::time::timeout(limit, core.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("open streams did not finish within --shutdown-timeout; closing them");
    }
    // Agents are told the gateway is going away (they redial promptly, to another replica
    // or to this one restarted); whatever tunnel has not ended after a moment is cut.
    core.hub.go_away();
    let gone = async {
        while !core.hub.agents().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(GOING_AWAY_GRACE, gone).await;
    for agent in core.hub.agents() {
        agent.close.cancel();
    }
    tracing::info!("gateway stopped");
}

/// Re-verifies connected agents whenever the registry publishes, and every minute
/// (certificates expire without any event).
async fn reverify_on_change(core: Arc<Core>, shutdown: CancellationToken) {
    let mut changes = core.registry.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut source_alive = true;
    loop {
        tokio::select! {
            changed = changes.changed(), if source_alive => if changed.is_err() {
                // A fixed registry: from now on only time changes trust.
                source_alive = false;
                continue;
            },
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let snapshot = changes.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            core.hub.reverify(&snapshot, None);
            core.hub.prune_last_seen(&snapshot);
        }
    }
}

/// `planelink gateway`: runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config.server).await?;
    let registry = match &config.registry {
        RegistrySource::Directory(dir) => Registry::spawn(Box::new(
            crate::planes::directory::DirectorySource::new(dir),
        )),
        RegistrySource::Kubernetes { kubeconfig } => {
            let client =
                crate::planes::kubernetes::kube_client(kubeconfig.as_deref(), None).await?;
            Registry::spawn(Box::new(crate::planes::kubernetes::KubernetesSource::new(
                client, None,
            )))
        }
    };
    let shutdown = CancellationToken::new();
    let gateway = start(&config.server, listeners, registry, shutdown.clone()).await?;
    crate::signals::cancel_on_terminate(shutdown).await;
    gateway.wait().await;
    Ok(())
}
