//! The controller's validated configuration: `Config::try_from(ControllerArgs)` with a
//! gateway elsewhere, [`Config::beside_gateway`] with one in this process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::ControllerArgs;
use super::clients::GatewayAccess;
use crate::config::{self, ConfigError};

#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    /// Only this namespace's planes (all when `None`).
    pub namespace: Option<String>,
    /// The gateway's internal listener, for agent status and the proxy (`--gateway-url`,
    /// or the address of the gateway in this process once it is bound).
    pub access: GatewayAccess,
    /// The gateway CA file, to catch it registered as a client CA.
    pub gateway_ca: Option<PathBuf>,
    /// `Some(lease name)` with `--leader-elect`.
    pub leader_election: Option<String>,
    /// The Lease's and Secret `cluster-gateway-ca`'s namespace.
    pub control_plane_namespace: String,
    pub health: SocketAddr,
    pub timing: Timing,
}

/// How often planes are re-checked, and how early certificates are warned about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub resync: Duration,
    pub expiry_warning: Duration,
    pub ca_rotation_grace: Duration,
}

fn read(path: Option<&Path>, flag: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    path.map(|p| {
        std::fs::read(p)
            .map_err(|e| ConfigError::new(flag, format!("cannot read {}: {e}", p.display())))
    })
    .transpose()
}

impl TryFrom<ControllerArgs> for Config {
    type Error = ConfigError;

    /// A controller whose gateway runs elsewhere, reached at `--gateway-url`.
    fn try_from(args: ControllerArgs) -> Result<Config, ConfigError> {
        check_remote(&args)?;
        Config::beside_gateway(args)
    }
}

impl Config {
    /// A controller whose gateway runs in this process: `--gateway-url` and its
    /// credentials are not used.
    pub fn beside_gateway(args: ControllerArgs) -> Result<Config, ConfigError> {
        if let Some(kubeconfig) = &args.kubeconfig {
            config::check_existing_file("--kubeconfig", kubeconfig)?;
        }
        config::check_positive("--resync-period", args.resync_period)?;
        config::check_positive("--expiry-warning", args.expiry_warning)?;
        let access = GatewayAccess {
            url: args.gateway_url.clone(),
            ca_pem: read(args.gateway_ca.as_deref(), "--gateway-ca")?,
            client_cert_pem: read(args.gateway_client_cert.as_deref(), "--gateway-client-cert")?,
            client_key_pem: read(args.gateway_client_key.as_deref(), "--gateway-client-key")?,
        };
        let control_plane_namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "openchoreo-control-plane".into());
        Ok(Config {
            kubeconfig: args.kubeconfig,
            namespace: args.namespace,
            access,
            gateway_ca: args.gateway_ca,
            leader_election: args.leader_elect.then_some(args.leader_election_id),
            control_plane_namespace,
            health: SocketAddr::new(args.bind_address, args.controller_health_port),
            timing: Timing {
                resync: args.resync_period,
                expiry_warning: args.expiry_warning,
                ca_rotation_grace: args.ca_rotation_grace,
            },
        })
    }
}

/// A gateway in another process: its URL, CA and (for internal mTLS) client certificate.
fn check_remote(args: &ControllerArgs) -> Result<(), ConfigError> {
    let url = url::Url::parse(&args.gateway_url).map_err(|e| {
        ConfigError::new(
            "--gateway-url",
            format!(
                "{:?} is not a URL ({e}); e.g. https://cluster-gateway:8444",
                args.gateway_url
            ),
        )
    })?;
    if url.scheme() != "https" {
        return Err(ConfigError::new(
            "--gateway-url",
            "the gateway's internal listener speaks TLS; use https://HOST:8444",
        ));
    }
    match (&args.gateway_client_cert, &args.gateway_client_key) {
        (Some(cert), Some(key)) => {
            config::check_key_pair("--gateway-client-cert", cert, "--gateway-client-key", key)?
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(ConfigError::new(
                "--gateway-client-key",
                "required with --gateway-client-cert",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "--gateway-client-cert",
                "required with --gateway-client-key",
            ));
        }
    }
    match &args.gateway_ca {
        Some(ca) => config::check_existing_file("--gateway-ca", ca),
        None => Err(ConfigError::new(
            "--gateway-ca",
            format!(
                "required to reach the gateway at {} over TLS: give ca.crt of Secret \
                 cluster-gateway-ca (or run the gateway in this process with --with-gateway)",
                args.gateway_url
            ),
        )),
    }
}
