//! The agent's flags and env vars, named as OpenChoreo's cluster-agent names them.
//! Validation lives in [`super::config`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};

use crate::config::duration;
use crate::planes::registry::PlaneRef;
use crate::planes::{PlaneType, PlaneTypeName};

fn served_plane(value: &str) -> Result<PlaneRef, String> {
    value.trim().parse()
}

/// Which tunnel protocol the agent speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TunnelProtocol {
    /// planelink's; OpenChoreo's when the gateway does not take planelink's subprotocol.
    Auto,
    /// planelink's only.
    Planelink,
    /// OpenChoreo's JSON frames only (an OpenChoreo cluster gateway).
    Openchoreo,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The gateway's WebSocket URL.
    #[arg(
        long,
        env = "SERVER_URL",
        default_value = "wss://cluster-gateway:8443/ws",
        help_heading = "Gateway"
    )]
    pub server_url: String,

    /// The tunnel protocol: planelink's, falling back to OpenChoreo's JSON frames when
    /// the gateway is OpenChoreo's (auto); only planelink's; or only OpenChoreo's.
    #[arg(long, env = "TUNNEL_PROTOCOL", value_enum, default_value_t = TunnelProtocol::Auto, help_heading = "Gateway")]
    pub protocol: TunnelProtocol,

    /// The kind of plane this agent serves, sent as spelled (workflowplane is the newer
    /// name of buildplane; a gateway that refuses it is sent buildplane once).
    #[arg(long, env = "PLANE_TYPE", value_enum, default_value_t = PlaneTypeName::of(PlaneType::DataPlane),
          ignore_case = true, help_heading = "Gateway")]
    pub plane_type: PlaneTypeName,

    /// Logical plane identifier, matching spec.planeID (or the name) of the plane's CR.
    #[arg(long, env = "PLANE_ID", help_heading = "Gateway")]
    pub plane_id: Option<String>,

    /// The plane CRs this agent serves, comma-separated: Kind/NAMESPACE/NAME, or
    /// Kind/NAME for a cluster-scoped kind (DataPlane/acme/prod,ClusterDataPlane/shared).
    /// The gateway gives the agent exactly these, whatever other CR names its planeID
    /// and CA; unset, it serves one namespace's CRs (README: Security model).
    #[arg(long, env = "SERVE_PLANES", value_delimiter = ',', value_parser = served_plane,
          help_heading = "Gateway")]
    pub serve_planes: Option<Vec<PlaneRef>>,

    /// Use mutual TLS to the gateway. --tls-enabled=false is for single-host tests only.
    #[arg(long, env = "TLS_ENABLED", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new(),
          help_heading = "TLS")]
    pub tls_enabled: bool,

    /// Client certificate (PEM) presented to the gateway; followed: a renewed file
    /// replaces the tunnels without dropping a request.
    #[arg(
        long,
        env = "CLIENT_CERT_PATH",
        default_value = "/certs/tls.crt",
        help_heading = "TLS"
    )]
    pub client_cert: PathBuf,

    /// Private key of the client certificate; followed like --client-cert.
    #[arg(
        long,
        env = "CLIENT_KEY_PATH",
        default_value = "/certs/tls.key",
        help_heading = "TLS"
    )]
    pub client_key: PathBuf,

    /// The CAs trusted for the gateway's certificate: ca.crt of Secret cluster-gateway-ca
    /// (old and new during a CA rollover); followed like --client-cert.
    #[arg(
        long,
        env = "SERVER_CA_PATH",
        default_value = "/ca-certs/server-ca.crt",
        help_heading = "TLS"
    )]
    pub server_ca: PathBuf,

    /// The CA that issued --client-cert (ca.crt of Secret cluster-agent-tls); when it
    /// changes, the agent proposes it to the gateway for a CA rollover. Default: ca.crt
    /// next to --client-cert; nothing is proposed when the file does not exist.
    #[arg(long, env = "CLIENT_CA_PATH", help_heading = "TLS")]
    pub client_ca: Option<PathBuf>,

    /// Kubeconfig for the local Kubernetes API (target k8s); in-cluster service account when unset.
    #[arg(long, env = "KUBECONFIG", help_heading = "Upstreams")]
    pub kubeconfig: Option<PathBuf>,

    /// YAML file of extra named routes (URL, auth, CA file) served as proxy targets.
    #[arg(long, env = "ROUTES_FILE", help_heading = "Upstreams")]
    pub routes: Option<PathBuf>,

    /// First delay before reconnecting; doubles with jitter on each failed dial, starts over
    /// once a tunnel is up (a gateway that says it is going away is redialled within a second).
    #[arg(long, env = "RECONNECT_DELAY", default_value = "5s", value_parser = duration, help_heading = "Timeouts")]
    pub reconnect_delay: Duration,

    /// Upper bound of the reconnect delay.
    #[arg(long, env = "MAX_RECONNECT_DELAY", default_value = "2m", value_parser = duration, help_heading = "Timeouts")]
    pub max_reconnect_delay: Duration,

    /// Interval between heartbeat pings to the gateway.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "30s", value_parser = duration, help_heading = "Timeouts")]
    pub heartbeat_interval: Duration,

    /// A gateway silent for this long is considered dead and the agent reconnects.
    #[arg(long, env = "HEARTBEAT_TIMEOUT", default_value = "90s", value_parser = duration, help_heading = "Timeouts")]
    pub heartbeat_timeout: Duration,

    /// Time limit for a non-streaming request to a local upstream.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = duration, help_heading = "Timeouts")]
    pub request_timeout: Duration,

    /// Port serving /health, /ready and /metrics over plain HTTP (0 disables it).
    #[arg(
        long,
        env = "HEALTH_PORT",
        default_value_t = 8081,
        help_heading = "Listeners"
    )]
    pub health_port: u16,

    /// Address the health listener binds to.
    #[arg(
        long,
        env = "BIND_ADDRESS",
        default_value = "0.0.0.0",
        help_heading = "Listeners"
    )]
    pub bind_address: IpAddr,
}
