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

use super::connection::{CaProposal, ConnectionStatus};
use super::crd::ValueFrom;
use super::kubernetes::plane_api;
use super::registry::secret_location;
use super::{PlaneKind, PlaneType, Problem, Reason};
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
/// Since when no connected agent has used the retiring CAs (RFC 3339): they go once that
/// has held for the grace period.
pub const UNUSED_SINCE: &str = "planelink.dev/ca-rotation-unused-since";
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
    /// Record (`Some`) or clear (`None`) since when the old CAs are unused.
    Mark {
        unused_since: Option<String>,
    },
    /// A rollover is under way; why the old CAs stay for now.
    Waiting(String),
}

/// The command an operator runs to roll a CR's client CA over.
pub fn rotate_command(plane_type: PlaneType, namespace: &str, name: &str) -> String {
    // The name and namespace are a tenant's to write: each one shell word.
    format!(
        "planelink register rotate {} {} --namespace {}",
        plane_type.as_str(),
        crate::safe_text::shell_word(name),
        crate::safe_text::shell_word(namespace)
    )
}

/// The next step for a CR with `annotations` trusting `current`, given what the gateway
/// says of its agents (`None`: it could not be asked).
///
/// The old CAs are retired only on positive evidence, held for the whole grace period:
/// every gateway replica answered, a connected agent uses a CA that stays, and none uses
/// an old one ([`UNUSED_SINCE`] records since when); never before the grace period after
/// the new CA was added.
pub fn next_step(
    kind: PlaneKind,
    (namespace, name): (&str, &str),
    annotations: &BTreeMap<String, String>,
    current: &[CertificateDer<'static>],
    connection: Option<&ConnectionStatus>,
    (now, grace): (SystemTime, Duration),
) -> Step {
    let proposal = connection.and_then(|c| c.ca_proposal.clone());
    let opted_in = annotations.get(OPT_IN).map(String::as_str) == Some(BY_AGENT);
    if let Some(retiring) = annotations.get(RETIRING) {
        let retiring: Vec<String> = retiring.split(',').map(|s| s.trim().to_string()).collect();
        let (old, kept): (Vec<_>, Vec<_>) = current
            .iter()
            .cloned()
            .partition(|ca| retiring.contains(&fingerprint(ca)));
        if kept.is_empty() {
            // The new CA never made it in (a write failed half-way): add it again.
            return match proposal.filter(|_| opted_in) {
                Some(proposal) => extend(current, &proposal),
                None => Step::Waiting("the new CA is not in clientCA yet".into()),
            };
        }
        if old.is_empty() {
            // Removed by hand: only the marks are left to clear.
            return Step::Retire {
                bundle: kept,
                retired: Vec::new(),
            };
        }
        if let Err(why) = evidence(&retiring, &kept, connection) {
            // The clock starts over whenever the old CA may be needed.
            return match annotations.contains_key(UNUSED_SINCE) {
                true => Step::Mark { unused_since: None },
                false => Step::Waiting(why),
            };
        }
        let Some(since) = annotations.get(UNUSED_SINCE).and_then(|t| parse_time(t)) else {
            return Step::Mark {
                unused_since: Some(format_time(now.into())),
            };
        };
        let started = annotations
            .get(STARTED)
            .and_then(|t| parse_time(t))
            .unwrap_or(since);
        let until = since.max(started).checked_add(grace).unwrap_or(now);
        if now < until {
            return Step::Waiting(format!(
                "the old CA stays trusted until {} (unused by the connected agents since {}, \
                 and the grace period)",
                format_time(until.into()),
                format_time(since.into())
            ));
        }
        return Step::Retire {
            bundle: kept,
            retired: old.iter().map(fingerprint).collect(),
        };
    }
    let Some(proposal) = proposal else {
        return Step::Idle;
    };
    let Ok(proposed) = crate::trust::parse_certificates(proposal.ca_bundle.as_bytes()) else {
        return Step::Idle;
    };
    if proposed.iter().all(|ca| current.contains(ca)) {
        return Step::Idle;
    }
    if opted_in {
        return extend(current, &proposal);
    }
    let problem = Problem::new(
        Reason::ClientCARotationPending,
        format!(
            "agent {} proposes the CA {} that issued its renewed certificate; this {} does not \
             take proposals itself, so roll it over with `{}` (or annotate it {OPT_IN}={BY_AGENT} \
             to let the controller do it)",
            proposal.agent.as_deref().unwrap_or("(unnamed)"),
            proposal.fingerprints.join(", "),
            kind,
            rotate_command(kind.plane_type(), namespace, name),
        ),
    );
    Step::Proposed { proposal, problem }
}

/// Old + new; the old CAs retiring are those that verified the proposing agent's current
/// certificate (other agents' CAs in the bundle stay).
fn extend(current: &[CertificateDer<'static>], proposal: &CaProposal) -> Step {
    let proposed =
        crate::trust::parse_certificates(proposal.ca_bundle.as_bytes()).unwrap_or_default();
    let mut bundle = current.to_vec();
    bundle.extend(proposed.into_iter().filter(|ca| !current.contains(ca)));
    let mut retiring: Vec<String> = current
        .iter()
        .map(fingerprint)
        .filter(|fp| proposal.replaces.contains(fp))
        .collect();
    if retiring.is_empty() {
        retiring = current.iter().map(fingerprint).collect();
    }
    Step::Extend {
        bundle,
        retiring,
        agent: proposal.agent.clone(),
    }
}

/// Why the old CAs are still needed, if they are: an answer from every gateway replica,
/// a connected agent on a CA that stays, none on an old one.
fn evidence(
    retiring: &[String],
    kept: &[CertificateDer<'_>],
    connection: Option<&ConnectionStatus>,
) -> Result<(), String> {
    let Some(connection) = connection.filter(|c| c.connected) else {
        return Err("no agent is connected to show that the new CA is in use".into());
    };
    if connection.partial {
        return Err("a gateway replica did not answer; its agents are not known".into());
    }
    if !kept
        .iter()
        .any(|ca| connection.client_ca_in_use.contains(&fingerprint(ca)))
    {
        return Err("no connected agent uses a certificate from the new CA yet".into());
    }
    let in_use: Vec<&str> = retiring
        .iter()
        .filter(|fp| connection.client_ca_in_use.contains(fp))
        .map(String::as_str)
        .collect();
    if !in_use.is_empty() {
        return Err(format!(
            "a connected agent still uses a certificate from the old CA ({})",
            in_use.join(", ")
        ));
    }
    Ok(())
}

fn parse_time(rfc3339: &str) -> Option<SystemTime> {
    let t = rfc3339.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(t.as_second().max(0) as u64))
}

/// PEM of a CA bundle.
pub fn bundle_pem(bundle: &[CertificateDer<'_>]) -> String {
    bundle.iter().map(|c| to_pem("CERTIFICATE", c)).collect()
}

/// Writes `bundle` where the CR keeps its client CA (the inline value, or the key of the
/// referenced Secret) and sets (`Some`) or removes (`None`) the rollover annotations. The
/// Secret goes first: a failure in between leaves the old CA trusted, never a CA missing.
/// With `resource_version`, the CR is patched only if nobody changed it since it was read.
pub async fn write(
    client: &kube::Client,
    kind: PlaneKind,
    (namespace, name, resource_version): (&str, &str, Option<&str>),
    client_ca: &ValueFrom,
    bundle: Option<&[CertificateDer<'_>]>,
    annotations: &[(&str, Option<String>)],
) -> Result<(), kube::Error> {
    let api = plane_api(client, kind, Some(namespace));
    let params = PatchParams::default();
    // Where the gateway reads it: the inline value first, as `resolve_value` does.
    let secret = match client_ca.inline_value() {
        Some(_) => None,
        None => secret_location(namespace, client_ca),
    };
    if let (Some(bundle), Some(at)) = (bundle, &secret) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bundle_pem(bundle));
        Api::<Secret>::namespaced(client.clone(), &at.namespace)
            .patch(
                &at.name,
                &params,
                &Patch::Merge(json!({ "data": { &at.key: encoded } })),
            )
            .await?;
    }
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
    if let Some(version) = resource_version {
        patch["metadata"]["resourceVersion"] = json!(version);
    }
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
                replaces: Vec::new(),
                agent: Some("a1".into()),
                proposed_at: "2026-12-02T00:00:00Z".into(),
            }),
            client_ca_in_use: in_use.to_vec(),
            partial: false,
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
            PlaneKind::DataPlane,
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
        let marks = [(RETIRING, fingerprint(&old)), (STARTED, started.clone())];
        let marks: Vec<(&str, &str)> = marks.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let unused = [
            (RETIRING, fingerprint(&old)),
            (STARTED, started.clone()),
            (UNUSED_SINCE, started),
        ];
        let unused: Vec<(&str, &str)> = unused.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let both = [old.clone(), new.clone()];
        let on_new = connection(&[fingerprint(&new)], None);
        let later = now + Duration::from_secs(61);
        // The old CA unused and the new one in use: the clock starts ...
        assert_eq!(
            step(&marks, &both, Some(&on_new), now),
            Step::Mark {
                unused_since: Some(format_time(now.into()))
            }
        );
        // ... and runs for the grace period.
        assert!(
            matches!(step(&unused, &both, Some(&on_new), now), Step::Waiting(m) if m.starts_with("the old CA stays trusted until "))
        );
        // Still used by an agent: kept, and the clock stopped.
        let on_old = connection(&[fingerprint(&old), fingerprint(&new)], None);
        assert_eq!(
            step(&marks, &both, Some(&on_old), later),
            Step::Waiting(format!(
                "a connected agent still uses a certificate from the old CA ({})",
                fingerprint(&old)
            ))
        );
        assert_eq!(
            step(&unused, &both, Some(&on_old), later),
            Step::Mark { unused_since: None }
        );
        // No agent on the new CA (a gateway reporting no CAs in use): kept.
        assert_eq!(
            step(&marks, &both, Some(&connection(&[], None)), later),
            Step::Waiting("no connected agent uses a certificate from the new CA yet".into())
        );
        // No agent connected, or a replica that did not answer: kept.
        let mut gone = on_new.clone();
        gone.connected = false;
        assert!(matches!(
            step(&marks, &both, Some(&gone), later),
            Step::Waiting(_)
        ));
        let mut partial = on_new.clone();
        partial.partial = true;
        assert_eq!(
            step(&marks, &both, Some(&partial), later),
            Step::Waiting("a gateway replica did not answer; its agents are not known".into())
        );
        // Unused through the grace period: retired.
        assert_eq!(
            step(&unused, &both, Some(&on_new), later),
            Step::Retire {
                bundle: vec![new.clone()],
                retired: vec![fingerprint(&old)],
            }
        );
        // The new CA never made it in: nothing is removed; with the opt-in it is added again.
        assert_eq!(
            step(
                &marks,
                std::slice::from_ref(&old),
                Some(&connection(&[], None)),
                later
            ),
            Step::Waiting("the new CA is not in clientCA yet".into())
        );
        let mut opted = marks.clone();
        opted.push((OPT_IN, BY_AGENT));
        assert!(matches!(
            step(&opted, std::slice::from_ref(&old), Some(&proposing), later),
            Step::Extend { .. }
        ));
    }

    /// Only the CA that verified the proposing agent's certificate retires: another
    /// agent group's CA in the same bundle stays.
    #[test]
    fn an_extension_retires_only_the_proposers_ca() {
        let (other, old, new) = (ca("other"), ca("old"), ca("new"));
        let mut proposing = connection(&[fingerprint(&old)], Some(&new));
        if let Some(p) = proposing.ca_proposal.as_mut() {
            p.replaces = vec![fingerprint(&old)];
        }
        assert_eq!(
            step(
                &[(OPT_IN, BY_AGENT)],
                &[other.clone(), old.clone()],
                Some(&proposing),
                SystemTime::now()
            ),
            Step::Extend {
                bundle: vec![other, old.clone(), new],
                retiring: vec![fingerprint(&old)],
                agent: Some("a1".into()),
            }
        );
    }
}
