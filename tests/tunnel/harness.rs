//! A real topology per test: an HTTPS upstream, a gateway on a planes directory, and
//! agents dialling it over mutual TLS, all on loopback with certificates issued per
//! run. The upstream is a small in-test HTTPS server standing in for the remote
//! plane's Kubernetes API and services: no real kube-apiserver runs in this issue's
//! tests, so `/version` answers what the API server would, and requires the bearer
//! token of the agent's kubeconfig.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use planelink::agent::AgentArgs;
use planelink::cli::args_from;
use planelink::gateway::GatewayArgs;
use planelink::planes::crd::{PlaneBuilder, ValueFrom};
use planelink::planes::directory::DirectorySource;
use planelink::planes::manifest::to_yaml;
use planelink::planes::{PlaneType, Registry};
use planelink::trust::issue::{self, CaOptions, FileKind, Issued, LeafOptions};
use planelink::tunnel::body::{self as tbody, Body};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "agent-token-from-kubeconfig";

/// Deterministic content of `/bytes/N`: byte i is `i % 251`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn write(path: &Path, text: &str) {
    issue::write_file(path, text, FileKind::Public).unwrap();
}

pub struct Pki {
    pub dir: PathBuf,
    pub gateway_ca: Issued,
}

impl Pki {
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// Gateway CA and serving cert (127.0.0.1, localhost), a caller client cert, and an
/// upstream CA and serving cert.
pub fn pki(dir: &Path) -> Pki {
    let gateway_ca = crate::common::gateway_files(dir);
    let up_ca = issue::new_ca(&CaOptions::gateway()).unwrap();
    let up = issue::issue_leaf(
        &up_ca,
        &LeafOptions::server("upstream", vec![], vec!["127.0.0.1".parse().unwrap()]),
    )
    .unwrap();
    let up_dir = dir.join("upstream");
    std::fs::create_dir_all(&up_dir).unwrap();
    issue::write_bundle(&up_dir, &up_ca, false, &up).unwrap();
    Pki {
        dir: dir.to_path_buf(),
        gateway_ca,
    }
}

/// An agent identity: its own CA (registered in a plane CR) and client cert.
pub fn agent_identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let ca_pem = crate::common::agent_files(dir, name);
    (dir.join(name), ca_pem)
}

/// A DataPlane `org/NAME` with `plane_id`, trusting the CA `ca_pem`, as a planes-directory manifest.
pub fn dataplane(name: &str, plane_id: &str, ca_pem: &str) -> String {
    let plane = PlaneBuilder::new(PlaneType::DataPlane, "org", name)
        .plane_id(plane_id)
        .client_ca(ValueFrom::inline(ca_pem))
        .build();
    to_yaml(&[plane])
}

// ---------------------------------------------------------------- upstream

pub struct Upstream {
    pub addr: SocketAddr,
    /// Releases the second half of `/stream`.
    pub release: Arc<Notify>,
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(tbody::full(body.into()));
    *r.status_mut() = status;
    r
}

/// A body of `len` pattern bytes produced in 64 KiB chunks, `pause` between chunks.
fn pattern_body(len: usize, pause: Duration) -> Body {
    let (mut tx, body) = tbody::channel();
    tokio::spawn(async move {
        let data = Bytes::from(pattern(len));
        let mut at = 0;
        while at < len {
            let end = (at + 65536).min(len);
            if tx.send_data(data.slice(at..end)).await.is_err() {
                return;
            }
            at = end;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    });
    body
}

/// How the kubelet ends an exec: a Close with 1000 (kubectl reads a Close without a
/// code as an error).
const NORMAL_CLOSE: tokio_tungstenite::tungstenite::protocol::CloseFrame =
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: tokio_tungstenite::tungstenite::Utf8Bytes::from_static(""),
    };

type ServerWs = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The 101 to a WebSocket upgrade with `key` (choosing `protocol`, if any); `serve` gets
/// the WebSocket once the upgrade is done.
fn accept_websocket<F, Fut>(
    req: &mut Request<Incoming>,
    key: &[u8],
    protocol: Option<&str>,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        serve(ws).await;
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    let mut r = Response::new(tbody::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert("upgrade", "websocket".parse().unwrap());
    headers.insert("connection", "Upgrade".parse().unwrap());
    headers.insert("sec-websocket-accept", accept.parse().unwrap());
    if let Some(protocol) = protocol {
        headers.insert("sec-websocket-protocol", protocol.parse().unwrap());
    }
    r
}

/// A pod's exec as the kubelet's streaming server answers it over WebSocket
/// (`v5.channel.k8s.io`; no kubelet runs here): first the exec's query on stdout, then
/// (with stdin) stdin echoed on stdout and each resize reported on stderr; once stdin is
/// closed, or at once without stdin, the exit status on channel 3 and a Close. The pod
/// `missing` does not exist (404).
fn exec_upstream(mut req: Request<Incoming>, pod: &str) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    if pod == "missing" {
        return respond(
            StatusCode::NOT_FOUND,
            r#"{"kind":"Status","status":"Failure","message":"pods \"missing\" not found","code":404}"#,
        );
    }
    if is_spdy_upgrade(&req) {
        let query = req.uri().query().unwrap_or_default().to_string();
        return accept_spdy(&mut req, "v4.channel.k8s.io", move |io| {
            super::spdy::serve_exec(io, query)
        });
    }
    let offered = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (Some(key), true) = (
        req.headers().get("sec-websocket-key").cloned(),
        offered.split(',').any(|p| p.trim() == "v5.channel.k8s.io"),
    ) else {
        return respond(
            StatusCode::BAD_REQUEST,
            "exec takes a v5.channel.k8s.io WebSocket",
        );
    };
    let query = req.uri().query().unwrap_or_default().to_string();
    let serve = |mut ws: ServerWs| async move {
        let frame = |channel: u8, data: &[u8]| {
            let mut bytes = vec![channel];
            bytes.extend_from_slice(data);
            Message::Binary(bytes.into())
        };
        // Each channel opens with its byte alone, as the kubelet's do.
        for channel in [1, 2, 3] {
            let _ = ws.send(frame(channel, b"")).await;
        }
        let _ = ws
            .send(frame(1, format!("exec {query}\n").as_bytes()))
            .await;
        // Without stdin the command has nothing to wait for: it ends here.
        if !query.split('&').any(|p| p == "stdin=true") {
            let _ = ws
                .send(frame(3, br#"{"metadata":{},"status":"Success"}"#))
                .await;
            let _ = ws.close(Some(NORMAL_CLOSE)).await;
            return;
        }
        while let Some(Ok(message)) = ws.next().await {
            let Message::Binary(data) = message else {
                continue;
            };
            let reply = match data.as_ref() {
                [0, input @ ..] => frame(1, input),
                [4, size @ ..] => frame(
                    2,
                    format!("resize {}\n", String::from_utf8_lossy(size)).as_bytes(),
                ),
                [255, 0] => {
                    let _ = ws
                        .send(frame(3, br#"{"metadata":{},"status":"Success"}"#))
                        .await;
                    let _ = ws.close(Some(NORMAL_CLOSE)).await;
                    return;
                }
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    };
    accept_websocket(&mut req, key.as_bytes(), Some("v5.channel.k8s.io"), serve)
}

/// A SPDY/3.1 upgrade, as client-go's SPDY round tripper asks for it.
fn is_spdy_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"))
}

/// The 101 to a SPDY/3.1 upgrade offering `protocol` among its
/// `X-Stream-Protocol-Version`s (400 otherwise, as the kubelet answers); `serve` gets the
/// connection once the upgrade is done.
fn accept_spdy<F, Fut>(req: &mut Request<Incoming>, protocol: &str, serve: F) -> Response<Body>
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let offered = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == protocol);
    if !offered {
        return respond(
            StatusCode::BAD_REQUEST,
            format!("the SPDY upgrade offers no {protocol} stream protocol"),
        );
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            serve(TokioIo::new(upgraded)).await;
        }
    });
    let mut r = Response::new(tbody::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert("upgrade", "SPDY/3.1".parse().unwrap());
    headers.insert("connection", "Upgrade".parse().unwrap());
    headers.insert("x-stream-protocol-version", protocol.parse().unwrap());
    r
}

async fn upstream_handle(release: Arc<Notify>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').collect();
    if let ["", "api", "v1", "namespaces", _, "pods", pod, "exec"] = segments.as_slice() {
        let pod = pod.to_string();
        return exec_upstream(req, &pod);
    }
    // A port-forward takes SPDY only, as the kubelet's streaming server: kubectl's
    // WebSocket attempt is refused and it falls back to SPDY.
    if let ["", "api", "v1", "namespaces", _, "pods", _, "portforward"] = segments.as_slice() {
        if !is_spdy_upgrade(&req) {
            return respond(
                StatusCode::BAD_REQUEST,
                "port-forward takes a SPDY/3.1 upgrade",
            );
        }
        return accept_spdy(
            &mut req,
            "portforward.k8s.io",
            super::spdy::serve_port_forward,
        );
    }
    // Discovery, as much as kubectl exec asks for: the core group with pods.
    let discovery = match path.as_str() {
        "/api" => Some(
            serde_json::json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        "/apis" => {
            Some(serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
        }
        "/api/v1" => Some(
            serde_json::json!({"kind": "APIResourceList", "groupVersion": "v1",
            "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "list"], "shortNames": ["po"]},
                {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions",
                 "verbs": ["create", "get"]},
                {"name": "pods/portforward", "singularName": "", "namespaced": true,
                 "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}]}),
        ),
        _ => None,
    };
    if let Some(document) = discovery {
        let mut r = respond(StatusCode::OK, document.to_string());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return r;
    }
    // The pod kubectl exec looks up first: running, one container `main`.
    if let ["", "api", "v1", "namespaces", namespace, "pods", pod] = segments.as_slice() {
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Running"}});
        let mut r = respond(StatusCode::OK, pod.to_string());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return r;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let mut r = Response::new(pattern_body(n, Duration::ZERO));
        r.headers_mut().insert("content-length", n.into());
        return r;
    }
    if let Some(n) = path.strip_prefix("/slow-bytes/") {
        return Response::new(pattern_body(
            n.parse().unwrap_or(0),
            Duration::from_millis(100),
        ));
    }
    match path.as_str() {
        "/sha256" => {
            let mut hasher = Sha256::new();
            let mut total = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return respond(StatusCode::BAD_REQUEST, "body error");
                };
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    total += data.len();
                }
            }
            let hex: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            respond(StatusCode::OK, format!("{total} {hex}"))
        }
        "/stream" => {
            let stream = async_stream(release);
            Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)))
        }
        "/slow-head" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            respond(StatusCode::OK, "late")
        }
        "/version" => {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if auth != Some(&format!("Bearer {TOKEN}")) {
                return respond(
                    StatusCode::UNAUTHORIZED,
                    "{\"kind\":\"Status\",\"message\":\"Unauthorized\"}",
                );
            }
            let mut r = respond(
                StatusCode::OK,
                r#"{"major":"1","minor":"32","gitVersion":"v1.32.0-upstream-under-test"}"#,
            );
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        "/identity" => {
            // Every identity-bearing header the upstream received, one per line.
            let mut seen: Vec<String> = req
                .headers()
                .iter()
                .filter(|(name, _)| {
                    let name = name.as_str();
                    name == "authorization"
                        || name == "forwarded"
                        || name.starts_with("impersonate-")
                        || name.starts_with("x-remote-")
                        || name.starts_with("x-forwarded-")
                })
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
                .collect();
            seen.sort();
            respond(StatusCode::OK, seen.join("\n"))
        }
        "/headers" => {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let injected = req
                .headers()
                .keys()
                .any(|k| k.as_str().starts_with("planelink-"));
            respond(
                StatusCode::OK,
                format!("x-request-id={id} planelink-headers={injected}"),
            )
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                return respond(StatusCode::BAD_REQUEST, "not a websocket");
            };
            let echo = |mut ws: ServerWs| async move {
                use futures_util::{SinkExt, StreamExt};
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            };
            accept_websocket(&mut req, key.as_bytes(), None, echo)
        }
        _ => respond(StatusCode::NOT_FOUND, "no such upstream path"),
    }
}

type Chunk = Result<Frame<Bytes>, planelink::tunnel::BoxError>;

fn async_stream(release: Arc<Notify>) -> impl futures_util::Stream<Item = Chunk> + Send {
    futures_util::stream::unfold(0u8, move |step| {
        let release = release.clone();
        async move {
            match step {
                0 => Some((Ok(Frame::data(Bytes::from_static(b"first\n"))), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(Frame::data(Bytes::from_static(b"last\n"))), 2))
                }
                _ => None,
            }
        }
    })
}

pub async fn start_upstream(pki: &Pki) -> Upstream {
    let cert = planelink::trust::tls::ReloadingCert::load(
        &pki.dir.join("upstream/tls.crt"),
        &pki.dir.join("upstream/tls.key"),
    )
    .unwrap();
    let config = planelink::trust::tls::server_config(cert, None, &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let rel = release.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let release = rel.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let release = release.clone();
                    async move { Ok::<_, Infallible>(upstream_handle(release, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Upstream { addr, release }
}

/// A kubeconfig that points the agent's `k8s` target at the upstream with a token.
pub fn kubeconfig(pki: &Pki, upstream: SocketAddr) -> PathBuf {
    let path = pki.dir.join("kubeconfig");
    write(
        &path,
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: up\n  cluster:\n    server: https://{upstream}\n    \
             certificate-authority: {}\nusers:\n- name: agent\n  user:\n    token: {TOKEN}\ncontexts:\n- name: c\n  \
             context:\n    cluster: up\n    user: agent\ncurrent-context: c\n",
            pki.dir.join("upstream/ca.crt").display()
        ),
    );
    path
}

// ---------------------------------------------------------------- topology

pub struct Topology {
    pub _dir: tempfile::TempDir,
    pub pki: Pki,
    pub planes: PathBuf,
    pub upstream: Upstream,
    pub gateway: planelink::gateway::Gateway,
    pub shutdown: CancellationToken,
    /// The gateway's flags (`--port=0`), to start it again.
    pub gateway_argv: Vec<String>,
}

/// Starts an in-process gateway with `argv` serving the planes directory `planes`.
pub async fn launch_gateway(
    argv: Vec<String>,
    planes: &Path,
) -> (planelink::gateway::Gateway, CancellationToken) {
    let args: GatewayArgs = args_from(argv).unwrap();
    let config = planelink::gateway::Config::try_from(args).unwrap();
    let listeners = planelink::gateway::Listeners::bind(&config.server)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let registry = Registry::spawn(Box::new(DirectorySource::new(planes)));
    let gateway = planelink::gateway::start(&config.server, listeners, registry, shutdown.clone())
        .await
        .unwrap();
    (gateway, shutdown)
}

impl Topology {
    /// A gateway whose planes directory registers `dataplane/p1` (CR org/dp1) for agent identity `a1`.
    pub async fn start(internal_mtls: bool) -> Topology {
        Topology::start_with(internal_mtls, &[]).await
    }

    /// [`Topology::start`] with extra gateway flags.
    pub async fn start_with(internal_mtls: bool, extra: &[&str]) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let upstream = start_upstream(&pki).await;
        let planes = dir.path().join("planes");
        std::fs::create_dir_all(&planes).unwrap();
        let (_, ca) = agent_identity(dir.path(), "a1");
        write(&planes.join("dp1.yaml"), &dataplane("dp1", "p1", &ca));
        let mut argv = vec![
            "gateway".to_string(),
            "--port=0".into(),
            "--internal-port=0".into(),
            "--health-port=0".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--server-cert={}", pki.path("gateway/tls.crt")),
            format!("--server-key={}", pki.path("gateway/tls.key")),
            format!("--planes-dir={}", planes.display()),
            "--request-timeout=20s".into(),
            "--shutdown-timeout=2s".into(),
            "--allowed-targets=k8s,agent,svc".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        if internal_mtls {
            argv.push(format!(
                "--internal-client-ca-cert={}",
                pki.path("gateway/ca.crt")
            ));
        } else {
            argv.push("--internal-mtls=false".into());
        }
        let (gateway, shutdown) = launch_gateway(argv.clone(), &planes).await;
        Topology {
            _dir: dir,
            pki,
            planes,
            upstream,
            gateway,
            shutdown,
            gateway_argv: argv,
        }
    }

    pub fn agent_argv(&self, identity: &str, plane_id: &str) -> Vec<String> {
        let id = self.pki.dir.join(identity);
        vec![
            "agent".to_string(),
            format!(
                "--server-url=wss://127.0.0.1:{}/ws",
                self.gateway.public_addr.port()
            ),
            format!("--plane-id={plane_id}"),
            format!("--client-cert={}", id.join("tls.crt").display()),
            format!("--client-key={}", id.join("tls.key").display()),
            format!("--server-ca={}", self.pki.path("gateway/ca.crt")),
            format!(
                "--kubeconfig={}",
                kubeconfig(&self.pki, self.upstream.addr).display()
            ),
            "--health-port=0".into(),
            "--reconnect-delay=100ms".into(),
            "--max-reconnect-delay=500ms".into(),
        ]
    }

    /// The validated configuration of an agent with `identity` for `plane_id`.
    pub fn agent_config(&self, identity: &str, plane_id: &str) -> planelink::agent::Config {
        let args: AgentArgs = args_from(self.agent_argv(identity, plane_id)).unwrap();
        planelink::agent::Config::try_from(args).unwrap()
    }

    /// Starts an in-process agent and waits (bounded) until the gateway has registered it:
    /// the agent counts itself connected after the WebSocket upgrade, the gateway only
    /// once the tunnel's HTTP/2 handshake is done.
    pub async fn agent(&self, identity: &str, plane_id: &str) -> planelink::agent::Agent {
        let key = planelink::planes::PlaneKey {
            plane_type: PlaneType::DataPlane,
            plane_id: plane_id.to_string(),
        };
        let before = self.gateway.status(&key, None).connected_agents;
        let agent = planelink::agent::start(
            self.agent_config(identity, plane_id),
            None,
            self.shutdown.child_token(),
        )
        .await
        .unwrap();
        assert!(
            agent.wait_connected(Duration::from_secs(5)).await,
            "agent {identity} did not connect within 5 s"
        );
        self.wait_for_agents(plane_id, before + 1).await;
        agent
    }

    /// Waits (5 s at most) until the gateway has registered `count` agents for the
    /// data plane `plane_id`.
    pub async fn wait_for_agents(&self, plane_id: &str, count: usize) {
        let key = planelink::planes::PlaneKey {
            plane_type: PlaneType::DataPlane,
            plane_id: plane_id.to_string(),
        };
        let registered = async {
            while self.gateway.status(&key, None).connected_agents < count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), registered)
            .await
            .unwrap_or_else(|_| {
                panic!("the gateway did not register {count} agents for {plane_id} within 5 s")
            });
    }

    /// Waits (10 s at most) until the gateway has exactly `count` agents registered for
    /// the data plane `plane_id`.
    pub async fn wait_for_agents_exactly(&self, plane_id: &str, count: usize) {
        let key = planelink::planes::PlaneKey {
            plane_type: PlaneType::DataPlane,
            plane_id: plane_id.to_string(),
        };
        let settled = async {
            while self.gateway.status(&key, None).connected_agents != count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), settled)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the gateway has {} agents for {plane_id}, not {count}, after 10 s",
                    self.gateway.status(&key, None).connected_agents
                )
            });
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "10"])
            .arg(format!("http://{}/metrics", self.gateway.health_addr));
        String::from_utf8_lossy(&curl(cmd).await.stdout).into_owned()
    }

    pub fn proxy_url(&self, target: &str, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}/api/proxy/dataplane/p1/org/dp1/{target}{path}",
            self.gateway.internal_addr.port()
        )
    }

    pub fn api_url(&self, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}{path}",
            self.gateway.internal_addr.port()
        )
    }

    /// curl's common flags: trust the gateway CA, present the caller certificate.
    pub fn curl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            &self.pki.path("gateway/ca.crt"),
        ])
        .args([
            "--cert",
            &self.pki.path("caller.crt"),
            "--key",
            &self.pki.path("caller.key"),
        ]);
        cmd
    }
}

/// Runs curl in a blocking thread so the runtime keeps serving.
pub async fn curl(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        crate::common::output_within(&mut cmd, crate::common::COMMAND_LIMIT)
    })
    .await
    .unwrap()
}

/// A planelink process (the real binary) whose log on stderr is read line by line;
/// killed and reaped when dropped, however the test ends.
pub struct LoggedProcess {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl LoggedProcess {
    /// Spawns `planelink ARGS` with `RUST_LOG` unset, so that its flags alone choose
    /// what it logs.
    pub fn spawn(args: &[String]) -> LoggedProcess {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_planelink"))
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("LOG_LEVEL")
            .env_remove("LOG_FORMAT")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        LoggedProcess { child, lines }
    }

    /// The next log line; panics naming `what` was awaited if none comes within 20 s,
    /// and on a terminal colour sequence (a log written to a pipe has none).
    pub async fn next_line(&mut self, what: &str) -> String {
        match tokio::time::timeout(Duration::from_secs(20), self.lines.recv()).await {
            Ok(Some(line)) => {
                assert!(
                    !line.contains('\u{1b}'),
                    "a colour sequence in a piped log: {line:?}"
                );
                line
            }
            Ok(None) => panic!("the process exited before logging {what}"),
            Err(_) => panic!("the process logged no {what} within 20 s"),
        }
    }

    /// Log lines up to and including the first that `matches`; panics as [`Self::next_line`].
    pub async fn lines_until(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self.next_line(what).await;
            let done = matches(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl LoggedProcess {
    /// Kills the process and returns what it logged that was not read yet.
    pub async fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = Vec::new();
        // The reader thread ends at the closed pipe, which closes the channel.
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(10), self.lines.recv()).await
        {
            rest.push(line);
        }
        rest
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- request loop

/// Callers sending `GET /version` to the `k8s` target through the gateway's internal
/// listener until stopped, each on its own keep-alive connection (hyper's pooled
/// client, as a controller would); every answer other than 200 is kept.
pub struct RequestLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<std::sync::atomic::AtomicUsize>,
    callers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl RequestLoop {
    pub fn start(topo: &Topology, callers: usize) -> RequestLoop {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let url = topo.proxy_url("k8s", "/version");
        let callers = (0..callers)
            .map(|_| {
                let (client, url) = (crate::common::caller_client(&topo.pki.dir), url.clone());
                let (stop, ok) = (stop.clone(), ok.clone());
                tokio::spawn(crate::common::call_until(client, url, stop, ok))
            })
            .collect();
        RequestLoop { stop, ok, callers }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (10 s at most) until `more` further requests have succeeded: the loop is
    /// running, not stuck.
    pub async fn advance(&self, more: usize) {
        let target = self.ok() + more;
        let progressed = async {
            while self.ok() < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), progressed)
            .await
            .unwrap_or_else(|_| panic!("fewer than {more} requests succeeded within 10 s"));
    }

    /// Stops the callers and asserts that every request succeeded.
    pub async fn finish_without_failures(self) {
        let (ok, failures) = self.finish().await;
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {failures:?}",
            failures.len(),
            ok + failures.len()
        );
        eprintln!("request loop: {ok} requests, none failed");
    }

    /// Stops the callers; the requests that succeeded and every failure.
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut failures = Vec::new();
        for caller in self.callers {
            failures.extend(caller.await.unwrap());
        }
        (self.ok.load(std::sync::atomic::Ordering::Relaxed), failures)
    }
}
