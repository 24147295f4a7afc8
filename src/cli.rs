//! The clap definitions of every role. One definition per role serves parsing,
//! `--help`, the man pages and the shell completions. Every flag has an env var;
//! the names follow OpenChoreo's cluster-gateway and cluster-agent, so existing
//! charts and manifests keep working.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Exit code for invalid usage or configuration (EX_USAGE), before anything is bound.
pub const EXIT_USAGE: u8 = 64;

/// The names the binary answers to, and the role each selects (`None`: the multi-call
/// `planelink` itself).
pub const NAMES: &[(&str, Option<Role>)] = &[
    ("planelink", None),
    ("planelink-gateway", Some(Role::Gateway)),
    ("planelink-agent", Some(Role::Agent)),
    ("planelink-controller", Some(Role::Controller)),
    ("planelink-register", Some(Role::Register)),
    ("cluster-gateway", Some(Role::Gateway)),
    ("cluster-agent", Some(Role::Agent)),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Agent,
    Controller,
    Register,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Agent => "agent",
            Role::Controller => "controller",
            Role::Register => "register",
        }
    }

    pub const ALL: [Role; 4] = [Role::Gateway, Role::Agent, Role::Controller, Role::Register];

    fn about(self) -> &'static str {
        match self {
            Role::Gateway => {
                "Accept agents over mutual-TLS WebSocket and proxy the control plane's requests into their planes"
            }
            Role::Agent => {
                "Dial the control plane's gateway and serve its requests from this plane's Kubernetes API and routes"
            }
            Role::Controller => {
                "Reconcile DataPlane, BuildPlane and ObservabilityPlane resources and keep the gateway's trust current"
            }
            Role::Register => {
                "Issue, inspect and check the certificates of the trust exchange between planes"
            }
        }
    }
}

/// planelink connects the planes of an OpenChoreo-style platform: remote planes dial
/// out to the control plane over mutual-TLS WebSocket, and the control plane reaches
/// them back through that tunnel.
#[derive(Debug, Parser)]
#[command(
    name = "planelink",
    version,
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    /// Print the names this binary answers to (as argv[0]) and exit.
    #[arg(long, exclusive = true)]
    pub list: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(about = Role::Gateway.about())]
    Gateway(GatewayArgs),
    #[command(about = Role::Agent.about())]
    Agent(AgentArgs),
    #[command(about = Role::Controller.about())]
    Controller(ControllerArgs),
    #[command(about = Role::Register.about())]
    Register(RegisterArgs),
    /// Run a complete single-host topology: certificates, a registered DataPlane, a gateway and a connected agent.
    Up(UpArgs),
    /// Print the version, the git commit it was built from, and the TLS crypto provider.
    Version,
    /// Print a shell completion script to standard output.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log level. RUST_LOG, when set, overrides it with a full filter (e.g. planelink=debug,hyper=info).
    #[arg(long, env = "LOG_LEVEL", value_enum, default_value_t = LogLevel::Info, global = true, ignore_case = true)]
    pub log_level: LogLevel,

    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

pub use crate::planes::PlaneType;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; write a duration such as 30s, 1m30s or 500ms"))
}

/// Sizes such as 1048576, 64Ki, 10Mi, 1Gi (binary) or 10M, 1G (decimal).
pub fn byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write bytes or a size such as 64Mi or 1Gi"))?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "K" | "k" | "KB" => 1_000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "Gi" | "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?}; use Ki, Mi, Gi (or K, M, G)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s} is too large"))
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
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

    /// Address all listeners bind to.
    #[arg(
        long,
        env = "BIND_ADDRESS",
        default_value = "0.0.0.0",
        help_heading = "Listeners"
    )]
    pub bind_address: IpAddr,

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

    /// Directory of plane manifests (DataPlane, BuildPlane, ObservabilityPlane, Secret; YAML or JSON),
    /// watched live. Without it the gateway watches the plane resources in Kubernetes.
    #[arg(long, env = "PLANES_DIR", help_heading = "Plane registry")]
    pub planes_dir: Option<PathBuf>,

    /// Kubeconfig for watching plane resources; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG", help_heading = "Plane registry")]
    pub kubeconfig: Option<PathBuf>,

    /// Interval between heartbeat pings to each agent.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "30s", value_parser = duration, help_heading = "Timeouts")]
    pub heartbeat_interval: Duration,

    /// An agent silent for this long is considered dead and disconnected.
    #[arg(long, env = "HEARTBEAT_TIMEOUT", default_value = "90s", value_parser = duration, help_heading = "Timeouts")]
    pub heartbeat_timeout: Duration,

    /// Time limit for a non-streaming proxied request (watch, follow and upgrades are never cut).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = duration, help_heading = "Timeouts")]
    pub request_timeout: Duration,

    /// Time allowed to read a caller's request headers.
    #[arg(long, env = "READ_TIMEOUT", default_value = "60s", value_parser = duration, help_heading = "Timeouts")]
    pub read_timeout: Duration,

    /// Time allowed to write a non-streaming response to a caller.
    #[arg(long, env = "WRITE_TIMEOUT", default_value = "60s", value_parser = duration, help_heading = "Timeouts")]
    pub write_timeout: Duration,

    /// Idle keep-alive connections from callers are closed after this long.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "120s", value_parser = duration, help_heading = "Timeouts")]
    pub idle_timeout: Duration,

    /// On SIGTERM, open streams may finish for this long before the gateway closes them.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration, help_heading = "Timeouts")]
    pub shutdown_timeout: Duration,

    /// Proxy targets callers may name (comma-separated); agents serve k8s, agent and their --routes.
    #[arg(long, env = "ALLOWED_TARGETS", value_delimiter = ',', default_value = crate::gateway::DEFAULT_TARGETS, help_heading = "Proxy")]
    pub allowed_targets: Vec<String>,

    /// Path prefixes (below the target) the proxy refuses (comma-separated). Minting
    /// service-account tokens is always refused.
    #[arg(long, env = "BLOCKED_PATHS", value_delimiter = ',', default_value = crate::gateway::DEFAULT_BLOCKED_PATHS, help_heading = "Proxy")]
    pub blocked_paths: Vec<String>,

    /// Largest request or response body carried through the proxy (0 = no limit); e.g. 64Mi.
    #[arg(long, env = "MAX_BODY_SIZE", default_value = "0", value_parser = byte_size, help_heading = "Proxy")]
    pub max_body_size: u64,
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

    /// The kind of plane this agent serves.
    #[arg(long, env = "PLANE_TYPE", value_enum, default_value_t = PlaneType::DataPlane, help_heading = "Gateway")]
    pub plane_type: PlaneType,

    /// Logical plane identifier, matching spec.planeID (or the name) of the plane's CR.
    #[arg(long, env = "PLANE_ID", help_heading = "Gateway")]
    pub plane_id: Option<String>,

    /// Use mutual TLS to the gateway. --tls-enabled=false is for single-host tests only.
    #[arg(long, env = "TLS_ENABLED", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new(),
          help_heading = "TLS")]
    pub tls_enabled: bool,

    /// Client certificate (PEM) presented to the gateway; re-read on every dial.
    #[arg(
        long,
        env = "CLIENT_CERT_PATH",
        default_value = "/certs/tls.crt",
        help_heading = "TLS"
    )]
    pub client_cert: PathBuf,

    /// Private key of the client certificate; re-read on every dial.
    #[arg(
        long,
        env = "CLIENT_KEY_PATH",
        default_value = "/certs/tls.key",
        help_heading = "TLS"
    )]
    pub client_key: PathBuf,

    /// The only CA trusted for the gateway's certificate: ca.crt of Secret cluster-gateway-ca.
    #[arg(
        long,
        env = "SERVER_CA_PATH",
        default_value = "/ca-certs/server-ca.crt",
        help_heading = "TLS"
    )]
    pub server_ca: PathBuf,

    /// Kubeconfig for the local Kubernetes API (target k8s); in-cluster service account when unset.
    #[arg(long, env = "KUBECONFIG", help_heading = "Upstreams")]
    pub kubeconfig: Option<PathBuf>,

    /// YAML file of extra named routes (URL, auth, CA file) served as proxy targets.
    #[arg(long, env = "ROUTES_FILE", help_heading = "Upstreams")]
    pub routes: Option<PathBuf>,

    /// First delay before reconnecting; doubles with jitter on each failure.
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
}

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControllerArgs {
    #[command(subcommand)]
    pub command: Option<ControllerCommand>,

    /// Run the gateway in this process too; its flags below then apply.
    #[arg(long, env = "WITH_GATEWAY", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub with_gateway: bool,

    /// Internal URL of a separately running gateway, for agent status and notify calls.
    #[arg(
        long,
        env = "GATEWAY_URL",
        default_value = "https://cluster-gateway:8444",
        help_heading = "Remote gateway"
    )]
    pub gateway_url: String,

    /// Client certificate for the gateway's internal mTLS.
    #[arg(
        long,
        env = "GATEWAY_CLIENT_CERT_PATH",
        help_heading = "Remote gateway"
    )]
    pub gateway_client_cert: Option<PathBuf>,

    /// Private key of --gateway-client-cert.
    #[arg(long, env = "GATEWAY_CLIENT_KEY_PATH", help_heading = "Remote gateway")]
    pub gateway_client_key: Option<PathBuf>,

    /// CA that signed the gateway's serving certificate.
    #[arg(long, env = "GATEWAY_CA_PATH", help_heading = "Remote gateway")]
    pub gateway_ca: Option<PathBuf>,

    /// Only reconcile plane resources in this namespace (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE", help_heading = "Controller")]
    pub namespace: Option<String>,

    /// Elect one active replica with a coordination.k8s.io Lease.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new(),
          help_heading = "Controller")]
    pub leader_elect: bool,

    /// Namespace of the leader-election Lease (the pod's namespace when unset).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE", help_heading = "Controller")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_ID",
        default_value = "planelink-controller",
        help_heading = "Controller"
    )]
    pub leader_election_id: String,

    /// Port serving /healthz, /readyz and /metrics for the controller.
    #[arg(
        long,
        env = "CONTROLLER_HEALTH_PORT",
        default_value_t = 8081,
        help_heading = "Controller"
    )]
    pub controller_health_port: u16,

    /// Re-check every plane this often even without changes (status, connectivity).
    #[arg(long, env = "RESYNC_PERIOD", default_value = "5m", value_parser = duration, help_heading = "Controller")]
    pub resync_period: Duration,

    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ControllerCommand {
    /// Print the CustomResourceDefinitions (DataPlane, BuildPlane, ObservabilityPlane,
    /// Environment) as YAML, for `kubectl apply -f -`.
    Crds,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Where certificates, the planes directory and the kubeconfig are kept (reused on the next run).
    /// Default: $XDG_STATE_HOME/planelink or ~/.local/state/planelink.
    #[arg(long, env = "PLANELINK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The plane ID (and DataPlane name) of the local agent.
    #[arg(long, default_value = "local")]
    pub plane_id: String,

    /// Address the listeners bind to; loopback unless you want other hosts to reach them.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,

    /// The gateway's public (agent) port.
    #[arg(long, default_value_t = 8443)]
    pub port: u16,

    /// The gateway's internal (caller) port.
    #[arg(long, default_value_t = 8444)]
    pub internal_port: u16,

    /// The gateway's health and metrics port.
    #[arg(long, default_value_t = 8080)]
    pub health_port: u16,

    /// Kubeconfig for the agent's k8s target; by default the current kubeconfig (KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RegisterArgs {
    #[command(subcommand)]
    pub command: RegisterCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RegisterCommand {
    /// Issue CAs and certificates into a directory, named like cert-manager's Secrets.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Say what a certificate or key file holds, and whether it suits a use.
    Inspect(InspectArgs),
    /// Perform a real TLS handshake with a gateway and diagnose every failure.
    Check(CheckArgs),
    /// Register a data plane: the whole trust exchange between the two clusters.
    #[command(name = "dataplane")]
    DataPlane(ExchangeArgs),
    /// Register a build plane: the whole trust exchange between the two clusters.
    #[command(name = "buildplane", alias = "workflowplane")]
    BuildPlane(ExchangeArgs),
    /// Register an observability plane: the whole trust exchange between the two clusters.
    #[command(name = "observabilityplane")]
    ObservabilityPlane(ExchangeArgs),
}

/// The trust exchange of the reference guide (Steps 1-4), as one command.
#[derive(Debug, Clone, Args)]
pub struct ExchangeArgs {
    /// Name of the plane resource in the control plane.
    pub name: String,

    /// Kube context of the control plane (the gateway's cluster).
    #[arg(
        long,
        required_unless_present = "planes_dir",
        conflicts_with = "planes_dir"
    )]
    pub control_plane_context: Option<String>,

    /// Kube context of the remote plane (where the agent runs).
    #[arg(long)]
    pub remote_context: String,

    /// Kubeconfig files (a list separated by `:`); the default kubeconfig when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the plane resource in the control plane (the organization's).
    #[arg(long, default_value = "default")]
    pub namespace: String,

    /// The plane ID the agent sends; the name when unset.
    #[arg(long)]
    pub plane_id: Option<String>,

    /// The gateway URL agents dial (wss://HOST/ws); checked against the gateway certificate.
    #[arg(long)]
    pub server_url: Option<String>,

    /// Namespace of the plane's agent in the remote cluster (default: openchoreo-data-plane,
    /// -build-plane or -observability-plane).
    #[arg(long)]
    pub remote_namespace: Option<String>,

    /// Namespace of the control plane's gateway (Secret cluster-gateway-ca).
    #[arg(long, default_value = "openchoreo-control-plane")]
    pub control_plane_namespace: String,

    /// Store the agent's CA in a Secret of the control plane and reference it (recommended
    /// for production) instead of inline in the plane resource.
    #[arg(long, conflicts_with = "ca_inline")]
    pub ca_from_secret: bool,

    /// Put the agent's CA inline in clientCA.value (the default).
    #[arg(long)]
    pub ca_inline: bool,

    /// DataPlane: public virtual host for external traffic.
    #[arg(long, help_heading = "DataPlane")]
    pub public_virtual_host: Option<String>,

    /// DataPlane: organization virtual host for internal traffic.
    #[arg(long, help_heading = "DataPlane")]
    pub organization_virtual_host: Option<String>,

    /// DataPlane: port the data plane's gateway is reachable on for HTTP.
    #[arg(long, default_value_t = 19080, help_heading = "DataPlane")]
    pub public_http_port: u16,

    /// DataPlane: port the data plane's gateway is reachable on for HTTPS.
    #[arg(long, default_value_t = 19443, help_heading = "DataPlane")]
    pub public_https_port: u16,

    /// DataPlane and BuildPlane: name of the ClusterSecretStore in the remote plane.
    #[arg(long)]
    pub secret_store: Option<String>,

    /// ObservabilityPlane: the Observer URL, reachable from the control plane.
    #[arg(long, help_heading = "ObservabilityPlane")]
    pub observer_url: Option<String>,

    /// DataPlane and BuildPlane: the ObservabilityPlane to send telemetry to.
    #[arg(long)]
    pub observability_plane: Option<String>,

    /// How long to wait for the agent's Secret, and (when given) for the agent to connect.
    #[arg(long, value_parser = duration)]
    pub wait: Option<Duration>,

    /// Print every object that would be written, as YAML, and touch nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Bare hosts: write the plane manifest (and Secret) into this gateway planes directory
    /// instead of a control-plane cluster.
    #[arg(long, requires = "gateway_ca")]
    pub planes_dir: Option<PathBuf>,

    /// With --planes-dir: the gateway's CA file (ca.crt written by `register certs gateway`).
    #[arg(long)]
    pub gateway_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CertsCommand {
    /// The control plane's CA and the gateway's serving certificate: ca.crt ca.key tls.crt tls.key.
    Gateway(GatewayCertsArgs),
    /// A remote plane's self-signed CA and its agent's client certificate: ca.crt ca.key tls.crt tls.key.
    Agent(AgentCertsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GatewayCertsArgs {
    /// Directory to write into (created when missing).
    #[arg(long)]
    pub out: PathBuf,

    /// Directory holding the CA (ca.crt, ca.key) to sign with; defaults to --out. A new CA is
    /// created only when neither holds one.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,

    /// DNS name agents dial; repeat for several. An IP address given here goes into the IP SANs.
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,

    /// IP address agents dial; repeat for several.
    #[arg(long = "ip-address", value_name = "IP")]
    pub ip_addresses: Vec<IpAddr>,

    /// Lifetime of the serving certificate, in days.
    #[arg(long, default_value_t = crate::trust::issue::DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,

    /// Lifetime of a newly created CA, in days.
    #[arg(long, default_value_t = crate::trust::issue::DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub ca_days: u32,
}

#[derive(Debug, Clone, Args)]
pub struct AgentCertsArgs {
    /// Directory to write into (created when missing).
    #[arg(long)]
    pub out: PathBuf,

    /// The plane ID this agent serves; it names the certificates.
    #[arg(long)]
    pub plane_id: String,

    /// Lifetime of the client certificate, in days.
    #[arg(long, default_value_t = crate::trust::issue::DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,

    /// Lifetime of a newly created CA, in days.
    #[arg(long, default_value_t = crate::trust::issue::DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub ca_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InspectPurpose {
    /// The CA registered in a plane CR to verify agents (ca.crt of Secret cluster-agent-tls).
    ClientCa,
    /// The CA agents trust for the gateway (ca.crt of Secret cluster-gateway-ca).
    ServerCa,
    /// An agent's client certificate (tls.crt of Secret cluster-agent-tls).
    ClientCert,
    /// The gateway's serving certificate (tls.crt of Secret cluster-gateway-tls).
    ServerCert,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Certificate or key file (PEM, base64 of PEM, or DER); - reads standard input.
    pub file: PathBuf,

    /// The use the file is meant for; a wrong fit exits 1 with the fix.
    #[arg(long = "for", value_enum)]
    pub purpose: Option<InspectPurpose>,

    /// The control plane's gateway CA (ca.crt of Secret cluster-gateway-ca): with
    /// --for client-ca, catches that CA registered as an agent's client CA by mistake.
    #[arg(long)]
    pub gateway_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The gateway URL agents dial, e.g. wss://cluster-gateway.example.com/ws.
    #[arg(long, env = "SERVER_URL")]
    pub server_url: String,

    /// The CA trusted for the gateway's certificate (what the agent's --server-ca will hold).
    #[arg(long, env = "SERVER_CA_PATH")]
    pub server_ca: PathBuf,

    /// Client certificate to present, as the agent would.
    #[arg(long, env = "CLIENT_CERT_PATH", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// Private key of --client-cert.
    #[arg(long, env = "CLIENT_KEY_PATH", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// With a client certificate: the plane type to ask the gateway to authorise.
    #[arg(long, env = "PLANE_TYPE", value_enum, default_value_t = PlaneType::DataPlane)]
    pub plane_type: PlaneType,

    /// With a client certificate: the plane ID to ask the gateway to authorise.
    #[arg(long, env = "PLANE_ID")]
    pub plane_id: Option<String>,

    /// Give up on connecting after this long.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
}

/// Parses one role's flags from `argv` (argv[0] first) with the role's own defaults,
/// env vars and checks: how `up` and tests configure roles they run in-process.
pub fn args_from<T: Args + FromArgMatches>(argv: Vec<String>) -> Result<T, clap::Error> {
    let command = go_style(T::augment_args(clap::Command::new("planelink")));
    let matches = command.try_get_matches_from(argv)?;
    T::from_arg_matches(&matches)
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    List,
    Run { log: LogArgs, command: Box<Command> },
}

/// The role selected by the name the binary was called by; `Err` for an unknown name.
pub fn role_for_program(argv0: &std::path::Path) -> Result<Option<Role>, String> {
    let name = argv0
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, role)| *role)
        .ok_or(name)
}

/// The clap command of one role, named as the binary was called.
pub fn role_command(role: Role, bin_name: &str) -> clap::Command {
    let cmd = clap::Command::new(bin_name.to_string())
        .about(role.about())
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true);
    let cmd = LogArgs::augment_args(cmd);
    go_style(match role {
        Role::Gateway => GatewayArgs::augment_args(cmd),
        Role::Agent => AgentArgs::augment_args(cmd),
        Role::Controller => ControllerArgs::augment_args(cmd),
        Role::Register => RegisterArgs::augment_args(cmd),
    })
}

/// The top-level command with every subcommand.
pub fn command() -> clap::Command {
    go_style(Cli::command())
}

/// Go's flag package lets a later flag override an earlier one, and charts append
/// flags relying on that; so does every planelink command.
fn go_style(cmd: clap::Command) -> clap::Command {
    cmd.args_override_self(true).mut_subcommands(go_style)
}

/// Parses the full command line, choosing the role by argv[0] or by subcommand.
pub fn parse(args: Vec<OsString>) -> Result<Invocation, clap::Error> {
    let argv0 = args.first().cloned().unwrap_or_else(|| "planelink".into());
    let role = role_for_program(std::path::Path::new(&argv0))
        .ok()
        .flatten();
    match role {
        None => {
            let cli = Cli::from_arg_matches(&command().try_get_matches_from(args)?)?;
            if cli.list {
                return Ok(Invocation::List);
            }
            match cli.command {
                Some(command) => Ok(Invocation::Run {
                    log: cli.log,
                    command: Box::new(command),
                }),
                None => Err(command().error(
                    clap::error::ErrorKind::MissingSubcommand,
                    "name a role: planelink gateway|agent|controller|register (or see --help)",
                )),
            }
        }
        Some(role) => {
            let name = std::path::Path::new(&argv0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let matches = role_command(role, &name).try_get_matches_from(args)?;
            let log = LogArgs::from_arg_matches(&matches)?;
            let command = match role {
                Role::Gateway => Command::Gateway(GatewayArgs::from_arg_matches(&matches)?),
                Role::Agent => Command::Agent(AgentArgs::from_arg_matches(&matches)?),
                Role::Controller => {
                    Command::Controller(ControllerArgs::from_arg_matches(&matches)?)
                }
                Role::Register => Command::Register(RegisterArgs::from_arg_matches(&matches)?),
            };
            Ok(Invocation::Run {
                log,
                command: Box::new(command),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
        for role in Role::ALL {
            role_command(role, role.name()).debug_assert();
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(byte_size("64Mi").unwrap(), 64 << 20);
        assert_eq!(byte_size("10M").unwrap(), 10_000_000);
        assert_eq!(byte_size("0").unwrap(), 0);
        assert!(byte_size("ten").is_err());
        assert!(byte_size("5Qi").is_err());
    }

    #[test]
    fn go_style_bools_and_durations() {
        let inv = parse(
            [
                "cluster-agent",
                "--tls-enabled=false",
                "--reconnect-delay",
                "1m30s",
                "--plane-type",
                "workflowplane",
            ]
            .map(OsString::from)
            .to_vec(),
        )
        .unwrap();
        let Invocation::Run { command, .. } = inv else {
            panic!("expected a role")
        };
        let Command::Agent(a) = *command else {
            panic!("expected agent")
        };
        assert!(!a.tls_enabled);
        assert_eq!(a.reconnect_delay, Duration::from_secs(90));
        assert_eq!(a.plane_type, PlaneType::BuildPlane);
    }
}
