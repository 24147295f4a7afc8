//! The Kubernetes source of the plane registry: reflectors on the three plane kinds, and a
//! watch by name on each Secret a plane references as its client CA (never all Secrets),
//! so that a changed CR or CA Secret reaches the gateway within moments, with no polling,
//! restart or notify call. Also the one place kube clients are configured.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{StreamExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use kube::core::DynamicObject;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::watch;

use super::crd::{AnyPlane, ForEachKind, PlaneKind, PlaneResource};
use super::registry::{PlaneSource, Snapshot, secret_location};
use super::{Problem, Reason};
use crate::safe_text::{escape, redact_values};

/// Loads a kube configuration: the kubeconfig files given (a `KUBECONFIG`-style list
/// separated by `:` is merged in order), else the in-cluster service account, else
/// `~/.kube/config`. `context` picks a context other than the current one.
pub async fn kube_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Config> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    match kubeconfig {
        Some(paths) => {
            let mut merged: Option<kube::config::Kubeconfig> = None;
            for path in
                std::env::split_paths(paths.as_os_str()).filter(|p| !p.as_os_str().is_empty())
            {
                let file = kube::config::Kubeconfig::read_from(&path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                merged = Some(match merged {
                    None => file,
                    Some(earlier) => earlier.merge(file).context("merging kubeconfig files")?,
                });
            }
            let merged = merged.context("the kubeconfig list is empty")?;
            kube::Config::from_custom_kubeconfig(merged, &options)
                .await
                .with_context(|| format!("kubeconfig {}", paths.display()))
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("cannot load ~/.kube/config"),
        None => kube::Config::infer().await.context(
            "no in-cluster service account and no kubeconfig; give --kubeconfig or set KUBECONFIG",
        ),
    }
}

/// A client configuration from exactly these parts (the controller's, for a remote API
/// server or the gateway): the server, its CA (PEM) and kubeconfig-style `auth`, with
/// short connect and read timeouts.
pub fn client_config(
    url: &str,
    ca_pem: Option<&[u8]>,
    auth: serde_json::Value,
) -> Result<kube::Config, Problem> {
    let uri: http::Uri = url.parse().map_err(|e| {
        Problem::new(
            Reason::KubernetesClusterInvalid,
            format!("server {url:?} is not a URL ({e}); write https://HOST:6443"),
        )
    })?;
    let mut config = kube::Config::new(uri);
    if let Some(pem) = ca_pem {
        let certs = crate::trust::parse_certificates(pem).map_err(|e| {
            Problem::new(
                Reason::KubernetesClusterInvalid,
                format!("tls.ca: {e}; give the PEM of the API server's CA"),
            )
        })?;
        config.root_cert = Some(certs.iter().map(|c| c.to_vec()).collect());
    }
    config.auth_info = serde_json::from_value(auth).map_err(|e| {
        Problem::new(
            Reason::KubernetesClusterInvalid,
            format!("credentials: {e}"),
        )
    })?;
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    config.read_timeout = Some(std::time::Duration::from_secs(15));
    Ok(config)
}

/// A kube client from [`kube_config`].
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<Client> {
    let config = kube_config(kubeconfig, context).await?;
    Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Retries of a referenced Secret's watch: 200 ms doubling up to 3 s (kube's default
/// reaches 30 s), so that a RoleBinding granted a moment late, or a Secret namespace
/// created after its plane, costs the plane seconds, not half a minute.
#[derive(Debug, Clone, Copy)]
struct QuickBackoff {
    next: Duration,
}

impl QuickBackoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(3);
}

impl Default for QuickBackoff {
    fn default() -> Self {
        QuickBackoff { next: Self::FIRST }
    }
}

impl Iterator for QuickBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for QuickBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A channel receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// How long changes are gathered before one snapshot is built: a burst (a Secret and its
/// CR applied together) gives one re-verification, well within the 2 s promise.
const SETTLE: Duration = Duration::from_millis(100);

pub struct KubernetesSource {
    client: Client,
    namespace: Option<String>,
}

impl KubernetesSource {
    /// Watches all namespaces, or only `namespace`.
    pub fn new(client: Client, namespace: Option<String>) -> KubernetesSource {
        KubernetesSource { client, namespace }
    }

    /// Follows one kind: a function giving its CRs now, and a stream yielding `true` once
    /// listed. Every kind is optional: a cluster without its CRD (OpenChoreo has dropped
    /// BuildPlane, older installs lack the newer kinds) has none of them rather than a
    /// gateway that never becomes ready. Objects are watched untyped and decoded one by
    /// one, so that a CR this gateway cannot read is left out (and logged once per
    /// version) while every other plane is served.
    fn follow<K: PlaneResource>(&self) -> (PlanesOfKind, BoxStream<'static, bool>) {
        let kind = K::KIND;
        if kind.cluster_scoped() && self.namespace.is_some() {
            // Watching one namespace: cluster-scoped planes are not in it.
            return (
                Box::new(Vec::new),
                futures_util::stream::once(async { true }).boxed(),
            );
        }
        let api = plane_api(&self.client, kind, self.namespace.as_deref());
        let (store, stream) = reflect(api, kind, watcher::Config::default());
        let decoder = PlaneDecoder::default();
        let planes = move || {
            store
                .state()
                .into_iter()
                .filter_map(|object| match decoder.decode::<K>(&object) {
                    Ok(plane) => Some(plane.into_any()),
                    Err(reason) => {
                        if let Some(reason) = reason {
                            tracing::warn!("{reason}: it is not served; the other planes are");
                        }
                        None
                    }
                })
                .collect()
        };
        (Box::new(planes), stream)
    }
}

/// Decodes watched plane objects one by one, so that a CR that does not decode is left
/// out on its own; each generation of such a CR is reported once.
#[derive(Default)]
pub struct PlaneDecoder {
    reported: std::sync::Mutex<HashSet<(String, String)>>,
}

impl PlaneDecoder {
    /// `object` as `K`; `None` for an object that does not decode, and the first time a
    /// version of it fails, the reason (naming the field path, no values) for the caller
    /// to report.
    pub fn decode<K: PlaneResource>(&self, object: &DynamicObject) -> Result<K, Option<String>> {
        let value = serde_json::to_value(object).map_err(|_| None)?;
        let e = match serde_path_to_error::deserialize::<_, K>(value) {
            Ok(plane) => return Ok(plane),
            Err(e) => e,
        };
        let name = match &object.metadata.namespace {
            Some(ns) => format!("{ns}/{}", object.name_any()),
            None => object.name_any(),
        };
        // By generation, which only a spec change moves: reporting writes the status,
        // which moves the resourceVersion, and must not report again.
        let version = match object.metadata.generation {
            Some(generation) => generation.to_string(),
            None => object.metadata.resource_version.clone().unwrap_or_default(),
        };
        let first = self
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.clone(), version));
        Err(first.then(|| {
            format!(
                "{} {} does not decode: {}",
                K::KIND,
                escape(&name),
                escape(&redact_values(&e.to_string()))
            )
        }))
    }
}

/// Follows every plane kind of a source.
struct Follow<'a>(&'a KubernetesSource);

impl ForEachKind for Follow<'_> {
    type Output = (PlanesOfKind, BoxStream<'static, bool>);
    fn kind<K: PlaneResource>(&mut self) -> Self::Output {
        self.0.follow::<K>()
    }
}

/// The CRs of one kind as they stand.
type PlanesOfKind = Box<dyn Fn() -> Vec<AnyPlane> + Send + Sync>;

/// One reflector; its stream yields `true` once the initial list is complete, or found
/// the kind not served or not readable (listed, and empty until it is).
fn reflect(
    api: Api<DynamicObject>,
    kind: PlaneKind,
    config: watcher::Config,
) -> (Store<DynamicObject>, BoxStream<'static, bool>) {
    let resource = plane_resource(kind);
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    let what = resource.plural;
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut DynamicObject| object.managed_fields_mut().clear())
        .reflect(writer)
        .filter_map(move |event| {
            let what = what.clone();
            async move {
                match event {
                    Ok(watcher::Event::InitDone) => Some(true),
                    Ok(_) => Some(false),
                    Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                        if status.code == 404 =>
                    {
                        tracing::debug!(
                            "{what} are not served (no CRD); none of them until it is installed"
                        );
                        Some(true)
                    }
                    // An install upgraded before its RBAC: the planes of the other kinds
                    // must not wait for it.
                    Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                        if status.code == 403 =>
                    {
                        tracing::warn!(
                            "the gateway may not list {what}; none of them are served until it \
                             may (packaging/kubernetes/control-plane/gateway-rbac.yaml grants it)"
                        );
                        Some(true)
                    }
                    Err(e) => {
                        tracing::warn!(
                            "cannot watch {what}: {e}; retrying (are the CRDs installed — \
                             planelink controller crds | kubectl apply -f - — and may the gateway \
                             list and watch {what}?)"
                        );
                        None
                    }
                }
            }
        })
        .boxed();
    (store, stream)
}

/// The Secrets plane CRs reference as their client CA, each watched by name (a field
/// selector on `metadata.name`): the gateway holds those, not every Secret of the cluster.
struct ReferencedSecrets {
    client: Client,
    /// Per watched Secret once its first list completed: the Secret, or `None` when it
    /// does not exist. No entry yet: still listing.
    seen: Arc<std::sync::Mutex<HashMap<SecretName, Option<Secret>>>>,
    watches: HashMap<SecretName, tokio::task::JoinHandle<()>>,
    changed: tokio::sync::mpsc::UnboundedSender<()>,
}

type SecretName = (String, String);

impl ReferencedSecrets {
    /// Watches exactly the Secrets `planes` reference.
    fn follow(&mut self, planes: &[AnyPlane]) {
        let wanted: BTreeSet<SecretName> = planes
            .iter()
            .filter_map(|p| secret_location(p.cr().namespace_or_cluster(), p.client_ca()?))
            .map(|at| (at.namespace, at.name))
            .collect();
        self.watches.retain(|name, task| {
            let keep = wanted.contains(name);
            if !keep {
                task.abort();
            }
            keep
        });
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| wanted.contains(name));
        for name in wanted {
            if !self.watches.contains_key(&name) {
                let task = tokio::spawn(watch_secret(
                    self.client.clone(),
                    name.clone(),
                    self.seen.clone(),
                    self.changed.clone(),
                ));
                self.watches.insert(name, task);
            }
        }
    }

    /// The referenced Secrets that exist, once every watch has listed; `None` before.
    fn listed(&self) -> Option<Vec<Secret>> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if self.watches.keys().any(|name| !seen.contains_key(name)) {
            return None;
        }
        Some(seen.values().flatten().cloned().collect())
    }
}

impl Drop for ReferencedSecrets {
    fn drop(&mut self) {
        for task in self.watches.values() {
            task.abort();
        }
    }
}

/// Follows one Secret by name, recording it (or its absence) after each change.
async fn watch_secret(
    client: Client,
    (namespace, name): SecretName,
    seen: Arc<std::sync::Mutex<HashMap<SecretName, Option<Secret>>>>,
    changed: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let key = (namespace.clone(), name.clone());
    let mut listing: Option<Secret> = None;
    let mut events = watcher(api, config)
        .backoff(QuickBackoff::default())
        .boxed();
    while let Some(event) = events.next().await {
        let current = match event {
            Ok(watcher::Event::Init) => {
                listing = None;
                continue;
            }
            Ok(watcher::Event::InitApply(mut secret)) => {
                secret.managed_fields_mut().clear();
                listing = Some(secret);
                continue;
            }
            Ok(watcher::Event::InitDone) => listing.take(),
            Ok(watcher::Event::Apply(mut secret)) => {
                secret.managed_fields_mut().clear();
                Some(secret)
            }
            Ok(watcher::Event::Delete(_)) => None,
            Err(e) => {
                tracing::warn!(secret = %format!("{namespace}/{name}"),
                    "cannot watch a plane's CA Secret: {e}; retrying (may the gateway get, list and watch Secrets there?)");
                // Unreadable counts as absent until a list succeeds: one forbidden
                // Secret must not hold back every other plane's snapshot.
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.contains_key(&key) {
                    continue;
                }
                seen.insert(key.clone(), None);
                drop(seen);
                let _ = changed.send(());
                continue;
            }
        };
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), current);
        let _ = changed.send(());
    }
}

impl PlaneSource for KubernetesSource {
    fn describe(&self) -> String {
        format!(
            "Kubernetes API: the plane kinds (DataPlane, BuildPlane, ObservabilityPlane, their \
             newer and cluster-scoped twins) and their CA Secrets in {}",
            self.namespace
                .as_deref()
                .map(|ns| format!("namespace {ns}"))
                .unwrap_or_else(|| "all namespaces".into())
        )
    }

    fn run(
        self: Box<Self>,
        publish: watch::Sender<Option<Arc<Snapshot>>>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (kinds, streams): (Vec<PlanesOfKind>, Vec<_>) =
                PlaneKind::for_each(&mut Follow(&self)).into_iter().unzip();
            let all_planes = || kinds.iter().flat_map(|planes| planes()).collect::<Vec<_>>();
            let (changed, secret_changes) = tokio::sync::mpsc::unbounded_channel();
            let mut secrets = ReferencedSecrets {
                client: self.client.clone(),
                seen: Arc::default(),
                watches: HashMap::new(),
                changed,
            };
            // Each stream is tagged with its index so the first complete list of each
            // kind is known; a snapshot before all are listed would refuse valid agents.
            // The index after the kinds' is a referenced Secret changing (listed or not
            // is known above).
            let kind_count = streams.len();
            let mut events: SelectAll<BoxStream<'static, (usize, bool)>> = SelectAll::new();
            for (i, stream) in streams.into_iter().enumerate() {
                events.push(stream.map(move |init| (i, init)).boxed());
            }
            events.push(
                tokio_stream_from(secret_changes)
                    .map(move |()| (kind_count, true))
                    .boxed(),
            );
            let mut listed = vec![false; kind_count + 1];
            let mut last: Option<Snapshot> = None;
            while let Some((i, init)) = events.next().await {
                listed[i] |= init;
                // Gather the rest of a burst.
                let settle = tokio::time::sleep(SETTLE);
                tokio::pin!(settle);
                loop {
                    tokio::select! {
                        _ = &mut settle => break,
                        next = events.next() => match next {
                            Some((i, init)) => listed[i] |= init,
                            None => break,
                        },
                    }
                }
                if !listed[..kind_count].iter().all(|l| *l) {
                    continue;
                }
                let planes = all_planes();
                secrets.follow(&planes);
                let Some(referenced) = secrets.listed() else {
                    continue;
                };
                let snapshot = Snapshot::resolve(&planes, &referenced);
                if last.as_ref() == Some(&snapshot) {
                    continue;
                }
                tracing::info!(
                    planes = snapshot.entries.len(),
                    secrets = referenced.len(),
                    "plane registry updated from Kubernetes"
                );
                last = Some(snapshot.clone());
                if publish.send(Some(Arc::new(snapshot))).is_err() {
                    return;
                }
            }
        })
    }
}

/// The API resource of a plane kind.
pub fn plane_resource(kind: super::PlaneKind) -> kube::discovery::ApiResource {
    let gvk =
        kube::core::GroupVersionKind::gvk(super::manifest::API_GROUP, "v1alpha1", kind.as_str());
    kube::discovery::ApiResource::from_gvk(&gvk)
}

/// The plane API of one kind, namespaced or across namespaces.
pub fn plane_api(
    client: &kube::Client,
    kind: impl Into<super::PlaneKind>,
    namespace: Option<&str>,
) -> kube::Api<kube::core::DynamicObject> {
    let kind = kind.into();
    let resource = plane_resource(kind);
    match namespace {
        Some(ns) if !kind.cluster_scoped() => {
            kube::Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => kube::Api::all_with(client.clone(), &resource),
    }
}
