//! The agent's dial: the wire steps of [`crate::tunnel::dial`] composed with the agent's
//! configuration (its protocol choice, its files), falling back from the h2 transport to
//! WebSocket and from planelink's protocol to OpenChoreo's.

use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::args::TunnelProtocol;
use super::config::Config;
use crate::tunnel::Hello;
use crate::tunnel::dial::{
    DialError, Dialled, Introduction, STEP_TIMEOUT, Stream, TlsIdentity, connect, host_port, tls,
    upgrade, upgrade_h2, ws_handshake,
};
use crate::tunnel::transport::H2_UPGRADE;
use crate::tunnel::transport::TunnelIo;
use crate::tunnel::ws::PeerClose;

/// The agent's dial: all three steps, with the identity it was given (`None` without
/// TLS). With `--plane-type workflowplane`, a gateway that refuses that name (an older
/// OpenChoreo gateway answers 400 naming the planeType) is dialled as `buildplane`, its
/// older name, from then on.
pub async fn dial_gateway(
    config: &Config,
    identity: Option<&TlsIdentity>,
    introduction: &Introduction,
) -> Result<Dialled, DialError> {
    use std::sync::atomic::Ordering::Relaxed;
    let fallback = config.plane_type_fallback.as_ref();
    if let Some(fallback) = fallback.filter(|f| f.taken.load(Relaxed)) {
        return dial_once(config, &fallback.url, identity, introduction).await;
    }
    match dial_once(config, &config.dial_url, identity, introduction).await {
        Err(DialError::Refused {
            status: 400,
            reason,
        }) if reason.contains("planeType")
            && let Some(fallback) = fallback
            && !fallback.taken.swap(true, Relaxed) =>
        {
            tracing::warn!(reason = %crate::safe_text::escape(&reason),
                "the gateway does not take planeType=workflowplane; dialling as buildplane, its older name, from now on");
            dial_once(config, &fallback.url, identity, introduction).await
        }
        other => other,
    }
}

/// One dial of `url`.
async fn dial_once(
    config: &Config,
    url: &url::Url,
    identity: Option<&TlsIdentity>,
    introduction: &Introduction,
) -> Result<Dialled, DialError> {
    let openchoreo = |stream| upgrade_openchoreo(stream, url, config.heartbeat, STEP_TIMEOUT);
    if config.protocol == TunnelProtocol::Openchoreo {
        return openchoreo(connect_tls(config, identity).await?).await;
    }
    // With `auto`, a gateway that takes no planelink subprotocol is OpenChoreo's.
    let fall_back = |result: Result<Dialled, DialError>| async move {
        match result {
            Err(DialError::OpenChoreoGateway) if config.protocol == TunnelProtocol::Auto => {
                tracing::debug!("the gateway is OpenChoreo's; dialling again with its protocol");
                let mut dialled = openchoreo(connect_tls(config, identity).await?).await?;
                dialled.h2_refused = true;
                Ok(dialled)
            }
            other => other,
        }
    };
    if introduction.offer_h2 {
        let stream = connect_tls(config, identity).await?;
        match upgrade_h2(stream, url, introduction, STEP_TIMEOUT).await {
            Err(DialError::Refused {
                status: 400,
                reason,
            }) => {
                tracing::debug!(reason = %crate::safe_text::escape(&reason),
                    "the gateway refused the {H2_UPGRADE} upgrade; dialling again with WebSocket");
            }
            other => return other,
        }
        let stream = connect_tls(config, identity).await?;
        let mut dialled = fall_back(upgrade(stream, url, introduction, STEP_TIMEOUT).await).await?;
        dialled.h2_refused = true;
        return Ok(dialled);
    }
    let stream = connect_tls(config, identity).await?;
    fall_back(upgrade(stream, url, introduction, STEP_TIMEOUT).await).await
}

/// Steps 1 and 2: TCP, then TLS when the agent has an identity (`ws://` has none).
async fn connect_tls(
    config: &Config,
    identity: Option<&TlsIdentity>,
) -> Result<Box<dyn Stream>, DialError> {
    let (host, port) = host_port(&config.dial_url);
    let tcp = connect(&host, port, STEP_TIMEOUT).await?;
    match identity {
        Some(identity) => {
            let (stream, _) = tls(tcp, &host, identity, b"http/1.1", STEP_TIMEOUT)
                .await
                .map_err(|e| match e {
                    DialError::Tls {
                        addr,
                        detail,
                        chain,
                    } => DialError::Tls {
                        addr,
                        detail: match &config.tls {
                            Some(files) => format!(
                                "{detail} (check with: planelink register check --server-url {} --server-ca {})",
                                config.server_url,
                                files.server_ca.display()
                            ),
                            None => detail,
                        },
                        chain,
                    },
                    other => other,
                })?;
            Ok(Box::new(stream))
        }
        None => Ok(Box::new(tcp)),
    }
}

/// Step 3 with OpenChoreo's gateway: a WebSocket upgrade with no subprotocol and no
/// hello; its JSON frames reach the agent's HTTP/2 server through
/// [`super::openchoreo`].
pub async fn upgrade_openchoreo<S: Stream>(
    stream: S,
    url: &url::Url,
    heartbeat: crate::tunnel::protocol::Heartbeat,
    timeout: Duration,
) -> Result<Dialled, DialError> {
    let request = url
        .as_str()
        .into_client_request()
        .map_err(|e| DialError::Upgrade(e.to_string()))?;
    let config = crate::tunnel::ws::config()
        .max_message_size(Some(crate::tunnel::openchoreo::MAX_FRAME))
        .max_frame_size(Some(crate::tunnel::openchoreo::MAX_FRAME));
    let (ws, _) = ws_handshake(request, stream, config, timeout).await?;
    let peer_close = PeerClose::default();
    Ok(Dialled {
        io: TunnelIo::Local(super::openchoreo::spawn(ws, heartbeat, peer_close.clone())),
        gateway: Hello::openchoreo("gateway"),
        peer_close,
        h2_refused: false,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::{HeaderValue, Request, Response, StatusCode};
    use hyper::body::Incoming;
    use tokio_tungstenite::tungstenite::handshake::server::create_response_with_body;

    use super::*;
    use crate::tunnel::body::{self, Body};
    use crate::tunnel::protocol::{HELLO_HEADER, SUBPROTOCOL};
    use crate::tunnel::transport::Transport;

    /// A gateway from before the h2 transport, written here (no older planelink binary
    /// exists to run): real HTTP/1.1 and WebSocket stacks that refuse the h2 upgrade with
    /// 400, as such a gateway does, and take planelink's WebSocket upgrade. Like the
    /// gateways from before WorkflowPlane, it refuses `planeType=workflowplane` with 400.
    /// It records each upgrade and the planeType it named.
    async fn websocket_only_gateway(upgrades: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let upgrades = upgrades.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let upgrade = req
                        .headers()
                        .get(http::header::UPGRADE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let plane_type = req
                        .uri()
                        .query()
                        .and_then(|q| {
                            url::form_urlencoded::parse(q.as_bytes())
                                .find(|(k, _)| k == "planeType")
                                .map(|(_, v)| v.into_owned())
                        })
                        .unwrap_or_default();
                    upgrades
                        .lock()
                        .unwrap()
                        .push(format!("{upgrade} {plane_type}"));
                    let known = plane_type != "workflowplane";
                    let response: Response<Body> =
                        match create_response_with_body(&req, body::empty)
                            .map_err(|e| e.to_string())
                            .and_then(|r| match known {
                                true => Ok(r),
                                false => Err(format!("invalid planeType: {plane_type}")),
                            }) {
                            Ok(mut switching) => {
                                let headers = switching.headers_mut();
                                headers.insert(
                                    "sec-websocket-protocol",
                                    HeaderValue::from_static(SUBPROTOCOL),
                                );
                                let mut hello = Hello::ours("gateway");
                                hello.capabilities.retain(|c| {
                                    c != crate::tunnel::protocol::H2_TRANSPORT_CAPABILITY
                                });
                                let hello = hello.to_header();
                                headers
                                    .insert(HELLO_HEADER, HeaderValue::from_str(&hello).unwrap());
                                switching
                            }
                            Err(e) => {
                                let mut refused =
                                    Response::new(body::full(format!("refused: {e}")));
                                *refused.status_mut() = StatusCode::BAD_REQUEST;
                                refused
                            }
                        };
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .with_upgrades(),
                );
            }
        });
        addr
    }

    fn agent_config(addr: std::net::SocketAddr, plane_type: &str) -> Config {
        use clap::{Args as _, FromArgMatches as _};
        let command = super::super::AgentArgs::augment_args(clap::Command::new("agent"));
        let matches = command
            .try_get_matches_from([
                "agent".into(),
                format!("--server-url=ws://{addr}/ws"),
                format!("--plane-type={plane_type}"),
                "--plane-id=p1".into(),
                "--tls-enabled=false".into(),
            ])
            .unwrap();
        Config::try_from(super::super::AgentArgs::from_arg_matches(&matches).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_gateway_that_refuses_the_h2_upgrade_gets_websocket() {
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let addr = websocket_only_gateway(upgrades.clone()).await;
        let config = agent_config(addr, "dataplane");
        let introduction = Introduction {
            offer_h2: true,
            ..Introduction::default()
        };
        let dialled = dial_gateway(&config, None, &introduction).await.unwrap();
        assert_eq!(dialled.io.transport(), Transport::WebSocket);
        assert!(dialled.h2_refused);
        let h2 = format!("{H2_UPGRADE} dataplane");
        assert_eq!(*upgrades.lock().unwrap(), [&h2, "websocket dataplane"]);

        // Once refused, the agent dials WebSocket straight away.
        let introduction = Introduction {
            offer_h2: false,
            ..introduction
        };
        let dialled = dial_gateway(&config, None, &introduction).await.unwrap();
        assert_eq!(dialled.io.transport(), Transport::WebSocket);
        assert!(!dialled.h2_refused);
        assert_eq!(
            *upgrades.lock().unwrap(),
            [&h2, "websocket dataplane", "websocket dataplane"]
        );
    }

    /// `--plane-type workflowplane` is sent as such; a gateway that refuses the name with
    /// 400 gets `buildplane` once and on every later dial.
    #[tokio::test]
    async fn a_gateway_that_refuses_workflowplane_gets_buildplane_from_then_on() {
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let addr = websocket_only_gateway(upgrades.clone()).await;
        let config = agent_config(addr, "workflowplane");
        let introduction = Introduction::default();
        dial_gateway(&config, None, &introduction).await.unwrap();
        assert_eq!(
            *upgrades.lock().unwrap(),
            ["websocket workflowplane", "websocket buildplane"]
        );
        dial_gateway(&config, None, &introduction).await.unwrap();
        assert_eq!(
            *upgrades.lock().unwrap(),
            [
                "websocket workflowplane",
                "websocket buildplane",
                "websocket buildplane"
            ]
        );
    }
}
