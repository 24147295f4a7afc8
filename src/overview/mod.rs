//! The operator's view: `planelink status` (every plane in one table) and `planelink
//! check` (the troubleshooting guide, run). Both read what the API servers hold, with
//! kubectl's flags; neither writes anything.

mod check;
mod facts;
mod status;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::duration;
use crate::planes::PlaneType;

pub use check::run as check;
pub use status::run as status;

/// Which cluster and namespaces, as kubectl names them.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Kubeconfig files (a list separated by `:`); the default kubeconfig when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The control plane's kube context; the current context when unset.
    #[arg(long)]
    pub context: Option<String>,

    /// Only the planes of this namespace (the organization's).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,

    /// The planes of every namespace (the default when -n is not given).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Namespace of the gateway (Secret and ConfigMap cluster-gateway-ca, Deployment
    /// cluster-gateway).
    #[arg(long, default_value = "openchoreo-control-plane")]
    pub control_plane_namespace: String,

    /// Warn about a certificate expiring within this long (or within the last third of
    /// its lifetime, when that is shorter).
    #[arg(long, default_value = "720h", value_parser = duration)]
    pub expiry_warning: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = StatusFormat::Table)]
    pub output: StatusFormat,

    /// Refresh every --interval until interrupted (in place on a terminal).
    #[arg(short = 'w', long)]
    pub watch: bool,

    /// With --watch: how often to refresh.
    #[arg(long, default_value = "2s", value_parser = duration, requires = "watch")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

/// A plane CR named as kubectl names it: `dataplane/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneName {
    pub plane_type: PlaneType,
    pub name: String,
}

impl std::str::FromStr for PlaneName {
    type Err = String;

    fn from_str(s: &str) -> Result<PlaneName, String> {
        let usage = "write KIND/NAME, e.g. dataplane/prod-us-east (KIND: dataplane, buildplane or observabilityplane)";
        let (kind, name) = s.split_once('/').ok_or(usage)?;
        let plane_type = PlaneType::parse(&kind.to_ascii_lowercase()).ok_or(usage)?;
        if name.is_empty() {
            return Err(usage.into());
        }
        Ok(PlaneName {
            plane_type,
            name: name.to_string(),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Only this plane (KIND/NAME, e.g. dataplane/prod-us-east); needed with
    /// --remote-context when more than one plane is in scope.
    pub plane: Option<PlaneName>,

    #[command(flatten)]
    pub kube: KubeArgs,

    /// Kube context of the plane's remote cluster: also check the agent's side there.
    #[arg(long)]
    pub remote_context: Option<String>,

    /// Namespace of the agent in the remote cluster (default: openchoreo-data-plane,
    /// -build-plane or -observability-plane).
    #[arg(long, requires = "remote_context")]
    pub remote_namespace: Option<String>,

    /// A URL agents dial (wss://HOST:PORT/ws), checked against the gateway certificate's
    /// SANs; with --remote-context the agent's own --server-url is checked too.
    #[arg(long)]
    pub server_url: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = CheckFormat::Text)]
    pub output: CheckFormat,
}

/// Colour for a terminal that wants it: stdout is one, `NO_COLOR` is unset and `TERM`
/// is not `dumb`.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    colour: bool,
}

impl Style {
    pub fn detect() -> Style {
        let wanted = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |t| t != "dumb");
        Style {
            colour: wanted && std::io::stdout().is_terminal(),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn good(self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn warn(self, text: &str) -> String {
        self.paint("33", text)
    }

    pub fn bad(self, text: &str) -> String {
        self.paint("31", text)
    }

    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn is_colour(self) -> bool {
        self.colour
    }
}

/// The remote namespace of a plane kind's agent, as the overlays and OpenChoreo's charts
/// install it.
pub fn default_remote_namespace(plane_type: PlaneType) -> &'static str {
    match plane_type {
        PlaneType::DataPlane => "openchoreo-data-plane",
        PlaneType::BuildPlane => "openchoreo-build-plane",
        PlaneType::ObservabilityPlane => "openchoreo-observability-plane",
    }
}

/// Runs a command on a small runtime of its own, with planelink's TLS provider.
fn block_on(command: impl std::future::Future<Output = u8>) -> u8 {
    let _ = rustls::crypto::CryptoProvider::install_default(std::sync::Arc::unwrap_or_clone(
        crate::trust::crypto_provider(),
    ));
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            1
        }
    }
}

/// The control plane's client, once its API server has answered: the context's, or one
/// error naming the server, the context and what to check (as kubectl says it).
async fn control_client(kube: &KubeArgs) -> Result<kube::Client, String> {
    let which = kube
        .context
        .as_deref()
        .map_or("the current context".to_string(), |c| {
            format!("context {c}")
        });
    let config =
        crate::planes::kubernetes::kube_config(kube.kubeconfig.as_deref(), kube.context.as_deref())
            .await
            .map_err(|e| format!("cannot reach the control plane ({which}): {e:#}"))?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .map_err(|e| format!("cannot reach the control plane ({which}): {e}"))?;
    let answered = tokio::time::timeout(API_SERVER_PROBE, client.apiserver_version()).await;
    let cause = match answered {
        Ok(Ok(_)) => return Ok(client),
        // Any answer, even a refusal, means the server is there: the command says more.
        Ok(Err(kube::Error::Api(_))) => return Ok(client),
        Ok(Err(e)) => innermost_cause(&e),
        Err(_) => format!("no answer within {}s", API_SERVER_PROBE.as_secs()),
    };
    let context_flag = kube.context.as_deref().map_or(String::new(), |c| {
        format!("--context {} ", crate::safe_text::shell_word(c))
    });
    Err(format!(
        "cannot reach the API server {server} ({which}): {cause}; is the cluster running, \
         and is this the context you meant? Check with `kubectl {context_flag}cluster-info`"
    ))
}

/// How long status and check wait for the API server's first answer.
const API_SERVER_PROBE: std::time::Duration = std::time::Duration::from_secs(10);

/// The deepest cause of an error (`Connection refused (os error 111)`), not the client
/// library's wrapping of it (`ServiceError: client error (Connect)`).
fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
