//! The gateway role: accepts agents on the public listener (`/ws`, mutual TLS) and
//! serves callers on the internal one (the proxy into every plane, the plane API),
//! with health and metrics on a third.

mod api;
mod checks;
mod hub;
mod internal;
mod link;
mod metrics;
mod public;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::planes::connection::ConnectionStatus as PlaneStatus;
pub use checks::{DEFAULT_BLOCKED_PATHS, DEFAULT_TARGETS, RequestChecks};
pub use hub::Reverified;

use crate::cli::GatewayArgs;
use crate::config::{self, ConfigError};
use crate::health::{self, Health};
use crate::planes::{CrRef, PlaneKey, Registry};
use crate::trust::Purpose;
use crate::trust::danger::DeferredClientVerifier;
use crate::trust::tls::{self, ReloadingCert};
use crate::tunnel::protocol::Heartbeat;

/// Validates the gateway's flags the way the running gateway will rely on them.
pub fn validate(args: &GatewayArgs) -> Result<(), ConfigError> {
    let ports = [
        ("--port", args.port),
        ("--internal-port", args.internal_port),
        ("--health-port", args.health_port),
    ];
    for (i, (flag, port)) in ports.iter().enumerate() {
        for (other_flag, other) in &ports[..i] {
            if *port != 0 && port == other {
                return Err(ConfigError::new(
                    *flag,
                    format!(
                        "port {port} is already used by {other_flag}; give each listener its own port"
                    ),
                ));
            }
        }
    }
    config::check_cert_file(
        "--server-cert",
        &args.server_cert,
        Purpose::ServerCert,
        "mount the gateway's serving certificate (Secret cluster-gateway-tls) there, or issue one with \
         `planelink register certs gateway`",
    )?;
    config::check_key_pair(
        "--server-cert",
        &args.server_cert,
        "--server-key",
        &args.server_key,
    )?;
    match (&args.internal_client_ca_cert, args.internal_mtls) {
        (None, true) => {
            return Err(ConfigError::new(
                "--internal-client-ca-cert",
                "required with --internal-mtls (the default): give the CA bundle internal callers' client \
                 certificates chain to, or turn internal mTLS off with --internal-mtls=false",
            ));
        }
        (Some(ca), true) => config::check_cert_file(
            "--internal-client-ca-cert",
            ca,
            Purpose::ClientCa,
            "give the CA that issued the internal callers' client certificates",
        )?,
        (_, false) => {}
    }
    if args.skip_client_cert_verify {
        tracing::warn!(
            "--skip-client-cert-verify is deprecated and has no effect: agents are always verified against \
             their plane's CA; use --internal-mtls=false to turn off internal caller verification"
        );
    }
    config::check_heartbeat(args.heartbeat_interval, args.heartbeat_timeout)?;
    if let Some(dir) = &args.planes_dir {
        config::check_existing_dir("--planes-dir", dir)?;
    }
    if let Some(kubeconfig) = &args.kubeconfig {
        config::check_existing_file("--kubeconfig", kubeconfig)?;
    }
    Ok(())
}

/// What every listener of one gateway shares.
pub(crate) struct Core {
    hub: hub::Hub,
    registry: Registry,
    metrics: Arc<metrics::Metrics>,
    heartbeat: Heartbeat,
    checks: RequestChecks,
    request_timeout: Duration,
    max_body_size: u64,
    /// Upgraded streams, which outlive their HTTP connection's request.
    tracker: TaskTracker,
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
        self.core.hub.status(key, cr)
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

async fn bind(args: &GatewayArgs, port: u16, flag: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(args.bind_address, port);
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({flag}); is another process using it?"))
}

/// Binds every listener and starts serving; `shutdown` stops accepting, lets open
/// streams finish for up to `--shutdown-timeout`, then closes the agents.
pub async fn start(
    args: &GatewayArgs,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<Gateway> {
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut metrics_registry));
    let cert = ReloadingCert::load(&args.server_cert, &args.server_key)
        .context("--server-cert/--server-key")?;
    cert.spawn_watcher();
    let public_tls = tls::server_config(
        cert.clone(),
        Some(DeferredClientVerifier::new(crate::trust::crypto_provider())),
        &[b"http/1.1"],
    )?;
    let internal_verifier = match (&args.internal_client_ca_cert, args.internal_mtls) {
        (Some(ca), true) => Some(tls::client_ca_verifier(ca).context("--internal-client-ca-cert")?),
        _ => None,
    };
    let internal_tls = tls::server_config(cert, internal_verifier, &[b"h2", b"http/1.1"])?;

    let public = bind(args, args.port, "--port").await?;
    let internal = bind(args, args.internal_port, "--internal-port").await?;
    let health_listener = bind(args, args.health_port, "--health-port").await?;

    let core = Arc::new(Core {
        hub: hub::Hub::new(metrics.clone()),
        registry: registry.clone(),
        metrics,
        heartbeat: Heartbeat {
            interval: args.heartbeat_interval,
            timeout: args.heartbeat_timeout,
        },
        checks: RequestChecks {
            allowed_targets: args.allowed_targets.clone(),
            blocked_paths: args.blocked_paths.clone(),
        },
        request_timeout: args.request_timeout,
        max_body_size: args.max_body_size,
        tracker: TaskTracker::new(),
    });
    let (public_addr, internal_addr, health_addr) = (
        public.local_addr()?,
        internal.local_addr()?,
        health_listener.local_addr()?,
    );

    let ready_registry = registry.clone();
    let health = Health {
        ready: Arc::new(move || match ready_registry.current() {
            Some(_) => Ok(()),
            None => Err("the plane registry has not loaded yet".into()),
        }),
        metrics: Arc::new(metrics_registry),
    };
    tokio::spawn(health::serve(health_listener, health, shutdown.clone()));
    tokio::spawn(reverify_on_change(core.clone(), shutdown.clone()));

    let listeners_stop = CancellationToken::new();
    let public_task = tokio::spawn(public::serve(
        core.clone(),
        public,
        TlsAcceptor::from(Arc::new(public_tls)),
        listeners_stop.clone(),
    ));
    let graceful = GracefulShutdown::new();
    let internal_task = tokio::spawn(serve_internal(
        core.clone(),
        internal,
        TlsAcceptor::from(Arc::new(internal_tls)),
        listeners_stop.clone(),
        graceful,
    ));
    tracing::info!(public = %public_addr, internal = %internal_addr,
        health = %health_addr, internal_mtls = args.internal_mtls, "gateway listening");

    let shutdown_timeout = args.shutdown_timeout;
    let status_core = core.clone();
    let done = tokio::spawn(async move {
        shutdown.cancelled().await;
        tracing::info!(
            "shutting down: no new connections; open streams may finish for {}",
            humantime::format_duration(shutdown_timeout)
        );
        listeners_stop.cancel();
        let _ = public_task.await;
        let graceful = internal_task.await.ok();
        core.tracker.close();
        let drained = tokio::time::timeout(shutdown_timeout, async {
            if let Some(graceful) = graceful {
                graceful.shutdown().await;
            }
            core.tracker.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("open streams did not finish within --shutdown-timeout; closing them");
        }
        for agent in core.hub.agents() {
            agent.close.cancel();
        }
        tracing::info!("gateway stopped");
    });
    Ok(Gateway {
        core: status_core,
        public_addr,
        internal_addr,
        health_addr,
        done,
    })
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
        }
    }
}

async fn serve_internal(
    core: Arc<Core>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
    graceful: GracefulShutdown,
) -> GracefulShutdown {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60));
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(crate::tunnel::protocol::STREAM_WINDOW)
        .initial_connection_window_size(crate::tunnel::protocol::CONNECTION_WINDOW)
        .max_frame_size(crate::tunnel::protocol::MAX_FRAME_SIZE);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return graceful,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a caller connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let core = core.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "caller TLS handshake failed on the internal listener");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let core = core.clone();
                async move { Ok::<_, std::convert::Infallible>(internal::handle(core, req).await) }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let _ = watcher.watch(connection.into_owned()).await;
        });
    }
}

/// `planelink gateway`: runs until SIGTERM or SIGINT.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let registry = match &args.planes_dir {
        Some(dir) => Registry::spawn(Box::new(crate::planes::directory::DirectorySource::new(
            dir,
        ))),
        None => {
            let client =
                crate::planes::kubernetes::kube_client(args.kubeconfig.as_deref(), None).await?;
            Registry::spawn(Box::new(crate::planes::kubernetes::KubernetesSource::new(
                client, None,
            )))
        }
    };
    let shutdown = CancellationToken::new();
    let gateway = start(&args, registry, shutdown.clone()).await?;
    crate::signals::cancel_on_terminate(shutdown).await;
    gateway.wait().await;
    Ok(())
}
