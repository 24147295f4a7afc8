//! Dispatch only: the role comes from argv[0] or the subcommand; each role's module
//! does the work.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use planelink::cli::{self, Command, Invocation};
use planelink::config::ConfigError;
use planelink::config::EXIT_USAGE;

fn main() -> ExitCode {
    cli::quiet_when_stdout_closes();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    if let Err(name) = cli::role_for_program(std::path::Path::new(&argv0)) {
        let known: Vec<&str> = cli::NAMES.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "planelink: unknown program name {name:?}; link or copy the binary under one of: {}",
            known.join(", ")
        );
        return ExitCode::from(1);
    }
    let invocation = match cli::parse(args) {
        Ok(inv) => inv,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match invocation {
        Invocation::List => {
            for (name, _) in cli::NAMES {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Invocation::Run { log, command } => {
            planelink::logging::init(&log);
            run(*command)
        }
    }
}

fn run(command: Command) -> ExitCode {
    match command {
        Command::Gateway(args) => serve(
            "gateway",
            planelink::gateway::Config::try_from(args),
            planelink::gateway::run,
        ),
        Command::Agent(args) => serve(
            "agent",
            planelink::agent::Config::try_from(args),
            planelink::agent::run,
        ),
        Command::Up(args) => serve("up", Ok(args), planelink::compose::up::run),
        Command::Controller(line) => match line.command {
            Some(planelink::compose::ControllerCommand::Crds) => {
                print!("{}", planelink::planes::crd::crds_yaml());
                ExitCode::SUCCESS
            }
            None => serve(
                "controller",
                planelink::compose::ControllerPlan::try_from(line),
                planelink::compose::run_controller,
            ),
        },
        Command::Register(args) => ExitCode::from(planelink::register::run(args).exit_code()),
        Command::Status(args) => ExitCode::from(planelink::overview::status(args)),
        Command::Check(args) => ExitCode::from(planelink::overview::check(args)),
        Command::Version => {
            println!("planelink {}", env!("CARGO_PKG_VERSION"));
            println!("commit: {}", planelink::GIT_COMMIT.unwrap_or("unknown"));
            println!(
                "rustls crypto provider: {}",
                planelink::trust::CRYPTO_PROVIDER_NAME
            );
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            let mut cmd = cli::command();
            // Rendered first, so that a closed pipe meets print! (see quiet_when_stdout_closes).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "planelink", &mut script);
            print!("{}", String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
    }
}

/// Runs a long-lived role: an invalid configuration exits 64 before anything is bound;
/// failures at run time exit 1.
fn serve<C, F, Fut>(role: &str, config: Result<C, ConfigError>, run: F) -> ExitCode
where
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("planelink {role}: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // kube builds its TLS configs with the process-wide provider; make it ours.
    let _ = rustls::crypto::CryptoProvider::install_default(std::sync::Arc::unwrap_or_clone(
        planelink::trust::crypto_provider(),
    ));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("planelink {role}: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("planelink {role}: {e:#}");
            ExitCode::from(1)
        }
    }
}
