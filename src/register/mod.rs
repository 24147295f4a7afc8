//! The register role: the operator's tools for the trust exchange between planes.

mod certs;
mod check;
mod direct;
mod exchange;
mod inspect;
mod rotate;
mod secrets;

pub mod args;

pub use args::{CertsCommand, RegisterArgs, RegisterCommand};

use crate::planes::PlaneKind;

/// Outcome of a register command, mapped to the process exit code by main.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done, or the verdict is good.
    Ok,
    /// The verdict is bad (exit 1); the reason and the fix were printed.
    Failed,
    /// The command line cannot be carried out (exit 64); the fix was printed.
    Usage,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Failed => 1,
            Outcome::Usage => crate::config::EXIT_USAGE,
        }
    }
}

pub fn run(args: RegisterArgs) -> Outcome {
    match args.command {
        RegisterCommand::Certs(CertsCommand::Gateway(a)) => certs::gateway(&a),
        RegisterCommand::Certs(CertsCommand::Agent(a)) => certs::agent(&a),
        RegisterCommand::Certs(CertsCommand::Caller(a)) => certs::caller(&a),
        RegisterCommand::Inspect(a) => inspect::run(&a),
        RegisterCommand::Check(a) => check::run(&a),
        RegisterCommand::DataPlane(a) => exchange::run(PlaneKind::DataPlane, &a),
        RegisterCommand::WorkflowPlane(a) => exchange::run(PlaneKind::WorkflowPlane, &a),
        RegisterCommand::BuildPlane(a) => exchange::run(PlaneKind::BuildPlane, &a),
        RegisterCommand::ObservabilityPlane(a) => exchange::run(PlaneKind::ObservabilityPlane, &a),
        RegisterCommand::Rotate(a) => rotate::run(&a),
    }
}

/// Runs an async register command on a small runtime of its own.
fn block_on(command: impl std::future::Future<Output = Outcome>) -> Outcome {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            Outcome::Failed
        }
    }
}
