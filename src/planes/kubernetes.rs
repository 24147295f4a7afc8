//! The Kubernetes source of the plane registry: reflectors on the three plane kinds and on
//! Secrets, so that a changed CR or CA Secret reaches the gateway within moments, with no
//! polling, restart or notify call. Also the one place kube clients are configured.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{StreamExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::crd::{AnyPlane, BuildPlane, DataPlane, ObservabilityPlane, PlaneResource};
use super::registry::{PlaneSource, Snapshot, secret_location};

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

/// A kube client from [`kube_config`].
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<Client> {
    let config = kube_config(kubeconfig, context).await?;
    Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Secret types that never hold a client CA and can be large: skipped by the watch.
const IGNORED_SECRET_TYPES: &str =
    "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

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

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// One reflector; its stream yields `true` once the initial list is complete.
fn reflect<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, BoxStream<'static, bool>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let what = K::plural(&()).to_string();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.managed_fields_mut().clear())
        .reflect(writer)
        .filter_map(move |event| {
            let what = what.clone();
            async move {
                match event {
                    Ok(watcher::Event::InitDone) => Some(true),
                    Ok(_) => Some(false),
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

struct Stores {
    data: Store<DataPlane>,
    build: Store<BuildPlane>,
    observability: Store<ObservabilityPlane>,
    secrets: Store<Secret>,
}

impl Stores {
    fn snapshot(&self) -> Snapshot {
        fn objects<K: PlaneResource>(store: &Store<K>) -> impl Iterator<Item = AnyPlane> {
            store.state().into_iter().map(|k| K::clone(&k).into_any())
        }
        let planes: Vec<AnyPlane> = objects(&self.data)
            .chain(objects(&self.build))
            .chain(objects(&self.observability))
            .collect();
        let referenced: BTreeSet<(String, String)> = planes
            .iter()
            .filter_map(|p| secret_location(p.cr().namespace_or_cluster(), p.client_ca()?))
            .map(|at| (at.namespace, at.name))
            .collect();
        let secrets: Vec<Secret> = referenced
            .into_iter()
            .filter_map(|(namespace, name)| {
                let secret = self
                    .secrets
                    .get(&ObjectRef::new(&name).within(&namespace))?;
                Some(Secret::clone(&secret))
            })
            .collect();
        Snapshot::resolve(&planes, &secrets)
    }
}

impl PlaneSource for KubernetesSource {
    fn describe(&self) -> String {
        format!(
            "Kubernetes API: DataPlane, BuildPlane, ObservabilityPlane and their CA Secrets in {}",
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
            let config = watcher::Config::default();
            let (data, s1) = reflect(self.api::<DataPlane>(), config.clone());
            let (build, s2) = reflect(self.api::<BuildPlane>(), config.clone());
            let (observability, s3) = reflect(self.api::<ObservabilityPlane>(), config.clone());
            let (secrets, s4) = reflect(self.api::<Secret>(), config.fields(IGNORED_SECRET_TYPES));
            let stores = Stores {
                data,
                build,
                observability,
                secrets,
            };
            // Each stream is tagged with its index so the first complete list of each
            // is known; a snapshot before all four are listed would refuse valid agents.
            let mut events: SelectAll<BoxStream<'static, (usize, bool)>> = SelectAll::new();
            for (i, stream) in [s1, s2, s3, s4].into_iter().enumerate() {
                events.push(stream.map(move |init| (i, init)).boxed());
            }
            let mut listed = [false; 4];
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
                if !listed.iter().all(|l| *l) {
                    continue;
                }
                let snapshot = stores.snapshot();
                if last.as_ref() == Some(&snapshot) {
                    continue;
                }
                tracing::info!(
                    planes = snapshot.entries.len(),
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
