//! The status decision, pure: the facts a reconcile gathered, the status before, and the
//! time go in; the new status comes out. Every reason the controller writes is decided
//! here, and the unit tests below cover each one and the transition-time rules.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::planes::conditions::{
    self, CERTIFICATES_CURRENT, CONNECTED, GATEWAY_PROVISIONED, READY, Truth,
};
use crate::planes::connection::ConnectionStatus;
use crate::planes::crd::{AgentConnectionStatus, GatewayShape, GatewaySpec, PlaneStatus};
use crate::planes::rollover::Step;
use crate::planes::{PlaneKey, Problem, Reason};
use crate::trust::inspect::{Expiry, ExpiryState, format_time};

/// The group of the Gateway API, which the reference lists as a data plane prerequisite.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// How often `lastHeartbeatTime` is refreshed while connected; more often would write
/// status on every resync for no reader's benefit.
pub const HEARTBEAT_REFRESH: Duration = Duration::from_secs(60);

/// How the plane is reached, and what was found out about it.
// One value per reconcile, never stored in bulk: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// `spec.clusterAgent`: the client CA's verdict and the gateway's answer.
    Agent {
        key: PlaneKey,
        client_ca: Result<(), Problem>,
        /// The gateway's status of this CR's agents, or why it could not be asked.
        connection: Result<ConnectionStatus, String>,
        /// The gateway, in words, for messages.
        gateway: String,
    },
    /// `spec.kubernetesCluster`: the API server's `/version`, or why there is no client.
    Direct {
        server: String,
        version: Result<String, Problem>,
    },
    /// Neither is given.
    Unconfigured,
}

/// The DataPlane's gateway prerequisites.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayProbe {
    /// Not probed: the remote cluster cannot be reached yet.
    NotConnected,
    /// Whether the remote cluster serves the Gateway API, or why its groups are unknown.
    Groups(Result<bool, String>),
}

/// Everything a reconcile found out; gathered by API calls, judged by [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub generation: Option<i64>,
    pub mode: Mode,
    /// `spec.observabilityPlaneRef` and whether it exists: (`Kind namespace/name`, found).
    pub observability_plane: Option<(String, bool)>,
    /// DataPlanes only: the gateway spec and what the remote cluster serves.
    pub gateway: Option<(GatewaySpec, GatewayProbe)>,
    /// The certificates an agent-mode plane depends on (none known: no condition).
    pub certificates: Vec<CertificateExpiry>,
    /// Where a rollover of the client CA stands.
    pub rollover: Step,
}

/// A certificate a plane depends on, and how long it has left.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateExpiry {
    /// The reason written while it expires soon.
    pub reason: Reason,
    /// What it is, for the message.
    pub what: String,
    pub expiry: Expiry,
}

/// The status `facts` call for, keeping transition times from `before`.
pub fn decide(before: &PlaneStatus, facts: &Facts, now: &Time) -> PlaneStatus {
    let mut status = PlaneStatus {
        observed_generation: facts.generation.unwrap_or_default(),
        conditions: before.conditions.clone(),
        agent_connection: None,
    };
    let mut set = |type_: &str, truth: Truth, problem: &Problem| {
        conditions::set(
            &mut status.conditions,
            type_,
            truth,
            problem.reason,
            &problem.message,
            facts.generation,
            now,
        )
    };
    // Configuration problems first: a missing connection is often their consequence.
    let mut blockers: Vec<Problem> = Vec::new();
    let mut waiting: Vec<Problem> = Vec::new();
    let (connected, agent_connection) = connection(facts, before, now, &mut blockers, &mut waiting);
    set(CONNECTED, connected.0, &connected.1);
    if let Some((name, false)) = &facts.observability_plane {
        blockers.push(Problem::new(
            Reason::ObservabilityPlaneNotFound,
            format!(
                "spec.observabilityPlaneRef names {name} which does not exist; create it or fix \
                 the name"
            ),
        ));
    }
    if let Some((spec, probe)) = &facts.gateway {
        let (truth, problem) = gateway_provisioned(spec, probe);
        set(GATEWAY_PROVISIONED, truth, &problem);
        if truth == Truth::False {
            blockers.push(problem);
        }
    }
    blockers.extend(waiting);
    match blockers.first() {
        None => set(
            READY,
            Truth::True,
            &Problem::new(Reason::Ready, "connected, trusted and configured"),
        ),
        Some(problem) => set(READY, Truth::False, problem),
    }
    let certificates = match &facts.rollover {
        // A CA proposed and waiting for the operator comes before any expiry.
        Step::Proposed { problem, .. } => Some((Truth::False, problem.clone())),
        _ if facts.certificates.is_empty() => None,
        _ => Some(certificates_current(&facts.certificates)),
    };
    if let Some((truth, problem)) = certificates {
        conditions::set(
            &mut status.conditions,
            CERTIFICATES_CURRENT,
            truth,
            problem.reason,
            &problem.message,
            facts.generation,
            now,
        );
    } else {
        status
            .conditions
            .retain(|c| c.type_ != CERTIFICATES_CURRENT);
    }
    status.agent_connection = agent_connection;
    status
}

/// `CertificatesCurrent`: False, with the reason of the first to expire, while any is
/// inside its warning window; the message lists each and says what to do.
fn certificates_current(certificates: &[CertificateExpiry]) -> (Truth, Problem) {
    let mut by_expiry: Vec<&CertificateExpiry> = certificates.iter().collect();
    by_expiry.sort_by_key(|c| c.expiry.not_after);
    let expiring: Vec<&&CertificateExpiry> = by_expiry
        .iter()
        .filter(|c| c.expiry.state != ExpiryState::Valid)
        .collect();
    let Some(first) = expiring.first() else {
        let next = by_expiry[0];
        return (
            Truth::True,
            Problem::new(
                Reason::CertificatesCurrent,
                format!(
                    "no certificate expires within the warning window; the first to expire is {} on {}",
                    next.what,
                    format_time(next.expiry.not_after)
                ),
            ),
        );
    };
    let listed: Vec<String> = expiring
        .iter()
        .map(|c| match c.expiry.state {
            ExpiryState::Expired => {
                format!("{} expired on {}", c.what, format_time(c.expiry.not_after))
            }
            _ => format!(
                "{} expires on {} ({} days left)",
                c.what,
                format_time(c.expiry.not_after),
                c.expiry.days_left
            ),
        })
        .collect();
    (
        Truth::False,
        Problem::new(
            first.reason,
            format!("{}; {}", listed.join("; "), first.reason.meaning()),
        ),
    )
}

/// The `Connected` condition and `status.agentConnection`, adding what blocks readiness.
fn connection(
    facts: &Facts,
    before: &PlaneStatus,
    now: &Time,
    blockers: &mut Vec<Problem>,
    waiting: &mut Vec<Problem>,
) -> ((Truth, Problem), Option<AgentConnectionStatus>) {
    match &facts.mode {
        Mode::Agent {
            key,
            client_ca,
            connection,
            gateway,
        } => {
            if let Err(problem) = client_ca {
                blockers.push(problem.clone());
            }
            match connection {
                Ok(status) => {
                    let agents = agent_connection(before.agent_connection.as_ref(), status, now);
                    if status.connected {
                        let problem = Problem::new(Reason::AgentConnected, agents_message(status));
                        return ((Truth::True, problem), Some(agents));
                    }
                    let problem = Problem::new(
                        Reason::AgentNotConnected,
                        format!(
                            "no agent of plane {key} is connected to {gateway}; check the agent's logs \
                             in the remote cluster for \"connected to control plane\" or its error"
                        ),
                    );
                    waiting.push(problem.clone());
                    ((Truth::False, problem), Some(agents))
                }
                Err(e) => {
                    let problem = Problem::new(
                        Reason::GatewayUnreachable,
                        format!("cannot ask {gateway} for the agents' status: {e}"),
                    );
                    waiting.push(problem.clone());
                    ((Truth::Unknown, problem), before.agent_connection.clone())
                }
            }
        }
        Mode::Direct { server, version } => match version {
            Ok(version) => (
                (
                    Truth::True,
                    Problem::new(
                        Reason::APIServerReachable,
                        format!("Kubernetes {version} answers at {server}"),
                    ),
                ),
                None,
            ),
            Err(problem) => {
                if problem.reason == Reason::APIServerUnreachable {
                    waiting.push(problem.clone());
                } else {
                    blockers.push(problem.clone());
                }
                ((Truth::False, problem.clone()), None)
            }
        },
        Mode::Unconfigured => {
            let problem = Problem::new(
                Reason::NoConnectionMode,
                "neither spec.clusterAgent (agent mode, recommended) nor spec.kubernetesCluster \
                 (direct access) is given; add one",
            );
            blockers.push(problem.clone());
            ((Truth::False, problem), None)
        }
    }
}

fn gateway_provisioned(spec: &GatewaySpec, probe: &GatewayProbe) -> (Truth, Problem) {
    if let Err(problem) = check_gateway_spec(spec) {
        return (Truth::False, problem);
    }
    match probe {
        GatewayProbe::NotConnected => (
            Truth::Unknown,
            Problem::new(
                Reason::AwaitingConnection,
                "gateway spec valid; the remote cluster is probed for the Gateway API once connected",
            ),
        ),
        GatewayProbe::Groups(Ok(true)) => (
            Truth::True,
            Problem::new(
                Reason::GatewayAPIAvailable,
                format!("gateway spec valid; the remote cluster serves {GATEWAY_API_GROUP}"),
            ),
        ),
        GatewayProbe::Groups(Ok(false)) => (
            Truth::False,
            Problem::new(
                Reason::GatewayAPIMissing,
                format!(
                    "the remote cluster does not serve {GATEWAY_API_GROUP}; install the Gateway API CRDs \
                     there (a prerequisite of the data plane)"
                ),
            ),
        ),
        GatewayProbe::Groups(Err(e)) => (
            Truth::Unknown,
            Problem::new(
                Reason::GatewayAPIUnknown,
                format!("cannot list the remote cluster's API groups: {e}"),
            ),
        ),
    }
}

/// A deletion that waits for the Environments naming this DataPlane: `Ready=False` with
/// their names, the other conditions as they were.
pub fn decide_blocked_deletion(
    before: &PlaneStatus,
    environments: &[String],
    generation: Option<i64>,
    now: &Time,
) -> PlaneStatus {
    let (count, verb, pronoun) = match environments.len() {
        1 => ("1 Environment".to_string(), "references", "it"),
        n => (format!("{n} Environments"), "reference", "them"),
    };
    let message = format!(
        "deletion waits for {count} that {verb} this DataPlane ({}); delete {pronoun} or recreate \
         {pronoun} on another DataPlane (dataPlaneRef is immutable)",
        environments.join(", "),
    );
    let mut status = before.clone();
    conditions::set(
        &mut status.conditions,
        READY,
        Truth::False,
        Reason::DeletionBlocked,
        &message,
        generation,
        now,
    );
    status
}

fn parse_time(rfc3339: Option<&str>) -> Option<Time> {
    rfc3339.and_then(|t| t.parse::<Timestamp>().ok()).map(Time)
}

fn agents_message(status: &ConnectionStatus) -> String {
    let agents = match status.connected_agents {
        0 => "no agent connected".to_string(),
        1 => "1 agent connected".to_string(),
        n => format!("{n} agents connected (HA mode)"),
    };
    match status.replicas {
        Some(replicas) if replicas.live > 1 => format!("{agents}, to {replicas} gateway replicas"),
        _ => agents,
    }
}

/// `status.agentConnection`: times move on transitions only; the heartbeat at most once
/// per [`HEARTBEAT_REFRESH`].
fn agent_connection(
    before: Option<&AgentConnectionStatus>,
    now: &ConnectionStatus,
    at: &Time,
) -> AgentConnectionStatus {
    let was = before.is_some_and(|b| b.connected);
    let heartbeat = if now.connected {
        let previous = before.and_then(|b| b.last_heartbeat_time.clone());
        let fresh = previous.as_ref().is_some_and(|p| {
            at.0.duration_since(p.0).as_secs() < HEARTBEAT_REFRESH.as_secs() as i64
        });
        if fresh {
            previous
        } else {
            parse_time(now.last_seen.as_deref()).or(Some(at.clone()))
        }
    } else {
        before.and_then(|b| b.last_heartbeat_time.clone())
    };
    AgentConnectionStatus {
        connected: now.connected,
        connected_agents: now.connected_agents as i32,
        last_connected_time: if now.connected && !was {
            Some(at.clone())
        } else {
            before.and_then(|b| b.last_connected_time.clone())
        },
        last_disconnected_time: if !now.connected && was {
            Some(at.clone())
        } else {
            before.and_then(|b| b.last_disconnected_time.clone())
        },
        last_heartbeat_time: heartbeat,
        message: Some(agents_message(now)),
        gateway_replicas: now.replicas.map(|r| r.to_string()),
        agents: now.agents.clone(),
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn check_gateway_spec(gateway: &GatewaySpec) -> Result<(), Problem> {
    let invalid = |message: String| Err(Problem::new(Reason::GatewaySpecInvalid, message));
    match gateway.shape() {
        GatewayShape::Empty => Ok(()),
        GatewayShape::Endpoints => {
            for (at, endpoint) in gateway.endpoints() {
                for (field, value) in [("name", &endpoint.name), ("namespace", &endpoint.namespace)]
                {
                    if !valid_dns_label(value) {
                        return invalid(format!(
                            "spec.gateway.{at}.{field} {value:?} is not a Kubernetes name; name the \
                             Gateway API Gateway of the data plane"
                        ));
                    }
                }
                for (listener, l) in endpoint.listeners() {
                    if !valid_host(&l.host) {
                        return invalid(format!(
                            "spec.gateway.{at}.{listener}.host {:?} is not a DNS name; write e.g. \
                             apps.example.com",
                            l.host
                        ));
                    }
                    if !(1..=65535).contains(&l.port) {
                        return invalid(format!(
                            "spec.gateway.{at}.{listener}.port {} is not a port (1-65535)",
                            l.port
                        ));
                    }
                }
            }
            Ok(())
        }
        GatewayShape::VirtualHosts => {
            for (field, host) in [
                ("publicVirtualHost", &gateway.public_virtual_host),
                (
                    "organizationVirtualHost",
                    &gateway.organization_virtual_host,
                ),
            ] {
                let host = host.as_deref().unwrap_or_default();
                if !valid_host(host) {
                    return invalid(format!(
                        "spec.gateway.{field} {host:?} is not a DNS name; write e.g. apps.example.com"
                    ));
                }
            }
            if gateway.http_port() == gateway.https_port() {
                return invalid(format!(
                    "spec.gateway.publicHTTPPort and publicHTTPSPort are both {}; give the ports the \
                     data plane's gateway is reachable on (defaults 19080 and 19443)",
                    gateway.http_port()
                ));
            }
            Ok(())
        }
    }
}

/// A Kubernetes object name or namespace (RFC 1123 label).
fn valid_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::PlaneType;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn key() -> PlaneKey {
        PlaneKey {
            plane_type: PlaneType::DataPlane,
            plane_id: "p1".into(),
        }
    }

    fn gateway_status(connected_agents: usize) -> ConnectionStatus {
        ConnectionStatus {
            agents: Vec::new(),
            gateway_certificate_not_after: None,
            gateway_certificate_not_before: None,
            ca_proposal: None,
            client_ca_in_use: Vec::new(),
            partial: false,
            replicas: None,
            plane_type: "dataplane".into(),
            plane_id: "p1".into(),
            namespace: Some("org".into()),
            name: Some("dp1".into()),
            connected: connected_agents > 0,
            connected_agents,
            last_seen: None,
        }
    }

    fn agent_facts(
        client_ca: Result<(), Problem>,
        connection: Result<ConnectionStatus, String>,
    ) -> Facts {
        Facts {
            generation: Some(2),
            mode: Mode::Agent {
                key: key(),
                client_ca,
                connection,
                gateway: "the gateway in this process".into(),
            },
            observability_plane: None,
            gateway: None,
            certificates: Vec::new(),
            rollover: Step::Idle,
        }
    }

    fn condition<'a>(status: &'a PlaneStatus, type_: &str) -> &'a Condition {
        conditions::find(&status.conditions, type_).expect("condition present")
    }

    /// (Ready status, Ready reason, Connected status, Connected reason)
    fn verdict(status: &PlaneStatus) -> (String, String, String, String) {
        let (ready, connected) = (condition(status, READY), condition(status, CONNECTED));
        (
            ready.status.clone(),
            ready.reason.clone(),
            connected.status.clone(),
            connected.reason.clone(),
        )
    }

    fn v(a: &str, b: Reason, c: &str, d: Reason) -> (String, String, String, String) {
        (a.into(), b.to_string(), c.into(), d.to_string())
    }

    #[test]
    fn agent_mode_reasons() {
        let none = PlaneStatus::default();
        let ok = decide(&none, &agent_facts(Ok(()), Ok(gateway_status(2))), &at(100));
        assert_eq!(
            verdict(&ok),
            v("True", Reason::Ready, "True", Reason::AgentConnected)
        );
        assert_eq!(
            condition(&ok, CONNECTED).message,
            "2 agents connected (HA mode)"
        );
        assert_eq!(ok.observed_generation, 2);

        let away = decide(&none, &agent_facts(Ok(()), Ok(gateway_status(0))), &at(100));
        assert_eq!(
            verdict(&away),
            v(
                "False",
                Reason::AgentNotConnected,
                "False",
                Reason::AgentNotConnected
            )
        );

        let unreachable = decide(
            &none,
            &agent_facts(Ok(()), Err("connection refused".into())),
            &at(100),
        );
        assert_eq!(
            verdict(&unreachable),
            v(
                "False",
                Reason::GatewayUnreachable,
                "Unknown",
                Reason::GatewayUnreachable
            )
        );
        assert_eq!(
            condition(&unreachable, CONNECTED).message,
            "cannot ask the gateway in this process for the agents' status: connection refused"
        );

        // A configuration problem outranks the missing connection it causes.
        for reason in [
            Reason::ClientCAMissing,
            Reason::ClientCAUnparseable,
            Reason::ClientCAIsLeaf,
            Reason::ClientCAExpired,
            Reason::ClientCAIsGatewayCA,
            Reason::SecretNotFound,
            Reason::SecretKeyNotFound,
            Reason::SecretNotReadable,
        ] {
            let facts = agent_facts(Err(Problem::new(reason, "the fix")), Ok(gateway_status(0)));
            let status = decide(&none, &facts, &at(100));
            assert_eq!(
                verdict(&status),
                v("False", reason, "False", Reason::AgentNotConnected)
            );
            assert_eq!(condition(&status, READY).message, "the fix");
        }
    }

    #[test]
    fn direct_and_unconfigured_reasons() {
        let none = PlaneStatus::default();
        let direct = |version| Facts {
            generation: Some(1),
            mode: Mode::Direct {
                server: "https://10.0.0.1:6443".into(),
                version,
            },
            observability_plane: None,
            gateway: None,
            certificates: Vec::new(),
            rollover: Step::Idle,
        };
        let up = decide(&none, &direct(Ok("v1.32.0".into())), &at(1));
        assert_eq!(
            verdict(&up),
            v("True", Reason::Ready, "True", Reason::APIServerReachable)
        );
        assert_eq!(
            condition(&up, CONNECTED).message,
            "Kubernetes v1.32.0 answers at https://10.0.0.1:6443"
        );
        for reason in [
            Reason::APIServerUnreachable,
            Reason::KubernetesClusterInvalid,
        ] {
            let down = decide(&none, &direct(Err(Problem::new(reason, "why"))), &at(1));
            assert_eq!(verdict(&down), v("False", reason, "False", reason));
        }
        let neither = Facts {
            generation: Some(1),
            mode: Mode::Unconfigured,
            observability_plane: None,
            gateway: None,
            certificates: Vec::new(),
            rollover: Step::Idle,
        };
        let status = decide(&none, &neither, &at(1));
        assert_eq!(
            verdict(&status),
            v(
                "False",
                Reason::NoConnectionMode,
                "False",
                Reason::NoConnectionMode
            )
        );
    }

    #[test]
    fn observability_and_gateway_reasons() {
        let none = PlaneStatus::default();
        let mut facts = agent_facts(Ok(()), Ok(gateway_status(1)));
        facts.observability_plane = Some(("ObservabilityPlane org/obs".into(), false));
        let status = decide(&none, &facts, &at(1));
        assert_eq!(
            condition(&status, READY).reason,
            "ObservabilityPlaneNotFound"
        );
        facts.observability_plane = Some(("ObservabilityPlane org/obs".into(), true));

        let good = GatewaySpec::local("apps.example.com");
        let cases = [
            (
                GatewayProbe::NotConnected,
                "Unknown",
                Reason::AwaitingConnection,
                "True",
            ),
            (
                GatewayProbe::Groups(Ok(true)),
                "True",
                Reason::GatewayAPIAvailable,
                "True",
            ),
            (
                GatewayProbe::Groups(Ok(false)),
                "False",
                Reason::GatewayAPIMissing,
                "False",
            ),
            (
                GatewayProbe::Groups(Err("forbidden".into())),
                "Unknown",
                Reason::GatewayAPIUnknown,
                "True",
            ),
        ];
        for (probe, truth, reason, ready) in cases {
            facts.gateway = Some((good.clone(), probe));
            let status = decide(&none, &facts, &at(1));
            let provisioned = condition(&status, GATEWAY_PROVISIONED);
            assert_eq!(
                (provisioned.status.as_str(), provisioned.reason.as_str()),
                (truth, reason.as_str())
            );
            assert_eq!(condition(&status, READY).status, ready, "{reason}");
        }
        let mut bad = good.clone();
        bad.public_virtual_host = Some("not a host".into());
        facts.gateway = Some((bad, GatewayProbe::Groups(Ok(true))));
        let status = decide(&none, &facts, &at(1));
        assert_eq!(condition(&status, READY).reason, "GatewaySpecInvalid");

        // The current shape: a listener's host and an endpoint's Gateway name are checked.
        let endpoint = |name: &str, host: &str| GatewaySpec {
            ingress: Some(crate::planes::crd::GatewayEndpoints {
                external: Some(crate::planes::crd::GatewayEndpoint {
                    name: name.into(),
                    namespace: "openchoreo-data-plane".into(),
                    http: Some(crate::planes::crd::GatewayListener {
                        listener_name: Some("http".into()),
                        port: 19080,
                        host: host.into(),
                    }),
                    ..Default::default()
                }),
                internal: None,
            }),
            ..GatewaySpec::default()
        };
        for (spec, reason) in [
            (
                endpoint("gateway-default", "openchoreoapis.localhost"),
                "GatewayAPIAvailable",
            ),
            (
                endpoint("gateway-default", "not a host"),
                "GatewaySpecInvalid",
            ),
            (
                endpoint("Gateway_Default", "openchoreoapis.localhost"),
                "GatewaySpecInvalid",
            ),
        ] {
            facts.gateway = Some((spec, GatewayProbe::Groups(Ok(true))));
            let status = decide(&none, &facts, &at(1));
            assert_eq!(condition(&status, GATEWAY_PROVISIONED).reason, reason);
        }
        let mut same_ports = good;
        same_ports.public_https_port = same_ports.public_http_port;
        facts.gateway = Some((same_ports, GatewayProbe::Groups(Ok(true))));
        assert_eq!(
            condition(&decide(&none, &facts, &at(1)), GATEWAY_PROVISIONED).reason,
            "GatewaySpecInvalid"
        );
    }

    #[test]
    fn deletion_blocked_names_the_environments() {
        let status = decide_blocked_deletion(
            &PlaneStatus::default(),
            &["dev".into(), "prod".into()],
            Some(3),
            &at(1),
        );
        let ready = condition(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "DeletionBlocked")
        );
        assert_eq!(
            ready.message,
            "deletion waits for 2 Environments that reference this DataPlane (dev, prod); delete them or \
             recreate them on another DataPlane (dataPlaneRef is immutable)"
        );
    }

    #[test]
    fn transition_times_move_only_on_transitions() {
        let connected = decide(
            &PlaneStatus::default(),
            &agent_facts(Ok(()), Ok(gateway_status(1))),
            &at(1_000),
        );
        let agents = connected.agent_connection.clone().unwrap();
        assert_eq!(agents.last_connected_time, Some(at(1_000)));
        assert_eq!(agents.last_disconnected_time, None);
        let first_beat = agents.last_heartbeat_time.clone();

        // Still connected 30 s later: nothing moves, not even the heartbeat.
        let later = decide(
            &connected,
            &agent_facts(Ok(()), Ok(gateway_status(1))),
            &at(1_030),
        );
        assert_eq!(later, connected);

        // Past the refresh interval the heartbeat moves, the connection time does not.
        let refreshed = decide(
            &connected,
            &agent_facts(Ok(()), Ok(gateway_status(1))),
            &at(1_100),
        );
        let agents = refreshed.agent_connection.clone().unwrap();
        assert_eq!(agents.last_connected_time, Some(at(1_000)));
        assert_eq!(first_beat, Some(at(1_000)));
        assert_eq!(agents.last_heartbeat_time, Some(at(1_100)));
        assert_eq!(
            condition(&refreshed, CONNECTED).last_transition_time,
            at(1_000),
            "Connected stayed True"
        );

        // Disconnected: the disconnect time is set, the condition transitions.
        let gone = decide(
            &refreshed,
            &agent_facts(Ok(()), Ok(gateway_status(0))),
            &at(2_000),
        );
        let agents = gone.agent_connection.clone().unwrap();
        assert_eq!(agents.last_disconnected_time, Some(at(2_000)));
        assert_eq!(agents.last_connected_time, Some(at(1_000)));
        assert_eq!(condition(&gone, CONNECTED).last_transition_time, at(2_000));
        assert_eq!(condition(&gone, READY).last_transition_time, at(2_000));

        // The gateway unreachable keeps the last known agent connection.
        let unknown = decide(
            &gone,
            &agent_facts(Ok(()), Err("timeout".into())),
            &at(3_000),
        );
        assert_eq!(unknown.agent_connection, gone.agent_connection);
    }

    /// Certificates inside their warning window turn `CertificatesCurrent` False with the
    /// reason of the first to expire and every one listed; Ready is not affected.
    #[test]
    fn expiring_certificates_are_reported_soonest_first() {
        let day = 86_400;
        let expiry = |reason, what: &str, days_left: i64, state| CertificateExpiry {
            reason,
            what: what.into(),
            expiry: Expiry {
                not_after: time::OffsetDateTime::from_unix_timestamp(1_000_000 + days_left * day)
                    .unwrap(),
                days_left,
                state,
            },
        };
        let mut facts = agent_facts(Ok(()), Ok(gateway_status(1)));
        facts.certificates = vec![
            expiry(
                Reason::ClientCAExpiringSoon,
                "clientCA \"CN=a\"",
                3650,
                ExpiryState::Valid,
            ),
            expiry(
                Reason::GatewayCertExpiringSoon,
                "the gateway's serving certificate",
                20,
                ExpiryState::ExpiringSoon,
            ),
            expiry(
                Reason::AgentCertExpiringSoon,
                "the certificate of agent x",
                4,
                ExpiryState::ExpiringSoon,
            ),
        ];
        let status = decide(&PlaneStatus::default(), &facts, &at(1));
        let current = condition(&status, CERTIFICATES_CURRENT);
        assert_eq!(current.status, "False");
        assert_eq!(current.reason, "AgentCertExpiringSoon");
        assert_eq!(
            current.message,
            format!(
                "the certificate of agent x expires on 1970-01-16T13:46:40Z (4 days left); the \
                 gateway's serving certificate expires on 1970-02-01T13:46:40Z (20 days left); {}",
                crate::planes::reason::AGENT_CERT_RENEWAL
            )
        );
        assert_eq!(condition(&status, READY).status, "True");

        facts
            .certificates
            .retain(|c| c.expiry.state == ExpiryState::Valid);
        let status = decide(&status, &facts, &at(2));
        let current = condition(&status, CERTIFICATES_CURRENT);
        assert_eq!(
            (current.status.as_str(), current.reason.as_str()),
            ("True", "CertificatesCurrent")
        );

        facts.certificates.clear();
        let status = decide(&status, &facts, &at(3));
        assert!(conditions::find(&status.conditions, CERTIFICATES_CURRENT).is_none());
    }
}
