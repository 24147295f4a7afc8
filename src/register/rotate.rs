//! `planelink register rotate KIND NAME`: a plane's client CA rolled over from the
//! operator's shell, for planes that do not let the controller take their agents'
//! proposals. Overlap first: the new CA is trusted next to the old one and the old one is
//! marked retiring; planelink's controller removes it once no connected agent uses a
//! certificate from it and its grace period has passed, which this command waits for.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt as _};
use rustls_pki_types::CertificateDer;

use super::Outcome;
use super::args::RotateArgs;
use super::exchange::Progress;
use crate::planes::crd::{AnyPlane, ValueFrom};
use crate::planes::kubernetes::{kube_client, plane_api};
use crate::planes::registry::{check_client_ca, resolve_client_ca, secret_location};
use crate::planes::{PlaneKind, PlaneType, rollover, secret_data};
use crate::trust::inspect::{fingerprint, format_time};
use crate::trust::{self, CertInfo, diagnose};

/// A failure: what to print.
type Failed = String;

pub fn run(args: &RotateArgs) -> Outcome {
    super::block_on(async {
        match rotate(args).await {
            Ok(()) => Outcome::Ok,
            Err(message) => {
                eprintln!(
                    "planelink register rotate: {}",
                    crate::safe_text::printable(&message)
                );
                Outcome::Failed
            }
        }
    })
}

/// The plane as it stands: its clientCA reference, the CAs it trusts, its annotations.
struct Plane {
    /// The kind found under the name: a build plane may be a BuildPlane or a WorkflowPlane.
    kind: PlaneKind,
    resource_version: Option<String>,
    client_ca: ValueFrom,
    trusted: Vec<CertificateDer<'static>>,
    annotations: BTreeMap<String, String>,
}

async fn read_plane(client: &Client, kind: PlaneType, args: &RotateArgs) -> Result<Plane, Failed> {
    let what = format!("{} {}/{}", kind.kind(), args.namespace, args.name);
    let mut found = None;
    // `_cluster`, as proxy paths and messages spell it, names a cluster-scoped plane.
    let cluster_scoped = args.namespace == crate::planes::registry::CLUSTER_SCOPE;
    for candidate in kind
        .kinds()
        .filter(|k| k.cluster_scoped() == cluster_scoped)
    {
        let object = plane_api(client, candidate, Some(&args.namespace))
            .get_opt(&args.name)
            .await
            .map_err(|e| {
                format!(
                    "cannot read {candidate} {}/{}: {e}",
                    args.namespace, args.name
                )
            })?;
        if let Some(object) = object {
            found = Some((candidate, object));
            break;
        }
    }
    let (found_kind, object) = found.ok_or_else(|| {
        format!(
            "{what} does not exist; register it first with `planelink register {}`",
            kind.as_str()
        )
    })?;
    let annotations = object.annotations().clone();
    let resource_version = object.resource_version();
    let value = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    let plane = AnyPlane::from_value(found_kind, value).map_err(|e| format!("{what}: {e}"))?;
    let client_ca = plane.client_ca().cloned().ok_or_else(|| {
        format!("{what} has no spec.clusterAgent.clientCA to roll over; register the agent's CA with `planelink register {}`", kind.as_str())
    })?;
    let data = match secret_location(&args.namespace, &client_ca)
        .filter(|_| client_ca.inline_value().is_none())
    {
        Some(at) => Api::<Secret>::namespaced(client.clone(), &at.namespace)
            .get_opt(&at.name)
            .await
            .map_err(|e| format!("cannot read Secret {}/{}: {e}", at.namespace, at.name))?
            .map(|s| secret_data(&s)),
        None => None,
    };
    let trusted = resolve_client_ca(found_kind, &args.namespace, Some(&client_ca), |_, _| {
        data.as_ref()
    })
    .map_err(|problem| format!("{what}: {}", problem.message))?;
    Ok(Plane {
        kind: found_kind,
        resource_version,
        client_ca,
        trusted,
        annotations,
    })
}

/// The CAs to roll over to: `--ca-file`; during a rollover, the CAs not retiring (a
/// rerun resumes the wait); else the CA the plane's agent proposed.
fn new_cas(
    args: &RotateArgs,
    plane: &Plane,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, Failed> {
    if let Some(file) = &args.ca_file {
        return trust::load_certificates(file)
            .map_err(|e| format!("--ca-file {}: {e}", file.display()));
    }
    if let Some(retiring) = plane.annotations.get(rollover::RETIRING) {
        let staying: Vec<CertificateDer<'static>> = plane
            .trusted
            .iter()
            .filter(|ca| !retiring.contains(&fingerprint(ca)))
            .cloned()
            .collect();
        if !staying.is_empty() {
            return Ok(staying);
        }
    }
    let proposed = plane.annotations.get(rollover::PROPOSED).ok_or_else(|| {
        format!(
            "no agent of {what} has proposed a new CA (annotation {}); give the new CA with \
             --ca-file (ca.crt of Secret cluster-agent-tls in the remote plane)",
            rollover::PROPOSED
        )
    })?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(proposed.trim())
        .map_err(|e| format!("annotation {} is not base64: {e}", rollover::PROPOSED))?;
    trust::parse_certificates(&pem).map_err(|e| format!("annotation {}: {e}", rollover::PROPOSED))
}

fn describe(ca: &CertificateDer<'_>) -> String {
    match CertInfo::from_der(ca) {
        Ok(info) => format!(
            "{} (SHA-256 {}, expires {})",
            info.subject,
            fingerprint(ca),
            format_time(info.not_after)
        ),
        Err(_) => fingerprint(ca),
    }
}

async fn rotate(args: &RotateArgs) -> Result<(), Failed> {
    let kind = args.kind;
    let what = format!("{} {}/{}", kind.kind(), args.namespace, args.name);
    let client = kube_client(args.kubeconfig.as_deref(), args.context.as_deref())
        .await
        .map_err(|e| format!("{e:#}"))?;
    let plane = read_plane(&client, kind, args).await?;
    let new = new_cas(args, &plane, &what)?;
    let now = SystemTime::now();
    let proposed = diagnose::Bundle {
        certificates: &new,
        origin: "the new CA bundle",
    };
    if let Some(leaf) = diagnose::leaf(proposed, diagnose::Role::ClientCa) {
        return Err(leaf.sentence());
    }
    let added: Vec<CertificateDer<'static>> = new
        .iter()
        .filter(|ca| !plane.trusted.contains(ca))
        .cloned()
        .collect();
    let retiring: Vec<CertificateDer<'static>> = plane
        .trusted
        .iter()
        .filter(|ca| !new.contains(ca))
        .cloned()
        .collect();
    if retiring.is_empty() {
        println!("{what} already trusts only the new CA; nothing to do");
        return Ok(());
    }
    let mut bundle = plane.trusted.clone();
    bundle.extend(added.iter().cloned());
    let gateway_cas = gateway_cas(&client, &args.control_plane_namespace).await;
    check_client_ca(&bundle, &gateway_cas, now).map_err(|problem| problem.message)?;
    let marks_in_place = plane.annotations.contains_key(rollover::RETIRING);
    let place = match secret_location(&args.namespace, &plane.client_ca)
        .filter(|_| plane.client_ca.inline_value().is_none())
    {
        Some(at) => format!("key {} of Secret {}/{}", at.key, at.namespace, at.name),
        None => format!("clientCA.value of {what}"),
    };
    for ca in &added {
        println!("new CA:      {}", describe(ca));
    }
    for ca in &retiring {
        println!("retiring CA: {}", describe(ca));
    }
    if args.dry_run {
        println!(
            "dry run: would write {} CAs into {place} and mark the old ones retiring \
             (annotations {}, {}); nothing was written",
            bundle.len(),
            rollover::RETIRING,
            rollover::STARTED
        );
        return Ok(());
    }
    if !added.is_empty() || !marks_in_place {
        let fingerprints: Vec<String> = retiring.iter().map(fingerprint).collect();
        let started = crate::trust::inspect::format_system_time(SystemTime::now());
        rollover::write(
            &client,
            plane.kind,
            (
                &args.namespace,
                &args.name,
                plane.resource_version.as_deref(),
            ),
            &plane.client_ca,
            (!added.is_empty()).then_some(bundle.as_slice()),
            &[
                (rollover::RETIRING, Some(fingerprints.join(","))),
                (rollover::STARTED, Some(started)),
                (rollover::UNUSED_SINCE, None),
                (rollover::PROPOSED, None),
            ],
        )
        .await
        .map_err(|e| format!("cannot write {place}: {e}"))?;
    }
    println!(
        "step 1: {what} trusts the old and the new CA ({place}); agents move to certificates from the new CA"
    );
    if args.wait.is_zero() {
        println!(
            "planelink's controller removes the old CA once no connected agent uses it and its \
             --ca-rotation-grace has passed"
        );
        return Ok(());
    }
    let mut progress = Progress::new(
        "waiting for the controller to remove the old CA".into(),
        args.wait,
    );
    let old: Vec<String> = retiring.iter().map(fingerprint).collect();
    while progress.elapsed() < args.wait {
        if let Ok(now) = read_plane(&client, kind, args).await
            && !now.annotations.contains_key(rollover::RETIRING)
            && now.trusted.iter().all(|ca| !old.contains(&fingerprint(ca)))
        {
            progress.done();
            let trusted: Vec<String> = now.trusted.iter().map(fingerprint).collect();
            println!(
                "step 2: the old CA is removed: {what} trusts only {}",
                trusted.join(", ")
            );
            return Ok(());
        }
        progress.tick();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    progress.done();
    Err(format!(
        "{what} still trusts the old CA after {}: planelink's controller removes it once no \
         connected agent uses a certificate from it and its --ca-rotation-grace has passed; check \
         that the agents run certificates from the new CA (planelink status) and that the \
         controller runs, then run this command again to keep waiting",
        humantime::format_duration(args.wait)
    ))
}

/// The gateway's CA (Secret cluster-gateway-ca), when readable: never a client CA.
async fn gateway_cas(client: &Client, namespace: &str) -> Vec<CertificateDer<'static>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt("cluster-gateway-ca")
        .await
        .ok()
        .flatten();
    secret
        .map(|s| secret_data(&s))
        .and_then(|data| data.get("ca.crt").cloned())
        .and_then(|pem| trust::parse_certificates(&pem).ok())
        .unwrap_or_default()
}
