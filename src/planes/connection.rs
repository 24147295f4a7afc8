//! What the gateway tells the controller about a plane's agents, and the notifications
//! the controller sends back: the plane API's JSON, and [`GatewayLink`], the small type
//! through which a controller meets a gateway in the same process or across the network.

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{CrRef, PlaneKey};

/// The status of one plane (or one CR of it): `GET /api/v1/planes/{type}/{id}/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    pub plane_type: String,
    #[serde(rename = "planeID")]
    pub plane_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub connected: bool,
    #[serde(default)]
    pub connected_agents: usize,
    /// RFC 3339; when an agent was last connected (now, while one is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The connected agents (planelink's addition to the plane API).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<super::crd::ConnectedAgent>,
    /// RFC 3339; when the serving certificate of the gateway that answered expires
    /// (planelink's addition, for the plane's `CertificatesCurrent` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_certificate_not_after: Option<String>,
    /// RFC 3339; when that certificate became valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_certificate_not_before: Option<String>,
    /// A CA rollover an agent of this CR proposed that the CR does not trust yet
    /// (planelink's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_proposal: Option<CaProposal>,
    /// SHA-256 fingerprints of the CR's client CAs that a connected agent's certificate
    /// chains to (planelink's addition): a CA missing here is used by no agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_ca_in_use: Vec<String>,
    /// Not part of the plane API: set by a controller when some gateway replica did not
    /// answer, so what this says of the agents may be incomplete.
    #[serde(skip)]
    pub partial: bool,
    /// Not part of the plane API (one replica answers for itself): the controller's view
    /// across the gateway replicas, when it could ask each of them.
    #[serde(skip)]
    pub replicas: Option<ReplicaTunnels>,
}

/// A CA rollover an agent proposed over its authenticated tunnel: the CA bundle that
/// issued its renewed certificate, verified by the gateway against that certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CaProposal {
    /// PEM of the proposed CAs.
    pub ca_bundle: String,
    pub fingerprints: Vec<String>,
    /// SHA-256 fingerprints of the CR's CAs that verified the proposing agent's current
    /// certificate: the ones the rollover retires.
    #[serde(default)]
    pub replaces: Vec<String>,
    /// The proposing agent's instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// RFC 3339.
    pub proposed_at: String,
}

impl ConnectionStatus {
    /// Where the answering gateway's serving certificate stands against `warn` (a third
    /// of its lifetime when that is shorter).
    pub fn gateway_certificate_expiry(
        &self,
        now: std::time::SystemTime,
        warn: std::time::Duration,
    ) -> Option<crate::trust::Expiry> {
        let parse = |t: &Option<String>| {
            let t = t.as_deref()?.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
            time::OffsetDateTime::from_unix_timestamp(t.as_second()).ok()
        };
        let not_after = parse(&self.gateway_certificate_not_after)?;
        Some(crate::trust::Expiry::at(
            parse(&self.gateway_certificate_not_before),
            not_after,
            now,
            warn,
        ))
    }
}

/// How many gateway replicas hold a tunnel from the plane's agents, of how many live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaTunnels {
    pub holding: usize,
    pub live: usize,
}

impl std::fmt::Display for ReplicaTunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.holding, self.live)
    }
}

/// `POST /api/v1/planes/notify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(default)]
    pub plane_type: String,
    #[serde(default, rename = "planeID")]
    pub plane_id: String,
    /// `created`, `updated` or `deleted`.
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

/// A gateway as the controller sees it.
pub trait GatewayLink: Send + Sync + 'static {
    /// For logs and status messages.
    fn describe(&self) -> String;
    fn status(
        &self,
        key: &PlaneKey,
        cr: &CrRef,
    ) -> BoxFuture<'static, anyhow::Result<ConnectionStatus>>;
    fn notify(&self, notification: Notification) -> BoxFuture<'static, anyhow::Result<()>>;
    /// Planes whose agents connected or disconnected, as soon as the gateway knows.
    fn changes(&self) -> BoxStream<'static, PlaneKey>;
}

/// A broadcast of plane keys as a stream; a receiver that fell behind skips ahead (the
/// controller's periodic resync covers what it missed).
pub fn broadcast_stream(
    rx: tokio::sync::broadcast::Receiver<PlaneKey>,
) -> BoxStream<'static, PlaneKey> {
    use futures_util::StreamExt as _;
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(key) => return Some((key, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}
