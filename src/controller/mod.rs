//! The controller role: reconciles the plane resources. This build validates its
//! configuration only; the reconcilers come with the controller issue.

use crate::cli::ControllerArgs;
use crate::config::{self, ConfigError};

/// Validates the controller's flags (and the gateway's, with --with-gateway).
pub fn validate(args: &ControllerArgs) -> Result<(), ConfigError> {
    if args.with_gateway {
        return crate::gateway::validate(&args.gateway);
    }
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
    if let Some(ca) = &args.gateway_ca {
        config::check_existing_file("--gateway-ca", ca)?;
    }
    if let Some(kubeconfig) = &args.gateway.kubeconfig {
        config::check_existing_file("--kubeconfig", kubeconfig)?;
    }
    Ok(())
}
