//! The gateway role: accepts agents on the public listener and serves callers on the
//! internal one. This build validates its configuration only; the tunnel comes next.

use crate::cli::GatewayArgs;
use crate::config::{self, ConfigError};
use crate::trust::Purpose;

/// Validates the gateway's flags the way the running gateway will rely on them.
pub fn validate(args: &GatewayArgs) -> Result<(), ConfigError> {
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
    match (&args.internal_client_ca_cert, args.internal_mtls) {
        (None, true) => {
            return Err(ConfigError::new(
                "--internal-client-ca-cert",
                "required with --internal-mtls (the default): give the CA bundle internal callers' client \
                 certificates chain to, or turn internal mTLS off with --internal-mtls=false",
            ));
        }
        (Some(ca), true) => config::check_cert_file(
            "--internal-client-ca-cert",
            ca,
            Purpose::ClientCa,
            "give the CA that issued the internal callers' client certificates",
        )?,
        (_, false) => {}
    }
    if args.skip_client_cert_verify {
        tracing::warn!(
            "--skip-client-cert-verify is deprecated and has no effect: agents are always verified against \
             their plane's CA; use --internal-mtls=false to turn off internal caller verification"
        );
    }
    config::check_heartbeat(args.heartbeat_interval, args.heartbeat_timeout)?;
    if let Some(dir) = &args.planes_dir {
        config::check_existing_dir("--planes-dir", dir)?;
    }
    if let Some(kubeconfig) = &args.kubeconfig {
        config::check_existing_file("--kubeconfig", kubeconfig)?;
    }
    Ok(())
}
