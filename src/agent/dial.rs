//! Dialling the gateway: resolve, TCP, TLS (trusting only `--server-ca`, presenting
//! `--client-cert`, both re-read on every dial), then the WebSocket upgrade naming
//! the plane and offering planelink's subprotocol.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, http::HeaderValue};

use crate::cli::AgentArgs;
use crate::trust::{self, danger::DiagnosingServerVerifier};
use crate::tunnel::protocol::{HELLO_HEADER, SUBPROTOCOL};
use crate::tunnel::{Hello, WsIo, ws};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The byte stream of an established tunnel, whatever carries it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

pub struct Dialled {
    pub io: WsIo<Box<dyn Stream>>,
    pub gateway: Hello,
}

/// The `/ws` URL with the plane named in the query.
pub fn ws_url(args: &AgentArgs) -> anyhow::Result<url::Url> {
    let mut url = url::Url::parse(&args.server_url).context("--server-url")?;
    url.query_pairs_mut()
        .append_pair("planeType", args.plane_type.as_str())
        .append_pair("planeID", args.plane_id.as_deref().unwrap_or_default());
    Ok(url)
}

fn tls_config(
    args: &AgentArgs,
    host: &str,
) -> anyhow::Result<(rustls::ClientConfig, Arc<DiagnosingServerVerifier>)> {
    let server_ca = trust::load_certificates(&args.server_ca).context("--server-ca")?;
    let chain = trust::load_certificates(&args.client_cert).context("--client-cert")?;
    let key = trust::load_private_key(&args.client_key).context("--client-key")?;
    let verifier = Arc::new(DiagnosingServerVerifier::new(
        server_ca,
        host,
        trust::crypto_provider(),
    ));
    let config = rustls::ClientConfig::builder_with_provider(trust::crypto_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(chain, key.into_der())
        .context("--client-cert/--client-key")?;
    Ok((config, verifier))
}

pub async fn dial(args: &AgentArgs) -> anyhow::Result<Dialled> {
    let url = ws_url(args)?;
    let host = url
        .host_str()
        .context("--server-url names no host")?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    // Resolved on every dial: a gateway behind a load balancer may move.
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {host}:{port} timed out"))?
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Stream> = if url.scheme() == "wss" {
        let (config, verifier) = tls_config(args, &host)?;
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .with_context(|| format!("{host} is not a valid TLS server name"))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => {
                let verdict = verifier.take_verdict();
                let detail = verdict.error.unwrap_or_else(|| e.to_string());
                anyhow::bail!(
                    "TLS handshake with {host}:{port} failed: {detail} (check with: planelink register check \
                     --server-url {} --server-ca {})",
                    args.server_url,
                    args.server_ca.display()
                );
            }
            Err(_) => anyhow::bail!("TLS handshake with {host}:{port} timed out"),
        }
    } else {
        Box::new(tcp)
    };

    let mut request = url.as_str().into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    headers.insert(
        HELLO_HEADER,
        HeaderValue::from_str(&Hello::ours("agent").to_header())?,
    );
    let handshake =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws::config()));
    let (ws, response) = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Err(_) => anyhow::bail!("the gateway did not answer the WebSocket upgrade in time"),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            anyhow::bail!(
                "the gateway refused the agent ({}): {body}",
                response.status()
            );
        }
        Ok(Err(e)) => return Err(e).context("WebSocket upgrade failed"),
        Ok(Ok(pair)) => pair,
    };
    let gateway = response
        .headers()
        .get(HELLO_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(Hello::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?
        .context(
            "the server answered without a planelink hello; is --server-url a planelink gateway?",
        )?;
    gateway.compatible().map_err(|e| anyhow::anyhow!(e))?;
    Ok(Dialled {
        io: WsIo::new(ws),
        gateway,
    })
}
