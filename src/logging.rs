//! Logging to stderr with tracing, as text or JSON, at the level the operator chose; and
//! the two helpers that make a peer's values safe to log.

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

/// The longest peer value written to a log line; the rest is cut (and said so).
pub const MAX_LOGGED: usize = 256;

/// A value from a peer (certificate subject, path, planeID, header) made safe for a log
/// line: control characters are escaped so that no one can forge lines, and the length
/// is bounded so that no one can flood the log.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_LOGGED));
    for (i, c) in value.chars().enumerate() {
        if i == MAX_LOGGED {
            out.push_str("…(cut)");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Query parameters whose values are credentials or commands: masked in logs.
const SECRET_PARAMETERS: [&str; 6] = ["token", "password", "secret", "key", "auth", "command"];

/// A query string for a debug log: each value of a parameter whose name suggests a
/// credential (or an exec command) masked, the rest escaped.
pub fn redacted_query(query: &str) -> String {
    let parts: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            if SECRET_PARAMETERS.iter().any(|s| lower.contains(s)) {
                format!("{}=***", escape(&name))
            } else {
                format!("{}={}", escape(&name), escape(&value))
            }
        })
        .collect();
    parts.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_values_cannot_forge_lines() {
        assert_eq!(
            escape("CN=agent\nlevel=error msg=forged"),
            "CN=agent\\nlevel=error msg=forged"
        );
        assert_eq!(escape("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        let long = "x".repeat(10_000);
        assert_eq!(escape(&long).len(), MAX_LOGGED + "…(cut)".len());
    }

    #[test]
    fn credentials_in_queries_are_masked() {
        assert_eq!(
            redacted_query("watch=1&access_token=abc&command=sh&container=app"),
            "watch=1&access_token=***&command=***&container=app"
        );
    }
}
