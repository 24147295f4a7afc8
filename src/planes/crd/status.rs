//! The status every plane kind shares: conditions and the agents' connection.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Connection of the plane's agents to the gateway, as the gateway last reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentConnectionStatus {
    pub connected: bool,
    pub connected_agents: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connected_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disconnected_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Gateway replicas holding a tunnel from the plane's agents, of the live replicas
    /// (e.g. `3/3`); absent when the replicas could not be asked one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_replicas: Option<String>,
    /// The connected agents (at most 16), each once however many replicas it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<ConnectedAgent>,
}

/// One connected agent as the gateway verified it: the plane API's and the status's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedAgent {
    /// The agent process's ID from its hello, the same on each of its tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The tunnel protocol it speaks: `planelink.v1-h2` (HTTP/2 on the TLS stream),
    /// `planelink.v1` (HTTP/2 inside WebSocket) or `openchoreo` (OpenChoreo's agent, JSON
    /// frames).
    pub protocol: String,
    /// When its client certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<Time>,
    /// When its client certificate became valid: with the expiry, the lifetime that
    /// scales the expiry warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_before: Option<Time>,
}

/// A Kubernetes time as the trust module's.
fn offset_time(t: &Time) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok()
}

/// The most agents a plane's status lists.
pub const MAX_LISTED_AGENTS: usize = 16;

impl ConnectedAgent {
    /// Where the agent's certificate stands against `warn` (a third of its lifetime when
    /// that is shorter).
    pub fn certificate_expiry(
        &self,
        now: std::time::SystemTime,
        warn: std::time::Duration,
    ) -> Option<crate::trust::Expiry> {
        let not_after = offset_time(self.certificate_not_after.as_ref()?)?;
        let not_before = self.certificate_not_before.as_ref().and_then(offset_time);
        Some(crate::trust::Expiry::at(not_before, not_after, now, warn))
    }

    /// Each agent once (an agent holds a tunnel to every replica), in a stable order, at
    /// most [`MAX_LISTED_AGENTS`].
    pub fn distinct(mut agents: Vec<ConnectedAgent>) -> Vec<ConnectedAgent> {
        let order = |a: &ConnectedAgent| {
            (
                a.instance.clone(),
                a.protocol.clone(),
                a.certificate_not_after.as_ref().map(|t| t.0),
            )
        };
        agents.sort_by_key(order);
        agents.dedup_by(|a, b| order(a) == order(b));
        agents.truncate(MAX_LISTED_AGENTS);
        agents
    }
}

/// Status shared by the three plane kinds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaneStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_connection: Option<AgentConnectionStatus>,
}
