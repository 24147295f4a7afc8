//! `planelink register certs … --secret`: certificates kept in Kubernetes Secrets without
//! cert-manager, on a real API server: created once, kept on a rerun, reissued when they
//! no longer fit, and another tool's Secret never overwritten.

use super::*;

fn certs(c: &Clusters, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_planelink"));
    cmd.args(["register", "certs"])
        .args(args)
        .arg(format!("--kubeconfig={}", c.kubeconfig.display()))
        .arg(format!("--context={}", c.control))
        .env("NO_COLOR", "1");
    crate::common::output_within(&mut cmd, crate::common::COMMAND_LIMIT)
}

/// `register certs ARGS` that must succeed: its output lines.
fn certs_ok(c: &Clusters, args: &[&str]) -> Vec<String> {
    let out = certs(c, args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The decoded value of `key` in a Secret (`data`) or ConfigMap (`data`, plain).
fn value(object: &serde_json::Value, key: &str) -> String {
    use base64::Engine as _;
    let raw = object["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {object}"));
    if object["kind"] == "Secret" {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap(),
        )
        .unwrap()
    } else {
        raw.to_string()
    }
}

fn version(object: &serde_json::Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Whether `line` starts with `prefix` (the rest holds dates and fingerprints).
fn starts(lines: &[String], index: usize, prefix: &str) {
    let line = lines
        .get(index)
        .unwrap_or_else(|| panic!("no line {index} in {lines:?}"));
    assert!(
        line.starts_with(prefix),
        "line {index}: {line:?}, expected {prefix:?}…"
    );
}

#[test]
fn gateway_secret_is_created_kept_and_reissued_when_it_no_longer_fits() {
    let c = clusters();
    let ns = c.namespace("certs");
    let tls = format!("{ns}/cluster-gateway-tls");
    let map = format!("{ns}/cluster-gateway-ca");
    let svc = format!("cluster-gateway.{ns}.svc");
    let first_run = [
        "gateway",
        "--secret",
        &tls,
        "--ca-configmap",
        &map,
        "--dns-name",
        &svc,
    ];
    let printed = certs_ok(c, &first_run);
    starts(
        &printed,
        0,
        &format!(
            "CA        Secret {ns}/cluster-gateway-ca: created (O=planelink, CN=planelink cluster-gateway CA, valid until "
        ),
    );
    starts(
        &printed,
        2,
        &format!(
            "leaf      Secret {tls}: issued, because there was none (O=planelink, CN=cluster-gateway, valid until "
        ),
    );
    assert_eq!(
        printed[3],
        format!("CA        ConfigMap {map}: created with ca.crt")
    );

    let secret = c
        .get(&c.control, &ns, "secret/cluster-gateway-tls")
        .unwrap();
    let ca_secret = c.get(&c.control, &ns, "secret/cluster-gateway-ca").unwrap();
    let config_map = c
        .get(&c.control, &ns, "configmap/cluster-gateway-ca")
        .unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "planelink"
    );
    let ca_pem = value(&ca_secret, "tls.crt");
    assert_eq!(value(&secret, "ca.crt"), ca_pem);
    assert_eq!(value(&config_map, "ca.crt"), ca_pem);
    let ca = planelink::trust::parse_certificates(ca_pem.as_bytes()).unwrap();
    let leaf = planelink::trust::parse_certificates(value(&secret, "tls.crt").as_bytes()).unwrap();
    planelink::trust::verify_chain(
        &leaf,
        &ca,
        planelink::trust::Usage::ServerAuth,
        SystemTime::now(),
    )
    .expect("the issued certificate verifies against the CA");
    planelink::trust::hostname::check_host(&leaf[0], &svc).expect("covers the Service name");

    // A rerun changes nothing.
    let printed = certs_ok(c, &first_run);
    starts(
        &printed,
        0,
        &format!("CA        Secret {ns}/cluster-gateway-ca: reused ("),
    );
    starts(
        &printed,
        1,
        &format!("leaf      Secret {tls}: kept (O=planelink, CN=cluster-gateway, valid until "),
    );
    assert_eq!(
        printed[2],
        format!("CA        ConfigMap {map}: ca.crt already current")
    );
    let unchanged = c
        .get(&c.control, &ns, "secret/cluster-gateway-tls")
        .unwrap();
    assert_eq!(version(&unchanged), version(&secret));
    assert_eq!(
        version(
            &c.get(&c.control, &ns, "configmap/cluster-gateway-ca")
                .unwrap()
        ),
        version(&config_map)
    );

    // A name the certificate does not cover: reissued by the same CA.
    let public = "gateway.example.test";
    let wider = certs_ok(
        c,
        &[
            "gateway",
            "--secret",
            &tls,
            "--dns-name",
            &svc,
            "--dns-name",
            public,
        ],
    );
    starts(
        &wider,
        1,
        &format!("leaf      Secret {tls}: issued, because it does not cover {public} ("),
    );
    let reissued = c
        .get(&c.control, &ns, "secret/cluster-gateway-tls")
        .unwrap();
    let leaf =
        planelink::trust::parse_certificates(value(&reissued, "tls.crt").as_bytes()).unwrap();
    planelink::trust::verify_chain(
        &leaf,
        &ca,
        planelink::trust::Usage::ServerAuth,
        SystemTime::now(),
    )
    .expect("signed by the same CA");
    planelink::trust::hostname::check_host(&leaf[0], public).expect("covers the new name");
    assert_eq!(
        version(&c.get(&c.control, &ns, "secret/cluster-gateway-ca").unwrap()),
        version(&ca_secret),
        "the CA Secret is never rewritten"
    );

    // Expiring within --renew-before: reissued (here as a 30-day certificate); a 30-day
    // certificate is kept with the default 15 days, and reissued with 30.
    let run = |extra: &[&str]| {
        let mut args = vec![
            "gateway",
            "--secret",
            &tls,
            "--dns-name",
            &svc,
            "--dns-name",
            public,
            "--days",
            "30",
        ];
        args.extend(extra);
        certs_ok(c, &args)
    };
    let printed = run(&["--renew-before", "9000h"]);
    starts(
        &printed,
        1,
        &format!("leaf      Secret {tls}: issued, because it expires on "),
    );
    starts(&run(&[]), 1, &format!("leaf      Secret {tls}: kept ("));
    let printed = run(&["--renew-before", "720h"]);
    starts(
        &printed,
        1,
        &format!("leaf      Secret {tls}: issued, because it expires on "),
    );
    assert!(
        printed[1].contains(", within --renew-before 30days ("),
        "{printed:?}"
    );
}

#[test]
fn another_tools_secret_is_never_overwritten() {
    let c = clusters();
    let ns = c.namespace("foreign");
    c.apply(
        &c.control,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cluster-gateway-tls\n  namespace: {ns}\n  \
             annotations: {{cert-manager.io/certificate-name: cluster-gateway-tls}}\n\
             type: kubernetes.io/tls\nstringData: {{tls.crt: from-cert-manager, tls.key: from-cert-manager}}\n"
        ),
    );
    let before = c
        .get(&c.control, &ns, "secret/cluster-gateway-tls")
        .unwrap();
    let out = certs(
        c,
        &[
            "gateway",
            "--secret",
            &format!("{ns}/cluster-gateway-tls"),
            "--dns-name",
            "gw.example.test",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: Secret {ns}/cluster-gateway-tls exists and planelink did not write it (cert-manager's \
             Certificate cluster-gateway-tls writes it); planelink never overwrites another tool's Secret. \
             Keep that tool (the cert-manager overlay), or delete the Secret (kubectl delete secret -n {ns} \
             cluster-gateway-tls) and run this again\n"
        )
    );
    let after = c
        .get(&c.control, &ns, "secret/cluster-gateway-tls")
        .unwrap();
    assert_eq!(version(&after), version(&before));

    // A leaf given as the CA Secret is refused before anything is written.
    let leaf_as_ca = certs(
        c,
        &[
            "agent",
            "--plane-id=p1",
            "--secret",
            &format!("{ns}/cluster-agent-tls"),
            "--ca-secret",
            &format!("{ns}/cluster-gateway-tls"),
        ],
    );
    assert_eq!(leaf_as_ca.status.code(), Some(1), "{leaf_as_ca:?}");
    let err = String::from_utf8_lossy(&leaf_as_ca.stderr);
    assert!(
        err.starts_with(&format!(
            "error: Secret {ns}/cluster-gateway-tls: tls.crt: "
        )),
        "{err}"
    );
    assert!(c.get(&c.control, &ns, "secret/cluster-agent-tls").is_none());
}

#[test]
fn agent_and_caller_secrets_follow_their_names() {
    let c = clusters();
    let ns = c.namespace("agentcerts");
    let tls = format!("{ns}/cluster-agent-tls");
    let printed = certs_ok(c, &["agent", "--plane-id=p1", "--secret", &tls]);
    starts(
        &printed,
        0,
        &format!(
            "CA        Secret {ns}/cluster-agent-ca: created (O=planelink, CN=planelink cluster-agent CA p1, "
        ),
    );
    starts(
        &printed,
        2,
        &format!(
            "leaf      Secret {tls}: issued, because there was none (O=planelink, CN=cluster-agent p1, "
        ),
    );
    let secret = c.get(&c.control, &ns, "secret/cluster-agent-tls").unwrap();
    let ca = planelink::trust::parse_certificates(value(&secret, "ca.crt").as_bytes()).unwrap();
    let leaf = planelink::trust::parse_certificates(value(&secret, "tls.crt").as_bytes()).unwrap();
    planelink::trust::verify_chain(
        &leaf,
        &ca,
        planelink::trust::Usage::ClientAuth,
        SystemTime::now(),
    )
    .expect("the agent certificate verifies against its own CA as a client certificate");

    let renamed = certs_ok(c, &["agent", "--plane-id=p2", "--secret", &tls]);
    starts(
        &renamed,
        1,
        &format!(
            "leaf      Secret {tls}: issued, because its subject is O=planelink, CN=cluster-agent p1, not CN=cluster-agent p2 ("
        ),
    );

    let caller = format!("{ns}/controller-manager-cluster-gateway-client-tls");
    let out = certs_ok(
        c,
        &[
            "caller",
            "--secret",
            &caller,
            "--common-name",
            "planelink-controller",
        ],
    );
    starts(
        &out,
        0,
        &format!(
            "CA        Secret {ns}/cluster-gateway-internal-ca: created (O=planelink, CN=planelink cluster-gateway internal CA, "
        ),
    );
}

/// Whether some line starts with `prefix`.
fn has(lines: &[String], prefix: &str) {
    assert!(
        lines.iter().any(|l| l.starts_with(prefix)),
        "no line starts with {prefix:?}: {lines:?}"
    );
}

/// The DER certificates of a PEM bundle.
fn ders(pem: &str) -> Vec<Vec<u8>> {
    planelink::trust::parse_certificates(pem.as_bytes())
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

/// A gateway CA rollover with `--also-publish-ca`: the ConfigMap trusts the old and the
/// new CA while the serving certificate still comes from the old one; the switch to the
/// new CA reissues it with both still published; a last run publishes the new CA alone.
#[test]
fn gateway_ca_rollover_publishes_both_cas_during_the_overlap() {
    let c = clusters();
    let ns = c.namespace("carollover");
    let tls = format!("{ns}/cluster-gateway-tls");
    let map = format!("{ns}/cluster-gateway-ca");
    let next = format!("{ns}/cluster-gateway-ca-next");
    let svc = format!("cluster-gateway.{ns}.svc");
    let base = [
        "gateway",
        "--secret",
        tls.as_str(),
        "--ca-configmap",
        map.as_str(),
        "--dns-name",
        svc.as_str(),
    ];
    certs_ok(c, &base);
    let old_pem = value(
        &c.get(&c.control, &ns, "secret/cluster-gateway-ca").unwrap(),
        "tls.crt",
    );
    // The new CA, issued into files and stored as cert-manager stores a CA.
    let dir = tempfile::tempdir().unwrap();
    let out = crate::common::output_within(
        Command::new(env!("CARGO_BIN_EXE_planelink"))
            .args([
                "register",
                "certs",
                "gateway",
                "--dns-name",
                "localhost",
                "--out",
            ])
            .arg(dir.path()),
        crate::common::COMMAND_LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let new_file = dir.path().join("ca.crt");
    let new_pem = std::fs::read_to_string(&new_file).unwrap();
    c.ok(
        &c.control,
        &[
            "create",
            "secret",
            "tls",
            "cluster-gateway-ca-next",
            "-n",
            &ns,
            &format!("--cert={}", new_file.display()),
            &format!("--key={}", dir.path().join("ca.key").display()),
        ],
    );
    let published = || {
        value(
            &c.get(&c.control, &ns, "configmap/cluster-gateway-ca")
                .unwrap(),
            "ca.crt",
        )
    };
    let serving = || {
        ders(&value(
            &c.get(&c.control, &ns, "secret/cluster-gateway-tls")
                .unwrap(),
            "tls.crt",
        ))
    };
    let before = serving();

    // Step 1: the new CA published next to the old; the serving certificate kept.
    let mut args = base.to_vec();
    let new_arg = new_file.display().to_string();
    args.extend(["--also-publish-ca", new_arg.as_str()]);
    let printed = certs_ok(c, &args);
    has(&printed, &format!("leaf      Secret {tls}: kept ("));
    has(
        &printed,
        &format!("CA        ConfigMap {map}: ca.crt updated"),
    );
    assert_eq!(
        ders(&published()),
        [ders(&old_pem), ders(&new_pem)].concat()
    );
    assert_eq!(serving(), before);

    // Step 2: the gateway's CA switched; the old one still published.
    let old_file = dir.path().join("old.crt");
    std::fs::write(&old_file, &old_pem).unwrap();
    let old_arg = old_file.display().to_string();
    let mut args = base.to_vec();
    args.extend([
        "--ca-secret",
        next.as_str(),
        "--also-publish-ca",
        old_arg.as_str(),
    ]);
    let printed = certs_ok(c, &args);
    has(
        &printed,
        &format!("leaf      Secret {tls}: issued, because "),
    );
    assert_eq!(
        ders(&published()),
        [ders(&new_pem), ders(&old_pem)].concat()
    );
    let leaf: Vec<rustls_pki_types::CertificateDer<'static>> =
        serving().into_iter().map(Into::into).collect();
    let new_ca: Vec<rustls_pki_types::CertificateDer<'static>> =
        ders(&new_pem).into_iter().map(Into::into).collect();
    planelink::trust::verify_chain(
        &leaf,
        &new_ca,
        planelink::trust::Usage::ServerAuth,
        SystemTime::now(),
    )
    .expect("the serving certificate comes from the new CA");

    // Step 3: the overlap ends.
    let mut args = base.to_vec();
    args.extend(["--ca-secret", next.as_str()]);
    certs_ok(c, &args);
    assert_eq!(ders(&published()), ders(&new_pem));
}
