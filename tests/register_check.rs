//! `register check` against real TLS servers: rustls servers run in the test, and
//! `openssl s_server` as an independent implementation. Each failure mode of the
//! reference troubleshooting section gets its diagnosis and exit 1.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use planelink::planes::PlaneType;
use planelink::planes::crd::{PlaneBuilder, ValueFrom};
use planelink::planes::manifest::to_yaml;
use planelink::trust::issue::{Issued, Window};
use planelink::trust::{self};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A TLS server on 127.0.0.1 answering the WebSocket upgrade with 101, optionally
/// requiring client certificates that chain to `client_ca`.
struct Server {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn serve(leaf: &Issued, client_ca: Option<&Issued>) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let chain = trust::parse_certificates(leaf.cert_pem.as_bytes()).unwrap();
    let key = trust::parse_private_key(leaf.key_pem().as_bytes())
        .unwrap()
        .into_der();
    let provider = trust::crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in trust::parse_certificates(ca.cert_pem.as_bytes()).unwrap() {
                roots.add(c).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Server {
        addr,
        _runtime: runtime,
    }
}

fn check(dir: &Path, url: &str, server_ca: &str, client: Option<&Issued>) -> (i32, String) {
    let ca_path = dir.join("server-ca.crt");
    write(&ca_path, server_ca);
    let mut args: Vec<String> = vec![
        "register".into(),
        "check".into(),
        "--server-url".into(),
        url.into(),
        "--server-ca".into(),
        ca_path.display().to_string(),
        "--timeout".into(),
        "5s".into(),
    ];
    if let Some(client) = client {
        write(&dir.join("client.crt"), &client.cert_pem);
        write_key(&dir.join("client.key"), client);
        args.extend([
            "--client-cert".into(),
            dir.join("client.crt").display().to_string(),
            "--client-key".into(),
            dir.join("client.key").display().to_string(),
            "--plane-id".into(),
            "p1".into(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = planelink(&args);
    (code(&out), format!("{}{}", stdout(&out), stderr(&out)))
}

/// Serves `leaf` (no client auth) and checks it by IP with `server_ca` as the trusted CA.
fn check_by_ip(leaf: &Issued, server_ca: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(leaf, None);
    let url = format!("wss://127.0.0.1:{}/ws", server.addr.port());
    check(dir.path(), &url, server_ca, None)
}

#[test]
fn good_gateway_by_ip_and_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf) = gateway_pki(&["localhost"], &["127.0.0.1"]);
    let server = serve(&leaf, None);
    let port = server.addr.port();
    let (c, text) = check(
        dir.path(),
        &format!("wss://127.0.0.1:{port}/ws"),
        &ca.cert_pem,
        None,
    );
    assert_eq!(c, 0, "{text}");
    assert!(text.contains("verdict: OK"), "{text}");
    let (c, text) = check(
        dir.path(),
        &format!("wss://localhost:{port}/ws"),
        &ca.cert_pem,
        None,
    );
    assert_eq!(c, 0, "{text}");
}

#[test]
fn wrong_ca_file() {
    let (_, leaf) = gateway_pki(&["localhost"], &["127.0.0.1"]);
    let (other_ca, _) = gateway_pki(&["x"], &[]);
    let (c, text) = check_by_ip(&leaf, &other_ca.cert_pem);
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("not the trusted CA") && text.contains("Secret cluster-gateway-ca"),
        "{text}"
    );
}

#[test]
fn placeholder_configmap_instead_of_secret() {
    let (_, leaf) = gateway_pki(&["localhost"], &["127.0.0.1"]);
    let (c, text) = check_by_ip(&leaf, "# placeholder, replaced once the CA is ready\n");
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("placeholder") && text.contains("Secret cluster-gateway-ca"),
        "{text}"
    );
}

#[test]
fn gateway_leaf_given_as_server_ca() {
    let (_, leaf) = gateway_pki(&["localhost"], &["127.0.0.1"]);
    let (c, text) = check_by_ip(&leaf, &leaf.cert_pem);
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("tls.crt") && text.contains("ca.crt"),
        "{text}"
    );
}

#[test]
fn ip_missing_from_sans() {
    let (ca, leaf) = gateway_pki(&["cluster-gateway.openchoreo-control-plane.svc"], &[]);
    let (c, text) = check_by_ip(&leaf, &ca.cert_pem);
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains(
            "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs"
        ),
        "{text}"
    );
}

#[test]
fn ip_only_in_dns_sans() {
    let (ca, _) = gateway_pki(&["x"], &[]);
    let leaf = server_leaf(&ca, &["127.0.0.1"], &[], Window::days(10));
    let (c, text) = check_by_ip(&leaf, &ca.cert_pem);
    assert_eq!(c, 1, "{text}");
    assert!(text.contains("listed as a DNS name"), "{text}");
    assert!(text.contains("ipAddresses"), "{text}");
}

#[test]
fn host_not_in_sans() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf) = gateway_pki(&["cluster-gateway.openchoreo-control-plane.svc"], &[]);
    let server = serve(&leaf, None);
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (c, text) = check(dir.path(), &url, &ca.cert_pem, None);
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("x509: certificate is valid for cluster-gateway.openchoreo-control-plane.svc, not localhost"),
        "{text}"
    );
    assert!(text.contains("dnsNames"), "{text}");
}

#[test]
fn expired_server_certificate() {
    let (ca, _) = gateway_pki(&["x"], &[]);
    let leaf = server_leaf(&ca, &["localhost"], &["127.0.0.1"], expired_window());
    let (c, text) = check_by_ip(&leaf, &ca.cert_pem);
    assert_eq!(c, 1, "{text}");
    assert!(text.contains("expired at"), "{text}");
}

#[test]
fn nothing_listening() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = gateway_pki(&["x"], &[]);
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (c, text) = check(
        dir.path(),
        &format!("wss://127.0.0.1:{port}/ws"),
        &ca.cert_pem,
        None,
    );
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("connect") && text.contains("FAILED"),
        "{text}"
    );
}

/// A real planelink gateway on 127.0.0.1 whose planes directory registers DataPlane
/// `p1` trusting `agent_ca`.
fn planelink_gateway(
    dir: &Path,
    gateway: (&Issued, &Issued),
    agent_ca: &Issued,
) -> (tokio::runtime::Runtime, u16) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ca, leaf) = gateway;
    let gw = dir.join("gw");
    std::fs::create_dir_all(&gw).unwrap();
    planelink::trust::issue::write_bundle(&gw, ca, false, leaf).unwrap();
    let planes = dir.join("planes");
    std::fs::create_dir_all(&planes).unwrap();
    let plane = PlaneBuilder::new(PlaneType::DataPlane, "default", "p1")
        .client_ca(ValueFrom::inline(&agent_ca.cert_pem))
        .build();
    write(&planes.join("p1.yaml"), &to_yaml(&[plane]));
    let argv: Vec<String> = [
        "gateway",
        "--port=0",
        "--internal-port=0",
        "--health-port=0",
        "--bind-address=127.0.0.1",
        "--internal-mtls=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--server-cert={}", gw.join("tls.crt").display()),
        format!("--server-key={}", gw.join("tls.key").display()),
        format!("--planes-dir={}", planes.display()),
    ])
    .collect();
    let config = planelink::gateway::Config::try_from(
        planelink::cli::args_from::<planelink::gateway::GatewayArgs>(argv).unwrap(),
    )
    .unwrap();
    let port = runtime.block_on(async {
        let listeners = planelink::gateway::Listeners::bind(&config.server)
            .await
            .unwrap();
        let registry = planelink::planes::Registry::spawn(Box::new(
            planelink::planes::directory::DirectorySource::new(&planes),
        ));
        let gateway = planelink::gateway::start(
            &config.server,
            listeners,
            registry.clone(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
        let mut loaded = registry.subscribe();
        tokio::time::timeout(Duration::from_secs(10), loaded.wait_for(|s| s.is_some()))
            .await
            .expect("the planes directory loads")
            .unwrap();
        gateway.public_addr.port()
    });
    (runtime, port)
}

#[test]
fn client_certificate_accepted_and_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (gw_ca, gw_leaf) = gateway_pki(&["localhost"], &["127.0.0.1"]);
    let (agent_ca, agent_leaf) = agent_pki("p1");
    let (_gateway, port) = planelink_gateway(dir.path(), (&gw_ca, &gw_leaf), &agent_ca);
    let url = format!("wss://127.0.0.1:{port}/ws");
    let (c, text) = check(dir.path(), &url, &gw_ca.cert_pem, Some(&agent_leaf));
    assert_eq!(c, 0, "{text}");
    assert!(
        text.contains("  agent     the gateway accepted the client certificate (planelink "),
        "{text}"
    );

    let (_, stranger) = agent_pki("stranger");
    let (c, text) = check(dir.path(), &url, &gw_ca.cert_pem, Some(&stranger));
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("  agent     FAILED: the gateway answered 401 ("),
        "{text}"
    );
    assert!(
        text.contains("register the agent's ca.crt (not tls.crt) as the plane's clientCA"),
        "{text}"
    );
}

/// A TLS server that requires client certificates of `agent_ca` refuses a stranger in the
/// handshake itself (as a TLS-terminating proxy in front of a gateway would).
#[test]
fn client_certificate_refused_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (gw_ca, gw_leaf) = gateway_pki(&["localhost"], &["127.0.0.1"]);
    let (agent_ca, _) = agent_pki("p1");
    let server = serve(&gw_leaf, Some(&agent_ca));
    let url = format!("wss://127.0.0.1:{}/ws", server.addr.port());
    let (_, stranger) = agent_pki("stranger");
    let (c, text) = check(dir.path(), &url, &gw_ca.cert_pem, Some(&stranger));
    assert_eq!(c, 1, "{text}");
    assert!(
        text.contains("register the agent's ca.crt as the plane's clientCA"),
        "{text}"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl_server(dir: &Path, leaf: &Issued) -> (Killed, u16) {
    let openssl = require_tool("openssl");
    write(&dir.join("s.crt"), &leaf.cert_pem);
    write_key(&dir.join("s.key"), leaf);
    let port = free_port();
    let child = Command::new(openssl)
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(dir.join("s.crt"))
        .arg("-key")
        .arg(dir.join("s.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_server");
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "openssl s_server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

#[test]
fn against_openssl_s_server() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf) = gateway_pki(&["localhost"], &["127.0.0.1"]);
    let (_server, port) = openssl_server(dir.path(), &leaf);
    let (c, text) = check(
        dir.path(),
        &format!("wss://127.0.0.1:{port}/ws"),
        &ca.cert_pem,
        None,
    );
    assert_eq!(c, 0, "{text}");

    let (ca2, _) = gateway_pki(&["x"], &[]);
    let dns_only = server_leaf(&ca2, &["gw.example.com"], &[], Window::days(5));
    let (_server2, port2) = openssl_server(&dir.path().join(""), &dns_only);
    let (c, text) = check(
        dir.path(),
        &format!("wss://127.0.0.1:{port2}/ws"),
        &ca2.cert_pem,
        None,
    );
    assert_eq!(c, 1, "{text}");
    assert!(text.contains("doesn't contain any IP SANs"), "{text}");
}
