//! Logging to stderr with tracing, as text or JSON, at the level the operator chose.

use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat, LogLevel};

/// Installs the global subscriber. `RUST_LOG`, when set, replaces the level with a full filter.
pub fn init(args: &LogArgs) {
    let level = match args.log_level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    // A second init (tests running roles in-process) keeps the first subscriber.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
