//! `register check`: a real TLS handshake with the gateway, as the agent would make
//! it, diagnosing each failure mode of the reference troubleshooting guide.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cli::CheckArgs;
use crate::trust::danger::DiagnosingServerVerifier;
use crate::trust::{self, CertInfo, Purpose, Severity};

use super::Outcome;

/// Largest HTTP response head read back from the gateway's /ws endpoint.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

pub fn run(args: &CheckArgs) -> Outcome {
    super::block_on(check(args))
}

struct Target {
    host: String,
    port: u16,
    path_and_query: String,
}

fn target(args: &CheckArgs) -> Result<Target, String> {
    let url = url::Url::parse(&args.server_url).map_err(|e| {
        format!(
            "{:?} is not a URL ({e}); write it like wss://cluster-gateway.example.com/ws",
            args.server_url
        )
    })?;
    let default_port = match url.scheme() {
        "wss" | "https" => 443,
        other => {
            return Err(format!(
                "scheme {other}:// carries no TLS; agents dial wss://HOST:PORT/ws"
            ));
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URL names no host")?;
    let mut path_and_query = url.path().to_string();
    if let Some(q) = url.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Ok(Target {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: url.port().unwrap_or(default_port),
        path_and_query,
    })
}

fn step(name: &str, message: impl AsRef<str>) {
    println!("  {name:<9} {}", message.as_ref());
}

fn failed(name: &str, message: impl AsRef<str>) -> Outcome {
    println!("  {name:<9} FAILED: {}", message.as_ref());
    println!("verdict: an agent with this --server-url and --server-ca will NOT connect");
    Outcome::Failed
}

pub(super) async fn check(args: &CheckArgs) -> Outcome {
    let target = match target(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --server-url: {e}");
            return Outcome::Usage;
        }
    };
    println!("checking {}", args.server_url);

    // The CA file first: a leaf or a placeholder here explains any failure below.
    let trusted = match load_server_ca(args) {
        Ok(t) => t,
        Err(message) => return failed("server-ca", message),
    };

    let client = match load_client(args) {
        Ok(c) => c,
        Err(message) => return failed("client", message),
    };

    let started = Instant::now();
    let addrs: Vec<std::net::SocketAddr> = match tokio::time::timeout(
        args.timeout,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            return failed(
                "resolve",
                format!(
                    "{}: {e}; check the host name and this host's DNS",
                    target.host
                ),
            );
        }
        Err(_) => {
            return failed(
                "resolve",
                format!("no answer for {} within {:?}", target.host, args.timeout),
            );
        }
    };
    let Some(addr) = addrs.first().copied() else {
        return failed("resolve", format!("{} has no addresses", target.host));
    };
    step("resolve", format!("{} -> {}", target.host, addr.ip()));

    let tcp = match tokio::time::timeout(args.timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return failed(
                "connect",
                format!(
                    "{addr}: {e}; check that the gateway runs and is exposed (Service type LoadBalancer, \
                     Ingress or TLS passthrough route) and that no firewall blocks the port"
                ),
            );
        }
        Err(_) => {
            return failed(
                "connect",
                format!(
                    "{addr}: no answer within {:?} (a firewall dropping packets?)",
                    args.timeout
                ),
            );
        }
    };
    step(
        "connect",
        format!("{addr} ({} ms)", started.elapsed().as_millis()),
    );

    let provider = trust::crypto_provider();
    let verifier = Arc::new(DiagnosingServerVerifier::new(
        trusted,
        &target.host,
        provider.clone(),
    ));
    let builder = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone()),
        Err(e) => return failed("tls", e.to_string()),
    };
    let config = match client {
        Some((chain, key)) => match builder.with_client_auth_cert(chain, key.into_der()) {
            Ok(c) => c,
            Err(e) => return failed("client", format!("the client key cannot be used: {e}")),
        },
        None => builder.with_no_client_auth(),
    };
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = match ServerName::try_from(target.host.clone()) {
        Ok(n) => n,
        Err(e) => {
            return failed(
                "tls",
                format!("{} cannot be a TLS server name: {e}", target.host),
            );
        }
    };
    let connector = TlsConnector::from(Arc::new(config));
    let handshake = tokio::time::timeout(args.timeout, connector.connect(server_name, tcp)).await;
    let verdict = verifier.take_verdict();
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            if let Some(leaf) = verdict.chain.first() {
                describe_server(leaf);
            }
            let message = verdict.error.unwrap_or_else(|| explain_io_error(&e));
            return failed("tls", message);
        }
        Err(_) => {
            return failed(
                "tls",
                format!(
                    "no TLS handshake within {:?}; is this port serving TLS?",
                    args.timeout
                ),
            );
        }
    };
    if let Some(leaf) = verdict.chain.first() {
        describe_server(leaf);
    }
    let (_, session) = tls.get_ref();
    step(
        "tls",
        format!(
            "handshake ok ({:?}); the chain verifies against --server-ca and covers {}",
            session
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            target.host
        ),
    );

    if args.client_cert.is_some() {
        match upgrade(&mut tls, &target, args).await {
            Ok(status_line) => {
                if status_line.contains(" 101 ") {
                    step(
                        "agent",
                        format!("the gateway accepted the client certificate: {status_line}"),
                    );
                } else {
                    return failed(
                        "agent",
                        format!(
                            "the gateway answered {status_line}; when it says the certificate is not trusted, \
                             register the agent's ca.crt (not tls.crt) as the plane's clientCA"
                        ),
                    );
                }
            }
            Err(message) => return failed("agent", message),
        }
    }
    println!("verdict: OK, an agent with this --server-url and --server-ca will connect");
    Outcome::Ok
}

fn load_server_ca(args: &CheckArgs) -> Result<Vec<CertificateDer<'static>>, String> {
    let path = &args.server_ca;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let contents = trust::pem::parse(&bytes).map_err(|e| {
        let hint = super::inspect::unparseable_hint(&e, Some(Purpose::ServerCa)).unwrap_or("");
        format!("{}: {e}. {hint}", path.display())
    })?;
    let report = trust::assess(&contents, Some(Purpose::ServerCa), SystemTime::now())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(error) = report
        .findings
        .iter()
        .find(|f| f.severity == Severity::Error)
    {
        return Err(format!("{}: {}", path.display(), error.message));
    }
    let names: Vec<String> = report
        .certificates
        .iter()
        .map(|c| c.subject.clone())
        .collect();
    step(
        "server-ca",
        format!("{} holds CA {}", path.display(), names.join(", ")),
    );
    Ok(contents.certificates)
}

type ClientIdentity = (Vec<CertificateDer<'static>>, trust::PrivateKey);

fn load_client(args: &CheckArgs) -> Result<Option<ClientIdentity>, String> {
    let (Some(cert_path), Some(key_path)) = (&args.client_cert, &args.client_key) else {
        return Ok(None);
    };
    crate::config::check_cert_file("--client-cert", cert_path, Purpose::ClientCert, "")
        .map_err(|e| e.to_string())?;
    crate::config::check_key_pair("--client-cert", cert_path, "--client-key", key_path)
        .map_err(|e| e.to_string())?;
    let chain = trust::load_certificates(cert_path).map_err(|e| e.to_string())?;
    let key = trust::load_private_key(key_path).map_err(|e| e.to_string())?;
    if let Ok(info) = CertInfo::from_der(&chain[0]) {
        step(
            "client",
            format!("presenting {} (issued by {})", info.subject, info.issuer),
        );
    }
    Ok(Some((chain, key)))
}

fn describe_server(leaf: &CertificateDer<'_>) {
    if let Ok(info) = CertInfo::from_der(leaf) {
        step(
            "server",
            format!("{} issued by {}", info.subject, info.issuer),
        );
        step("", format!("SANs: {}", info.san_list()));
        step(
            "",
            format!(
                "valid until {}",
                trust::inspect::format_time(info.not_after)
            ),
        );
    }
}

fn explain_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("CertificateRequired") || text.contains("certificate required") {
        "the gateway requires a client certificate; pass --client-cert and --client-key".into()
    } else if text.contains("BadCertificate")
        || text.contains("UnknownCA")
        || text.contains("bad certificate")
    {
        format!(
            "the gateway rejected the client certificate ({text}); register the agent's ca.crt as the plane's clientCA"
        )
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        format!("the server did not answer with TLS ({text}); is this the gateway's TLS port?")
    } else {
        text
    }
}

/// Sends the agent's WebSocket upgrade request and returns the response's status line.
async fn upgrade<S>(tls: &mut S, target: &Target, args: &CheckArgs) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut path = target.path_and_query.clone();
    let separator = if path.contains('?') { '&' } else { '?' };
    path.push(separator);
    path.push_str(&format!("planeType={}", args.plane_type.as_str()));
    if let Some(id) = &args.plane_id {
        path.push_str(&format!("&planeID={id}"));
    }
    let host = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: cGxhbmVsaW5rIGNoZWNrIQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\n{hello_header}: {hello}\r\n\r\n",
        protocol = crate::tunnel::protocol::SUBPROTOCOL,
        hello_header = crate::tunnel::protocol::HELLO_HEADER,
        hello = crate::tunnel::Hello::ours("agent").to_header(),
    );
    let exchange = async {
        tls.write_all(request.as_bytes()).await?;
        tls.flush().await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_RESPONSE_HEAD {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        // A refusal carries its reason in a short body; read it if it is on its way.
        if !head.starts_with(b"HTTP/1.1 101")
            && let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::from_millis(200), tls.read(&mut buf))
                    .await
        {
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = match tokio::time::timeout(args.timeout, exchange).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Err(explain_io_error(&e)),
        Err(_) => {
            return Err(format!(
                "no answer to the upgrade request within {:?}",
                args.timeout
            ));
        }
    };
    let text = String::from_utf8_lossy(&head);
    let reason = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim())
        .filter(|body| !body.is_empty())
        .map(|body| format!(" ({})", body.lines().next().unwrap_or_default()))
        .unwrap_or_default();
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(|status| format!("{status}{reason}"))
        .ok_or_else(|| "the gateway closed the connection without an HTTP answer (client certificate rejected?)".into())
}
