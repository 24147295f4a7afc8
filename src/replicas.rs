//! Gateway replicas on Kubernetes: each live replica keeps one `coordination.k8s.io`
//! Lease, `planelink-gateway-<replica>`, in its namespace. The gateway counts them (and
//! tells its agents); the controller reads them to ask every replica for its agents.
//! This module is the one place that knows the Lease's name, labels and liveness rule.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// The Lease of replica `id` is named this prefix and the ID.
pub const LEASE_PREFIX: &str = "planelink-gateway-";
/// Label (value `true`) that selects the replicas' Leases among others in the namespace.
pub const LABEL: &str = "planelink.dev/gateway-replica";
/// Annotation: `IP:port` of the replica's internal listener, for the controller.
pub const INTERNAL_ADDRESS_ANNOTATION: &str = "planelink.dev/internal-address";
/// A replica that has not renewed its Lease for this long is gone (killed, partitioned).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often a replica renews its Lease: three chances before it expires.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// One live replica, as its Lease describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    pub internal_address: Option<SocketAddr>,
}

pub fn lease_name(id: &str) -> String {
    format!("{LEASE_PREFIX}{id}")
}

pub fn selector() -> String {
    format!("{LABEL}=true")
}

/// Whether a Lease is still renewed: its holder renewed it within its duration.
fn is_live(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => {
            now.duration_since(renewed.0).as_secs_f64() < f64::from(secs.max(0))
        }
        _ => false,
    }
}

/// The live replicas among `leases`, sorted by ID; Leases that are not a replica's
/// (other names, unusable IDs) are ignored.
pub fn live<'a>(leases: impl IntoIterator<Item = &'a Lease>, now: Timestamp) -> Vec<Replica> {
    let mut replicas: Vec<Replica> = leases
        .into_iter()
        .filter(|lease| is_live(lease, now))
        .filter_map(|lease| {
            let name = lease.metadata.name.as_deref()?;
            let id = name.strip_prefix(LEASE_PREFIX)?;
            crate::tunnel::protocol::check_id(id).ok()?;
            let internal_address = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INTERNAL_ADDRESS_ANNOTATION))
                .and_then(|a| a.parse().ok());
            Some(Replica {
                id: id.to_string(),
                internal_address,
            })
        })
        .collect();
    replicas.sort_by(|a, b| a.id.cmp(&b.id));
    replicas.dedup_by(|a, b| a.id == b.id);
    replicas.truncate(crate::tunnel::protocol::MAX_REPLICAS);
    replicas
}

/// The live replicas in `api`'s namespace, now.
pub async fn list(api: &Api<Lease>) -> Result<Vec<Replica>, kube::Error> {
    let leases = api.list(&ListParams::default().labels(&selector())).await?;
    Ok(live(&leases.items, Timestamp::now()))
}

/// This replica's own Lease: created or renewed by [`ReplicaLease::renew`], deleted on
/// shutdown so that the others stop counting it at once.
pub struct ReplicaLease {
    api: Api<Lease>,
    id: String,
    internal_address: Option<SocketAddr>,
}

impl ReplicaLease {
    pub fn new(api: Api<Lease>, id: &str, internal_address: Option<SocketAddr>) -> ReplicaLease {
        ReplicaLease {
            api,
            id: id.to_string(),
            internal_address,
        }
    }

    fn lease(&self, resource_version: Option<String>) -> Lease {
        let now = MicroTime(Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(&self.id)),
                resource_version,
                labels: Some([(LABEL.to_string(), "true".to_string())].into()),
                annotations: self
                    .internal_address
                    .map(|a| [(INTERNAL_ADDRESS_ANNOTATION.to_string(), a.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.id.clone()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..Default::default()
            }),
        }
    }

    /// Creates the Lease, or renews it (a pod restarted under the same name takes its
    /// old Lease over: the name is the pod's, so no one else holds it).
    pub async fn renew(&self) -> Result<(), kube::Error> {
        let name = lease_name(&self.id);
        match self.api.get_opt(&name).await? {
            None => self
                .api
                .create(&PostParams::default(), &self.lease(None))
                .await
                .map(drop),
            Some(existing) => {
                let mut lease = self.lease(existing.metadata.resource_version.clone());
                if let (Some(spec), Some(before)) = (lease.spec.as_mut(), existing.spec.as_ref())
                    && before.holder_identity.as_deref() == Some(&self.id)
                    && before.acquire_time.is_some()
                {
                    spec.acquire_time = before.acquire_time.clone();
                }
                self.api
                    .replace(&name, &PostParams::default(), &lease)
                    .await
                    .map(drop)
            }
        }
    }

    pub async fn delete(&self) -> Result<(), kube::Error> {
        match self
            .api
            .delete(&lease_name(&self.id), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, renewed_secs_ago: i64, duration: i32, address: Option<&str>) -> Lease {
        let renewed = Timestamp::now() - jiff_secs(renewed_secs_ago);
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: address
                    .map(|a| [(INTERNAL_ADDRESS_ANNOTATION.to_string(), a.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
        }
    }

    fn jiff_secs(secs: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(secs)
    }

    #[test]
    fn live_replicas_are_the_renewed_leases_of_replicas() {
        let leases = [
            lease("planelink-gateway-b", 1, 15, Some("10.0.0.2:8444")),
            lease("planelink-gateway-a", 14, 15, None),
            lease("planelink-gateway-expired", 16, 15, None),
            lease("planelink-controller", 1, 15, None),
            lease("planelink-gateway-Bad_ID", 1, 15, None),
        ];
        let live = live(&leases, Timestamp::now());
        assert_eq!(
            live,
            vec![
                Replica {
                    id: "a".into(),
                    internal_address: None
                },
                Replica {
                    id: "b".into(),
                    internal_address: Some("10.0.0.2:8444".parse().unwrap())
                },
            ]
        );
    }
}
