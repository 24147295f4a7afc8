//! The agent's validated configuration: `Config::try_from(AgentArgs)` checks every flag
//! (certificates, URL, timeouts, the routes file) so a bad value exits 64 before anything
//! is bound or dialled.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::args::AgentArgs;
use super::upstream::{self, Upstream};
use crate::config::{self, ConfigError};
use crate::planes::{PlaneType, PlaneTypeName};
use crate::trust::Purpose;
use crate::tunnel::dial::{DialError, TlsIdentity};
use crate::tunnel::protocol::Heartbeat;

/// The agent's TLS material, followed by [`super::identity`] (renewed files are picked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub server_ca: PathBuf,
    /// The agent's own CA, proposed to the gateway when it changes; may not exist.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files once, as they are now.
    pub fn load(&self) -> Result<TlsIdentity, DialError> {
        TlsIdentity::load(&self.server_ca, &self.client_cert, &self.client_key)
    }
}

/// Reconnect delays: exponential from `base` up to `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `--server-url` as given, for messages.
    pub server_url: String,
    /// The `/ws` URL with the plane named in its query.
    pub dial_url: url::Url,
    /// With `--plane-type workflowplane`: the same URL naming `buildplane`, dialled from
    /// the first time a gateway refuses the newer name.
    pub plane_type_fallback: Option<PlaneTypeFallback>,
    pub plane_type: PlaneType,
    pub plane_id: String,
    /// `--serve-planes`: the CRs this agent serves, sent to the gateway.
    pub serves: Option<Vec<crate::planes::registry::PlaneRef>>,
    /// `None` with `--tls-enabled=false` (single-host tests only).
    pub tls: Option<TlsFiles>,
    pub kubeconfig: Option<PathBuf>,
    /// The `--routes` file's upstreams, by name.
    pub routes: BTreeMap<String, Upstream>,
    pub backoff: Backoff,
    /// `--protocol`.
    pub protocol: super::args::TunnelProtocol,
    pub heartbeat: Heartbeat,
    pub request_timeout: Duration,
    /// Where `/health`, `/ready` and `/metrics` are served; `None` with `--health-port 0`.
    pub health: Option<SocketAddr>,
}

impl TryFrom<AgentArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: AgentArgs) -> Result<Config, ConfigError> {
        let plane_id = match args.plane_id.as_deref() {
            None | Some("") => {
                return Err(ConfigError::new(
                    "--plane-id",
                    "required (env PLANE_ID): the planeID of this plane's CR in the control plane \
                     (spec.planeID, or the CR's name when unset)",
                ));
            }
            Some(id) => {
                crate::planes::crd::check_plane_id(id)
                    .map_err(|e| ConfigError::new("--plane-id", e))?;
                id.to_string()
            }
        };
        if let Some(listed) = &args.serve_planes
            && listed.len() > crate::planes::registry::MAX_SERVED_PLANES
        {
            return Err(ConfigError::new(
                "--serve-planes",
                format!(
                    "lists {} plane CRs, more than the {} one agent may serve; run an agent per group of planes",
                    listed.len(),
                    crate::planes::registry::MAX_SERVED_PLANES
                ),
            ));
        }
        let server = server_url(&args)?;
        let dial_url = dial_url_with(&server, args.plane_type.wire, &plane_id);
        let plane_type_fallback = match args.plane_type.wire {
            PlaneTypeName::WORKFLOW_PLANE => Some(PlaneTypeFallback {
                url: dial_url_with(&server, PlaneType::BuildPlane.as_str(), &plane_id),
                taken: Arc::default(),
            }),
            _ => None,
        };
        let tls = args.tls_enabled.then(|| TlsFiles {
            client_cert: args.client_cert.clone(),
            client_key: args.client_key.clone(),
            server_ca: args.server_ca.clone(),
            client_ca: Some(
                args.client_ca
                    .clone()
                    .unwrap_or_else(|| args.client_cert.with_file_name("ca.crt")),
            ),
        });
        if let Some(tls) = &tls {
            check_tls_files(tls)?;
        }
        config::check_heartbeat(args.heartbeat_interval, args.heartbeat_timeout)?;
        config::check_positive("--reconnect-delay", args.reconnect_delay)?;
        config::check_positive("--request-timeout", args.request_timeout)?;
        if args.max_reconnect_delay < args.reconnect_delay {
            return Err(ConfigError::new(
                "--max-reconnect-delay",
                "is shorter than --reconnect-delay; raise it (default 2m)",
            ));
        }
        let routes = match &args.routes {
            Some(path) => upstream::load_routes(path)
                .map_err(|e| ConfigError::new("--routes", format!("{e:#}")))?,
            None => BTreeMap::new(),
        };
        if let Some(kubeconfig) = &args.kubeconfig {
            config::check_existing_file("--kubeconfig", kubeconfig)?;
        }
        Ok(Config {
            server_url: args.server_url,
            dial_url,
            plane_type_fallback,
            plane_type: args.plane_type.plane_type,
            plane_id,
            serves: args.serve_planes,
            tls,
            kubeconfig: args.kubeconfig,
            routes,
            backoff: Backoff {
                base: args.reconnect_delay,
                max: args.max_reconnect_delay,
            },
            protocol: args.protocol,
            heartbeat: Heartbeat {
                interval: args.heartbeat_interval,
                timeout: args.heartbeat_timeout,
            },
            request_timeout: args.request_timeout,
            health: (args.health_port != 0)
                .then(|| SocketAddr::new(args.bind_address, args.health_port)),
        })
    }
}

/// The dial URL naming the plane type `wire` instead.
#[derive(Debug, Clone)]
pub struct PlaneTypeFallback {
    pub url: url::Url,
    /// Whether a gateway refused the newer name: later dials take `url` straight away.
    pub taken: Arc<AtomicBool>,
}

/// `server` (`--server-url`) with the plane named in its query.
fn dial_url_with(server: &url::Url, plane_type: &str, plane_id: &str) -> url::Url {
    let mut url = server.clone();
    url.query_pairs_mut()
        .append_pair("planeType", plane_type)
        .append_pair("planeID", plane_id);
    url
}

/// `--server-url`, checked: a WebSocket URL with a host.
fn server_url(args: &AgentArgs) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(&args.server_url).map_err(|e| {
        ConfigError::new(
            "--server-url",
            format!(
                "{:?} is not a URL ({e}); write it like wss://cluster-gateway.example.com:8443/ws",
                args.server_url
            ),
        )
    })?;
    match (url.scheme(), args.tls_enabled) {
        ("wss", _) | ("ws", false) => {}
        ("ws", true) => {
            return Err(ConfigError::new(
                "--server-url",
                "ws:// is plain text; use wss:// (or --tls-enabled=false for single-host tests)",
            ));
        }
        (other, _) => {
            return Err(ConfigError::new(
                "--server-url",
                format!("scheme {other}:// is not a WebSocket URL; use wss://HOST:PORT/ws"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(
            "--server-url",
            "the URL names no host; use wss://HOST:PORT/ws",
        ));
    }
    Ok(url)
}

fn check_tls_files(tls: &TlsFiles) -> Result<(), ConfigError> {
    config::check_cert_file(
        "--server-ca",
        &tls.server_ca,
        Purpose::ServerCa,
        "mount ca.crt of Secret cluster-gateway-ca (via ConfigMap cluster-gateway-ca in this plane), \
         or --tls-enabled=false for single-host tests",
    )?;
    config::check_cert_file(
        "--client-cert",
        &tls.client_cert,
        Purpose::ClientCert,
        "mount Secret cluster-agent-tls there, or issue one with `planelink register certs agent`",
    )?;
    config::check_key_pair(
        "--client-cert",
        &tls.client_cert,
        "--client-key",
        &tls.client_key,
    )
}
