//! The agent role: dials the gateway, keeps the tunnel up (backoff with jitter,
//! heartbeats), and serves the gateway's requests from local upstreams.

pub mod args;
pub mod config;
pub mod dial;
mod forward;
pub mod identity;
pub mod metrics;
mod openchoreo;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use args::AgentArgs;
pub use config::Config;

use crate::health::{self, Health};
use crate::tunnel::body::{self, Body};
use crate::tunnel::dial as wire;
use crate::tunnel::protocol;
use crate::tunnel::proxy::Target;
use identity::Identity;
use upstream::Upstream;

/// One tunnel the agent holds.
struct Held {
    tunnel: u64,
    replica: String,
    /// The identity generation it was dialled with.
    generation: u64,
    /// Cancelled when a tunnel with a newer identity to the same replica is up: the
    /// gateway moves the requests to that one and closes this one once drained (or keeps
    /// it, while it serves plane CRs the newer one is not trusted for yet); its end is
    /// then no loss.
    retire: CancellationToken,
}

/// What the tunnel's request handler needs.
pub(crate) struct State {
    config: Config,
    targets: BTreeMap<String, Upstream>,
    started: Instant,
    /// This process, in its hello to each gateway replica and in the `agent` target's
    /// answer (tells HA agents apart).
    instance: String,
    /// Whether a tunnel is up; `Agent::wait_connected` waits on it.
    connected: tokio::sync::watch::Sender<bool>,
    /// The gateway replicas, as the gateway last told (on a dial or since).
    membership: tokio::sync::watch::Sender<Option<protocol::Membership>>,
    /// The tunnels this agent holds (during a renewal, two to a replica for a moment).
    held: std::sync::Mutex<Vec<Held>>,
    /// The certificate files as last loaded.
    identity: tokio::sync::watch::Sender<Arc<Identity>>,
    /// The newest identity a gateway accepted: dialled again while a renewed one is
    /// refused, so the agent stays connected until the renewal is trusted.
    accepted: std::sync::Mutex<Option<Arc<Identity>>>,
    /// Why the last dial failed, for `up` and tests to report.
    last_error: std::sync::Mutex<Option<String>>,
    /// The gateway refused the h2 transport once: later dials go straight to WebSocket.
    h2_refused: std::sync::atomic::AtomicBool,
    metrics: Arc<metrics::Metrics>,
}

impl State {
    /// The replicas held, with any identity.
    fn held_replicas(&self) -> Vec<String> {
        let mut replicas: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| h.replica.clone())
            .collect();
        replicas.dedup();
        replicas
    }

    /// The replicas held with the current identity: the others are dialled again.
    fn renewed_replicas(&self) -> Vec<String> {
        let generation = self.identity.borrow().generation;
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|h| h.generation >= generation)
            .map(|h| h.replica.clone())
            .collect()
    }

    /// What the gateway says of its replicas: kept, and it may call for more tunnels.
    /// Only a change of the replicas themselves counts (not which replica said it), so
    /// that answers from different replicas do not keep waking the dialler.
    fn learn(&self, membership: Option<protocol::Membership>) {
        if let Some(m) = membership {
            self.metrics.gateway_replicas(m.count);
            self.membership.send_if_modified(|current| {
                let changed = current
                    .as_ref()
                    .is_none_or(|c| c.count != m.count || c.members != m.members);
                *current = Some(m);
                changed
            });
        }
    }

    /// Whether some replica the gateway knows has no tunnel from this agent with its
    /// current identity yet.
    fn missing_replicas(&self) -> bool {
        let held = self.renewed_replicas();
        match &*self.membership.borrow() {
            None => held.is_empty(),
            Some(m) if m.members.is_empty() => held.len() < m.count,
            Some(m) => m.members.iter().any(|id| !held.contains(id)),
        }
    }

    fn target_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.targets.keys().cloned().collect();
        names.push(Target::AGENT.into());
        names
    }

    /// The built-in `agent` target: versions and health only. No URLs, credentials or
    /// file paths: anyone allowed to call the proxy can read it.
    fn info_response(&self) -> Response<Body> {
        let info = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "commit": crate::GIT_COMMIT.unwrap_or("unknown"),
            "protocol": protocol::PROTOCOL_VERSION,
            "planeType": self.config.plane_type.as_str(),
            "planeID": self.config.plane_id,
            "targets": self.target_names(),
            "connected": *self.connected.borrow(),
            "gatewayReplicas": self.held_replicas(),
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "instance": self.instance,
        });
        let mut response = Response::new(body::full(info.to_string() + "\n"));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Builds the targets: `k8s` unless no Kubernetes configuration exists at all (then
/// the agent still serves its routes and says so), and the `--routes`.
async fn targets(config: &Config) -> anyhow::Result<BTreeMap<String, Upstream>> {
    let mut targets = config.routes.clone();
    match upstream::kubernetes(config.kubeconfig.as_deref()).await {
        Ok(k8s) => {
            tracing::info!(server = %k8s.base, "target k8s ready");
            targets.insert(Target::KUBERNETES.into(), k8s);
        }
        // An explicit kubeconfig that does not work is a configuration error.
        Err(e) if config.kubeconfig.is_some() => return Err(e),
        Err(e) => tracing::warn!("no k8s target: {e:#}"),
    }
    Ok(targets)
}

/// A running agent (its tunnel loop and health listener).
pub struct Agent {
    state: Arc<State>,
    pub health_addr: Option<std::net::SocketAddr>,
    done: tokio::task::JoinHandle<()>,
}

impl Agent {
    pub fn is_connected(&self) -> bool {
        *self.state.connected.borrow()
    }

    /// Waits until a tunnel is up, at most `limit`; whether it is.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let mut connected = self.state.connected.subscribe();
        tokio::time::timeout(limit, connected.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Why the last attempt to connect failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.state
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The Kubernetes API the `k8s` target reaches, when there is one.
    pub fn k8s_server(&self) -> Option<String> {
        self.state
            .targets
            .get(Target::KUBERNETES)
            .map(|u| u.base.to_string())
    }

    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Starts the agent on the health listener the caller bound (none: no health
/// endpoint); it runs until `shutdown` is cancelled.
pub async fn start(
    config: Config,
    health: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Agent> {
    let mut registry = prometheus_client::registry::Registry::default();
    let identity = match &config.tls {
        Some(files) => Identity::load(files, 0)?,
        None => Identity::plain(),
    };
    let state = Arc::new(State {
        identity: tokio::sync::watch::channel(Arc::new(identity)).0,
        accepted: std::sync::Mutex::new(None),
        targets: targets(&config).await?,
        started: Instant::now(),
        instance: format!("{:016x}", rand::random::<u64>()),
        connected: tokio::sync::watch::channel(false).0,
        membership: tokio::sync::watch::channel(None).0,
        held: std::sync::Mutex::new(Vec::new()),
        last_error: std::sync::Mutex::new(None),
        h2_refused: std::sync::atomic::AtomicBool::new(false),
        metrics: Arc::new(metrics::Metrics::new(&mut registry)),
        config,
    });
    let health_addr = match health {
        None => None,
        Some(listener) => {
            let ready_state = state.clone();
            let health = Health {
                ready: Arc::new(move || {
                    if *ready_state.connected.borrow() {
                        Ok(())
                    } else {
                        Err("not connected to the gateway".into())
                    }
                }),
                metrics: Arc::new(registry),
            };
            let local = listener.local_addr()?;
            tokio::spawn(health::serve(listener, health, shutdown.clone()));
            Some(local)
        }
    };
    if let Some(files) = &state.config.tls {
        identity::spawn_watcher(files.clone(), state.identity.clone(), shutdown.clone());
    }
    let done = tokio::spawn(connect_loop(state.clone(), shutdown));
    Ok(Agent {
        state,
        health_addr,
        done,
    })
}

/// The delay before reconnect attempt `attempt` (0-based): exponential from
/// `base`, capped, with jitter so that a fleet of agents does not reconnect in step.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let jitter: f64 = rand::random_range(0.5..=1.0);
    exp.mul_f64(jitter)
}

/// A tunnel dialled, and with which identity.
struct Dial {
    dialled: wire::Dialled,
    identity: Arc<Identity>,
    /// Set when the current identity was refused and this tunnel uses the previous one.
    renewal_refused: Option<wire::DialError>,
}

/// One dial, counted by its result, with the current identity; when the gateway refuses
/// a renewed certificate the agent dials again with the one it accepted before
/// (make-before-break: the agent keeps serving until its renewal is trusted).
async fn dial(state: &State) -> Result<Dial, wire::DialError> {
    let identity = state.identity.borrow().clone();
    if let Some(leaf) = identity.chain().and_then(|chain| chain.first())
        && let Ok(info) = crate::trust::inspect::CertInfo::from_der(leaf)
    {
        state
            .metrics
            .client_certificate_expires(info.not_after.into());
    }
    let introduction = wire::Introduction {
        instance: Some(state.instance.clone()),
        held: state.renewed_replicas(),
        proposal: None,
        offer_h2: !state.h2_refused.load(std::sync::atomic::Ordering::Relaxed),
        serves: state.config.serves.as_ref().map(|refs| {
            refs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }),
    };
    let dialled = dial::dial_gateway(&state.config, identity.tls.as_ref(), &introduction).await;
    // During a gateway upgrade, replicas old and new answer: a refusal makes later dials
    // go straight to WebSocket, a gateway that says it speaks h2 ends that.
    if let Ok(dialled) = &dialled {
        use std::sync::atomic::Ordering::Relaxed;
        let speaks_h2 = dialled
            .gateway
            .capabilities
            .iter()
            .any(|c| c == protocol::H2_TRANSPORT_CAPABILITY);
        if dialled.h2_refused && !state.h2_refused.swap(true, Relaxed) {
            tracing::info!(gateway_version = %dialled.gateway.version,
                "the gateway does not take the {} transport; tunnels use WebSocket until one does",
                crate::tunnel::transport::H2_UPGRADE);
        } else if speaks_h2 && state.h2_refused.swap(false, Relaxed) {
            tracing::info!(gateway_version = %dialled.gateway.version,
                "the gateway takes the {} transport; new tunnels use it",
                crate::tunnel::transport::H2_UPGRADE);
        }
    }
    let previous = state
        .accepted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .filter(|p| p.generation < identity.generation);
    let result = match (dialled, previous) {
        (Ok(dialled), _) => Ok(Dial {
            dialled,
            identity,
            renewal_refused: None,
        }),
        (
            Err(
                refused @ wire::DialError::Refused {
                    status: 401 | 403, ..
                },
            ),
            Some(previous),
        ) => {
            tracing::warn!(
                generation = identity.generation,
                "the gateway does not trust the renewed certificate yet; the tunnels keep the previous one: {refused}"
            );
            // The renewed certificate's CA goes with the dial the gateway still trusts.
            let introduction = wire::Introduction {
                held: state.held_replicas(),
                proposal: identity.proposal(),
                ..introduction
            };
            match dial::dial_gateway(&state.config, previous.tls.as_ref(), &introduction).await {
                Ok(dialled) => Ok(Dial {
                    dialled,
                    identity: previous,
                    renewal_refused: Some(refused),
                }),
                Err(_) => Err(refused),
            }
        }
        (Err(e), _) => Err(e),
    };
    match &result {
        Err(e) => state.metrics.dial(e.step()),
        Ok(d) => {
            state.learn(d.dialled.gateway.membership.clone());
            let mut accepted = state.accepted.lock().unwrap_or_else(|p| p.into_inner());
            if accepted
                .as_ref()
                .is_none_or(|a| a.generation < d.identity.generation)
            {
                *accepted = Some(d.identity.clone());
            }
        }
    }
    result
}

/// After a gateway said it is going away, the first dials come within a second
/// (jittered) ...
const PROMPT_REDIAL: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(250)..=Duration::from_secs(1);
/// ... this many of them (a restart takes a few seconds), then the delay doubles from
/// one second up to `--reconnect-delay` ...
const PROMPT_DIALS: u32 = 5;
/// ... for this long, after which the usual backoff applies; and the prompt mode is
/// armed at most once per this period, so a gateway that keeps saying "going away"
/// cannot keep its agents dialling in a tight loop.
const PROMPT_WINDOW: Duration = Duration::from_secs(30);

/// When to dial next: the backoff grows only while dials fail and starts over once a
/// tunnel has been used (the gateway's first request proves it registered the agent);
/// after a gateway's "going away" the agent redials promptly, jittered so that a fleet
/// does not stampede the restarted gateway.
struct Pacing {
    base: Duration,
    max: Duration,
    failures: u32,
    prompt_since: Option<tokio::time::Instant>,
    prompt_failures: u32,
    /// Dials in a row that reached a replica already held.
    misses: u32,
}

/// After a dial reached a replica already held, the next comes after this, doubling while
/// the load balancer keeps choosing held replicas (a replica killed outright stays
/// counted until its Lease expires); a replica never seen before starts it over.
const MISS_DELAY: Duration = Duration::from_millis(50);
/// Misses in a row before their delay may grow past `--reconnect-delay`.
const PROMPT_MISSES: u32 = 10;

impl Pacing {
    fn new(base: Duration, max: Duration) -> Pacing {
        Pacing {
            base,
            max,
            failures: 0,
            prompt_since: None,
            prompt_failures: 0,
            misses: 0,
        }
    }

    /// A dial reached a replica already held: try again soon, a little later each time,
    /// up to `--reconnect-delay`; after [`PROMPT_MISSES`] in a row up to
    /// `--max-reconnect-delay` (a member that cannot be reached then costs little).
    fn missed(&mut self) -> Duration {
        let cap = if self.misses < PROMPT_MISSES {
            self.base
        } else {
            self.max
        };
        let delay = backoff(MISS_DELAY, cap, self.misses);
        self.misses = self.misses.saturating_add(1);
        delay
    }

    /// A new replica was reached, or the gateway named one not held yet.
    fn found_replica(&mut self) {
        self.misses = 0;
    }

    /// A tunnel carried requests: the gateway took the agent.
    fn tunnel_used(&mut self) {
        self.failures = 0;
    }

    fn gateway_went_away(&mut self) {
        let now = tokio::time::Instant::now();
        if self
            .prompt_since
            .is_none_or(|since| now.duration_since(since) >= 2 * PROMPT_WINDOW)
        {
            self.prompt_since = Some(now);
            self.prompt_failures = 0;
        }
    }

    fn next_delay(&mut self) -> Duration {
        if self
            .prompt_since
            .is_some_and(|since| since.elapsed() < PROMPT_WINDOW)
        {
            let n = self.prompt_failures;
            self.prompt_failures = n.saturating_add(1);
            return match n.checked_sub(PROMPT_DIALS) {
                None => rand::random_range(PROMPT_REDIAL),
                Some(k) => backoff(Duration::from_secs(1), self.base, k),
            };
        }
        let delay = backoff(self.base, self.max, self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// How one tunnel ended.
struct TunnelEnd {
    tunnel: u64,
    replica: String,
    going_away: bool,
    used: bool,
}

/// Holds one tunnel to each gateway replica: dials through `--server-url` (whatever
/// balances it) until every replica the gateway names is held with the current
/// identity, keeps each tunnel in a task of its own, redials for one that ends, and
/// retires a tunnel once its replacement with a renewed identity is up.
async fn connect_loop(state: Arc<State>, shutdown: CancellationToken) {
    let config = &state.config;
    let mut pacing = Pacing::new(config.backoff.base, config.backoff.max);
    let tunnels = tokio_util::task::TaskTracker::new();
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<TunnelEnd>();
    let mut membership = state.membership.subscribe();
    let mut identity = state.identity.subscribe();
    let mut known_members: Vec<String> = Vec::new();
    let mut next_dial = tokio::time::Instant::now();
    let mut next_tunnel: u64 = 0;
    loop {
        let wanted = state.missing_replicas();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(end) = ended.recv() => {
                let (retired, left) = {
                    let mut held = state.held.lock().unwrap_or_else(|p| p.into_inner());
                    let retired = held
                        .iter()
                        .find(|h| h.tunnel == end.tunnel)
                        .is_some_and(|h| h.retire.is_cancelled());
                    held.retain(|h| h.tunnel != end.tunnel);
                    (retired, held.len())
                };
                state.connected.send_replace(left > 0);
                if retired {
                    tracing::info!(replica = %end.replica, "the replaced tunnel has closed");
                    state.metrics.tunnel_down();
                    continue;
                }
                state.metrics.tunnel_lost();
                if end.used {
                    pacing.tunnel_used();
                }
                if end.going_away {
                    tracing::info!(replica = %end.replica, "the gateway replica is shutting down; redialling");
                    pacing.gateway_went_away();
                }
                if state.missing_replicas() {
                    let delay = pacing.next_delay();
                    next_dial = next_dial.max(tokio::time::Instant::now() + delay);
                    tracing::info!(delay = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)), "reconnecting");
                }
            }
            changed = identity.changed() => {
                if changed.is_err() {
                    break;
                }
                identity.borrow_and_update();
                // Renewed files: new tunnels at once, the old ones serve meanwhile.
                next_dial = tokio::time::Instant::now();
            }
            changed = membership.changed() => {
                if changed.is_err() {
                    break;
                }
                let members = membership
                    .borrow_and_update()
                    .as_ref()
                    .map(|m| m.members.clone())
                    .unwrap_or_default();
                let newcomer = members.iter().any(|id| !known_members.contains(id));
                known_members = members;
                // A replica never seen before and not held yet: look for it promptly.
                if newcomer && state.missing_replicas() {
                    pacing.found_replica();
                    next_dial = next_dial.min(tokio::time::Instant::now() + rand::random_range(Duration::ZERO..=MISS_DELAY * 2));
                }
            }
            _ = tokio::time::sleep_until(next_dial), if wanted => {
                let dialled = tokio::select! {
                    d = dial(&state) => d,
                    _ = shutdown.cancelled() => break,
                };
                let delay = match dialled {
                    Ok(Dial { dialled, identity, renewal_refused }) => {
                        let replica = dialled
                            .gateway
                            .membership
                            .as_ref()
                            .map(|m| m.replica.clone())
                            .unwrap_or_default();
                        let retire = CancellationToken::new();
                        let held = {
                            let mut held = state.held.lock().unwrap_or_else(|p| p.into_inner());
                            // A gateway that cannot say 409 (one that predates replicas,
                            // with no ID) may accept a second tunnel: not kept, unless it
                            // replaces one dialled with an older identity.
                            let replaces: Vec<&Held> = held
                                .iter()
                                .filter(|h| h.replica == replica && !h.retire.is_cancelled())
                                .collect();
                            if replaces.iter().any(|h| h.generation >= identity.generation) {
                                None
                            } else {
                                for old in replaces {
                                    tracing::info!(%replica, generation = identity.generation,
                                        "a tunnel with the renewed certificate is up; retiring the one it replaces");
                                    old.retire.cancel();
                                }
                                next_tunnel += 1;
                                held.push(Held {
                                    tunnel: next_tunnel,
                                    replica: replica.clone(),
                                    generation: identity.generation,
                                    retire: retire.clone(),
                                });
                                Some(held.iter().filter(|h| !h.retire.is_cancelled()).count())
                            }
                        };
                        let Some(held) = held else {
                            drop(dialled);
                            next_dial = tokio::time::Instant::now() + pacing.missed();
                            continue;
                        };
                        tracing::info!(server = %config.server_url, plane_type = %config.plane_type,
                            plane_id = %config.plane_id, gateway_version = %dialled.gateway.version,
                            replica = %replica, tunnels = held, "connected to control plane");
                        state.connected.send_replace(true);
                        state.metrics.tunnel_up();
                        tunnels.spawn(serve_tunnel(state.clone(), dialled, (next_tunnel, replica), retire, ended_tx.clone(), shutdown.clone()));
                        match renewal_refused {
                            // The renewed identity is still refused: try it again later.
                            Some(refused) => {
                                *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(refused.to_string());
                                pacing.next_delay()
                            }
                            None => {
                                pacing.found_replica();
                                // More replicas to find: at once.
                                Duration::ZERO
                            }
                        }
                    }
                    Err(wire::DialError::AlreadyHeld { replica, membership }) => {
                        state.learn(membership);
                        let delay = pacing.missed();
                        tracing::debug!(%replica, delay = ?delay, "the dial reached a replica already held");
                        delay
                    }
                    Err(e) => {
                        tracing::error!(server = %config.server_url, "cannot connect to control plane: {e}");
                        *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        let delay = pacing.next_delay();
                        tracing::info!(delay = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)), "reconnecting");
                        delay
                    }
                };
                next_dial = tokio::time::Instant::now() + delay;
            }
        }
    }
    tunnels.close();
    tunnels.wait().await;
    // Tunnels that ended just before the shutdown are counted down too.
    while let Ok(_end) = ended.try_recv() {
        state.metrics.tunnel_lost();
    }
    tracing::info!("agent stopped");
}

/// Serves one tunnel's requests until it ends; on shutdown, lets open streams finish
/// (HTTP/2 GOAWAY: the gateway sends nothing new).
async fn serve_tunnel(
    state: Arc<State>,
    dialled: wire::Dialled,
    (tunnel, replica): (u64, String),
    retire: CancellationToken,
    ended: tokio::sync::mpsc::UnboundedSender<TunnelEnd>,
    shutdown: CancellationToken,
) {
    let peer_close = dialled.peer_close.clone();
    let served_before = state.metrics.requests_served();
    let handler_state = state.clone();
    let handler_close = peer_close.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let state = handler_state.clone();
        let peer_close = handler_close.clone();
        async move { Ok::<_, std::convert::Infallible>(forward::handle(state, &peer_close, req).await) }
    });
    let connection = protocol::server_builder(state.config.heartbeat)
        .serve_connection(TokioIo::new(dialled.io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(30), connection.as_mut()).await;
            state.held.lock().unwrap_or_else(|p| p.into_inner()).retain(|h| h.tunnel != tunnel);
            state.connected.send_replace(!state.held_replicas().is_empty());
            state.metrics.tunnel_down();
            return;
        }
    };
    let going_away = peer_close.going_away();
    if !going_away && !retire.is_cancelled() {
        match result {
            Ok(()) => tracing::warn!(%replica, "the gateway closed the tunnel; reconnecting"),
            Err(e) => tracing::warn!(%replica, error = %e, "tunnel lost; reconnecting"),
        }
    }
    let _ = ended.send(TunnelEnd {
        tunnel,
        replica,
        going_away,
        used: state.metrics.requests_served() > served_before,
    });
}

/// `planelink agent`: runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let health = match config.health {
        Some(addr) => Some(crate::server::bind(addr.ip(), addr.port(), "--health-port").await?),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let agent = start(config, health, shutdown.clone()).await?;
    crate::signals::cancel_on_terminate(shutdown).await;
    agent.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn dials_back_off_while_failing_and_come_promptly_after_going_away() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(120));
        let mut pacing = Pacing::new(base, max);
        let delays: Vec<Duration> = (0..4).map(|_| pacing.next_delay()).collect();
        for (attempt, delay) in delays.iter().enumerate() {
            let ceiling = base * (1 << attempt);
            assert!(
                *delay <= ceiling && *delay >= ceiling / 2,
                "{attempt}: {delay:?}"
            );
        }
        // A tunnel carried requests: the backoff starts over.
        pacing.tunnel_used();
        assert!(pacing.next_delay() <= base);
        // "Going away": prompt dials, then doubling from 1 s up to the base delay.
        pacing.tunnel_used();
        pacing.gateway_went_away();
        for _ in 0..PROMPT_DIALS {
            assert!(PROMPT_REDIAL.contains(&pacing.next_delay()));
        }
        let doubling: Vec<Duration> = (0..4).map(|_| pacing.next_delay()).collect();
        for (k, delay) in doubling.iter().enumerate() {
            let ceiling = (Duration::from_secs(1) * (1 << k)).min(base);
            assert!(*delay <= ceiling && *delay >= ceiling / 2, "{k}: {delay:?}");
        }
        // Saying "going away" again at once does not re-arm the prompt dials.
        pacing.gateway_went_away();
        assert!(!PROMPT_REDIAL.contains(&pacing.next_delay()) || base <= Duration::from_secs(1));
        // After the window, the usual backoff.
        tokio::time::advance(PROMPT_WINDOW).await;
        let after = pacing.next_delay();
        assert!(after >= base / 2 && after <= base, "{after:?}");
        // A minute later "going away" arms the prompt dials again.
        tokio::time::advance(2 * PROMPT_WINDOW).await;
        pacing.gateway_went_away();
        assert!(PROMPT_REDIAL.contains(&pacing.next_delay()));
    }

    #[test]
    fn backoff_grows_jitters_and_caps() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempt in 0..30 {
            let d = backoff(base, max, attempt);
            let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(max);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
    }
}
