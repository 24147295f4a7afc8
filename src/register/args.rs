//! The register role's flags: certificates, inspection, the handshake check and the
//! trust exchange of each plane kind.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::duration;
use crate::planes::PlaneType;

/// A `--plane-id` value: what a plane CR's planeID (or name) can be.
fn plane_id(value: &str) -> Result<String, String> {
    crate::planes::crd::check_plane_id(value).map(|()| value.to_string())
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
    /// Register a workflow plane (a WorkflowPlane; remote namespace
    /// openchoreo-workflow-plane): the whole trust exchange between the two clusters.
    #[command(name = "workflowplane")]
    WorkflowPlane(ExchangeArgs),
    /// Register a build plane, the older name of the workflow plane (a BuildPlane; remote
    /// namespace openchoreo-build-plane).
    #[command(name = "buildplane")]
    BuildPlane(ExchangeArgs),
    /// Register an observability plane: the whole trust exchange between the two clusters.
    #[command(name = "observabilityplane")]
    ObservabilityPlane(ExchangeArgs),
    /// Roll a plane's client CA over to a new CA without an outage: trust both, then
    /// (planelink's controller) remove the old one once no agent uses it.
    Rotate(RotateArgs),
}

/// `register rotate`: the client CA rollover from the operator's shell.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// The plane's kind.
    #[arg(value_enum)]
    pub kind: PlaneType,

    /// Name of the plane resource in the control plane.
    pub name: String,

    /// Namespace of the plane resource (`_cluster` for a cluster-scoped one).
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,

    /// Kube context of the control plane; the current context when unset.
    #[arg(long)]
    pub context: Option<String>,

    /// Kubeconfig files (a list separated by `:`); the default kubeconfig when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The new CA (PEM: ca.crt of Secret cluster-agent-tls in the remote plane); default:
    /// the CA the plane's agent proposed (annotation planelink.dev/ca-proposal).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,

    /// Namespace of the control plane's gateway (Secret cluster-gateway-ca, which must
    /// never become a client CA).
    #[arg(long, default_value = "openchoreo-control-plane")]
    pub control_plane_namespace: String,

    /// How long to wait for the controller to remove the old CA (0: do not wait).
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub wait: Duration,

    /// Print what would change, and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
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

    /// Kube context of the remote plane (where the agent runs; with --direct, the
    /// credentials the controller uses).
    #[arg(long)]
    pub remote_context: String,

    /// Direct mode, no agent: the controller reaches the remote API server itself with
    /// --remote-context's server, CA and client certificate or token (checked and tried
    /// first), kept in Secret NAME-kubernetes-cluster of --namespace (--dry-run shows its
    /// values redacted).
    #[arg(
        long,
        requires = "control_plane_context",
        conflicts_with_all = ["ca_from_secret", "ca_inline", "server_url", "remote_namespace"]
    )]
    pub direct: bool,

    /// Kubeconfig files (a list separated by `:`); the default kubeconfig when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the plane resource in the control plane (the organization's).
    #[arg(long, default_value = "default")]
    pub namespace: String,

    /// The plane ID the agent sends; the name when unset.
    #[arg(long, value_parser = plane_id)]
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
    /// The CA of the gateway's internal API and a client certificate for one of its
    /// callers (the controller, openchoreo-api): ca.crt ca.key tls.crt tls.key.
    Caller(CallerCertsArgs),
}

/// A Kubernetes object named `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ObjectRef {
    type Err = String;

    fn from_str(s: &str) -> Result<ObjectRef, String> {
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        match s.split_once('/') {
            Some((namespace, name)) if valid(namespace) && valid(name) => Ok(ObjectRef {
                namespace: namespace.into(),
                name: name.into(),
            }),
            _ => Err("write NAMESPACE/NAME, both lower-case DNS names (e.g. openchoreo-control-plane/cluster-gateway-tls)".into()),
        }
    }
}

/// Where `register certs` keeps what it issues: files in a directory, or a Kubernetes
/// Secret (what cert-manager would write) that is kept while it is still good.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["out", "secret"])))]
pub struct CertsDestination {
    /// Directory to write into (created when missing).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Kubernetes Secret (type kubernetes.io/tls: ca.crt, tls.crt, tls.key) to keep the
    /// certificate in. A Secret planelink wrote is kept while it is valid for the requested
    /// names and not within --renew-before of expiry, and reissued otherwise; a Secret
    /// another tool wrote is never overwritten.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "out")]
    pub secret: Option<ObjectRef>,

    /// With --secret: the Secret holding the CA and its key (tls.crt, tls.key, ca.crt, as
    /// cert-manager writes a CA), created when missing and only read when present
    /// [default: cluster-gateway-ca, cluster-agent-ca or cluster-gateway-internal-ca in
    /// the namespace of --secret].
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "secret")]
    pub ca_secret: Option<ObjectRef>,

    /// With --secret: also publish the CA certificate as ca.crt of this ConfigMap (what the
    /// other side mounts to trust it).
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "secret")]
    pub ca_configmap: Option<ObjectRef>,

    /// With --ca-configmap: publish this CA too (PEM), after the current one: the overlap
    /// of a CA rollover (the new CA before switching to it, the old one after). Drop the
    /// flag once every peer trusts the new CA and the certificates in use come from it.
    #[arg(long, value_name = "FILE", requires = "ca_configmap")]
    pub also_publish_ca: Option<PathBuf>,

    /// With --secret: reissue a certificate that expires within this long.
    #[arg(long, default_value = "360h", value_parser = duration, requires = "secret")]
    pub renew_before: Duration,

    /// With --secret: kubeconfig files (a list separated by `:`); in a pod, its service
    /// account is used when unset.
    #[arg(long, env = "KUBECONFIG", requires = "secret")]
    pub kubeconfig: Option<PathBuf>,

    /// With --secret: the kube context to use.
    #[arg(long, requires = "secret")]
    pub context: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayCertsArgs {
    #[command(flatten)]
    pub destination: CertsDestination,

    /// With --out: directory holding the CA (ca.crt, ca.key) to sign with; defaults to --out.
    /// A new CA is created only when neither holds one.
    #[arg(long, conflicts_with = "secret")]
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
    #[command(flatten)]
    pub destination: CertsDestination,

    /// The plane ID this agent serves; it names the certificates.
    #[arg(long, value_parser = plane_id, env = "PLANE_ID")]
    pub plane_id: String,

    /// Lifetime of the client certificate, in days.
    #[arg(long, default_value_t = crate::trust::issue::DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,

    /// Lifetime of a newly created CA, in days.
    #[arg(long, default_value_t = crate::trust::issue::DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub ca_days: u32,
}

#[derive(Debug, Clone, Args)]
pub struct CallerCertsArgs {
    #[command(flatten)]
    pub destination: CertsDestination,

    /// Common name of the caller's certificate (who it is, in the gateway's log).
    #[arg(long, default_value = "planelink-controller")]
    pub common_name: String,

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
    #[arg(long, value_parser = plane_id, env = "PLANE_ID")]
    pub plane_id: Option<String>,

    /// Give up on connecting after this long.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
}
