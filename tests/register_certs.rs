//! `register certs` writes what cert-manager would, and `openssl verify` agrees.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn openssl_verify(dir: &Path, purpose: &str) -> (bool, String) {
    let openssl = require_tool("openssl");
    let out = output_within(
        Command::new(openssl)
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(dir.join("ca.crt"))
            .arg(dir.join("tls.crt")),
        COMMAND_LIMIT,
    );
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn gateway_certs_verify_with_openssl_for_server_use_only() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("gw");
    let out = planelink(&[
        "register",
        "certs",
        "gateway",
        "--out",
        out_dir.to_str().unwrap(),
        "--dns-name",
        "cluster-gateway.openchoreo-control-plane.svc",
        "--ip-address",
        "127.0.0.1",
        "--days",
        "30",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for name in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(out_dir.join(name).is_file(), "{name} missing");
    }
    assert_eq!(mode(&out_dir.join("tls.key")), 0o600);
    assert_eq!(mode(&out_dir.join("ca.key")), 0o600);

    let (ok, text) = openssl_verify(&out_dir, "sslserver");
    assert!(ok, "openssl verify sslserver: {text}");
    let (ok, text) = openssl_verify(&out_dir, "sslclient");
    assert!(
        !ok,
        "a serving certificate must not pass as a client certificate: {text}"
    );

    let text = output_within(
        Command::new(require_tool("openssl"))
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(out_dir.join("tls.crt")),
        COMMAND_LIMIT,
    );
    let sans = stdout(&text);
    assert!(
        sans.contains("DNS:cluster-gateway.openchoreo-control-plane.svc"),
        "{sans}"
    );
    assert!(sans.contains("IP Address:127.0.0.1"), "{sans}");
}

#[test]
fn gateway_certs_reuse_the_ca_and_move_ips_out_of_dns_sans() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path();
    let issue = |extra: &[&str]| {
        let mut args = vec![
            "register",
            "certs",
            "gateway",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        planelink(&args)
    };
    let first = issue(&["--dns-name", "gw.example.com"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let ca_before = std::fs::read(out_dir.join("ca.crt")).unwrap();
    let second = issue(&["--dns-name", "gw.example.com", "--dns-name", "10.0.0.5"]);
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert!(stdout(&second).contains("reused"), "{}", stdout(&second));
    assert!(
        stderr(&second).contains("IP address"),
        "{}",
        stderr(&second)
    );
    assert_eq!(
        std::fs::read(out_dir.join("ca.crt")).unwrap(),
        ca_before,
        "the CA must be reused"
    );
    let (ok, text) = openssl_verify(out_dir, "sslserver");
    assert!(ok, "{text}");
    let inspect = planelink(&[
        "register",
        "inspect",
        out_dir.join("tls.crt").to_str().unwrap(),
    ]);
    assert!(
        stdout(&inspect).contains("IP SANs      10.0.0.5"),
        "{}",
        stdout(&inspect)
    );
}

#[test]
fn gateway_certs_from_a_separate_ca_dir() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let first = planelink(&[
        "register",
        "certs",
        "gateway",
        "--out",
        ca_dir.to_str().unwrap(),
        "--dns-name",
        "a",
    ]);
    assert_eq!(code(&first), 0);
    let leaf_dir = dir.path().join("leaf");
    let out = planelink(&[
        "register",
        "certs",
        "gateway",
        "--out",
        leaf_dir.to_str().unwrap(),
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--dns-name",
        "b",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !leaf_dir.join("ca.key").exists(),
        "the CA key stays in --ca-dir"
    );
    let (ok, text) = openssl_verify(&leaf_dir, "sslserver");
    assert!(ok, "{text}");

    let empty = dir.path().join("empty");
    let out = planelink(&[
        "register",
        "certs",
        "gateway",
        "--out",
        "x",
        "--ca-dir",
        empty.to_str().unwrap(),
        "--dns-name",
        "b",
    ]);
    assert_eq!(code(&out), 64);
    assert!(stderr(&out).contains("holds no CA"), "{}", stderr(&out));
}

#[test]
fn gateway_certs_need_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = planelink(&[
        "register",
        "certs",
        "gateway",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 64);
    assert!(stderr(&out).contains("--dns-name"), "{}", stderr(&out));
}

#[test]
fn agent_certs_verify_with_openssl_for_client_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = planelink(&[
        "register",
        "certs",
        "agent",
        "--out",
        dir.path().to_str().unwrap(),
        "--plane-id",
        "production-us-east",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("register ca.crt (not tls.crt)"),
        "{}",
        stdout(&out)
    );
    let (ok, text) = openssl_verify(dir.path(), "sslclient");
    assert!(ok, "openssl verify sslclient: {text}");
    assert_eq!(mode(&dir.path().join("tls.key")), 0o600);

    // The agent's CA is what a plane CR registers; the leaf is not.
    let ok = planelink(&[
        "register",
        "inspect",
        dir.path().join("ca.crt").to_str().unwrap(),
        "--for",
        "client-ca",
    ]);
    assert_eq!(code(&ok), 0, "{}", stdout(&ok));
    let key_as_cert = planelink(&[
        "register",
        "inspect",
        dir.path().join("tls.key").to_str().unwrap(),
        "--for",
        "client-cert",
    ]);
    assert_eq!(code(&key_as_cert), 1);
}
