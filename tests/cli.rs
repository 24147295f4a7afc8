//! The real binary under each of its names: dispatch, listing, version, completions,
//! the stub roles' validation (exit 64 naming the flag) and logging formats.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn list_prints_every_name() {
    let out = planelink(&["--list"]);
    assert_eq!(code(&out), 0);
    let names: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    for expected in [
        "planelink",
        "planelink-gateway",
        "planelink-agent",
        "planelink-controller",
        "planelink-register",
        "cluster-gateway",
        "cluster-agent",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn each_name_selects_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("planelink-gateway", "--internal-port"),
        ("cluster-gateway", "--internal-port"),
        ("planelink-agent", "--server-url"),
        ("cluster-agent", "--server-url"),
        ("planelink-controller", "--leader-elect"),
        ("planelink-register", "inspect"),
    ];
    for (name, marker) in cases {
        let out = run(&linked(dir.path(), name), &["--help"]);
        assert_eq!(code(&out), 0, "{name} --help: {}", stderr(&out));
        let help = stdout(&out);
        assert!(help.contains(&format!("Usage: {name}")), "{name}: {help}");
        assert!(help.contains(marker), "{name} help lacks {marker}");
    }
}

#[test]
fn unknown_program_name_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&linked(dir.path(), "cluster-frobnicator"), &[]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("unknown program name \"cluster-frobnicator\""),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("cluster-agent"));
}

#[test]
fn version_names_commit_and_provider() {
    let out = planelink(&["version"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("planelink {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("commit: "));
    assert!(text.contains("rustls crypto provider: ring"));
}

/// Output piped into a reader that stops early (`| head -c 10`) ends the command quietly
/// with 141, as a shell reports for coreutils, not with a Rust panic (exit 101). The CRDs
/// are far more than a pipe buffer, so the write after `head` exits must fail.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let script = format!(
        "{} controller crds 2>{} | head -c 10 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
        binary().display(),
        stderr.display()
    );
    let out = output_within(Command::new("bash").args(["-c", &script]), COMMAND_LIMIT);
    assert_eq!(stdout(&out), "141\n");
    assert_eq!(std::fs::read_to_string(&stderr).unwrap(), "");
}

/// An API server that refuses connections: status and check say once which server and
/// context, the cause and the kubectl command to check it, and nothing of the client
/// library's own retries.
#[test]
fn an_unreachable_api_server_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback port just released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {{server: 'https://127.0.0.1:{port}'}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: gone\n  context: {{cluster: gone, user: u}}\n\
             current-context: gone\n"
        ),
    )
    .unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    for command in ["status", "check"] {
        let out = planelink(&[command, "--kubeconfig", kubeconfig, "--context", "gone"]);
        assert_eq!(code(&out), 1, "{command}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "error: cannot reach the API server https://127.0.0.1:{port}/ (context gone): \
                 Connection refused (os error 111); is the cluster running, and is this the \
                 context you meant? Check with `kubectl --context gone cluster-info`\n"
            ),
            "{command}"
        );
    }
}

#[test]
fn completions_for_bash_and_zsh() {
    for shell in ["bash", "zsh", "fish"] {
        let out = planelink(&["completions", shell]);
        assert_eq!(code(&out), 0, "{shell}");
        assert!(
            stdout(&out).contains("server-url"),
            "{shell} completion lacks agent flags"
        );
    }
    let out = planelink(&["completions", "tcsh"]);
    assert_eq!(code(&out), 64);
}

#[test]
fn bare_planelink_asks_for_a_role() {
    let out = planelink(&[]);
    expect_stderr(&out, 64, "name a role");
}

#[test]
fn bad_flag_values_exit_64() {
    let out = planelink(&["gateway", "--heartbeat-interval", "soon"]);
    expect_stderr(&out, 64, "--heartbeat-interval");
    let out = planelink(&["agent", "--plane-type", "edgeplane"]);
    expect_stderr(&out, 64, "dataplane");
}

/// Writes a valid agent setup and returns the flags that use it.
fn agent_flags(dir: &std::path::Path) -> Vec<String> {
    let (gw_ca, _) = gateway_pki(&["gw.example.com"], &[]);
    let (_, leaf) = agent_pki("p1");
    write(&dir.join("server-ca.crt"), &gw_ca.cert_pem);
    write(&dir.join("tls.crt"), &leaf.cert_pem);
    write_key(&dir.join("tls.key"), &leaf);
    vec![
        "--server-url=wss://gw.example.com/ws".into(),
        "--plane-id=p1".into(),
        format!("--server-ca={}", dir.join("server-ca.crt").display()),
        format!("--client-cert={}", dir.join("tls.crt").display()),
        format!("--client-key={}", dir.join("tls.key").display()),
    ]
}

/// A valid agent runs: it keeps trying an unreachable gateway, saying why, and stops
/// cleanly on SIGTERM.
#[test]
fn agent_runs_retries_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = agent_flags(dir.path());
    flags.push("--health-port=0".into());
    flags.push("--server-url=wss://127.0.0.1:9/ws".into());
    flags.push("--reconnect-delay=200ms".into());
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = run_for(
        &linked(dir.path(), "cluster-agent"),
        &args,
        Duration::from_secs(2),
    );
    expect_stderr(&out, 0, "cannot connect to control plane");
    assert!(stderr(&out).contains("reconnecting"), "{}", stderr(&out));
}

#[test]
fn agent_config_errors_name_flag_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let flags = agent_flags(dir.path());
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let out = planelink(&[&["agent"], &args[..]].concat());
        (code(&out), stderr(&out))
    };
    // The leaf given as the server CA.
    let (c, e) = with(&[&format!(
        "--server-ca={}",
        dir.path().join("tls.crt").display()
    )]);
    assert_eq!(c, 64);
    assert!(
        e.contains("invalid --server-ca") && e.contains("cluster-gateway-ca"),
        "{e}"
    );
    // Plain-text URL with TLS on.
    let (c, e) = with(&["--server-url=ws://gw.example.com/ws"]);
    assert_eq!(c, 64);
    assert!(
        e.contains("invalid --server-url") && e.contains("wss://"),
        "{e}"
    );
    // A missing key file.
    let (c, e) = with(&["--client-key=/nonexistent/tls.key"]);
    assert_eq!(c, 64);
    assert!(e.contains("invalid --client-key"), "{e}");
    // Heartbeat timeout shorter than the interval.
    let (c, e) = with(&["--heartbeat-interval=30s", "--heartbeat-timeout=10s"]);
    assert_eq!(c, 64);
    assert!(e.contains("invalid --heartbeat-timeout"), "{e}");
    // Somebody else's key.
    let (_, other) = agent_pki("other");
    write_key(&dir.path().join("other.key"), &other);
    let (c, e) = with(&[&format!(
        "--client-key={}",
        dir.path().join("other.key").display()
    )]);
    assert_eq!(c, 64);
    assert!(e.contains("is not the private key of"), "{e}");
    // A broken routes file: exit 64 naming file, line and column, never the token in it.
    let routes = dir.path().join("routes.yaml");
    write(
        &routes,
        "routes:\n- name: metrics\n  url: http://127.0.0.1:9090\n  auth: {type: bearer, token: \"tok-S3CR3T\"}\n  port: [unclosed\n",
    );
    let (c, e) = with(&[&format!("--routes={}", routes.display())]);
    assert_eq!(c, 64, "{e}");
    assert!(
        e.contains(&format!("invalid --routes: {}: line ", routes.display())),
        "{e}"
    );
    assert!(!e.contains("S3CR3T"), "{e}");
    // A well-formed one with a value of the wrong type: the same.
    write(
        &routes,
        "routes:\n- name: metrics\n  url: http://127.0.0.1:9090\n  auth: {type: bearer, token: [\"tok-S3CR3T\"]}\n",
    );
    let (c, e) = with(&[&format!("--routes={}", routes.display())]);
    assert_eq!(c, 64, "{e}");
    assert!(!e.contains("S3CR3T"), "{e}");
}

#[test]
fn agent_env_vars_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = output_within(
        std::process::Command::new(binary())
            .arg("agent")
            .env("PLANE_ID", "p1")
            .env("SERVER_URL", "wss://gw.example.com/ws")
            .env("SERVER_CA_PATH", dir.path().join("missing-ca.crt")),
        COMMAND_LIMIT,
    );
    expect_stderr(&out, 64, "invalid --server-ca");
    assert!(stderr(&out).contains("missing-ca.crt"), "{}", stderr(&out));
}

#[test]
fn gateway_requires_internal_ca_with_internal_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leaf) = gateway_pki(&["gw.example.com"], &["127.0.0.1"]);
    write(&dir.path().join("tls.crt"), &leaf.cert_pem);
    write_key(&dir.path().join("tls.key"), &leaf);
    let cert = format!("--server-cert={}", dir.path().join("tls.crt").display());
    let key = format!("--server-key={}", dir.path().join("tls.key").display());
    let out = planelink(&["gateway", &cert, &key]);
    expect_stderr(&out, 64, "invalid --internal-client-ca-cert");
    assert!(
        stderr(&out).contains("--internal-mtls=false"),
        "{}",
        stderr(&out)
    );

    let out = planelink(&[
        "gateway",
        &cert,
        &key,
        "--internal-mtls=false",
        "--port=9000",
        "--health-port=9000",
    ]);
    expect_stderr(&out, 64, "invalid --health-port");

    // Without --planes-dir the registry is the Kubernetes API; with no cluster to reach,
    // the gateway says how to give one.
    let out = output_within(
        Command::new(linked(dir.path(), "cluster-gateway"))
            .args([&cert, &key, "--internal-mtls=false"])
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", dir.path()),
        COMMAND_LIMIT,
    );
    expect_stderr(&out, 1, "give --kubeconfig or set KUBECONFIG");
}

#[test]
fn gateway_rejects_a_client_certificate_as_server_cert() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leaf) = agent_pki("p1");
    write(&dir.path().join("tls.crt"), &leaf.cert_pem);
    write_key(&dir.path().join("tls.key"), &leaf);
    let out = planelink(&[
        "gateway",
        &format!("--server-cert={}", dir.path().join("tls.crt").display()),
        &format!("--server-key={}", dir.path().join("tls.key").display()),
        "--internal-mtls=false",
    ]);
    expect_stderr(&out, 64, "lacks the serverAuth");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leaf) = gateway_pki(&["gw.example.com"], &[]);
    write(&dir.path().join("tls.crt"), &leaf.cert_pem);
    write_key(&dir.path().join("tls.key"), &leaf);
    let out = planelink(&[
        "--log-format=json",
        "gateway",
        &format!("--server-cert={}", dir.path().join("tls.crt").display()),
        &format!("--server-key={}", dir.path().join("tls.key").display()),
        "--internal-mtls=false",
        "--skip-client-cert-verify",
    ]);
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("skip-client-cert-verify"))
        .unwrap_or_else(|| panic!("no deprecation warning in {err}"));
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"level\":\"WARN\""), "{line}");

    // --log-level=error silences the warning.
    let out = planelink(&[
        "gateway",
        "--log-level=error",
        &format!("--server-cert={}", dir.path().join("tls.crt").display()),
        &format!("--server-key={}", dir.path().join("tls.key").display()),
        "--internal-mtls=false",
        "--skip-client-cert-verify",
    ]);
    assert!(!stderr(&out).contains("deprecated"), "{}", stderr(&out));
}

#[test]
fn controller_validates_remote_gateway_flags() {
    let out = planelink(&["controller", "--gateway-url=http://gw:8444"]);
    expect_stderr(&out, 64, "invalid --gateway-url");
    let out = planelink(&["controller", "--gateway-client-cert=/x.crt"]);
    expect_stderr(&out, 64, "invalid --gateway-client-key");
    let out = planelink(&["controller"]);
    expect_stderr(&out, 64, "invalid --gateway-ca");
}

#[test]
fn register_exchange_refuses_bad_combinations_before_connecting() {
    let out = planelink(&[
        "register",
        "observabilityplane",
        "obs",
        "--control-plane-context=cp",
        "--remote-context=obs",
        "--observer-url=http://observer.openchoreo-observability-plane.svc.cluster.local:8080",
    ]);
    expect_stderr(&out, 64, "in-cluster address");
    let out = planelink(&[
        "register",
        "dataplane",
        "dp",
        "--control-plane-context=cp",
        "--remote-context=dp",
    ]);
    expect_stderr(
        &out,
        64,
        "--public-virtual-host and --organization-virtual-host",
    );
    let out = planelink(&["register", "buildplane", "bp", "--remote-context=dp"]);
    expect_stderr(&out, 64, "--control-plane-context");
    let out = planelink(&[
        "register",
        "buildplane",
        "bp",
        "--remote-context=dp",
        "--planes-dir=/tmp/x",
    ]);
    expect_stderr(&out, 64, "--gateway-ca");
}
