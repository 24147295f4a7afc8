//! The gateway's flags: one clap definition for parsing, `--help`, man pages and
//! completions. [`ServerArgs`] is what a gateway serves with; the controller embeds it
//! under `--with-gateway`. Validation lives in [`super::config`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};

use crate::config::{byte_size, duration};

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Address all listeners bind to.
    #[arg(
        long,
        env = "BIND_ADDRESS",
        default_value = "0.0.0.0",
        help_heading = "Listeners"
    )]
    pub bind_address: IpAddr,

    /// Directory of plane manifests (DataPlane, BuildPlane, ObservabilityPlane, Secret; YAML or JSON),
    /// watched live. Without it the gateway watches the plane resources in Kubernetes.
    #[arg(long, env = "PLANES_DIR", help_heading = "Plane registry")]
    pub planes_dir: Option<PathBuf>,

    /// Kubeconfig for watching plane resources; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG", help_heading = "Plane registry")]
    pub kubeconfig: Option<PathBuf>,

    /// This replica's ID, told to agents and naming its Lease (the pod name on Kubernetes);
    /// the host name and a random suffix when unset.
    #[arg(long, env = "POD_NAME", help_heading = "Replicas")]
    pub replica_id: Option<String>,

    /// How many gateway replicas serve behind the agents' --server-url, when they are not
    /// counted by Leases (with --planes-dir the default is 1). Agents hold one tunnel to each.
    #[arg(long, env = "GATEWAY_REPLICAS", value_parser = clap::value_parser!(u32).range(1..=64), help_heading = "Replicas")]
    pub replicas: Option<u32>,

    /// IP at which the controller reaches this replica's internal port, recorded in its
    /// Lease (the pod IP); the bind address when that is not 0.0.0.0.
    #[arg(long, env = "POD_IP", help_heading = "Replicas")]
    pub advertise_address: Option<IpAddr>,

    /// Namespace of the replicas' Leases; the pod's (or the kubeconfig context's) namespace when unset.
    #[arg(long, env = "POD_NAMESPACE", help_heading = "Replicas")]
    pub lease_namespace: Option<String>,
}

/// The listeners, TLS, timeouts and proxy rules of a gateway.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Public port serving agents' WebSocket endpoint (/ws) over mutual TLS.
    #[arg(
        long,
        env = "AGENT_SERVER_PORT",
        default_value_t = 8443,
        help_heading = "Listeners"
    )]
    pub port: u16,

    /// Internal port serving callers: the proxy (/api/proxy/...) and the plane API (/api/v1/planes/...).
    #[arg(
        long,
        env = "AGENT_INTERNAL_PORT",
        default_value_t = 8444,
        help_heading = "Listeners"
    )]
    pub internal_port: u16,

    /// Port serving /health, /ready and /metrics over plain HTTP.
    #[arg(
        long,
        env = "HEALTH_PORT",
        default_value_t = 8080,
        help_heading = "Listeners"
    )]
    pub health_port: u16,

    /// Server certificate (PEM) for the public and internal listeners; reloaded when the file changes.
    #[arg(
        long,
        env = "SERVER_CERT_PATH",
        default_value = "/certs/tls.crt",
        help_heading = "TLS"
    )]
    pub server_cert: PathBuf,

    /// Private key of the server certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "SERVER_KEY_PATH",
        default_value = "/certs/tls.key",
        help_heading = "TLS"
    )]
    pub server_key: PathBuf,

    /// Require and verify client certificates on the internal listener (--internal-mtls=false to turn off).
    #[arg(long, env = "INTERNAL_MTLS_ENABLED", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new(),
          help_heading = "TLS")]
    pub internal_mtls: bool,

    /// CA bundle (PEM) that internal callers' client certificates must chain to; required with --internal-mtls.
    #[arg(long, env = "INTERNAL_CLIENT_CA_PATH", help_heading = "TLS")]
    pub internal_client_ca_cert: Option<PathBuf>,

    /// Deprecated and without effect: agents are always verified against their plane's CA.
    #[arg(long, env = "SKIP_CLIENT_CERT_VERIFY", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new(),
          hide_short_help = true, help_heading = "TLS")]
    pub skip_client_cert_verify: bool,

    /// Interval between heartbeat pings to each agent.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "30s", value_parser = duration, help_heading = "Timeouts")]
    pub heartbeat_interval: Duration,

    /// An agent silent for this long is considered dead and disconnected.
    #[arg(long, env = "HEARTBEAT_TIMEOUT", default_value = "90s", value_parser = duration, help_heading = "Timeouts")]
    pub heartbeat_timeout: Duration,

    /// Time limit for a non-streaming proxied request (watch, follow and upgrades are never cut).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = duration, help_heading = "Timeouts")]
    pub request_timeout: Duration,

    /// Time allowed to read a caller's request headers (HTTP/1.1); a keep-alive connection
    /// that sends no next request for this long is closed too.
    #[arg(long, env = "READ_TIMEOUT", default_value = "60s", value_parser = duration, help_heading = "Timeouts")]
    pub read_timeout: Duration,

    /// A response write to a caller that makes no progress for this long (a caller that
    /// stopped reading) closes the connection.
    #[arg(long, env = "WRITE_TIMEOUT", default_value = "60s", value_parser = duration, help_heading = "Timeouts")]
    pub write_timeout: Duration,

    /// A caller connection with no request in flight for this long is closed gracefully.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "120s", value_parser = duration, help_heading = "Timeouts")]
    pub idle_timeout: Duration,

    /// On SIGTERM, the gateway first keeps serving for this long while reporting not ready
    /// (HTTP/1.1 callers are answered with Connection: close), so load balancers and
    /// Service endpoints stop sending it callers before it stops listening; 0 stops at once.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "0s", value_parser = duration, help_heading = "Timeouts")]
    pub shutdown_delay: Duration,

    /// On SIGTERM, open streams may finish for this long before the gateway closes them.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration, help_heading = "Timeouts")]
    pub shutdown_timeout: Duration,

    /// Proxy targets callers may name (comma-separated); agents serve k8s, agent and their --routes.
    #[arg(long, env = "ALLOWED_TARGETS", value_delimiter = ',', default_value = super::checks::DEFAULT_TARGETS, help_heading = "Proxy")]
    pub allowed_targets: Vec<String>,

    /// Paths (below the target) the proxy refuses, comma-separated. A Kubernetes API path
    /// names a resource and covers every spelling of it (watch, //, /./, names,
    /// subresources): /api/v1/secrets is the all-namespaces form, /api/v1/namespaces/NS/secrets
    /// one namespace, namespaces/*/ any. Minting service-account tokens is always refused.
    #[arg(long, env = "BLOCKED_PATHS", value_delimiter = ',', default_value = super::checks::DEFAULT_BLOCKED_PATHS, help_heading = "Proxy")]
    pub blocked_paths: Vec<String>,

    /// Allow-list mode: only these paths (written as for --blocked-paths) are served; the
    /// blocked paths still apply.
    #[arg(
        long,
        env = "ALLOWED_PATHS",
        value_delimiter = ',',
        help_heading = "Proxy"
    )]
    pub allowed_paths: Option<Vec<String>>,

    /// Agents one plane may have connected at once; more are refused with 429.
    #[arg(long, env = "MAX_AGENTS_PER_PLANE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Proxy")]
    pub max_agents_per_plane: u32,

    /// Largest request or response body carried through the proxy (0 = no limit); e.g. 64Mi.
    #[arg(long, env = "MAX_BODY_SIZE", default_value = "0", value_parser = byte_size, help_heading = "Proxy")]
    pub max_body_size: u64,
}
