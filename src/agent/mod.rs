//! The agent role: dials the gateway and serves its requests from local upstreams.
//! This build validates its configuration only; the tunnel comes next.

use crate::cli::AgentArgs;
use crate::config::{self, ConfigError};
use crate::trust::Purpose;

/// Validates the agent's flags the way the running agent will rely on them.
pub fn validate(args: &AgentArgs) -> Result<(), ConfigError> {
    match args.plane_id.as_deref() {
        None | Some("") => {
            return Err(ConfigError::new(
                "--plane-id",
                "required (env PLANE_ID): the planeID of this plane's CR in the control plane \
                 (spec.planeID, or the CR's name when unset)",
            ));
        }
        Some(_) => {}
    }
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
        ("wss", _) => {}
        ("ws", false) => {}
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
    if args.tls_enabled {
        config::check_cert_file(
            "--server-ca",
            &args.server_ca,
            Purpose::ServerCa,
            "mount ca.crt of Secret cluster-gateway-ca (via ConfigMap cluster-gateway-ca in this plane), \
             or --tls-enabled=false for single-host tests",
        )?;
        config::check_cert_file(
            "--client-cert",
            &args.client_cert,
            Purpose::ClientCert,
            "mount Secret cluster-agent-tls there, or issue one with `planelink register certs agent`",
        )?;
        config::check_key_pair(
            "--client-cert",
            &args.client_cert,
            "--client-key",
            &args.client_key,
        )?;
    }
    config::check_heartbeat(args.heartbeat_interval, args.heartbeat_timeout)?;
    if args.reconnect_delay.is_zero() {
        return Err(ConfigError::new(
            "--reconnect-delay",
            "must be above zero, e.g. 5s",
        ));
    }
    if args.max_reconnect_delay < args.reconnect_delay {
        return Err(ConfigError::new(
            "--max-reconnect-delay",
            "is shorter than --reconnect-delay; raise it (default 2m)",
        ));
    }
    if let Some(routes) = &args.routes {
        config::check_existing_file("--routes", routes)?;
    }
    if let Some(kubeconfig) = &args.kubeconfig {
        config::check_existing_file("--kubeconfig", kubeconfig)?;
    }
    Ok(())
}
