//! The systemd units are valid (systemd-analyze verify) and run the real binary;
//! each names an EnvironmentFile, restarts on failure but not on bad configuration.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const UNITS: [(&str, &str); 3] = [
    ("planelink-gateway.service", "gateway"),
    ("planelink-agent.service", "agent"),
    ("planelink-controller.service", "controller"),
];

#[test]
fn systemd_units_verify() {
    let analyze = require_tool("systemd-analyze");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
    let dir = tempfile::tempdir().unwrap();
    for (unit, role) in UNITS {
        let text = std::fs::read_to_string(source.join(unit)).unwrap();
        for required in [
            "Restart=on-failure",
            "RestartPreventExitStatus=64",
            "EnvironmentFile=/etc/planelink/",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            &format!("ExecStart=/usr/local/bin/planelink {role}"),
        ] {
            assert!(text.contains(required), "{unit} lacks {required}");
        }
        // Point ExecStart at the binary under test so verify can check it exists.
        let local = text.replace("/usr/local/bin/planelink", binary().to_str().unwrap());
        std::fs::write(dir.path().join(unit), local).unwrap();
        let out = output_within(
            Command::new(&analyze)
                .arg("verify")
                .arg(dir.path().join(unit))
                .env("SYSTEMD_LOG_LEVEL", "warning"),
            COMMAND_LIMIT,
        );
        let complaints: Vec<String> = stderr(&out)
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("man planelink"))
            .map(str::to_string)
            .collect();
        assert!(complaints.is_empty(), "{unit}: {complaints:?}");
    }
}

#[test]
fn env_examples_parse_as_flags() {
    // Each example env file, with its paths missing, must fail validation on a path,
    // not on an unknown variable or a bad value.
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
    for (file, role) in [
        ("gateway.env.example", "gateway"),
        ("agent.env.example", "agent"),
    ] {
        let text = std::fs::read_to_string(source.join(file)).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg(role).env_clear();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
        {
            let (k, v) = line.split_once('=').unwrap();
            cmd.env(k, v);
        }
        let out = output_within(&mut cmd, COMMAND_LIMIT);
        assert_eq!(code(&out), 64, "{file}");
        let err = stderr(&out);
        assert!(err.contains("/etc/planelink/"), "{file}: {err}");
    }
}

/// The committed CRDs are what the binary generates; regenerate with
/// `UPDATE_CRDS=1 cargo test --test packaging crds`.
#[test]
fn crds_in_packaging_match_the_binary() {
    let out = output_within(
        Command::new(binary()).args(["controller", "crds"]),
        COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/crds/openchoreo.dev.yaml");
    if std::env::var_os("UPDATE_CRDS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from `planelink controller crds`; regenerate it with \
         UPDATE_CRDS=1 cargo test --test packaging crds",
        path.display()
    );
    for kind in [
        "DataPlane",
        "BuildPlane",
        "ObservabilityPlane",
        "Environment",
    ] {
        assert!(
            generated.contains(&format!("kind: {kind}\n")),
            "{kind} missing"
        );
    }
}

/// The alert rules parse and their PromQL is valid (`promtool check rules`), and each
/// alert fires on the series that should fire it, with the annotations an operator reads
/// (`promtool test rules`, packaging/monitoring/alerts.test.yaml).
#[test]
fn alert_rules_check_and_fire() {
    let promtool = require_tool("promtool");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/monitoring");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = output_within(
            Command::new(&promtool).args(args).current_dir(&dir),
            COMMAND_LIMIT,
        );
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            stdout(&out),
            stderr(&out)
        );
    }
}
