//! CA rollover of a plane CR's `clientCA`, in two steps with an overlap: the new CA is
//! added next to the old one (agents move to certificates from it while both are
//! trusted), and the old one is removed once no connected agent chains to it and a grace
//! period has passed. The controller takes both steps for a CR that opts in with the
//! annotation `planelink.dev/ca-rotation: agent`; `planelink register rotate` takes the
//! first from an operator's shell and the controller the second. The state lives in
//! annotations, so the CRD schema (OpenChoreo's) is untouched.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use super::connection::ConnectionStatus;
use super::crd::ValueFrom;
use super::kubernetes::plane_api;
use super::registry::secret_location;
use super::{PlaneType, Problem, Reason};
use crate::trust::inspect::{fingerprint, format_time};
use crate::trust::pem::to_pem;

/// Annotation by which a CR lets the controller roll its client CA over as its agents
/// propose (value [`BY_AGENT`]).
pub const OPT_IN: &str = "planelink.dev/ca-rotation";
pub const BY_AGENT: &str = "agent";
/// The fingerprints (SHA-256, comma-separated) of the CAs being rolled out of `clientCA`.
pub const RETIRING: &str = "planelink.dev/ca-rotation-retiring";
/// When the new CA was added (RFC 3339): the old ones stay at least the grace period.
pub const STARTED: &str = "planelink.dev/ca-rotation-started";
/// A CA an agent proposed for a CR that does not opt in (base64 of its PEM), written by
/// the controller for `planelink register rotate` to take.
pub const PROPOSED: &str = "planelink.dev/ca-proposal";

/// What the rollover of one CR calls for now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Idle,
    /// An agent proposed a CA the CR does not opt in to take: say which command does.
    Proposed {
        proposal: super::connection::CaProposal,
        problem: Problem,
    },
    /// Trust `bundle` (the current CAs and the new ones); the current ones retire later.
    Extend {
        bundle: Vec<CertificateDer<'static>>,
        retiring: Vec<String>,
        agent: Option<String>,
    },
    /// Trust only `bundle`: the CAs `retired` are used by no connected agent.
    Retire {
        bundle: Vec<CertificateDer<'static>>,
        retired: Vec<String>,
    },
    /// A rollover is under way; why the old CAs stay for now.
    Waiting(String),
}

/// The command an operator runs to roll a CR's client CA over.
pub fn rotate_command(plane_type: PlaneType, namespace: &str, name: &str) -> String {
    format!(
        "planelink register rotate {} {name} --namespace {namespace}",
        plane_type.as_str()
    )
}

/// The next step for a CR with `annotations` trusting `current`, given what the gateway
/// says of its agents (`None`: it could not be asked).
pub fn next_step(
    plane_type: PlaneType,
    (namespace, name): (&str, &str),
    annotations: &BTreeMap<String, String>,
    current: &[CertificateDer<'static>],
    connection: Option<&ConnectionStatus>,
    (now, grace): (SystemTime, Duration),
) -> Step {
    if let Some(retiring) = annotations.get(RETIRING) {
        let retiring: Vec<String> = retiring.split(',').map(|s| s.trim().to_string()).collect();
        let (old, kept): (Vec<_>, Vec<_>) = current
            .iter()
            .cloned()
            .partition(|ca| retiring.contains(&fingerprint(ca)));
        if kept.is_empty() {
            return Step::Waiting("the new CA is not in clientCA yet".into());
        }
        if old.is_empty() {
            // Removed by hand: only the marks are left to clear.
            return Step::Retire {
                bundle: kept,
                retired: Vec::new(),
            };
        }
        let started = annotations
            .get(STARTED)
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .and_then(|t| {
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(t.as_second().max(0) as u64))
            });
        if let Some(until) = started.and_then(|s| s.checked_add(grace))
            && now < until
        {
            return Step::Waiting(format!(
                "the old CA stays trusted until {} (the grace period)",
                format_time(until.into())
            ));
        }
        let Some(connection) = connection.filter(|c| c.connected) else {
            return Step::Waiting("no agent is connected to show that the new CA is in use".into());
        };
        let in_use: Vec<&String> = retiring
            .iter()
            .filter(|fp| connection.client_ca_in_use.contains(fp))
            .collect();
        if !in_use.is_empty() {
            return Step::Waiting(format!(
                "a connected agent still uses a certificate from the old CA ({})",
                in_use
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return Step::Retire {
            bundle: kept,
            retired: old.iter().map(fingerprint).collect(),
        };
    }
    let Some(proposal) = connection.and_then(|c| c.ca_proposal.clone()) else {
        return Step::Idle;
    };
    let Ok(proposed) = crate::trust::parse_certificates(proposal.ca_bundle.as_bytes()) else {
        return Step::Idle;
    };
    let new: Vec<CertificateDer<'static>> = proposed
        .into_iter()
        .filter(|ca| !current.contains(ca))
        .collect();
    if new.is_empty() {
        return Step::Idle;
    }
    if annotations.get(OPT_IN).map(String::as_str) == Some(BY_AGENT) {
        let mut bundle = current.to_vec();
        bundle.extend(new);
        return Step::Extend {
            bundle,
            retiring: current.iter().map(fingerprint).collect(),
            agent: proposal.agent.clone(),
        };
    }
    let problem = Problem::new(
        Reason::ClientCARotationPending,
        format!(
            "agent {} proposes the CA {} that issued its renewed certificate; this {} does not \
             take proposals itself, so roll it over with `{}` (or annotate it {OPT_IN}={BY_AGENT} \
             to let the controller do it)",
            proposal.agent.as_deref().unwrap_or("(unnamed)"),
            proposal.fingerprints.join(", "),
            plane_type.kind(),
            rotate_command(plane_type, namespace, name),
        ),
    );
    Step::Proposed { proposal, problem }
}

/// PEM of a CA bundle.
pub fn bundle_pem(bundle: &[CertificateDer<'_>]) -> String {
    bundle.iter().map(|c| to_pem("CERTIFICATE", c)).collect()
}

/// Writes `bundle` where the CR keeps its client CA (the inline value, or the key of the
/// referenced Secret) and sets (`Some`) or removes (`None`) the rollover annotations. The
/// annotations go first: a failure in between leaves a rollover that is taken up again.
pub async fn write(
    client: &kube::Client,
    plane_type: PlaneType,
    (namespace, name): (&str, &str),
    client_ca: &ValueFrom,
    bundle: Option<&[CertificateDer<'_>]>,
    annotations: &[(&str, Option<String>)],
) -> Result<(), kube::Error> {
    let api = plane_api(client, plane_type, Some(namespace));
    let params = PatchParams::default();
    let marks: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.clone().map(Value::String).unwrap_or(Value::Null),
            )
        })
        .collect();
    let mut patch = json!({ "metadata": { "annotations": marks } });
    // Where the gateway reads it: the inline value first, as `resolve_value` does.
    let secret = match client_ca.inline_value() {
        Some(_) => None,
        None => secret_location(namespace, client_ca),
    };
    if let (Some(bundle), None) = (bundle, &secret) {
        // The agent block has two spellings; the CR's own is patched.
        let object = api.get(name).await?;
        let field = if object.data["spec"].get("clusterAgent").is_some() {
            "clusterAgent"
        } else {
            "agent"
        };
        patch["spec"] = json!({ field: { "clientCA": { "value": bundle_pem(bundle) } } });
    }
    api.patch(name, &params, &Patch::Merge(&patch)).await?;
    if let (Some(bundle), Some(at)) = (bundle, secret) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bundle_pem(bundle));
        Api::<Secret>::namespaced(client.clone(), &at.namespace)
            .patch(
                &at.name,
                &params,
                &Patch::Merge(json!({ "data": { at.key: encoded } })),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::connection::CaProposal;
    use crate::trust::issue::{self, CaOptions};

    fn ca(name: &str) -> CertificateDer<'static> {
        let ca = issue::new_ca(&CaOptions::agent(name)).unwrap();
        crate::trust::parse_certificates(ca.cert_pem.as_bytes()).unwrap()[0].clone()
    }

    fn connection(in_use: &[String], proposal: Option<&CertificateDer<'_>>) -> ConnectionStatus {
        ConnectionStatus {
            plane_type: "dataplane".into(),
            plane_id: "p".into(),
            namespace: Some("ns".into()),
            name: Some("dp".into()),
            connected: true,
            connected_agents: 1,
            last_seen: None,
            agents: Vec::new(),
            gateway_certificate_not_after: None,
            gateway_certificate_not_before: None,
            ca_proposal: proposal.map(|p| CaProposal {
                ca_bundle: bundle_pem(std::slice::from_ref(p)),
                fingerprints: vec![fingerprint(p)],
                agent: Some("a1".into()),
                proposed_at: "2026-12-02T00:00:00Z".into(),
            }),
            client_ca_in_use: in_use.to_vec(),
            replicas: None,
        }
    }

    fn step(
        annotations: &[(&str, &str)],
        current: &[CertificateDer<'static>],
        connection: Option<&ConnectionStatus>,
        now: SystemTime,
    ) -> Step {
        let annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        next_step(
            PlaneType::DataPlane,
            ("ns", "dp"),
            &annotations,
            current,
            connection,
            (now, Duration::from_secs(60)),
        )
    }

    #[test]
    fn a_proposal_is_taken_only_with_the_opt_in_and_the_old_ca_retires_when_unused() {
        let (old, new) = (ca("old"), ca("new"));
        let now = SystemTime::now();
        let proposing = connection(&[fingerprint(&old)], Some(&new));
        // Without the opt-in: the condition names the command.
        match step(&[], std::slice::from_ref(&old), Some(&proposing), now) {
            Step::Proposed { problem, .. } => {
                assert_eq!(problem.reason, Reason::ClientCARotationPending);
                assert!(
                    problem.message.contains(
                        "roll it over with `planelink register rotate dataplane dp --namespace ns`"
                    ),
                    "{}",
                    problem.message
                );
            }
            other => panic!("{other:?}"),
        }
        // With it: old + new, the old marked retiring.
        assert_eq!(
            step(
                &[(OPT_IN, BY_AGENT)],
                std::slice::from_ref(&old),
                Some(&proposing),
                now
            ),
            Step::Extend {
                bundle: vec![old.clone(), new.clone()],
                retiring: vec![fingerprint(&old)],
                agent: Some("a1".into()),
            }
        );
        // A proposal already trusted: nothing to do.
        assert_eq!(
            step(
                &[(OPT_IN, BY_AGENT)],
                &[old.clone(), new.clone()],
                Some(&connection(&[], Some(&new))),
                now
            ),
            Step::Idle
        );
        let started = format_time(now.into());
        let marks = [(RETIRING, fingerprint(&old)), (STARTED, started)];
        let marks: Vec<(&str, &str)> = marks.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let both = [old.clone(), new.clone()];
        // Within the grace period: kept.
        assert!(
            matches!(step(&marks, &both, Some(&connection(&[], None)), now), Step::Waiting(m) if m.starts_with("the old CA stays trusted until "))
        );
        let later = now + Duration::from_secs(61);
        // Still used by an agent: kept.
        assert_eq!(
            step(
                &marks,
                &both,
                Some(&connection(&[fingerprint(&old)], None)),
                later
            ),
            Step::Waiting(format!(
                "a connected agent still uses a certificate from the old CA ({})",
                fingerprint(&old)
            ))
        );
        // No agent connected: kept, nothing shows the new CA works.
        let mut gone = connection(&[], None);
        gone.connected = false;
        assert!(matches!(
            step(&marks, &both, Some(&gone), later),
            Step::Waiting(_)
        ));
        // Unused and past the grace period: retired.
        assert_eq!(
            step(
                &marks,
                &both,
                Some(&connection(&[fingerprint(&new)], None)),
                later
            ),
            Step::Retire {
                bundle: vec![new.clone()],
                retired: vec![fingerprint(&old)],
            }
        );
        // The new CA never made it in: nothing is removed.
        assert_eq!(
            step(
                &marks,
                std::slice::from_ref(&old),
                Some(&connection(&[], None)),
                later
            ),
            Step::Waiting("the new CA is not in clientCA yet".into())
        );
    }
}
