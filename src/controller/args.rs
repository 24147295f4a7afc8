//! The controller's own flags. The command line adds `--with-gateway` and the embedded
//! gateway's serving flags beside them (`crate::compose`); the controller's Kubernetes
//! client and health listener have their own `--kubeconfig` and `--bind-address`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};

use crate::config::duration;

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
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

    /// Warn (condition CertificatesCurrent=False, an Event) this long before a certificate
    /// a plane depends on expires, or at the last third of its lifetime when that is shorter.
    #[arg(long, env = "EXPIRY_WARNING", default_value = "720h", value_parser = duration, help_heading = "Controller")]
    pub expiry_warning: Duration,

    /// In a CA rollover, the old CA stays trusted at least this long after the new one
    /// was added, and then until no connected agent uses it.
    #[arg(long, env = "CA_ROTATION_GRACE", default_value = "10m", value_parser = duration, help_heading = "Controller")]
    pub ca_rotation_grace: Duration,

    /// Kubeconfig of the control plane; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG", help_heading = "Controller")]
    pub kubeconfig: Option<PathBuf>,

    /// Address the health listener (and, with --with-gateway, the gateway's) binds to.
    #[arg(
        long,
        env = "BIND_ADDRESS",
        default_value = "0.0.0.0",
        help_heading = "Controller"
    )]
    pub bind_address: IpAddr,
}
