//! The public listener: agents' mutual-TLS endpoint `/ws`, upgraded to the tunnel
//! (HTTP/2 on the TLS stream, or inside WebSocket; [`crate::tunnel::transport`]).
//!
//! TLS accepts any client certificate whose handshake signature verifies; the chain
//! is judged once the `/ws` request names its plane, against each registered CR of
//! that plane separately. A refused agent gets 401/403 with the reason in the body,
//! which the agent logs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::create_response_with_body;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Core;
use super::hub::NewAgent;
use crate::planes::registry::PlaneRef;
use crate::planes::{PlaneKey, PlaneType, Snapshot};
use crate::server;
use crate::trust::CertInfo;
use crate::tunnel::body::{self, Body};
use crate::tunnel::protocol::{
    self, CONTROL_GOING_AWAY, HELD_REPLICAS_HEADER, HELLO_HEADER, SUBPROTOCOL,
};
use crate::tunnel::transport::{H2_UPGRADE, Transport, TunnelIo, requests_upgrade_to};
use crate::tunnel::{Hello, WsIo, ws};

/// Time a client gets to send its `/ws` request once TLS is up.
const UPGRADE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Agents' connections being set up or carrying tunnels at once.
const MAX_AGENT_CONNECTIONS: usize = 16384;
/// Connections between TCP accept and a verified tunnel at once: beyond this a
/// connection waits for a slot, holding only its socket, ...
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// ... at most this long, then it is dropped. A fleet redialling after a gateway restart
/// is served as fast as handshakes complete instead of being refused into seconds of
/// backoff; a flood still holds no more than sockets, within the connection cap, and
/// the agent's own TLS deadline (10 s) outlasts the wait plus a handshake.
const HANDSHAKE_QUEUE_WAIT: Duration = Duration::from_secs(4);
/// The `/ws` request is a few headers, and at most a CA proposal's two
/// ([`crate::trust::rollover::MAX_HEADER_LEN`] each): its read buffer needs no more.
const UPGRADE_REQUEST_BUFFER: usize = 32 * 1024;

pub async fn serve(
    core: Arc<Core>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    let handle = move |tcp, remote| {
        let (core, acceptor, pending) = (core.clone(), acceptor.clone(), pending.clone());
        async move {
            let slot = tokio::time::timeout(HANDSHAKE_QUEUE_WAIT, pending.acquire_owned());
            let Ok(Ok(_pending)) = slot.await else {
                core.metrics.reject("too_many_handshakes");
                return;
            };
            handle_connection(core, tcp, remote, acceptor).await
        }
    };
    server::accept_loop(
        listener,
        "public",
        MAX_AGENT_CONNECTIONS,
        shutdown,
        tracker,
        handle,
    )
    .await;
}

/// Why a TLS handshake failed, as the rejection metric's label and a hint for the log.
fn handshake_failure(e: &server::HandshakeError) -> (&'static str, &'static str) {
    use rustls::Error;
    match e.rustls() {
        Some(Error::NoCertificatesPresented) => (
            "no_client_certificate",
            "agents must present their client certificate (--client-cert, Secret cluster-agent-tls)",
        ),
        Some(Error::InvalidCertificate(_)) => (
            "bad_client_certificate",
            "the client certificate cannot be parsed or its signature is wrong",
        ),
        _ if matches!(e, server::HandshakeError::TimedOut) => (
            "tls_timeout",
            "a client opened a connection and did not finish TLS",
        ),
        _ => (
            "tls_handshake",
            "see the agent's log for its side of the handshake",
        ),
    }
}

async fn handle_connection(
    core: Arc<Core>,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
) {
    let tls = match server::tls_handshake(&acceptor, tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            let (reason, hint) = handshake_failure(&e);
            core.metrics.reject(reason);
            tracing::warn!(%remote, "agent {e}; {hint}");
            return;
        }
    };
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let chain = Arc::new(chain);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let response = upgrade_request(core.clone(), chain.clone(), remote, req);
        async move { Ok::<_, Infallible>(response) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(UPGRADE_REQUEST_BUFFER)
        .header_read_timeout(UPGRADE_REQUEST_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await;
}

fn plain(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(body::full(message + "\n"));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // A refused agent has nothing more to say on this connection; closing it also
    // ends the body for WebSocket clients that read until EOF.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn header_str(req: &Request<Incoming>, name: impl header::AsHeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn subject_of(chain: &[CertificateDer<'_>]) -> String {
    chain
        .first()
        .and_then(|c| CertInfo::from_der(c).ok())
        .map(|info| crate::safe_text::escape(&info.subject))
        .unwrap_or_else(|| "(no certificate)".into())
}

/// Why an agent's `/ws` request is refused: status, metric label, message.
struct Refusal(StatusCode, &'static str, String);

fn bad_request(message: String) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The 101 to an upgrade to [`H2_UPGRADE`] (GET, HTTP/1.1, `Connection: Upgrade`), or
/// `None` when the request asks for another protocol.
fn h2_switching(req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() != http::Method::GET
        || req.version() != http::Version::HTTP_11
        || !requests_upgrade_to(req.headers(), H2_UPGRADE)
    {
        return None;
    }
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(H2_UPGRADE));
    Some(response)
}

/// What a well-formed `/ws` request says: the plane, the agent's hello, the transport
/// and the 101 for it: an upgrade to [`H2_UPGRADE`], or the WebSocket upgrade that
/// tungstenite checks (GET, HTTP/1.1, Connection: Upgrade, Upgrade: websocket, version
/// 13 and a key) offering planelink's subprotocol.
fn parse_ws_request(
    req: &Request<Incoming>,
) -> Result<(PlaneKey, Hello, Response<Body>, Transport), Refusal> {
    let (Some(plane_type), Some(plane_id)) = (
        query_param(req, "planeType"),
        query_param(req, "planeID").filter(|id| !id.is_empty()),
    ) else {
        return Err(bad_request(
            "the /ws request must name planeType and planeID as query parameters".into(),
        ));
    };
    let plane_type: PlaneType = plane_type.parse().map_err(bad_request)?;
    // A planeID no CR can have is refused before it reaches a key, a log line or a metric.
    crate::planes::crd::check_plane_id(&plane_id).map_err(bad_request)?;
    let (switching, transport) = match h2_switching(req) {
        Some(switching) => (switching, Transport::H2),
        None => (
            create_response_with_body(req, body::empty)
                .map_err(|e| bad_request(format!("not a WebSocket upgrade: {e}")))?,
            Transport::WebSocket,
        ),
    };
    let offers_planelink = transport == Transport::H2
        || req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
    let key = PlaneKey {
        plane_type,
        plane_id,
    };
    if !offers_planelink {
        // OpenChoreo's agents offer no subprotocol and send no hello.
        return Ok((
            key,
            Hello::openchoreo("agent"),
            switching,
            Transport::OpenChoreo,
        ));
    }
    let hello = header_str(req, HELLO_HEADER)
        .ok_or_else(|| bad_request(format!("the agent sent no {HELLO_HEADER} header")))?;
    let hello = Hello::parse(hello).map_err(bad_request)?;
    hello
        .compatible()
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, "incompatible_version", e))?;
    Ok((key, hello, switching, transport))
}

/// What an agent that no plane CR verifies is told: the same fixed text whether its
/// plane exists or not, so an unverified peer learns nothing (planeIDs, CR names, CA
/// subjects). The precise reason goes to the gateway's log and its rejection metric.
pub const UNVERIFIED_REFUSAL: &str = "client certificate verification failed: this certificate is not \
    authorised for the plane it names; the gateway's log says why";

/// What an agent is told, and (for the log only) the precise reason when that differs.
type Refused = (Refusal, Option<String>);

/// The plane CRs whose client CA verifies `chain` and the snapshot that said so, or why
/// none does: the refusal the peer gets, and the precise reason for the log.
fn authorise(
    core: &Core,
    key: &PlaneKey,
    chain: &[CertificateDer<'static>],
    serves: Option<&[PlaneRef]>,
) -> Result<(Vec<crate::planes::CrRef>, Arc<Snapshot>), Refused> {
    let Some(snapshot) = core.registry.current() else {
        let refusal = Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_not_loaded",
            "the gateway has not loaded its plane registry yet; retry shortly".into(),
        );
        return Err((refusal, None));
    };
    let decision = core
        .hub
        .verify(&snapshot, key, chain, SystemTime::now(), serves);
    if !decision.granted.is_empty() {
        return Ok((decision.granted, snapshot));
    }
    let reason = if decision.refused.is_empty() {
        "unknown_plane"
    } else {
        "untrusted_certificate"
    };
    let refusal = Refusal(StatusCode::UNAUTHORIZED, reason, UNVERIFIED_REFUSAL.into());
    Err((refusal, Some(decision.refusal_summary(key))))
}

/// The plane CRs an agent's hello lists (`--serve-planes`), each checked.
fn served_planes(hello: &Hello) -> Result<Option<Vec<PlaneRef>>, Refusal> {
    hello
        .serves
        .as_deref()
        .map(crate::planes::registry::parse_plane_refs)
        .transpose()
        .map_err(|e| bad_request(format!("the agent's --serve-planes: {e}")))
}

/// A CA rollover the dialling agent proposes: recorded for the CRs its current
/// certificate is authorised for, when the renewed certificate verifies against the
/// proposed CAs; otherwise refused and logged. The dial itself is judged on its own.
fn take_proposal(
    core: &Core,
    req: &Request<Incoming>,
    key: &PlaneKey,
    hello: &Hello,
    (presented, granted): (&[CertificateDer<'static>], Option<&[crate::planes::CrRef]>),
) {
    use crate::trust::rollover::{self, Proposal};
    let (Some(cas), Some(chain)) = (
        header_str(req, rollover::CA_HEADER),
        header_str(req, rollover::CERTIFICATE_HEADER),
    ) else {
        return;
    };
    let instance = hello.instance.as_deref().unwrap_or("-");
    let Some(granted) = granted.filter(|g| !g.is_empty()) else {
        core.metrics.ca_proposal("unauthorised");
        tracing::warn!(plane = %key, instance,
            "CA proposal refused: the proposing agent is not authorised for any plane CR");
        return;
    };
    let proposal = Proposal::from_headers(cas, chain).and_then(|p| {
        p.verify(SystemTime::now())?;
        p.renews(presented)?;
        Ok(p)
    });
    match proposal {
        Ok(proposal) => {
            let crs: Vec<String> = granted.iter().map(ToString::to_string).collect();
            // The agent repeats its proposal on every dial: logged when it is news.
            let repeated = granted.iter().all(|cr| {
                core.hub
                    .proposal(key, cr)
                    .is_some_and(|p| p.proposal.cas == proposal.cas)
            });
            if repeated {
                tracing::debug!(plane = %key, instance, "agent repeats its CA proposal");
            } else {
                tracing::info!(plane = %key, instance, fingerprints = %proposal.fingerprints().join(","),
                    crs = %crs.join(","), "agent proposes a CA rollover");
            }
            core.metrics.ca_proposal("accepted");
            // Per CR, the CAs that verified the certificate being renewed: those the
            // rollover may retire, and no other.
            let snapshot = core.registry.current();
            let now = SystemTime::now();
            let replaces: Vec<(crate::planes::CrRef, Vec<String>)> = granted
                .iter()
                .map(|cr| {
                    let cas = snapshot
                        .as_ref()
                        .and_then(|s| s.entry(key, cr))
                        .and_then(|e| e.client_ca.as_ref().ok())
                        .map(|cas| {
                            crate::trust::verify::issuing_cas(presented, cas, now)
                                .map(crate::trust::inspect::fingerprint)
                                .collect()
                        })
                        .unwrap_or_default();
                    (cr.clone(), cas)
                })
                .collect();
            core.hub
                .propose(key, &replaces, proposal, hello.instance.clone());
        }
        Err(e) => {
            core.metrics.ca_proposal("invalid");
            tracing::warn!(plane = %key, instance, "CA proposal refused: {}", crate::safe_text::escape(&e));
        }
    }
}

/// An agent names the replicas it already holds a tunnel to; one more to the same
/// replica is refused (409) before it is registered, as the agent keeps dialling
/// through the load balancer until it holds every replica.
fn check_not_held(core: &Core, req: &Request<Incoming>) -> Result<(), Refusal> {
    let Some(held) = header_str(req, HELD_REPLICAS_HEADER) else {
        return Ok(());
    };
    let held = crate::tunnel::protocol::parse_ids(held)
        .map_err(|e| bad_request(format!("{HELD_REPLICAS_HEADER}: {e}")))?;
    let replica = core.membership.replica();
    if held.contains(&replica) {
        return Err(Refusal(
            StatusCode::CONFLICT,
            "already_connected",
            format!("this agent already holds a tunnel to gateway replica {replica}"),
        ));
    }
    Ok(())
}

/// A verified agent beyond `--max-agents-per-plane` is refused, so that connecting
/// agents cannot grow a plane's state (and its re-verification work) without bound.
fn check_capacity(core: &Core, key: &PlaneKey) -> Result<(), Refusal> {
    let limit = core.config.max_agents_per_plane;
    let connected = core.hub.count(key);
    if connected >= limit {
        return Err(Refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_agents",
            format!(
                "plane {key} already has {connected} agents connected (--max-agents-per-plane {limit}); \
                 stop the extra agents or raise the limit"
            ),
        ));
    }
    Ok(())
}

/// Answers an agent's `/ws` request: 101 and a tunnel, or the reason it is refused.
fn upgrade_request(
    core: Arc<Core>,
    chain: Arc<Vec<CertificateDer<'static>>>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.uri().path() != "/ws" {
        return plain(
            StatusCode::NOT_FOUND,
            "planelink gateway: agents connect to /ws".into(),
        );
    }
    let admitted = parse_ws_request(&req)
        .map_err(|refusal| (refusal, None))
        .and_then(|(key, hello, switching, transport)| {
            let serves = served_planes(&hello).map_err(|refusal| (refusal, None))?;
            let authorised = authorise(&core, &key, &chain, serves.as_deref());
            take_proposal(
                &core,
                &req,
                &key,
                &hello,
                (&chain, authorised.as_ref().ok().map(|(g, _)| g.as_slice())),
            );
            let (granted, verified_by) = authorised?;
            check_not_held(&core, &req).map_err(|refusal| (refusal, None))?;
            check_capacity(&core, &key).map_err(|refusal| (refusal, None))?;
            Ok((
                key,
                (hello, serves),
                (switching, transport),
                granted,
                verified_by,
            ))
        });
    let hello_sent = core.membership.hello();
    let our_hello = HeaderValue::from_str(&hello_sent.to_header()).ok();
    let (key, (hello, serves), (mut response, transport), granted, verified_by) = match admitted {
        Ok(admitted) => admitted,
        Err((Refusal(StatusCode::CONFLICT, _, message), _)) => {
            // Not a refusal but the agent's search for its missing replicas: the answer
            // carries the current membership, which may be what the agent lacked.
            tracing::debug!(%remote, "agent already holds a tunnel to this replica");
            let mut response = plain(StatusCode::CONFLICT, message);
            if let Some(ours) = our_hello {
                response.headers_mut().insert(HELLO_HEADER, ours);
            }
            return response;
        }
        Err((Refusal(status, reason, message), why)) => {
            core.metrics.reject(reason);
            let logged = why.as_deref().unwrap_or(&message);
            tracing::warn!(%remote, subject = %subject_of(&chain), %status, reason,
                "agent refused: {}", crate::safe_text::escape(logged));
            return plain(status, message);
        }
    };
    let headers = response.headers_mut();
    if transport == Transport::WebSocket {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    if let Some(ours) = our_hello.filter(|_| transport != Transport::OpenChoreo) {
        headers.insert(HELLO_HEADER, ours);
    }
    let new_agent = NewAgent {
        key,
        remote,
        subject: subject_of(&chain),
        hello,
        protocol: transport.as_str(),
        chain: chain.as_ref().clone(),
        granted,
        serves,
        going_away: core.hub.tunnel_going_away(),
    };
    tokio::spawn(run_agent(
        core,
        req,
        new_agent,
        (verified_by, transport),
        hello_sent.membership,
    ));
    response
}

/// How long a shutting-down gateway waits for an h2-transport agent to take the
/// going-away news before it closes the tunnel anyway.
const GOING_AWAY_NOTICE: Duration = Duration::from_secs(1);

/// How long an agent has, after the upgrade, to answer over HTTP/2.
const TUNNEL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One request to the agent's built-in `agent` target: proves the tunnel carries HTTP/2
/// both ways (SETTINGS exchanged, a stream served).
async fn probe(sender: &mut hyper::client::conn::http2::SendRequest<Body>) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut request = Request::new(body::empty());
    *request.uri_mut() = http::Uri::from_static("http://agent/");
    request.headers_mut().insert(
        crate::tunnel::protocol::TARGET_HEADER,
        HeaderValue::from_static(crate::tunnel::proxy::Target::AGENT),
    );
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    match response.status() {
        StatusCode::OK => Ok(()),
        other => Err(format!(
            "the agent answered its handshake probe with {other}"
        )),
    }
}

/// A replaced tunnel gets no new requests; a request picked just before it was marked
/// has this long to open its stream ...
const REPLACED_SETTLE: Duration = Duration::from_secs(1);
/// ... and streams in flight this long to finish (a watch may never end on its own; its
/// client starts it again) before the tunnel is closed.
const REPLACED_DRAIN: Duration = Duration::from_secs(60);

async fn close_when_drained(old: Arc<super::hub::AgentConn>, going_away: CancellationToken) {
    let drained = async {
        tokio::time::sleep(REPLACED_SETTLE).await;
        while old.open_streams() > 0 && old.is_replaced() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // A gateway shutting down closes every tunnel itself; a tunnel whose replacement
    // ended first serves on.
    tokio::select! {
        _ = tokio::time::timeout(REPLACED_SETTLE + REPLACED_DRAIN, drained) => {
            if old.is_replaced() {
                old.close.cancel();
            }
        }
        _ = going_away.cancelled() => {}
    }
}

/// Runs one agent's tunnel from the upgrade until it closes or is disconnected.
async fn run_agent(
    core: Arc<Core>,
    req: Request<Incoming>,
    new_agent: NewAgent,
    (verified_by, transport): (Arc<Snapshot>, Transport),
    membership_told: Option<crate::tunnel::protocol::Membership>,
) {
    let remote = new_agent.remote;
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "agent upgrade failed");
            return;
        }
    };
    let io = match transport {
        Transport::H2 => TunnelIo::H2(TokioIo::new(upgraded)),
        Transport::WebSocket => {
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(ws::config()),
            )
            .await;
            TunnelIo::WebSocket(Box::new(
                WsIo::new(ws).closing_on(new_agent.going_away.clone()),
            ))
        }
        Transport::OpenChoreo => {
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(super::openchoreo::ws_config()),
            )
            .await;
            TunnelIo::Local(super::openchoreo::spawn(
                ws,
                core.config.heartbeat,
                new_agent.going_away.clone(),
                remote,
            ))
        }
    };
    let going_away = new_agent.going_away.clone();
    let (mut sender, connection) = match protocol::client_builder(core.config.heartbeat)
        .handshake(TokioIo::new(io))
        .await
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "HTTP/2 handshake with agent failed");
            return;
        }
    };
    tokio::pin!(connection);
    // Registered only once the agent has answered over HTTP/2: one that never speaks it
    // is never picked for requests.
    let answered = tokio::select! {
        _ = &mut connection => Err("the agent closed the tunnel during its handshake".to_string()),
        probed = tokio::time::timeout(TUNNEL_HANDSHAKE_TIMEOUT, probe(&mut sender)) => {
            probed.unwrap_or_else(|_| Err(format!("no HTTP/2 answer within {TUNNEL_HANDSHAKE_TIMEOUT:?}")))
        }
    };
    if let Err(e) = answered {
        core.metrics.reject("tunnel_handshake");
        tracing::warn!(%remote, "agent dropped: {}", crate::safe_text::escape(&e));
        return;
    }
    let agent = core.hub.register(new_agent, sender);
    // A snapshot may have arrived between the authorisation and the registration: then
    // the newcomer (only) is verified again, against the current one.
    if let Some(snapshot) = core.registry.current()
        && !Arc::ptr_eq(&snapshot, &verified_by)
    {
        core.hub.reverify_one(&snapshot, &agent);
    }
    // A membership change pushed between the 101 and the registration did not reach
    // this tunnel; without it the agent would stop dialling for a replica it lacks.
    if core.membership.hello().membership != membership_told {
        super::membership::tell(&core, agent.clone());
    }
    for old in core.hub.replace_older(&agent) {
        tracing::info!(agent = old.id, by = agent.id, plane = %agent.key, remote = %old.remote,
            "agent tunnel replaced by a newer one of the same agent; closing it once drained");
        core.tracker
            .spawn(close_when_drained(old, core.hub.tunnel_going_away()));
    }
    let crs: Vec<String> = agent.granted().iter().map(ToString::to_string).collect();
    tracing::info!(agent = agent.id, plane = %agent.key, %remote, subject = %agent.subject,
        version = %crate::safe_text::escape(&agent.hello.version),
        instance = agent.hello.instance.as_deref().unwrap_or("-"),
        authorised_for = %crs.join(","), "agent connected");
    // Over WebSocket (either protocol), the transport itself says "going away" (a Close
    // frame); over h2
    // the agent is told by a control request, then the tunnel is closed.
    let told_going_away = async {
        match transport {
            Transport::H2 => going_away.cancelled().await,
            Transport::WebSocket | Transport::OpenChoreo => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        result = &mut connection => match result {
            Ok(()) => "the agent closed the tunnel".to_string(),
            Err(e) => format!("tunnel error: {e}"),
        },
        _ = agent.close.cancelled() => "disconnected by the gateway".to_string(),
        _ = told_going_away => {
            // The connection carries the news: it keeps running meanwhile.
            let told = agent.send_control(CONTROL_GOING_AWAY, None, GOING_AWAY_NOTICE);
            tokio::select! {
                _ = &mut connection => {}
                result = told => if let Err(e) = result {
                    tracing::debug!(agent = agent.id, "going-away news not delivered: {e}");
                }
            }
            "the gateway is shutting down".to_string()
        }
    };
    core.hub.unregister(&agent);
    tracing::info!(agent = agent.id, plane = %agent.key, %remote, reason, "agent disconnected");
}
