//! Dialling the gateway in three steps, each its own function so that `register check`
//! walks the same path and reports each step: TCP (resolved on every dial), TLS
//! (trusting only the server CA, presenting the client certificate), and the upgrade
//! naming the plane: to the h2 transport ([`H2_UPGRADE`]) first, and when a gateway
//! refuses that, the WebSocket upgrade offering planelink's subprotocol (tungstenite's
//! client handshake).

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, http::HeaderValue};

use super::protocol::{HELD_REPLICAS_HEADER, HELLO_HEADER, Membership, SUBPROTOCOL};
use super::transport::{H2_UPGRADE, TunnelIo, requests_upgrade_to};
use super::ws::PeerClose;
use super::{Hello, WsIo, ws};
use crate::trust::{self, danger::DiagnosingServerVerifier};

/// Each step of a dial (connect, TLS, upgrade) must finish within this.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The byte stream of an established tunnel, whatever carries it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// What an agent presents and trusts, in memory.
pub struct TlsIdentity {
    /// The only CA trusted for the gateway's certificate.
    pub server_ca: Vec<CertificateDer<'static>>,
    /// The client certificate chain and its key; `None` to only check the server.
    pub client: Option<(Vec<CertificateDer<'static>>, trust::PrivateKey)>,
}

impl TlsIdentity {
    /// Reads the files once (`register check`; the agent itself follows them as they
    /// change): the server CA, the client certificate chain and its key.
    pub fn load(
        server_ca: &std::path::Path,
        client_cert: &std::path::Path,
        client_key: &std::path::Path,
    ) -> Result<TlsIdentity, DialError> {
        let read =
            |what: &str, e: &dyn std::fmt::Display| DialError::Identity(format!("{what}: {e}"));
        Ok(TlsIdentity {
            server_ca: trust::load_certificates(server_ca).map_err(|e| read("--server-ca", &e))?,
            client: Some((
                trust::load_certificates(client_cert).map_err(|e| read("--client-cert", &e))?,
                trust::load_private_key(client_key).map_err(|e| read("--client-key", &e))?,
            )),
        })
    }
}

/// Why a dial failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Identity(String),
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: String },
    #[error("TLS handshake with {addr} failed: {detail}")]
    Tls {
        addr: String,
        detail: String,
        /// What the server presented, when it got that far.
        chain: Vec<CertificateDer<'static>>,
    },
    #[error("the gateway refused the agent ({status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(String),
    #[error("{0}")]
    NotPlanelink(String),
    #[error(
        "the gateway took the WebSocket upgrade without the planelink.v1 subprotocol: it is \
         OpenChoreo's cluster gateway; --protocol auto (the default) or openchoreo speaks its protocol"
    )]
    OpenChoreoGateway,
    /// The load balancer sent the dial to a replica the agent already holds; what that
    /// replica knows of the others comes back with it.
    #[error(
        "the dial reached gateway replica {replica}, which this agent already holds a tunnel to"
    )]
    AlreadyHeld {
        replica: String,
        membership: Option<Membership>,
    },
}

impl DialError {
    /// The step that failed, as the `result` label of the agent's dial metric.
    pub fn step(&self) -> &'static str {
        match self {
            DialError::Identity(_) => "identity",
            DialError::Connect { .. } => "connect",
            DialError::Tls { .. } => "tls",
            DialError::Refused { .. } => "refused",
            DialError::Upgrade(_) => "upgrade",
            DialError::NotPlanelink(_) | DialError::OpenChoreoGateway => "not_planelink",
            DialError::AlreadyHeld { .. } => "already_held",
        }
    }
}

/// What the agent says of itself on each dial.
#[derive(Debug, Clone, Default)]
pub struct Introduction {
    /// The agent process's ID, the same on each of its tunnels.
    pub instance: Option<String>,
    /// The gateway replicas it already holds a tunnel to.
    pub held: Vec<String>,
    /// A CA rollover to propose: the renewed certificate and the CA that issued it.
    pub proposal: Option<crate::trust::rollover::Proposal>,
    /// Offer the h2 transport first (off once the gateway refused it).
    pub offer_h2: bool,
    /// The plane CRs the agent serves (`--serve-planes`), comma-separated.
    pub serves: Option<String>,
}

/// A connected tunnel's byte stream and what the gateway said about itself.
pub struct Dialled {
    pub io: TunnelIo<Box<dyn Stream>>,
    pub gateway: Hello,
    /// How the gateway ends the tunnel, once it says.
    pub peer_close: PeerClose,
    /// The gateway refused the h2 transport and took the WebSocket one.
    pub h2_refused: bool,
}

/// A `wss://` (or `https://`) URL with a host: what agents dial with TLS.
pub fn server_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| {
        format!("{text:?} is not a URL ({e}); write it like wss://cluster-gateway.example.com/ws")
    })?;
    if !matches!(url.scheme(), "wss" | "https") {
        return Err(format!(
            "scheme {}:// carries no TLS; agents dial wss://HOST:PORT/ws",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL names no host".into());
    }
    Ok(url)
}

/// `(host, port)` of a `ws://` or `wss://` URL, IPv6 brackets removed.
pub fn host_port(url: &url::Url) -> (String, u16) {
    let host = url.host_str().unwrap_or_default();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    (host, url.port_or_known_default().unwrap_or(443))
}

/// Step 1: TCP, resolving the host now (a gateway behind a load balancer may move). The
/// addresses a name resolves to are tried from a random one on, so agents spread over the
/// replicas a DNS name lists (a headless Service) and each finds them all in time.
pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
    let addr = format!("{host}:{port}");
    let failed = |error: String| DialError::Connect {
        addr: addr.clone(),
        error,
    };
    let attempt = async {
        let mut addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| failed(e.to_string()))?
            .collect();
        // A random rotation from std's hasher keys (the getrandom system call): the
        // thread RNG would need /dev/urandom, which an empty root may not have.
        if !addrs.is_empty() {
            let turn = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                port,
            );
            let len = addrs.len();
            addrs.rotate_left((turn % len as u64) as usize);
        }
        let mut last = failed("the name resolves to no address".into());
        for candidate in addrs {
            match TcpStream::connect(candidate).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = failed(e.to_string()),
            }
        }
        Err(last)
    };
    let tcp = tokio::time::timeout(timeout, attempt).await.map_err(|_| {
        failed(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        ))
    })??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Step 2: TLS. On success, also the chain the server presented.
pub async fn tls(
    tcp: TcpStream,
    host: &str,
    identity: &TlsIdentity,
    alpn: &[u8],
    timeout: Duration,
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        Vec<CertificateDer<'static>>,
    ),
    DialError,
> {
    let addr = format!(
        "{host}:{}",
        tcp.peer_addr().map(|a| a.port()).unwrap_or_default()
    );
    let failed = |detail: String, chain| DialError::Tls {
        addr: addr.clone(),
        detail,
        chain,
    };
    let verifier = Arc::new(DiagnosingServerVerifier::new(
        identity.server_ca.clone(),
        host,
        trust::crypto_provider(),
    ));
    let builder = rustls::ClientConfig::builder_with_provider(trust::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string(), Vec::new()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut config = match &identity.client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.der().clone_key())
            .map_err(|e| DialError::Identity(format!("the client key cannot be used: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        failed(
            format!("{host} is not a valid TLS server name: {e}"),
            Vec::new(),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = tokio::time::timeout(timeout, connector.connect(name, tcp)).await;
    let verdict = verifier.take_verdict();
    match handshake {
        Ok(Ok(stream)) => Ok((stream, verdict.chain)),
        Ok(Err(e)) => Err(failed(
            verdict.error.unwrap_or_else(|| explain_tls_error(&e)),
            verdict.chain,
        )),
        Err(_) => Err(failed(
            format!(
                "no TLS handshake within {}; is this port serving TLS?",
                humantime::format_duration(timeout)
            ),
            verdict.chain,
        )),
    }
}

/// A TLS failure the server caused, in the operator's terms (classified by the rustls
/// error, not by its text).
pub fn explain_tls_error(e: &std::io::Error) -> String {
    use rustls::{AlertDescription, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::AlertReceived(AlertDescription::CertificateRequired)) => {
            "the gateway requires a client certificate; pass --client-cert and --client-key".into()
        }
        Some(Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::DecryptError,
        )) => format!(
            "the gateway rejected the client certificate ({e}); register the agent's ca.crt as the plane's clientCA"
        ),
        Some(Error::InvalidMessage(_)) => {
            format!("the server did not answer with TLS ({e}); is this the gateway's TLS port?")
        }
        _ => e.to_string(),
    }
}

/// Step 3: the WebSocket upgrade on `/ws?planeType=…&planeID=…`, offering planelink's
/// subprotocol and hello; the gateway must answer with its own hello.
pub async fn upgrade<S: Stream>(
    stream: S,
    url: &url::Url,
    introduction: &Introduction,
    timeout: Duration,
) -> Result<Dialled, DialError> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| DialError::Upgrade(e.to_string()))?;
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    introduce(headers, introduction);
    let (ws, response) = ws_handshake(request, stream, ws::config(), timeout).await?;
    let gateway = gateway_hello(response.headers())?;
    let io = WsIo::new(ws);
    Ok(Dialled {
        peer_close: io.peer_close(),
        io: TunnelIo::WebSocket(Box::new(io)),
        gateway,
        h2_refused: false,
    })
}

type ClientWs = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

/// The WebSocket handshake, its failures as dial errors: a refusal with the gateway's
/// reason, and a 101 without the subprotocol asked for (OpenChoreo's gateway).
pub async fn ws_handshake<S: Stream>(
    request: tungstenite::handshake::client::Request,
    stream: S,
    config: tungstenite::protocol::WebSocketConfig,
    timeout: Duration,
) -> Result<(ClientWs, tungstenite::handshake::client::Response), DialError> {
    let boxed: Box<dyn Stream> = Box::new(stream);
    let handshake = tokio_tungstenite::client_async_with_config(request, boxed, Some(config));
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(DialError::Upgrade(
            "the gateway did not answer the WebSocket upgrade in time".into(),
        )),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body = response.body().as_deref().unwrap_or_default();
            Err(refusal(response.status(), response.headers(), body))
        }
        Ok(Err(tungstenite::Error::Io(e))) => Err(DialError::Upgrade(explain_tls_error(&e))),
        Ok(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                tungstenite::error::SubProtocolError::NoSubProtocol,
            ),
        ))) => Err(DialError::OpenChoreoGateway),
        Ok(Err(e)) => Err(DialError::Upgrade(e.to_string())),
        Ok(Ok(pair)) => Ok(pair),
    }
}

/// What the agent says of itself on every upgrade request, whichever the transport.
fn introduce(headers: &mut http::HeaderMap, introduction: &Introduction) {
    let mut hello = Hello::ours("agent");
    hello.instance = introduction.instance.clone();
    hello.serves = introduction.serves.clone();
    if let Ok(hello) = HeaderValue::from_str(&hello.to_header()) {
        headers.insert(HELLO_HEADER, hello);
    }
    if !introduction.held.is_empty()
        && let Ok(held) = HeaderValue::from_str(&introduction.held.join(","))
    {
        headers.insert(HELD_REPLICAS_HEADER, held);
    }
    if let Some(proposal) = &introduction.proposal {
        let (cas, chain) = proposal.to_headers();
        if let (Ok(cas), Ok(chain)) = (HeaderValue::from_str(&cas), HeaderValue::from_str(&chain)) {
            headers.insert(crate::trust::rollover::CA_HEADER, cas);
            headers.insert(crate::trust::rollover::CERTIFICATE_HEADER, chain);
        }
    }
}

/// The gateway's hello on its 101, which must be there and compatible.
fn gateway_hello(headers: &http::HeaderMap) -> Result<Hello, DialError> {
    let gateway = headers
        .get(HELLO_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(Hello::parse)
        .transpose()
        .map_err(DialError::NotPlanelink)?
        .ok_or_else(|| {
            DialError::NotPlanelink(
                "the server answered without a planelink hello; is --server-url a planelink gateway?".into(),
            )
        })?;
    gateway.compatible().map_err(DialError::NotPlanelink)?;
    Ok(gateway)
}

/// An answer other than 101: the replica is already held (409, with what it knows of
/// the others), or a refusal with the gateway's reason.
fn refusal(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> DialError {
    if status == http::StatusCode::CONFLICT {
        let membership = headers
            .get(HELLO_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Hello::parse(v).ok())
            .and_then(|hello| hello.membership);
        return DialError::AlreadyHeld {
            replica: membership
                .as_ref()
                .map(|m| m.replica.clone())
                .unwrap_or_default(),
            membership,
        };
    }
    DialError::Refused {
        status: status.as_u16(),
        reason: String::from_utf8_lossy(body).trim().to_string(),
    }
}

/// Most of a refusal's body the agent reads (the gateway's reasons are a line or two).
const MAX_REFUSAL_BODY: usize = 4096;

/// Step 3 with the h2 transport: an HTTP/1.1 upgrade to [`H2_UPGRADE`]; after the 101
/// the TLS stream carries HTTP/2 directly. A gateway that does not know it answers 400
/// (it expected a WebSocket upgrade), which [`dial_gateway`] takes as the cue to fall
/// back.
pub async fn upgrade_h2<S: Stream>(
    stream: S,
    url: &url::Url,
    introduction: &Introduction,
    timeout: Duration,
) -> Result<Dialled, DialError> {
    use http_body_util::BodyExt as _;
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let mut request = http::Request::get(target)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| DialError::Upgrade(e.to_string()))?;
    let headers = request.headers_mut();
    let (host, port) = host_port(url);
    let authority = match (host.contains(':'), url.port()) {
        (true, Some(_)) => format!("[{host}]:{port}"),
        (true, None) => format!("[{host}]"),
        (false, Some(_)) => format!("{host}:{port}"),
        (false, None) => host,
    };
    if let Ok(authority) = HeaderValue::from_str(&authority) {
        headers.insert(http::header::HOST, authority);
    }
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    headers.insert(http::header::UPGRADE, HeaderValue::from_static(H2_UPGRADE));
    introduce(headers, introduction);
    let boxed: Box<dyn Stream> = Box::new(stream);
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(boxed))
                .await
                .map_err(|e| DialError::Upgrade(e.to_string()))?;
        // Drives the connection until the upgrade hands the stream over; aborted with the
        // exchange (a refusal, the step's timeout), so no task outlives the dial.
        let _driver = AbortOnDrop(tokio::spawn(connection.with_upgrades()));
        let mut response = sender
            .send_request(request)
            .await
            .map_err(|e| DialError::Upgrade(explain_hyper_error(&e)))?;
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let headers = response.headers().clone();
            let body = http_body_util::Limited::new(response.into_body(), MAX_REFUSAL_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(refusal(status, &headers, &body));
        }
        if !requests_upgrade_to(response.headers(), H2_UPGRADE) {
            return Err(DialError::NotPlanelink(format!(
                "the server switched to another protocol than {H2_UPGRADE}"
            )));
        }
        let gateway = gateway_hello(response.headers())?;
        let upgraded = hyper::upgrade::on(&mut response)
            .await
            .map_err(|e| DialError::Upgrade(e.to_string()))?;
        let io: Box<dyn Stream> = Box::new(hyper_util::rt::TokioIo::new(upgraded));
        Ok(Dialled {
            io: TunnelIo::H2(io),
            gateway,
            peer_close: PeerClose::default(),
            h2_refused: false,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Upgrade(
            "the gateway did not answer the upgrade in time".into(),
        )),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A failed exchange, with TLS failures (the gateway refusing the certificate during
/// the handshake's last step) explained as [`explain_tls_error`] does.
fn explain_hyper_error(e: &hyper::Error) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return explain_tls_error(io);
        }
        source = inner.source();
    }
    e.to_string()
}
