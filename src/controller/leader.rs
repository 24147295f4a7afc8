//! Leader election with a coordination.k8s.io Lease, with client-go's timings: the
//! holder renews the Lease every [`RETRY_EVERY`]; others take it over once it has not
//! been renewed for [`LEASE_DURATION`]; a leader that has not renewed within
//! [`RENEW_DEADLINE`] (shorter than the lease) stops, so it has stopped reconciling
//! before anyone else can take the Lease. Only the leader reconciles.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};
use tokio_util::sync::CancellationToken;

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that could not renew for this long gives up; shorter than the lease, so it
/// is gone before a standby may take over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews and a standby tries to take over.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    pub identity: String,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str) -> LeaderElection {
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "planelink".into());
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: format!("{host}_{:08x}", rand::random::<u32>()),
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(&self.identity);
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now())
            },
            renew_time: Some(now()),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the Lease; `Ok(true)` when we hold it afterwards.
    async fn try_hold(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(secs)) => {
                let age = Timestamp::now().duration_since(renewed.0);
                age.as_secs() >= i64::from(secs)
            }
            _ => true,
        };
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(false);
        }
        lease.spec = Some(self.spec(Some(&spec)));
        // The resourceVersion in `lease` makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads; `false` when `shutdown` came first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let mut waiting_logged = false;
        loop {
            match self.try_hold().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return true;
                }
                Ok(false) if !waiting_logged => {
                    tracing::info!(lease = %self.name, "another replica leads; standing by");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.name, "cannot read or write the leader Lease: {e}")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
    }

    /// Renews until `shutdown`, then releases the Lease so a standby takes over at once.
    /// Cancels `lost` when another replica holds the Lease, or when no renewal succeeded
    /// within [`RENEW_DEADLINE`] (an API call cannot outlast it either).
    pub async fn keep(&self, shutdown: CancellationToken, lost: CancellationToken) {
        let mut deadline = tokio::time::Instant::now() + RENEW_DEADLINE;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::error!(lease = %self.name, "no renewal within {RENEW_DEADLINE:?}; giving up leadership");
                    lost.cancel();
                    return;
                }
                _ = tokio::time::sleep(RETRY_EVERY) => {}
            }
            match tokio::time::timeout_at(deadline, self.try_hold()).await {
                Ok(Ok(true)) => deadline = tokio::time::Instant::now() + RENEW_DEADLINE,
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.name, "leadership lost to another replica");
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, "cannot renew the leader Lease: {e}")
                }
                Err(_) => {
                    tracing::error!(lease = %self.name, "no renewal within {RENEW_DEADLINE:?}; giving up leadership");
                    lost.cancel();
                    return;
                }
            }
        }
        self.release().await;
    }

    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let name = lease.name_any();
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "leadership released"),
            Err(e) => tracing::warn!(lease = %self.name, "cannot release the leader Lease: {e}"),
        }
    }
}
