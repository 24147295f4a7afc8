//! What the benchmarks share: ports, process memory and CPU, child processes.

#![allow(dead_code)] // each bench uses part of it

use std::path::Path;
use std::process::{Child, Command};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use planelink::trust::issue::{self, FileKind};

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub fn write(path: &Path, text: &str) {
    issue::write_file(path, text, FileKind::Public).unwrap();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `VmRSS:`/`VmHWM:` line of `/proc/PID/status`, in KiB (0 once the process is gone).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: the fields counted from after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5), the 12th and 13th after ')'.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// Child processes killed and reaped when the bench ends, however it ends.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The release gateway on loopback, serving `dir/planes` with `dir/gw` as its
/// certificate, its internal listener without client certificates.
pub fn gateway_command(dir: &Path, port: u16, internal: u16, health: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_planelink"));
    command
        .args([
            "gateway",
            "--bind-address=127.0.0.1",
            "--internal-mtls=false",
            "--log-level=warn",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--internal-port={internal}"))
        .arg(format!("--health-port={health}"))
        .arg(format!(
            "--server-cert={}",
            dir.join("gw/tls.crt").display()
        ))
        .arg(format!("--server-key={}", dir.join("gw/tls.key").display()))
        .arg(format!("--planes-dir={}", dir.join("planes").display()));
    command
}

/// An HTTPS client trusting the bench's CAs (`gw/ca.crt`, and `up/ca.crt` when there is
/// one), keeping up to `pool` connections.
pub fn client(dir: &Path, pool: usize) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for ca in ["gw/ca.crt", "up/ca.crt"] {
        let Ok(certs) = planelink::trust::load_certificates(&dir.join(ca)) else {
            continue;
        };
        for cert in certs {
            roots.add(cert).unwrap();
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(planelink::trust::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build(connector)
}

/// GETs `url`, which must answer 200; the body's length.
pub async fn get(client: &HttpsClient, url: &str) -> usize {
    let response = client
        .request(Request::get(url).body(Empty::new()).unwrap())
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "{url}");
    let mut body = response.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body").into_data() {
            n += data.len();
        }
    }
    n
}
