//! `planelink up`: the whole topology on one host, in one process. It issues what
//! the state directory lacks (gateway CA and serving certificate, an agent CA and
//! client certificate, a caller certificate for the internal listener), registers the
//! agent's CA in a DataPlane manifest, starts a gateway and an agent connected over
//! mutual TLS, and prints the commands that reach the plane through the tunnel.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentArgs;
use crate::gateway::GatewayArgs;
use crate::planes::crd::{DEFAULT_NAMESPACE, PlaneBuilder, ValueFrom};
use crate::planes::manifest::to_yaml;
use crate::planes::{PlaneType, PlaneTypeName, Registry, directory::DirectorySource};
use crate::trust::issue::{self, CaOptions, FileKind, Issued, LeafOptions};

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Where certificates, the planes directory and the kubeconfig are kept (reused on the next run).
    /// Default: $XDG_STATE_HOME/planelink or ~/.local/state/planelink.
    #[arg(long, env = "PLANELINK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The plane ID (and DataPlane name) of the local agent.
    #[arg(long, default_value = "local")]
    pub plane_id: String,

    /// Address the listeners bind to; loopback unless you want other hosts to reach them.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,

    /// The gateway's public (agent) port.
    #[arg(long, default_value_t = 8443)]
    pub port: u16,

    /// The gateway's internal (caller) port.
    #[arg(long, default_value_t = 8444)]
    pub internal_port: u16,

    /// The gateway's health and metrics port.
    #[arg(long, default_value_t = 8080)]
    pub health_port: u16,

    /// Kubeconfig for the agent's k8s target; by default the current kubeconfig (KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// The state directory when `--state-dir` is not given.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("planelink");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/planelink"),
        None => PathBuf::from("planelink-state"),
    }
}

/// A role's flags as its defaults and the environment set them, for `up` to fill in
/// the fields it decides.
fn role_defaults<T: clap::Args + clap::FromArgMatches>(role: &'static str) -> anyhow::Result<T> {
    let command = T::augment_args(clap::Command::new(role));
    let matches = command
        .try_get_matches_from([role])
        .with_context(|| format!("the {role}'s defaults and environment"))?;
    Ok(T::from_arg_matches(&matches)?)
}

/// Loads the CA in `dir` or creates one, then issues a fresh leaf when `tls.crt` is
/// missing.
fn ensure_bundle(
    dir: &Path,
    ca: impl FnOnce() -> CaOptions,
    leaf: LeafOptions,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = if dir.join("ca.crt").exists() {
        Issued::load_ca(dir)?
    } else {
        issue::new_ca(&ca())?
    };
    if !dir.join("tls.crt").exists() || !dir.join("ca.key").exists() {
        let issued = issue::issue_leaf(&ca, &leaf)?;
        issue::write_bundle(dir, &ca, true, &issued)?;
        tracing::info!(dir = %dir.display(), "issued certificates");
    }
    Ok(())
}

/// The DataPlane registering the local agent's CA, as a planes-directory manifest.
fn dataplane_manifest(name: &str, agent_ca_pem: &str) -> String {
    let plane = PlaneBuilder::new(PlaneType::DataPlane, DEFAULT_NAMESPACE, name)
        .plane_id(name)
        .client_ca(ValueFrom::inline(agent_ca_pem))
        .build();
    format!(
        "# Written by `planelink up`: the local agent's CA, registered for dataplane {name}.\n{}",
        to_yaml(&[plane])
    )
}

fn kubeconfig(server: &str, state: &Path) -> String {
    format!(
        "# Written by `planelink up`: kubectl through the tunnel.\n\
         apiVersion: v1\nkind: Config\n\
         clusters:\n- name: planelink\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: planelink-caller\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n- name: planelink\n  context:\n    cluster: planelink\n    user: planelink-caller\n\
         current-context: planelink\n",
        ca = state.join("gateway/ca.crt").display(),
        cert = state.join("caller/tls.crt").display(),
        key = state.join("caller/tls.key").display(),
    )
}

/// The host name agents and callers use for `--bind-address`.
fn host_name(host: IpAddr) -> String {
    if host.is_loopback() {
        "localhost".to_string()
    } else {
        host.to_string()
    }
}

/// Issues what the state directory lacks and registers the agent's CA in a planes
/// directory; returns the canonical state directory.
fn prepare_state(args: &UpArgs) -> anyhow::Result<PathBuf> {
    let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    let state = state.canonicalize()?;
    let (plane, host) = (&args.plane_id, args.bind_address);
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    if !host.is_unspecified() && !ips.contains(&host) {
        ips.push(host);
    }
    ensure_bundle(
        &state.join("gateway"),
        CaOptions::gateway,
        LeafOptions::server("planelink-gateway", vec!["localhost".into()], ips),
    )?;
    ensure_bundle(
        &state.join("agent"),
        || CaOptions::agent(plane),
        LeafOptions::client(&format!("planelink-agent-{plane}")),
    )?;
    let caller = state.join("caller");
    if !caller.join("tls.crt").exists() {
        std::fs::create_dir_all(&caller)?;
        let gateway_ca = Issued::load_ca(&state.join("gateway"))?;
        let leaf = issue::issue_leaf(&gateway_ca, &LeafOptions::client("planelink-up-caller"))?;
        issue::write_file(&caller.join("tls.crt"), &leaf.cert_pem, FileKind::Public)?;
        issue::write_file(&caller.join("tls.key"), leaf.key_pem(), FileKind::Secret)?;
    }
    let planes = state.join("planes");
    std::fs::create_dir_all(&planes)?;
    let agent_ca = std::fs::read_to_string(state.join("agent/ca.crt"))?;
    issue::write_file(
        &planes.join(format!("dataplane-{plane}.yaml")),
        &dataplane_manifest(plane, &agent_ca),
        FileKind::Public,
    )?;
    Ok(state)
}

async fn start_gateway(
    args: &UpArgs,
    state: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<crate::gateway::Gateway> {
    let planes = state.join("planes");
    let mut gateway_args: GatewayArgs = role_defaults("gateway")?;
    gateway_args.bind_address = args.bind_address;
    gateway_args.planes_dir = Some(planes.clone());
    let server = &mut gateway_args.server;
    server.port = args.port;
    server.internal_port = args.internal_port;
    server.health_port = args.health_port;
    server.server_cert = state.join("gateway/tls.crt");
    server.server_key = state.join("gateway/tls.key");
    server.internal_client_ca_cert = Some(state.join("gateway/ca.crt"));
    server.shutdown_timeout = Duration::from_secs(5);
    let config = crate::gateway::Config::try_from(gateway_args)?;
    let listeners = crate::gateway::Listeners::bind(&config.server).await?;
    let registry = Registry::spawn(Box::new(DirectorySource::new(&planes)));
    crate::gateway::start(&config.server, listeners, registry, shutdown.clone()).await
}

async fn start_agent(
    args: &UpArgs,
    state: &Path,
    gateway: &crate::gateway::Gateway,
    shutdown: &CancellationToken,
) -> anyhow::Result<crate::agent::Agent> {
    let mut agent_args: AgentArgs = role_defaults("agent")?;
    agent_args.server_url = format!(
        "wss://{}:{}/ws",
        host_name(args.bind_address),
        gateway.public_addr.port()
    );
    agent_args.plane_type = PlaneTypeName::of(PlaneType::DataPlane);
    agent_args.plane_id = Some(args.plane_id.clone());
    agent_args.client_cert = state.join("agent/tls.crt");
    agent_args.client_key = state.join("agent/tls.key");
    agent_args.server_ca = state.join("gateway/ca.crt");
    agent_args.reconnect_delay = Duration::from_secs(1);
    agent_args.health_port = 0;
    if let Some(kubeconfig) = &args.kubeconfig {
        agent_args.kubeconfig = Some(kubeconfig.clone());
    }
    let config = crate::agent::Config::try_from(agent_args)?;
    let agent = crate::agent::start(config, None, shutdown.clone()).await?;
    if !agent.wait_connected(CONNECT_WAIT).await {
        anyhow::bail!(
            "the agent did not connect to the gateway within {}; see the log above",
            humantime::format_duration(CONNECT_WAIT)
        );
    }
    Ok(agent)
}

/// How long `up` waits for its agent to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let state = prepare_state(&args)?;
    let shutdown = CancellationToken::new();
    let gateway = start_gateway(&args, &state, &shutdown).await?;
    let agent = start_agent(&args, &state, &gateway, &shutdown).await?;
    let (plane, host_name) = (&args.plane_id, host_name(args.bind_address));
    let caller = state.join("caller");
    let internal = format!("https://{host_name}:{}", gateway.internal_addr.port());
    let proxy = format!("{internal}/api/proxy/dataplane/{plane}/default/{plane}");
    let kubeconfig_path = state.join("kubeconfig");
    issue::write_file(
        &kubeconfig_path,
        &kubeconfig(&format!("{proxy}/k8s"), &state),
        FileKind::Public,
    )?;
    let tls_flags = format!(
        "--cacert {} --cert {} --key {}",
        state.join("gateway/ca.crt").display(),
        caller.join("tls.crt").display(),
        caller.join("tls.key").display()
    );
    println!(
        "planelink up: gateway and agent are running; dataplane {plane:?} is connected through the tunnel.\n\
         \n  state directory  {state}\n  agents dial      wss://{host_name}:{public}/ws\n  callers use      {internal}  (mutual TLS: certificate in {caller})\n  health, metrics  http://{host_name}:{health}/ready  /metrics\n\
         \nReach the plane through the tunnel:\n\
         \n  curl {tls_flags} \\\n    {proxy}/agent/\n\
         \n  kubectl --kubeconfig {kubeconfig} version\n\
         \nThe agent's k8s target is {k8s}. Stop with Ctrl-C.",
        state = state.display(),
        public = gateway.public_addr.port(),
        caller = caller.display(),
        health = gateway.health_addr.port(),
        kubeconfig = kubeconfig_path.display(),
        k8s = agent
            .k8s_server()
            .map(|s| format!("the cluster at {s}"))
            .unwrap_or_else(|| "off: no kubeconfig or in-cluster service account was found".into()),
    );
    crate::signals::cancel_on_terminate(shutdown).await;
    agent.wait().await;
    gateway.wait().await;
    Ok(())
}
