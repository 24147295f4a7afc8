//! `register check`: a real TLS handshake with the gateway, made with the agent's own
//! dial steps, diagnosing each failure mode of the reference troubleshooting guide.

use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;

use super::Outcome;
use super::args::CheckArgs;
use crate::planes::PlaneType;
use crate::trust::{self, CertInfo, Purpose, Severity};
use crate::tunnel::dial::{self, DialError, TlsIdentity};

pub fn run(args: &CheckArgs) -> Outcome {
    super::block_on(async {
        let url = match dial::server_url(&args.server_url) {
            Ok(url) => url,
            Err(e) => {
                eprintln!("error: --server-url: {e}");
                return Outcome::Usage;
            }
        };
        println!("checking {}", args.server_url);
        // The CA file first: a leaf or a placeholder here explains any failure below.
        let server_ca = match load_server_ca(args) {
            Ok(t) => t,
            Err(message) => return failed("server-ca", message),
        };
        let client = match load_client(args) {
            Ok(c) => c,
            Err(message) => return failed("client", message),
        };
        let input = CheckInput {
            url,
            identity: TlsIdentity { server_ca, client },
            plane_type: args.plane_type,
            plane_id: args.plane_id.clone(),
            timeout: args.timeout,
        };
        check(&input).await
    })
}

/// What to check: the URL agents dial, and what they trust and present (in memory).
pub struct CheckInput {
    pub url: url::Url,
    pub identity: TlsIdentity,
    pub plane_type: PlaneType,
    pub plane_id: Option<String>,
    pub timeout: Duration,
}

fn step(name: &str, message: impl AsRef<str>) {
    println!("  {name:<9} {}", message.as_ref());
}

fn failed(name: &str, message: impl AsRef<str>) -> Outcome {
    println!("  {name:<9} FAILED: {}", message.as_ref());
    println!("verdict: an agent with this --server-url and --server-ca will NOT connect");
    Outcome::Failed
}

/// Resolve, connect, TLS, and (with a client certificate) the agent's upgrade: each step
/// printed, the first failure explained.
pub async fn check(input: &CheckInput) -> Outcome {
    let (host, port) = dial::host_port(&input.url);
    let started = Instant::now();
    let resolved = tokio::time::timeout(
        input.timeout,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    let addr = match resolved {
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(addr) => addr,
            None => return failed("resolve", format!("{host} has no addresses")),
        },
        Ok(Err(e)) => {
            return failed(
                "resolve",
                format!("{host}: {e}; check the host name and this host's DNS"),
            );
        }
        Err(_) => {
            return failed(
                "resolve",
                format!("no answer for {host} within {:?}", input.timeout),
            );
        }
    };
    step("resolve", format!("{host} -> {}", addr.ip()));
    let tcp = match dial::connect(&addr.ip().to_string(), port, input.timeout).await {
        Ok(tcp) => tcp,
        Err(e) => {
            return failed(
                "connect",
                format!(
                    "{e}; check that the gateway runs and is exposed (Service type LoadBalancer, Ingress or TLS \
                     passthrough route) and that no firewall blocks the port"
                ),
            );
        }
    };
    step(
        "connect",
        format!("{addr} ({} ms)", started.elapsed().as_millis()),
    );
    let (stream, chain) =
        match dial::tls(tcp, &host, &input.identity, b"http/1.1", input.timeout).await {
            Ok(pair) => pair,
            Err(DialError::Tls { detail, chain, .. }) => {
                if let Some(leaf) = chain.first() {
                    describe_server(leaf);
                }
                return failed("tls", detail);
            }
            Err(e) => return failed("tls", e.to_string()),
        };
    if let Some(leaf) = chain.first() {
        describe_server(leaf);
    }
    step(
        "tls",
        format!("handshake ok; the chain verifies against --server-ca and covers {host}"),
    );
    if input.identity.client.is_some()
        && let Err(outcome) = agent_step(input, stream).await
    {
        return outcome;
    }
    println!("verdict: OK, an agent with this --server-url and --server-ca will connect");
    Outcome::Ok
}

/// With a client certificate: the agent's upgrade, as the gateway answers it.
async fn agent_step(
    input: &CheckInput,
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<(), Outcome> {
    let mut url = input.url.clone();
    url.query_pairs_mut()
        .append_pair("planeType", input.plane_type.as_str())
        .append_pair("planeID", input.plane_id.as_deref().unwrap_or_default());
    match dial::upgrade(stream, &url, &dial::Introduction::default(), input.timeout).await {
        Ok(dialled) => {
            step(
                "agent",
                format!(
                    "the gateway accepted the client certificate (planelink {})",
                    dialled.gateway.version
                ),
            );
            Ok(())
        }
        Err(DialError::Refused { status, reason }) => Err(failed(
            "agent",
            format!(
                "the gateway answered {status} ({reason}); when it says the certificate is not trusted, \
                 register the agent's ca.crt (not tls.crt) as the plane's clientCA"
            ),
        )),
        Err(e) => Err(failed("agent", e.to_string())),
    }
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

fn load_client(
    args: &CheckArgs,
) -> Result<Option<(Vec<CertificateDer<'static>>, trust::PrivateKey)>, String> {
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
