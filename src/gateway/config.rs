//! The gateway's validated configuration: `Config::try_from(GatewayArgs)` is the whole
//! validation, so every bad value exits 64 before a port is bound; and [`Listeners`],
//! bound by the caller (`main`, `up`, the controller, tests on port 0).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use super::args::{GatewayArgs, ServerArgs};
use super::checks::RequestChecks;
use super::paths::PathRule;
use crate::config::{self, ConfigError};
use crate::server::{self, HttpTimeouts};
use crate::trust::Purpose;
use crate::tunnel::protocol::Heartbeat;
use crate::tunnel::proxy::Target;

/// Where the gateway learns its planes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrySource {
    /// `--planes-dir`: manifests on disk, polled.
    Directory(PathBuf),
    /// The plane resources in Kubernetes (`--kubeconfig`, or in-cluster).
    Kubernetes { kubeconfig: Option<PathBuf> },
}

/// Which replica a gateway is, and how the replicas are counted.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: String,
    pub count: ReplicaCount,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaCount {
    /// `--replicas N`, or 1: no Kubernetes to count them.
    Fixed(usize),
    /// One Lease per live replica, in `namespace` (the client's default when `None`).
    Leases {
        kubeconfig: Option<PathBuf>,
        namespace: Option<String>,
        advertise: Option<IpAddr>,
    },
}

impl ReplicaConfig {
    /// A gateway alone (the controller's embedded one, `up`, tests).
    pub fn single() -> ReplicaConfig {
        ReplicaConfig {
            id: default_replica_id(),
            count: ReplicaCount::Fixed(1),
        }
    }
}

/// The host name (lowercased, reduced to what an ID allows) and a random suffix, so two
/// gateways on one host differ.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(48)
        .collect();
    let host = host.trim_matches('-');
    let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    if host.is_empty() {
        format!("gateway-{suffix}")
    } else {
        format!("{host}-{suffix}")
    }
}

/// `planelink gateway`: what it serves and where its planes come from.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub registry: RegistrySource,
}

/// What a gateway serves with, wherever it runs (alone, or in the controller's process).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind_address: IpAddr,
    pub port: u16,
    pub internal_port: u16,
    pub health_port: u16,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Internal callers' client certificates must chain to this CA; `None`: internal
    /// mutual TLS is off.
    pub internal_client_ca: Option<PathBuf>,
    pub heartbeat: Heartbeat,
    /// Time limit for a non-streaming proxied request's response head.
    pub request_timeout: Duration,
    /// The internal listener's connection timeouts.
    pub http: HttpTimeouts,
    /// Serving on, not ready, before the listeners close.
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
    pub checks: RequestChecks,
    /// 0 = no limit.
    pub max_body_size: u64,
    pub max_agents_per_plane: usize,
    pub replicas: ReplicaConfig,
}

impl TryFrom<GatewayArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: GatewayArgs) -> Result<Config, ConfigError> {
        let mut server = ServerConfig::new(&args.server, args.bind_address)?;
        if let Some(id) = &args.replica_id {
            crate::tunnel::protocol::check_id(id)
                .map_err(|e| ConfigError::new("--replica-id", e))?;
            server.replicas.id = id.clone();
        }
        if let Some(ns) = &args.lease_namespace {
            let label = ns.len() <= 63
                && ns.starts_with(|c: char| c.is_ascii_alphanumeric())
                && ns.ends_with(|c: char| c.is_ascii_alphanumeric())
                && ns
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !label {
                return Err(ConfigError::new(
                    "--lease-namespace",
                    "not a namespace name: at most 63 lowercase letters, digits and '-'",
                ));
            }
        }
        server.replicas.count = match (args.replicas, &args.planes_dir) {
            (Some(n), _) => ReplicaCount::Fixed(n as usize),
            (None, Some(_)) => ReplicaCount::Fixed(1),
            (None, None) => ReplicaCount::Leases {
                kubeconfig: args.kubeconfig.clone(),
                namespace: args.lease_namespace.clone(),
                advertise: args
                    .advertise_address
                    .or((!args.bind_address.is_unspecified()).then_some(args.bind_address)),
            },
        };
        let registry = match (args.planes_dir, args.kubeconfig) {
            (Some(dir), _) => {
                config::check_existing_dir("--planes-dir", &dir)?;
                RegistrySource::Directory(dir)
            }
            (None, kubeconfig) => {
                if let Some(path) = &kubeconfig {
                    config::check_existing_file("--kubeconfig", path)?;
                }
                RegistrySource::Kubernetes { kubeconfig }
            }
        };
        Ok(Config { server, registry })
    }
}

impl ServerConfig {
    /// Validates the gateway's serving flags the way the running gateway relies on them.
    pub fn new(args: &ServerArgs, bind_address: IpAddr) -> Result<ServerConfig, ConfigError> {
        check_ports(args)?;
        config::check_cert_file(
            "--server-cert",
            &args.server_cert,
            Purpose::ServerCert,
            "mount the gateway's serving certificate (Secret cluster-gateway-tls) there, or issue one with \
             `planelink register certs gateway`",
        )?;
        config::check_key_pair(
            "--server-cert",
            &args.server_cert,
            "--server-key",
            &args.server_key,
        )?;
        let internal_client_ca = match (&args.internal_client_ca_cert, args.internal_mtls) {
            (None, true) => {
                return Err(ConfigError::new(
                    "--internal-client-ca-cert",
                    "required with --internal-mtls (the default): give the CA bundle internal callers' client \
                     certificates chain to, or turn internal mTLS off with --internal-mtls=false",
                ));
            }
            (Some(ca), true) => {
                config::check_cert_file(
                    "--internal-client-ca-cert",
                    ca,
                    Purpose::ClientCa,
                    "give the CA that issued the internal callers' client certificates",
                )?;
                Some(ca.clone())
            }
            (_, false) => None,
        };
        if args.skip_client_cert_verify {
            tracing::warn!(
                "--skip-client-cert-verify is deprecated and has no effect: agents are always verified against \
                 their plane's CA; use --internal-mtls=false to turn off internal caller verification"
            );
        }
        config::check_heartbeat(args.heartbeat_interval, args.heartbeat_timeout)?;
        let allowed_targets = check_timeouts_and_targets(args)?;
        Ok(ServerConfig {
            bind_address,
            port: args.port,
            internal_port: args.internal_port,
            health_port: args.health_port,
            server_cert: args.server_cert.clone(),
            server_key: args.server_key.clone(),
            internal_client_ca,
            heartbeat: Heartbeat {
                interval: args.heartbeat_interval,
                timeout: args.heartbeat_timeout,
            },
            request_timeout: args.request_timeout,
            http: HttpTimeouts {
                header_read: args.read_timeout,
                write: args.write_timeout,
                idle: args.idle_timeout,
            },
            shutdown_delay: args.shutdown_delay,
            shutdown_timeout: args.shutdown_timeout,
            checks: RequestChecks {
                allowed_targets,
                blocked_paths: path_rules("--blocked-paths", &args.blocked_paths)?,
                allowed_paths: match &args.allowed_paths {
                    Some(paths) => Some(path_rules("--allowed-paths", paths)?),
                    None => None,
                },
            },
            max_body_size: args.max_body_size,
            max_agents_per_plane: args.max_agents_per_plane as usize,
            replicas: ReplicaConfig::single(),
        })
    }
}

/// The four time limits are above zero; the allowed targets are names.
fn check_timeouts_and_targets(args: &ServerArgs) -> Result<Vec<Target>, ConfigError> {
    for (flag, value) in [
        ("--request-timeout", args.request_timeout),
        ("--read-timeout", args.read_timeout),
        ("--write-timeout", args.write_timeout),
        ("--idle-timeout", args.idle_timeout),
    ] {
        config::check_positive(flag, value)?;
    }
    args.allowed_targets
        .iter()
        .map(|t| t.trim().parse::<Target>())
        .collect::<Result<Vec<Target>, String>>()
        .map_err(|e| ConfigError::new("--allowed-targets", e))
}

fn path_rules(flag: &str, paths: &[String]) -> Result<Vec<PathRule>, ConfigError> {
    paths
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| PathRule::parse(p).map_err(|e| ConfigError::new(flag, e)))
        .collect()
}

fn check_ports(args: &ServerArgs) -> Result<(), ConfigError> {
    let ports = [
        ("--port", args.port),
        ("--internal-port", args.internal_port),
        ("--health-port", args.health_port),
    ];
    for (i, (flag, port)) in ports.iter().enumerate() {
        for (other_flag, other) in &ports[..i] {
            if *port != 0 && port == other {
                return Err(ConfigError::new(
                    *flag,
                    format!(
                        "port {port} is already used by {other_flag}; give each listener its own port"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The gateway's three listeners, bound before it starts.
pub struct Listeners {
    pub public: TcpListener,
    pub internal: TcpListener,
    pub health: TcpListener,
}

impl Listeners {
    /// Binds the ports of `config` on its bind address.
    pub async fn bind(config: &ServerConfig) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            public: server::bind(config.bind_address, config.port, "--port").await?,
            internal: server::bind(config.bind_address, config.internal_port, "--internal-port")
                .await?,
            health: server::bind(config.bind_address, config.health_port, "--health-port").await?,
        })
    }
}
