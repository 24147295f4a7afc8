//! The agent's targets: `k8s` (the local Kubernetes API with the agent's identity,
//! through kube's config and auth layers), named routes from `--routes`, and the
//! built-in `agent` target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use kube::client::ConfigExt as _;
use serde::Deserialize;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

use crate::trust;
use crate::tunnel::{Body, BoxError};

/// The service account token path Kubernetes mounts into pods.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

use crate::tunnel::client::{connector, http_client};
type Service = BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>;

/// One upstream: a base URL and a client that adds the upstream's credentials.
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    pub base: Uri,
    /// Callers' `Authorization` never reaches this upstream: it authenticates the agent
    /// itself (always so for `k8s`, whatever credential the agent uses).
    pub drops_caller_auth: bool,
    /// Callers' impersonation headers may pass (a route's explicit `passImpersonation`).
    pub pass_impersonation: bool,
    service: Service,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("drops_caller_auth", &self.drops_caller_auth)
            .field("pass_impersonation", &self.pass_impersonation)
            .finish()
    }
}

impl Upstream {
    /// Sends through the upstream's middleware. Boxed here, where the types are
    /// concrete: held across an await, the bare `Oneshot` trips the compiler's
    /// higher-ranked `Send` check.
    pub fn send(
        &self,
        req: Request<Body>,
    ) -> futures_util::future::BoxFuture<'static, Result<Response<Incoming>, BoxError>> {
        Box::pin(self.service.clone().oneshot(req))
    }

    /// The upstream URI of a tunnelled path and query, below the base URL's path.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let base_path = self.base.path().trim_end_matches('/');
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(format!("{base_path}{path_and_query}").parse()?);
        Ok(Uri::from_parts(parts)?)
    }
}

/// The `k8s` target from a kubeconfig file, or (without one) the in-cluster service
/// account, then `$KUBECONFIG`/`~/.kube/config` as kube infers them.
pub async fn kubernetes(kubeconfig: Option<&Path>) -> anyhow::Result<Upstream> {
    let config = crate::planes::kubernetes::kube_config(kubeconfig, None).await?;
    let tls = config
        .rustls_client_config()
        .context("TLS settings of the Kubernetes API")?;
    let client = http_client(connector(tls, None));
    let auth = config.auth_layer().context("Kubernetes credentials")?;
    let extra = config
        .extra_headers_layer()
        .context("impersonation headers")?;
    let service = tower::ServiceBuilder::new()
        .layer(extra)
        .option_layer(auth)
        .service(client.map_err(|e| -> BoxError { Box::new(e) }));
    Ok(Upstream {
        name: "k8s".into(),
        base: config.cluster_url.clone(),
        drops_caller_auth: true,
        pass_impersonation: false,
        service: BoxCloneSyncService::new(service),
    })
}

/// The `--routes` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub url: String,
    /// CA bundle for an https upstream; the system roots are not used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub auth: RouteAuth,
    /// Let callers' `Impersonate-*` headers through to this upstream (off: they are dropped).
    #[serde(default)]
    pub pass_impersonation: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RouteAuth {
    #[default]
    None,
    Bearer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default, rename = "tokenFile")]
        token_file: Option<PathBuf>,
    },
    Basic {
        username: String,
        #[serde(default)]
        password: Option<String>,
        #[serde(default, rename = "passwordFile")]
        password_file: Option<PathBuf>,
    },
    /// The pod's service account token, re-read as the kubelet rotates it.
    Serviceaccount {
        #[serde(default, rename = "tokenFile")]
        token_file: Option<PathBuf>,
    },
}

/// A credential read from a file, re-read at most every minute (rotation).
struct FileSecret {
    path: PathBuf,
    cached: Mutex<Option<(Instant, String)>>,
}

impl FileSecret {
    fn get(&self) -> Result<String, BoxError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, value)) = cached.as_ref()
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(value.clone());
        }
        let value = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?
            .trim()
            .to_string();
        *cached = Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

enum Credential {
    Fixed(HeaderValue),
    BearerFile(FileSecret),
    BasicFile(String, FileSecret),
}

impl Credential {
    fn header(&self) -> Result<HeaderValue, BoxError> {
        let mut value = match self {
            Credential::Fixed(v) => return Ok(v.clone()),
            Credential::BearerFile(file) => {
                HeaderValue::from_str(&format!("Bearer {}", file.get()?))?
            }
            Credential::BasicFile(user, file) => basic(user, &file.get()?)?,
        };
        value.set_sensitive(true);
        Ok(value)
    }
}

fn basic(user: &str, password: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))?;
    value.set_sensitive(true);
    Ok(value)
}

fn file_secret(path: PathBuf) -> FileSecret {
    FileSecret {
        path,
        cached: Mutex::new(None),
    }
}

fn credential(auth: RouteAuth) -> anyhow::Result<Option<Credential>> {
    Ok(match auth {
        RouteAuth::None => None,
        RouteAuth::Bearer {
            token: Some(token),
            token_file: None,
        } => {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))?;
            value.set_sensitive(true);
            Some(Credential::Fixed(value))
        }
        RouteAuth::Bearer {
            token: None,
            token_file: Some(path),
        } => Some(Credential::BearerFile(file_secret(path))),
        RouteAuth::Bearer { .. } => {
            anyhow::bail!("bearer auth needs exactly one of token and tokenFile")
        }
        RouteAuth::Basic {
            username,
            password: Some(password),
            password_file: None,
        } => Some(Credential::Fixed(basic(&username, &password)?)),
        RouteAuth::Basic {
            username,
            password: None,
            password_file: Some(path),
        } => Some(Credential::BasicFile(username, file_secret(path))),
        RouteAuth::Basic { .. } => {
            anyhow::bail!("basic auth needs exactly one of password and passwordFile")
        }
        RouteAuth::Serviceaccount { token_file } => Some(Credential::BearerFile(file_secret(
            token_file.unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_TOKEN)),
        ))),
    })
}

fn route(spec: RouteSpec) -> anyhow::Result<Upstream> {
    let base: Uri = spec
        .url
        .parse()
        .with_context(|| format!("url {:?} is not a URL", spec.url))?;
    match base.scheme_str() {
        Some("http" | "https") => {}
        _ => anyhow::bail!("url {:?} must start with http:// or https://", spec.url),
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &spec.ca_file {
        for cert in trust::load_certificates(ca)? {
            roots.add(cert)?;
        }
    } else if base.scheme_str() == Some("https") {
        anyhow::bail!("an https route needs caFile (the CA of the upstream's certificate)");
    }
    let tls = rustls::ClientConfig::builder_with_provider(trust::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = http_client(connector(tls, None));
    let credential = credential(spec.auth)?.map(Arc::new);
    let drops_caller_auth = credential.is_some();
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: Request<Body>| {
            if let Some(credential) = &credential {
                match credential.header() {
                    Ok(value) => {
                        req.headers_mut().insert(header::AUTHORIZATION, value);
                    }
                    Err(e) => tracing::warn!(error = %e, "route credential unavailable"),
                }
            }
            req
        })
        .service(client);
    Ok(Upstream {
        name: spec.name,
        base,
        drops_caller_auth,
        pass_impersonation: spec.pass_impersonation,
        service: boxed_client_service(service),
    })
}

fn boxed_client_service<S>(service: S) -> Service
where
    S: tower::Service<Request<Body>, Response = Response<Incoming>> + Clone + Send + Sync + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(service.map_err(|e| -> BoxError { Box::new(e) }))
}

/// Parses and builds the routes of a `--routes` file.
pub fn load_routes(path: &Path) -> anyhow::Result<BTreeMap<String, Upstream>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: RoutesFile =
        serde_saphyr::from_str_with_options(&text, crate::safe_text::yaml_options()).map_err(
            |e| anyhow::anyhow!("{}: {}", path.display(), crate::safe_text::yaml_error(&e)),
        )?;
    let mut routes = BTreeMap::new();
    for spec in file.routes {
        let name = spec.name.clone();
        if name.is_empty() || name == "agent" || name == "k8s" {
            anyhow::bail!(
                "{}: route name {name:?} is empty or reserved (k8s and agent are built in)",
                path.display()
            );
        }
        let upstream = route(spec).with_context(|| format!("{}: route {name}", path.display()))?;
        if routes.insert(name.clone(), upstream).is_some() {
            anyhow::bail!("{}: route {name} is defined twice", path.display());
        }
    }
    Ok(routes)
}
