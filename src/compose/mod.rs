//! Roles composed in one process, from their typed configurations: the controller with
//! the gateway beside it (`controller --with-gateway`), and `up` (a gateway and an agent
//! on one host). The only module besides `cli` that reaches into more than one role.

pub mod up;

use std::net::{IpAddr, SocketAddr};

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::controller::ControllerArgs;
use crate::gateway::{ServerArgs, ServerConfig};

/// The `controller` command line: the controller's flags, and those of the gateway it
/// may run beside it.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControllerLine {
    #[command(subcommand)]
    pub command: Option<ControllerCommand>,

    /// Run the gateway in this process too; the flags under "Embedded gateway" then apply.
    #[arg(long, env = "WITH_GATEWAY", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub with_gateway: bool,

    #[command(flatten)]
    pub controller: ControllerArgs,

    #[command(flatten, next_help_heading = "Embedded gateway (with --with-gateway)")]
    pub gateway: ServerArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ControllerCommand {
    /// Print the CustomResourceDefinitions of every plane kind and Environment as YAML,
    /// for `kubectl apply -f -`.
    Crds,
}

/// What `controller` runs, validated.
#[derive(Debug, Clone)]
pub enum ControllerPlan {
    /// The controller alone; the gateway runs elsewhere.
    Alone(crate::controller::Config),
    /// The controller with a gateway in this process, watching Kubernetes.
    WithGateway(crate::controller::Config, Box<ServerConfig>),
}

impl TryFrom<ControllerLine> for ControllerPlan {
    type Error = ConfigError;

    fn try_from(line: ControllerLine) -> Result<ControllerPlan, ConfigError> {
        if !line.with_gateway {
            return crate::controller::Config::try_from(line.controller).map(ControllerPlan::Alone);
        }
        let server = ServerConfig::new(&line.gateway, line.controller.bind_address)?;
        let controller = crate::controller::Config::beside_gateway(line.controller)?;
        Ok(ControllerPlan::WithGateway(controller, Box::new(server)))
    }
}

/// Runs the plan until SIGTERM.
pub async fn run_controller(plan: ControllerPlan) -> anyhow::Result<()> {
    let (controller, server) = match plan {
        ControllerPlan::Alone(config) => return crate::controller::run(config).await,
        ControllerPlan::WithGateway(controller, server) => (controller, server),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::signals::cancel_on_terminate(shutdown.clone()));
    let controller_listeners = crate::controller::Listeners::bind(&controller).await?;
    let gateway = start_gateway_beside(&controller, &server, shutdown.clone()).await?;
    let mut controller = controller;
    controller.access.url = format!("https://{}", loopback_if_unspecified(gateway.internal_addr));
    let result = crate::controller::start(
        controller,
        controller_listeners,
        gateway.link(),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    gateway.wait().await;
    result
}

/// The gateway the controller runs beside: its planes from the same Kubernetes API.
async fn start_gateway_beside(
    controller: &crate::controller::Config,
    server: &ServerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<crate::gateway::Gateway> {
    let listeners = crate::gateway::Listeners::bind(server).await?;
    let client =
        crate::planes::kubernetes::kube_client(controller.kubeconfig.as_deref(), None).await?;
    let registry = crate::planes::Registry::spawn(Box::new(
        crate::planes::kubernetes::KubernetesSource::new(client, controller.namespace.clone()),
    ));
    crate::gateway::start(server, listeners, registry, shutdown).await
}

/// Where a process reaches its own listener bound to `addr` (0.0.0.0 is no destination).
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(IpAddr::from([127, 0, 0, 1]), addr.port()),
        _ => addr,
    }
}
