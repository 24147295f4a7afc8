//! `register inspect` on each documented mistake: the verdict and the fix.

mod common;

use base64::Engine as _;
use common::*;
use planelink::trust::Usage;
use planelink::trust::issue::{self, LeafOptions};

fn inspect(dir: &std::path::Path, name: &str, text: &str, purpose: Option<&str>) -> (i32, String) {
    let path = dir.join(name);
    write(&path, text);
    let mut args = vec!["register", "inspect", path.to_str().unwrap()];
    if let Some(p) = purpose {
        args.extend_from_slice(&["--for", p]);
    }
    let out = planelink(&args);
    (code(&out), format!("{}{}", stdout(&out), stderr(&out)))
}

#[test]
fn the_agent_ca_is_a_good_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = agent_pki("p1");
    let (c, text) = inspect(dir.path(), "ca.crt", &ca.cert_pem, Some("client-ca"));
    assert_eq!(c, 0, "{text}");
    assert!(
        text.contains("CA (pathlen 0), self-signed") && text.contains("verdict: OK"),
        "{text}"
    );
    assert!(text.contains("sha256"), "{text}");
}

#[test]
fn tls_crt_registered_as_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leaf) = agent_pki("p1");
    let (c, text) = inspect(dir.path(), "tls.crt", &leaf.cert_pem, Some("client-ca"));
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("this is tls.crt, the leaf; register ca.crt, the CA that issued it"),
        "{text}"
    );
    assert!(text.contains("cluster-agent-tls"), "{text}");
}

#[test]
fn gateway_leaf_given_as_server_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leaf) = gateway_pki(&["gw"], &[]);
    let (c, text) = inspect(
        dir.path(),
        "server-ca.crt",
        &leaf.cert_pem,
        Some("server-ca"),
    );
    assert_eq!(c, 1, "{text}");
    assert!(text.contains("cluster-gateway-ca"), "{text}");
}

#[test]
fn expired_and_not_yet_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = gateway_pki(&["gw"], &[]);
    let old = server_leaf(&ca, &["gw"], &[], expired_window());
    let (c, text) = inspect(dir.path(), "old.crt", &old.cert_pem, Some("server-cert"));
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("EXPIRED") && text.contains("re-issue"),
        "{text}"
    );
    // Even without --for, an expired certificate is not usable.
    let (c, _) = inspect(dir.path(), "old2.crt", &old.cert_pem, None);
    assert_eq!(c, 1);

    let future = server_leaf(&ca, &["gw"], &[], future_window());
    let (c, text) = inspect(
        dir.path(),
        "future.crt",
        &future.cert_pem,
        Some("server-cert"),
    );
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("is not valid before") && text.contains("clock"),
        "{text}"
    );
}

#[test]
fn missing_extended_key_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = gateway_pki(&["gw"], &[]);
    let server_only = server_leaf(&ca, &["gw"], &[], issue::Window::days(10));
    let (c, text) = inspect(
        dir.path(),
        "server.crt",
        &server_only.cert_pem,
        Some("client-cert"),
    );
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("lacks the clientAuth extended key usage"),
        "{text}"
    );

    let client_only = issue::issue_leaf(
        &ca,
        &LeafOptions::client("a").usages(vec![Usage::ClientAuth]),
    )
    .unwrap();
    let (c, text) = inspect(
        dir.path(),
        "client.crt",
        &client_only.cert_pem,
        Some("server-cert"),
    );
    assert_eq!(c, 1, "{text}");
    assert!(text.contains("lacks the serverAuth"), "{text}");
}

#[test]
fn ip_in_dns_sans_is_flagged_on_a_server_cert() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = gateway_pki(&["gw"], &[]);
    let leaf = server_leaf(&ca, &["10.0.0.5"], &[], issue::Window::days(10));
    let (_, text) = inspect(dir.path(), "tls.crt", &leaf.cert_pem, Some("server-cert"));
    assert!(text.contains("10.0.0.5 is listed as a DNS name"), "{text}");
}

#[test]
fn configmap_placeholder_as_server_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (c, text) = inspect(
        dir.path(),
        "ca.crt",
        "placeholder: CA not yet available\n",
        Some("server-ca"),
    );
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("ConfigMap cluster-gateway-ca") && text.contains("Secret cluster-gateway-ca"),
        "{text}"
    );
}

#[test]
fn pasted_forms_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = agent_pki("p1");
    // base64 of the PEM, as the older DataPlane doc asks for.
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca.cert_pem.as_bytes());
    let (c, text) = inspect(dir.path(), "b64.txt", &b64, Some("client-ca"));
    assert_eq!(c, 0, "{text}");
    // Indented, from a YAML block scalar, with CRLF.
    let indented: String = ca
        .cert_pem
        .lines()
        .map(|l| format!("    {l}\r\n"))
        .collect();
    let (c, text) = inspect(dir.path(), "indented.txt", &indented, Some("client-ca"));
    assert_eq!(c, 0, "{text}");
}

#[test]
fn ca_given_as_client_cert_and_key_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf) = agent_pki("p1");
    let (c, text) = inspect(dir.path(), "ca.crt", &ca.cert_pem, Some("client-cert"));
    assert_eq!(c, 1);
    assert!(
        text.contains("this is ca.crt, a CA; give tls.crt"),
        "{text}"
    );
    let (_, other) = agent_pki("p2");
    let mixed = format!("{}{}", leaf.cert_pem, other.key_pem());
    let (c, text) = inspect(dir.path(), "mixed.pem", &mixed, Some("client-cert"));
    assert_eq!(c, 1);
    assert!(
        text.contains("does not belong to the certificate"),
        "{text}"
    );
}

#[test]
fn garbage_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (c, text) = inspect(dir.path(), "junk", "hello", None);
    assert_eq!(c, 1);
    assert!(text.contains("-----BEGIN CERTIFICATE-----"), "{text}");

    let (ca, _) = agent_pki("p1");
    let mut child = std::process::Command::new(binary())
        .args(["register", "inspect", "-", "--for", "client-ca"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ca.cert_pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

#[test]
fn gateway_ca_registered_as_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (gw_ca, _) = gateway_pki(&["gw"], &[]);
    let (agent_ca, _) = agent_pki("p1");
    write(&dir.path().join("gateway-ca.crt"), &gw_ca.cert_pem);
    let inspect_against_gateway = |registered: &str| {
        let path = dir.path().join("registered.crt");
        write(&path, registered);
        planelink(&[
            "register",
            "inspect",
            path.to_str().unwrap(),
            "--for",
            "client-ca",
            "--gateway-ca",
            dir.path().join("gateway-ca.crt").to_str().unwrap(),
        ])
    };
    let out = inspect_against_gateway(&gw_ca.cert_pem);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("this is the gateway's server CA"),
        "{}",
        stdout(&out)
    );
    let out = inspect_against_gateway(&agent_ca.cert_pem);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}
