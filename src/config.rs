//! Start-up validation shared by the roles: every problem names the flag and the fix,
//! and is found before any port is bound.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::trust::{self, Purpose, Severity};

/// Exit code for invalid usage or configuration (EX_USAGE), before anything is bound.
pub const EXIT_USAGE: u8 = 64;

/// A configuration problem: which flag, what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag}: {problem}")]
pub struct ConfigError {
    pub flag: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(flag: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            flag: flag.into(),
            problem: problem.into(),
        }
    }
}

/// Checks that `path` holds a certificate file fit for `purpose`; `mount_hint` says
/// where it normally comes from.
pub fn check_cert_file(
    flag: &str,
    path: &Path,
    purpose: Purpose,
    mount_hint: &str,
) -> Result<(), ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            flag,
            format!("cannot read {}: {e}; {mount_hint}", path.display()),
        )
    })?;
    let contents = trust::pem::parse(&bytes)
        .map_err(|e| ConfigError::new(flag, format!("{}: {e}", path.display())))?;
    let report = trust::assess(&contents, Some(purpose), SystemTime::now())
        .map_err(|e| ConfigError::new(flag, format!("{}: {e}", path.display())))?;
    if let Some(problem) = report
        .findings
        .iter()
        .find(|f| f.severity == Severity::Error)
    {
        return Err(ConfigError::new(
            flag,
            format!("{}: {}", path.display(), problem.message),
        ));
    }
    for warning in report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
    {
        tracing::warn!(flag, path = %path.display(), "{}", warning.message);
    }
    Ok(())
}

/// Checks that a certificate and key file belong together.
pub fn check_key_pair(
    cert_flag: &str,
    cert: &Path,
    key_flag: &str,
    key: &Path,
) -> Result<(), ConfigError> {
    let key_value =
        trust::load_private_key(key).map_err(|e| ConfigError::new(key_flag, e.to_string()))?;
    let certs =
        trust::load_certificates(cert).map_err(|e| ConfigError::new(cert_flag, e.to_string()))?;
    match trust::key_matches(&certs[0], &key_value) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConfigError::new(
            key_flag,
            format!(
                "{} is not the private key of {} ({cert_flag}); give the tls.key issued together with that tls.crt",
                key.display(),
                cert.display()
            ),
        )),
        Err(e) => Err(ConfigError::new(
            key_flag,
            format!("{}: {e}", key.display()),
        )),
    }
}

pub fn check_heartbeat(interval: Duration, timeout: Duration) -> Result<(), ConfigError> {
    if interval.is_zero() {
        return Err(ConfigError::new(
            "--heartbeat-interval",
            "must be above zero, e.g. 30s",
        ));
    }
    if timeout <= interval {
        return Err(ConfigError::new(
            "--heartbeat-timeout",
            format!(
                "{} is not longer than --heartbeat-interval {}; a peer would be declared dead between two \
                 heartbeats. Use about three intervals",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
    Ok(())
}

pub fn check_positive(flag: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(flag, "must be above zero, e.g. 30s"));
    }
    Ok(())
}

/// Parses durations such as 30s, 1m30s or 500ms (clap value parser).
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; write a duration such as 30s, 1m30s or 500ms"))
}

/// Parses sizes such as 1048576, 64Ki, 10Mi, 1Gi (binary) or 10M, 1G (decimal).
pub fn byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write bytes or a size such as 64Mi or 1Gi"))?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "K" | "k" | "KB" => 1_000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "Gi" | "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?}; use Ki, Mi, Gi (or K, M, G)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s} is too large"))
}

pub fn check_existing_file(flag: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            flag,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(ConfigError::new(
            flag,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

pub fn check_existing_dir(flag: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            flag,
            format!("{} is not a directory", path.display()),
        )),
        Err(e) => Err(ConfigError::new(
            flag,
            format!(
                "cannot open {}: {e}; create it (mkdir -p) or point the flag elsewhere",
                path.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(byte_size("64Mi").unwrap(), 64 << 20);
        assert_eq!(byte_size("10M").unwrap(), 10_000_000);
        assert_eq!(byte_size("0").unwrap(), 0);
        assert!(byte_size("ten").is_err());
        assert!(byte_size("5Qi").is_err());
    }
}
