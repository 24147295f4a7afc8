//! Logging to stderr with tracing, as text or JSON, at the level the operator chose
//! (peer values go through [`crate::safe_text`] first).

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log level. RUST_LOG, when set, overrides it with a full filter (e.g. planelink=debug,hyper=info).
    #[arg(long, env = "LOG_LEVEL", value_enum, default_value_t = LogLevel::Info, global = true, ignore_case = true)]
    pub log_level: LogLevel,

    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. `RUST_LOG`, when set, replaces the level with a full filter.
pub fn init(args: &LogArgs) {
    let level = match args.log_level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // kube's client logs each failed request at error without naming server or context;
    // planelink reports the failure itself, with both.
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},kube_client::client::builder=off")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours_wanted())
        .with_target(true);
    // A second init (tests running roles in-process) keeps the first subscriber.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Colour only for a person at a terminal: never in files, journald or `kubectl logs`,
/// and never when `NO_COLOR` is set to anything (https://no-color.org).
fn colours_wanted() -> bool {
    use std::io::IsTerminal as _;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
