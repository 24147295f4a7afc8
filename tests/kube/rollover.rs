//! An agent's CA rolled over while callers keep sending requests through the gateway to
//! the remote API server: the agent's Secret is swapped the way the kubelet swaps a
//! mounted Secret, to a new CA and a certificate from it. Not one request may fail, the
//! plane ends trusting only the new CA, and each step is an Event.

use std::path::Path;

use planelink::planes::rollover;
use planelink::trust::issue::{self, CaOptions, Issued, LeafOptions};

use super::*;
use crate::common::{CallerThread, mount_secret};

/// Mounts a new CA and a client certificate from it into `dir` (Secret version
/// `version`); returns the CA.
fn mount_new_identity(dir: &Path, version: u32) -> Issued {
    let ca = issue::new_ca(&CaOptions::agent("rolling")).unwrap();
    let leaf = issue::issue_leaf(&ca, &LeafOptions::client("rolling")).unwrap();
    mount_secret(
        dir,
        version,
        &[
            ("ca.crt", ca.cert_pem.as_str()),
            ("tls.crt", leaf.cert_pem.as_str()),
            ("tls.key", leaf.key_pem()),
        ],
    );
    ca
}

/// The PEM bundle of the DataPlane's inline clientCA, or of the Secret key it references.
fn trusted(c: &Clusters, ns: &str, secret: Option<&str>) -> Vec<String> {
    let pem = match secret {
        None => {
            let dp = c.get(&c.control, ns, "dataplane/dp").expect("DataPlane dp");
            dp["spec"]["clusterAgent"]["clientCA"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
        Some(name) => {
            let secret = c
                .get(&c.control, ns, &format!("secret/{name}"))
                .expect("Secret");
            let encoded = secret["data"]["ca.crt"].as_str().unwrap_or_default();
            String::from_utf8(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
                    .unwrap(),
            )
            .unwrap()
        }
    };
    planelink::trust::parse_certificates(pem.as_bytes())
        .unwrap_or_default()
        .iter()
        .map(planelink::trust::inspect::fingerprint)
        .collect()
}

fn fingerprint(pem: &str) -> String {
    planelink::trust::inspect::fingerprint(
        &planelink::trust::parse_certificates(pem.as_bytes()).unwrap()[0],
    )
}

/// The controller (grace period 3 s) and the agent `rolling` of DataPlane `dp`, connected,
/// and callers sending requests through the gateway to the remote API server.
fn rolling_plane_under_load(
    c: &Clusters,
    pki: &Pki,
    ns: &str,
    dir: &Path,
) -> (Process, Process, CallerThread) {
    let (controller, ports, agent, plane_id) =
        controller_and_agent(c, pki, ns, "rolling", &["--ca-rotation-grace=3s"]);
    await_condition(c, ns, "dataplane/dp", "Connected", "True", "AgentConnected");
    (controller, agent, proxy_callers(dir, &ports, &plane_id, ns))
}

/// Waits until an Event with `reason` was recorded in `ns`; its message.
fn event(c: &Clusters, ns: &str, reason: &str) -> String {
    eventually(&format!("a {reason} Event"), WAIT, || {
        let events = c.ok(
            &c.control,
            &[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                &format!("reason={reason}"),
                "-o",
                "jsonpath={.items[*].note}{.items[*].message}",
            ],
        );
        if events.trim().is_empty() {
            Err("none yet".into())
        } else {
            Ok(events)
        }
    })
}

/// Waits until the plane trusts exactly the CAs `fingerprints`.
fn await_trusted(
    c: &Clusters,
    ns: &str,
    secret: Option<&str>,
    fingerprints: &[String],
    what: &str,
) {
    eventually(what, Duration::from_secs(60), || {
        let now = trusted(c, ns, secret);
        if now == fingerprints {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
}

/// A plane opted in with `planelink.dev/ca-rotation: agent`: the agent proposes its new
/// CA over its trusted tunnel, the controller trusts old and new, the agent's tunnel moves
/// to the new certificate, and the old CA is removed once unused and past the grace period.
#[test]
fn agent_driven_ca_rollover_loses_no_request() {
    let c = clusters();
    let ns = c.namespace("rollover");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mounted = dir.path().join("rolling");
    std::fs::create_dir_all(&mounted).unwrap();
    let old = mount_new_identity(&mounted, 1);
    c.apply(
        &c.control,
        &dataplane(&ns, "dp", ValueFrom::inline(&old.cert_pem)),
    );
    c.ok(
        &c.control,
        &[
            "annotate",
            "-n",
            &ns,
            "dataplane/dp",
            &format!("{}={}", rollover::OPT_IN, rollover::BY_AGENT),
        ],
    );
    let (_controller, _agent, callers) = rolling_plane_under_load(c, &pki, &ns, dir.path());
    let new = mount_new_identity(&mounted, 2);
    let (old_fp, new_fp) = (fingerprint(&old.cert_pem), fingerprint(&new.cert_pem));
    let extended = event(c, &ns, "ClientCAExtended");
    assert!(
        extended.contains(&format!("next to the current CA ({old_fp})")),
        "{extended}"
    );
    await_trusted(
        c,
        &ns,
        None,
        std::slice::from_ref(&new_fp),
        "the DataPlane trusts only the new CA",
    );
    let retired = event(c, &ns, "ClientCARetired");
    assert!(
        retired.contains(&format!(
            "the old CA ({old_fp}) is used by no connected agent: clientCA now trusts only {new_fp}"
        )),
        "{retired}"
    );
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Connected",
        "True",
        "AgentConnected",
    );
    let dp = c.get(&c.control, &ns, "dataplane/dp").unwrap();
    let annotations = &dp["metadata"]["annotations"];
    for mark in [
        rollover::RETIRING,
        rollover::STARTED,
        rollover::UNUSED_SINCE,
        rollover::PROPOSED,
    ] {
        assert!(
            annotations.get(mark).is_none(),
            "{mark} left on {annotations}"
        );
    }
    callers.finish_without_failures(100);
}

/// A plane that does not opt in, its clientCA in a Secret: the agent's proposal becomes
/// the condition `ClientCARotationPending` naming the command; running it (after a dry
/// run that writes nothing) completes the rollover, and no request fails meanwhile.
#[test]
fn operator_rotation_from_the_named_command_loses_no_request() {
    let c = clusters();
    let ns = c.namespace("rotate");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mounted = dir.path().join("rolling");
    std::fs::create_dir_all(&mounted).unwrap();
    let old = mount_new_identity(&mounted, 1);
    c.apply(
        &c.control,
        &secret(&ns, "agent-ca", "ca.crt", &old.cert_pem),
    );
    c.apply(
        &c.control,
        &dataplane(
            &ns,
            "dp",
            ValueFrom::from_secret(None, "agent-ca", "ca.crt"),
        ),
    );
    let (_controller, _agent, callers) = rolling_plane_under_load(c, &pki, &ns, dir.path());

    let new = mount_new_identity(&mounted, 2);
    let (old_fp, new_fp) = (fingerprint(&old.cert_pem), fingerprint(&new.cert_pem));
    let message = await_condition(
        c,
        &ns,
        "dataplane/dp",
        "CertificatesCurrent",
        "False",
        "ClientCARotationPending",
    );
    let command = format!("planelink register rotate dataplane dp --namespace {ns}");
    assert!(
        message.contains(&format!(
            "proposes the CA {new_fp} that issued its renewed certificate"
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("roll it over with `{command}`")),
        "{message}"
    );
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = command.split(' ').skip(1).map(String::from).collect();
        args.push(format!(
            "--kubeconfig={}",
            c.kubeconfig_for(&c.control).display()
        ));
        args.push(format!("--control-plane-namespace={ns}"));
        args.extend(extra.iter().map(|s| s.to_string()));
        crate::common::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_planelink"))
                .args(&args)
                .env_remove("KUBECONFIG"),
            crate::common::COMMAND_LIMIT,
        )
    };
    let run_ok = |extra: &[&str]| {
        let out = run(extra);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    // planelink check names the same command.
    let check = crate::common::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_planelink"))
            .args([
                "check",
                "dataplane/dp",
                "-n",
                &ns,
                "--control-plane-namespace",
                &ns,
            ])
            .arg(format!(
                "--kubeconfig={}",
                c.kubeconfig_for(&c.control).display()
            ))
            .env_remove("KUBECONFIG")
            .env("NO_COLOR", "1"),
        crate::common::COMMAND_LIMIT,
    );
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains(&format!(
            "  ⚠ an agent proposes a new CA that this plane does not trust yet (its certificate was \
             renewed)\n      fix: roll the client CA over: {command}\n"
        )),
        "{report}"
    );
    let dry_out = run_ok(&["--dry-run"]);
    assert!(
        dry_out.ends_with(&format!(
            "dry run: would write 2 CAs into key ca.crt of Secret {ns}/agent-ca and mark the old ones \
             retiring (annotations {}, {}); nothing was written\n",
            rollover::RETIRING,
            rollover::STARTED
        )),
        "{dry_out}"
    );
    assert_eq!(
        trusted(c, &ns, Some("agent-ca")),
        vec![old_fp.clone()],
        "the dry run wrote"
    );

    // Without waiting: the overlap is written and the command returns.
    let out = run_ok(&["--wait=0s"]);
    let lines: Vec<&str> = out.lines().collect();
    let subject = "O=planelink, CN=planelink cluster-agent CA rolling";
    let retiring_line = format!("retiring CA: {subject} (SHA-256 {old_fp}, expires ");
    assert!(
        lines[0].starts_with(&format!(
            "new CA:      {subject} (SHA-256 {new_fp}, expires "
        )),
        "{out}"
    );
    assert!(lines[1].starts_with(&retiring_line), "{out}");
    let step1 = format!(
        "step 1: DataPlane {ns}/dp trusts the old and the new CA (key ca.crt of Secret \
         {ns}/agent-ca); agents move to certificates from the new CA"
    );
    assert_eq!(
        &lines[2..],
        [
            step1.clone(),
            "planelink's controller removes the old CA once no connected agent uses it and its \
             --ca-rotation-grace has passed"
                .to_string(),
        ],
        "{out}"
    );
    // Run again: it takes the rollover up where it is and waits for its end.
    let out = run_ok(&["--wait=60s"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(&retiring_line), "{out}");
    assert_eq!(
        &lines[1..],
        [
            step1,
            format!("step 2: the old CA is removed: DataPlane {ns}/dp trusts only {new_fp}"),
        ],
        "{out}"
    );
    assert_eq!(trusted(c, &ns, Some("agent-ca")), vec![new_fp.clone()]);
    event(c, &ns, "ClientCARetired");
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "CertificatesCurrent",
        "True",
        "CertificatesCurrent",
    );
    await_condition(
        c,
        &ns,
        "dataplane/dp",
        "Connected",
        "True",
        "AgentConnected",
    );
    callers.finish_without_failures(100);
}
