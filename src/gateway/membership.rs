//! Which replica this gateway is and how many serve beside it: a fixed `--replicas`
//! count, or the live Leases (`crate::replicas`). Every change is told to the connected
//! agents at once, so they open a tunnel to a new replica or stop dialling for a gone one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use http::HeaderValue;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use tokio_util::sync::CancellationToken;

use super::Core;
use super::config::{ReplicaConfig, ReplicaCount};
use super::hub::AgentConn;
use crate::replicas::{self, ReplicaLease};
use crate::tunnel::protocol::{CONTROL_MEMBERSHIP, Hello, Membership as Members};

/// How often live Leases are recounted (they expire without any event).
const RECOUNT_EVERY: Duration = Duration::from_secs(1);
/// An agent that does not take the news within this is left alone (its next dial or
/// the next change tells it again).
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Membership {
    current: tokio::sync::watch::Sender<Members>,
    /// Cancelled on shutdown: the Lease is deleted, so the others stop counting this one.
    leave: CancellationToken,
    /// Cancelled once the Lease is gone (or there is none).
    left: CancellationToken,
}

impl Membership {
    pub fn new(config: &ReplicaConfig) -> Membership {
        let count = match config.count {
            ReplicaCount::Fixed(n) => n,
            ReplicaCount::Leases { .. } => 1,
        };
        Membership {
            current: tokio::sync::watch::channel(Members {
                replica: config.id.clone(),
                count,
                members: Vec::new(),
            })
            .0,
            leave: CancellationToken::new(),
            left: CancellationToken::new(),
        }
    }

    pub fn replica(&self) -> String {
        self.current.borrow().replica.clone()
    }

    pub fn count(&self) -> usize {
        self.current.borrow().count
    }

    /// The gateway's hello: who it is, and the replicas it knows.
    pub fn hello(&self) -> Hello {
        let mut hello = Hello::ours("gateway");
        hello.membership = Some(self.current.borrow().clone());
        hello
    }

    fn publish(&self, members: Vec<String>) {
        self.current.send_if_modified(|current| {
            let count = members.len().max(1);
            let changed = current.members != members || current.count != count;
            if changed {
                tracing::info!(replicas = count, members = %members.join(","), "gateway replicas changed");
                current.count = count;
                current.members = members;
            }
            changed
        });
    }

    /// Stops renewing and deletes this replica's Lease (at most `limit` spent on it).
    pub async fn leave(&self, limit: Duration) {
        self.leave.cancel();
        let _ = tokio::time::timeout(limit, self.left.cancelled()).await;
    }
}

/// Keeps the membership current until shutdown: the Lease renewed and the live ones
/// counted (Kubernetes), and every change pushed to the connected agents.
pub(crate) async fn run(core: Arc<Core>, internal_addr: SocketAddr) {
    tokio::spawn(push_changes(core.clone()));
    let ReplicaCount::Leases {
        kubeconfig,
        namespace,
        advertise,
    } = core.config.replicas.count.clone()
    else {
        // A fixed count: nothing to keep; leaving is immediate.
        core.membership.leave.cancelled().await;
        core.membership.left.cancel();
        return;
    };
    let membership = &core.membership;
    let client = match crate::planes::kubernetes::kube_client(kubeconfig.as_deref(), None).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("gateway replica Leases: {e:#}; agents are told of this replica only");
            membership.leave.cancelled().await;
            membership.left.cancel();
            return;
        }
    };
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: kube::Api<Lease> = kube::Api::namespaced(client, &namespace);
    let address = advertise
        .map(|ip| SocketAddr::new(ip, internal_addr.port()))
        .or((!internal_addr.ip().is_unspecified()).then_some(internal_addr));
    let replica = membership.replica();
    let lease = ReplicaLease::new(api.clone(), &replica, address);
    let (store, writer) = reflector::store();
    let events = reflector(
        writer,
        watcher(
            api,
            watcher::Config::default().labels(&replicas::selector()),
        ),
    )
    .default_backoff()
    .touched_objects();
    tokio::pin!(events);
    let mut renew = tokio::time::interval(replicas::RENEW_EVERY);
    let mut recount = tokio::time::interval(RECOUNT_EVERY);
    let mut renewed_once = false;
    let mut watching = true;
    tracing::info!(%replica, %namespace, internal_address = ?address, "keeping the replica Lease");
    loop {
        tokio::select! {
            _ = membership.leave.cancelled() => break,
            _ = renew.tick() => match lease.renew().await {
                Ok(()) => renewed_once = true,
                // OpenChoreo's chart grants the gateway no Leases: said once, and this
                // replica serves alone rather than failing or logging every renewal.
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    tracing::warn!(%replica, %namespace,
                        "the gateway may not write Leases here ({}), so replicas cannot find each other: \
                         agents are told of this replica only; grant coordination.k8s.io leases \
                         (packaging/kubernetes/control-plane) to run several, or set --replicas",
                        crate::safe_text::escape(&e.message));
                    membership.publish(vec![replica.clone()]);
                    membership.leave.cancelled().await;
                    membership.left.cancel();
                    return;
                }
                Err(e) => tracing::warn!(%replica, "cannot renew the replica Lease {}: {e}", replicas::lease_name(&replica)),
            },
            // The watcher retries with backoff and does not end; were it to, the
            // recount below still sees Leases expire, only no new ones.
            event = events.next(), if watching => match event {
                Some(Err(e)) => tracing::warn!("watching the replica Leases: {e}"),
                Some(Ok(_)) => {}
                None => watching = false,
            },
            _ = recount.tick() => {}
        }
        // Until this replica's own Lease is written, it counts itself anyway.
        let mut members: Vec<String> = replicas::live(
            store.state().iter().map(|l| l.as_ref()),
            k8s_openapi::jiff::Timestamp::now(),
        )
        .into_iter()
        .map(|r| r.id)
        .collect();
        if !members.contains(&replica) && !membership.leave.is_cancelled() {
            members.push(replica.clone());
            members.sort();
        }
        if renewed_once || members.len() > 1 {
            membership.publish(members);
        }
    }
    match lease.delete().await {
        Ok(()) => tracing::info!(%replica, "replica Lease deleted"),
        Err(e) => tracing::warn!(%replica, "cannot delete the replica Lease: {e}"),
    }
    membership.left.cancel();
}

/// Tells every connected agent of each membership change.
async fn push_changes(core: Arc<Core>) {
    let mut changes = core.membership.current.subscribe();
    while changes.changed().await.is_ok() {
        for agent in core.hub.agents() {
            tell(&core, agent);
        }
    }
}

/// Sends the current membership to one agent over its tunnel, in a task of its own.
pub(crate) fn tell(core: &Core, agent: Arc<AgentConn>) {
    let Ok(hello) = HeaderValue::from_str(&core.membership.hello().to_header()) else {
        return;
    };
    tokio::spawn(async move {
        if let Err(e) = agent
            .send_control(CONTROL_MEMBERSHIP, Some(hello), PUSH_TIMEOUT)
            .await
        {
            tracing::debug!(agent = agent.id, "membership news not delivered: {e}");
        }
    });
}
