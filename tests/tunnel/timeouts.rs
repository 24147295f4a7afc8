//! The internal listener's timeout flags, each on a real connection: `--read-timeout`
//! closes a caller that never finishes its headers, `--idle-timeout` closes a keep-alive
//! connection with no request in flight, `--write-timeout` closes a caller that stops
//! reading a large response (and frees the tunnel stream behind it). Each flag is set to
//! one second; the defaults (60 s and more) would make every wait below fail its deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::harness::Topology;

/// How long a test waits for the gateway to act on a one-second limit.
const DEADLINE: Duration = Duration::from_secs(15);

/// A TLS connection to the internal listener (internal mTLS off), speaking HTTP/1.1.
async fn connect(topo: &Topology) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in planelink::trust::load_certificates(&topo.pki.dir.join("gateway/ca.crt")).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(planelink::trust::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(topo.gateway.internal_addr)
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (EOF or reset), within [`DEADLINE`];
/// returns what was read.
async fn until_closed(stream: &mut TlsStream<TcpStream>, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(DEADLINE, read_all).await.is_ok();
    let head = String::from_utf8_lossy(&seen[..seen.len().min(200)]).into_owned();
    assert!(
        closed,
        "{what}: the gateway kept the connection open past {DEADLINE:?} ({} bytes read, starting {head:?})",
        seen.len()
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_closes_a_caller_that_never_finishes_its_headers() {
    let topo = Topology::start_with(false, &["--read-timeout=1s"]).await;
    let mut stream = connect(&topo).await;
    stream
        .write_all(b"GET /api/v1/planes/status HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let answer = until_closed(&mut stream, "--read-timeout=1s").await;
    let head = String::from_utf8_lossy(&answer);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 408"),
        "an incomplete request gets no answer but a close (or 408): {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_keep_alive_connection_without_requests() {
    let topo = Topology::start_with(false, &["--idle-timeout=1s", "--read-timeout=60s"]).await;
    let mut stream = connect(&topo).await;
    stream
        .write_all(b"GET /api/v1/planes/status HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let answer = until_closed(&mut stream, "--idle-timeout=1s").await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.lines().next(), Some("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"planes\":["), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_closes_a_caller_that_stops_reading() {
    let topo = Topology::start_with(false, &["--write-timeout=1s"]).await;
    let _agent = topo.agent("a1", "p1").await;
    let mut stream = connect(&topo).await;
    let path = "/api/proxy/dataplane/p1/org/dp1/k8s/bytes/67108864";
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream.flush().await.unwrap();
    // Not reading: the kernel buffers fill, the gateway's write stalls, and after one
    // second it gives up, which releases the tunnel stream.
    let metrics = format!("http://{}/metrics", topo.gateway.health_addr);
    let released = async {
        loop {
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-sS", "--max-time", "5", &metrics]);
            let out = super::harness::curl(cmd).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text
                .lines()
                .any(|l| l == "planelink_gateway_open_streams 0")
                && text.contains("planelink_gateway_proxy_requests_total{")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(DEADLINE, released)
        .await
        .expect("the stalled stream was not released within the deadline (--write-timeout=1s)");
    let got = until_closed(&mut stream, "--write-timeout=1s").await;
    let head = String::from_utf8_lossy(&got[..got.len().min(64)]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        got.len() < 64 << 20,
        "the connection was cut before the whole body: read {} bytes",
        got.len()
    );
}
