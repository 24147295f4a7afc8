//! The clap definitions of every role. One definition per role serves parsing,
//! `--help`, the man pages and the shell completions. Every flag has an env var;
//! the names follow OpenChoreo's cluster-gateway and cluster-agent, so existing
//! charts and manifests keep working.

use std::ffi::OsString;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::agent::AgentArgs;
use crate::compose::ControllerLine;
use crate::compose::up::UpArgs;
use crate::gateway::GatewayArgs;
use crate::logging::LogArgs;
use crate::register::RegisterArgs;

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
    Controller(ControllerLine),
    #[command(about = Role::Register.about())]
    Register(RegisterArgs),
    /// Every plane of the control plane in one table: mode, readiness, agents, gateway replicas, certificate expiry.
    Status(crate::overview::StatusArgs),
    /// Run the troubleshooting guide: every check of the control plane, its planes and (with --remote-context) a remote plane, each fix named.
    Check(crate::overview::CheckArgs),
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

/// Parses one role's flags from `argv` (argv[0] first) with the role's own defaults,
/// env vars and checks: how `up` and tests configure roles they run in-process.
/// The exit status of a command whose reader went away (`| head`): what a shell reports
/// for a tool that SIGPIPE ended, so pipelines behave as they do with coreutils.
pub const EXIT_CLOSED_PIPE: u8 = 141;

/// Ends the process quietly with [`EXIT_CLOSED_PIPE`] when printing to standard output
/// fails because its reader has gone (`planelink controller crds | head -1`): Rust's print
/// macros panic there, and a pipe closed early is no bug. Every other panic is reported
/// as before.
pub fn quiet_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(EXIT_CLOSED_PIPE.into());
        }
        report(info);
    }));
}

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
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true);
    let cmd = LogArgs::augment_args(cmd);
    let cmd = match role {
        Role::Gateway => GatewayArgs::augment_args(cmd),
        Role::Agent => AgentArgs::augment_args(cmd),
        Role::Controller => ControllerLine::augment_args(cmd),
        Role::Register => RegisterArgs::augment_args(cmd),
    };
    // After the flags: a flattened struct's doc comment would otherwise name the role.
    go_style(cmd.about(role.about()).long_about(None))
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
                    Command::Controller(ControllerLine::from_arg_matches(&matches)?)
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
        assert_eq!(a.reconnect_delay, std::time::Duration::from_secs(90));
        assert_eq!(
            (a.plane_type.plane_type, a.plane_type.wire),
            (crate::planes::PlaneType::BuildPlane, "workflowplane")
        );
    }
}
