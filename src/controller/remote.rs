//! A gateway in another process, reached through its plane API on the internal listener
//! (`--gateway-url`, with the internal mTLS client certificate). Works with planelink's
//! gateway and with OpenChoreo's, which serve the same API. When the gateway runs as
//! several replicas (their Leases are readable), every replica is asked at its own
//! address, not whichever one the Service picks, and the answers are combined.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, future::BoxFuture};
use http::{Method, Request, header};
use http_body_util::BodyExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use rustls_pki_types::PrivateKeyDer;

use super::clients::GatewayAccess;
use crate::planes::connection::{
    ConnectionStatus, GatewayLink, Notification, ReplicaTunnels, broadcast_stream,
};
use crate::planes::crd::ConnectedAgent;
use crate::planes::{CrRef, PlaneKey, PlaneType};
use crate::tunnel::body;
use crate::tunnel::client::{HttpsClient, connector, http_client};

/// How often connection changes are looked for; a remote gateway cannot push them.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);
/// A plane API answer is small; anything larger is not the plane API.
const MAX_ANSWER: usize = 1 << 20;

pub struct RemoteGateway {
    inner: Arc<Inner>,
    changes: OnceLock<tokio::sync::broadcast::Sender<PlaneKey>>,
}

struct Inner {
    client: HttpsClient,
    /// Reaches one replica at its address, checking its certificate for the
    /// `--gateway-url` host (what the certificate names, not the pod IP).
    replica_client: HttpsClient,
    base: String,
    /// The gateway replicas' Leases, in the gateway's namespace.
    leases: Option<Api<Lease>>,
}

/// Where the plane API is asked: each replica (base URLs), or only `--gateway-url`.
enum Askable {
    Replicas(Vec<String>),
    Service,
}

impl Inner {
    /// Every live replica when each has an address in its Lease; otherwise (no Leases,
    /// no permission to read them, an older gateway) `--gateway-url` alone.
    async fn askable(&self) -> Askable {
        let Some(leases) = &self.leases else {
            return Askable::Service;
        };
        match crate::replicas::list(leases).await {
            Ok(replicas) if !replicas.is_empty() => {
                let addresses: Option<Vec<String>> = replicas
                    .iter()
                    .map(|r| r.internal_address.map(|a| format!("https://{a}")))
                    .collect();
                addresses.map_or(Askable::Service, Askable::Replicas)
            }
            Ok(_) => Askable::Service,
            Err(e) => {
                tracing::debug!(
                    "cannot list the gateway replicas' Leases ({e}); asking {}",
                    self.base
                );
                Askable::Service
            }
        }
    }

    /// `path` asked of every replica (or the Service): each answer, or why it failed.
    async fn ask_all(&self, path: &str) -> Vec<anyhow::Result<serde_json::Value>> {
        match self.askable().await {
            Askable::Service => {
                vec![
                    RemoteGateway::call(
                        self.client.clone(),
                        Method::GET,
                        format!("{}{path}", self.base),
                        None,
                    )
                    .await,
                ]
            }
            Askable::Replicas(bases) => {
                futures_util::future::join_all(bases.iter().map(|base| {
                    RemoteGateway::call(
                        self.replica_client.clone(),
                        Method::GET,
                        format!("{base}{path}"),
                        None,
                    )
                }))
                .await
            }
        }
    }
}

/// One plane's status from each replica's answer: connected when any replica holds an
/// agent; the agents counted as the most any replica sees (each agent holds a tunnel to
/// every replica); and how many replicas hold one, when the replicas were asked.
fn combine(
    answers: Vec<anyhow::Result<ConnectionStatus>>,
    per_replica: bool,
) -> anyhow::Result<ConnectionStatus> {
    let live = answers.len();
    let mut ok = Vec::new();
    let mut first_error = None;
    for answer in answers {
        match answer {
            Ok(status) => ok.push(status),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(mut combined) = ok.first().cloned() else {
        return Err(first_error.unwrap_or_else(|| anyhow::anyhow!("no gateway replica answered")));
    };
    combined.connected = ok.iter().any(|s| s.connected);
    combined.connected_agents = ok.iter().map(|s| s.connected_agents).max().unwrap_or(0);
    combined.last_seen = ok.iter().filter_map(|s| s.last_seen.clone()).max();
    combined.agents = ConnectedAgent::distinct(ok.iter().flat_map(|s| s.agents.clone()).collect());
    // The replica whose certificate expires first is the one to warn about (RFC 3339 in
    // UTC from the same formatter: ordered as text).
    if let Some(first) = ok
        .iter()
        .filter(|s| s.gateway_certificate_not_after.is_some())
        .min_by_key(|s| s.gateway_certificate_not_after.clone())
    {
        combined.gateway_certificate_not_after = first.gateway_certificate_not_after.clone();
        combined.gateway_certificate_not_before = first.gateway_certificate_not_before.clone();
    }
    combined.ca_proposal = ok.iter().find_map(|s| s.ca_proposal.clone());
    combined.partial = ok.len() < live;
    let mut in_use: Vec<String> = ok.iter().flat_map(|s| s.client_ca_in_use.clone()).collect();
    in_use.sort();
    in_use.dedup();
    combined.client_ca_in_use = in_use;
    combined.replicas = per_replica.then(|| ReplicaTunnels {
        holding: ok.iter().filter(|s| s.connected).count(),
        live,
    });
    Ok(combined)
}

impl RemoteGateway {
    pub fn new(
        access: &GatewayAccess,
        leases: Option<Api<Lease>>,
    ) -> anyhow::Result<RemoteGateway> {
        let provider = crate::trust::crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        let ca = access.ca_pem.as_deref().context(
            "the gateway's CA is needed to reach it over TLS; give --gateway-ca (ca.crt of Secret \
             cluster-gateway-ca)",
        )?;
        for cert in crate::trust::parse_certificates(ca).context("--gateway-ca")? {
            roots.add(cert).context("--gateway-ca")?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots);
        let tls = match (&access.client_cert_pem, &access.client_key_pem) {
            (Some(cert), Some(key)) => {
                let chain =
                    crate::trust::parse_certificates(cert).context("--gateway-client-cert")?;
                let key: PrivateKeyDer<'static> = crate::trust::parse_private_key(key)
                    .context("--gateway-client-key")?
                    .into_der();
                builder
                    .with_client_auth_cert(chain, key)
                    .context("--gateway-client-cert and --gateway-client-key")?
            }
            _ => builder.with_no_client_auth(),
        };
        let base = access.url.trim_end_matches('/').to_string();
        let host = url::Url::parse(&base)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            })
            .with_context(|| format!("--gateway-url {base:?} names no host"))?;
        let host = rustls_pki_types::ServerName::try_from(host)
            .map_err(|e| anyhow::anyhow!("--gateway-url {base:?}: {e}"))?;
        Ok(RemoteGateway {
            inner: Arc::new(Inner {
                client: http_client(connector(tls.clone(), None)),
                replica_client: http_client(connector(tls, Some(host))),
                base,
                leases,
            }),
            changes: OnceLock::new(),
        })
    }

    async fn call(
        client: HttpsClient,
        method: Method,
        url: String,
        payload: Option<String>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = Request::builder().method(method).uri(&url);
        if payload.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(payload.map(body::full).unwrap_or_else(body::empty))
            .context("building the request")?;
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .with_context(|| format!("{url}: no answer within 10 s"))?
            .with_context(|| format!("cannot reach the gateway at {url}"))?;
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            anyhow::bail!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{url}: not the plane API's JSON"))
    }
}

/// What must be escaped in a path segment or query value; IDs keep their dashes and dots
/// readable, as OpenChoreo's gateway expects them.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'/')
    .add(b'=')
    .add(b'?');

fn encode(part: &str) -> String {
    percent_encoding::utf8_percent_encode(part, ESCAPED).to_string()
}

impl GatewayLink for RemoteGateway {
    fn describe(&self) -> String {
        format!("the gateway at {}", self.inner.base)
    }

    fn status(
        &self,
        key: &PlaneKey,
        cr: &CrRef,
    ) -> BoxFuture<'static, anyhow::Result<ConnectionStatus>> {
        let path = format!(
            "/api/v1/planes/{}/{}/status?namespace={}&name={}",
            key.plane_type,
            encode(&key.plane_id),
            encode(cr.namespace_or_cluster()),
            encode(&cr.name)
        );
        let inner = self.inner.clone();
        async move {
            let per_replica = matches!(inner.askable().await, Askable::Replicas(_));
            let answers = inner
                .ask_all(&path)
                .await
                .into_iter()
                .map(|answer| {
                    answer.and_then(|value| {
                        serde_json::from_value(value)
                            .with_context(|| format!("{path}: not a plane status"))
                    })
                })
                .collect();
            combine(answers, per_replica)
        }
        .boxed()
    }

    fn notify(&self, notification: Notification) -> BoxFuture<'static, anyhow::Result<()>> {
        let url = format!("{}/api/v1/planes/notify", self.inner.base);
        let client = self.inner.client.clone();
        async move {
            let payload = serde_json::to_string(&notification)?;
            Self::call(client, Method::POST, url, Some(payload)).await?;
            Ok(())
        }
        .boxed()
    }

    /// The planes whose connection changed, from one poller shared by every caller (one
    /// controller per kind would otherwise poll the gateway three times over).
    fn changes(&self) -> BoxStream<'static, PlaneKey> {
        let sender = self.changes.get_or_init(|| {
            let (sender, _) = tokio::sync::broadcast::channel(256);
            tokio::spawn(poll_changes(self.inner.clone(), sender.clone()));
            sender
        });
        broadcast_stream(sender.subscribe())
    }
}

/// Polls the all-planes status of every replica each [`POLL_INTERVAL`] and sends each
/// plane whose connection changed since the last answers (on any replica).
async fn poll_changes(inner: Arc<Inner>, changes: tokio::sync::broadcast::Sender<PlaneKey>) {
    type Seen = HashMap<PlaneKey, Vec<(bool, usize)>>;
    let mut before: Seen = HashMap::new();
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let answers = inner.ask_all("/api/v1/planes/status").await;
        if answers.iter().all(|a| a.is_err()) {
            continue;
        }
        let mut now: Seen = HashMap::new();
        let replicas = answers.len();
        for (i, value) in answers.into_iter().enumerate() {
            let planes: Vec<ConnectionStatus> = value
                .ok()
                .and_then(|v| v.get("planes").cloned())
                .and_then(|p| serde_json::from_value(p).ok())
                .unwrap_or_default();
            for p in planes {
                let Some(plane_type) = PlaneType::parse(&p.plane_type) else {
                    continue;
                };
                let key = PlaneKey {
                    plane_type,
                    plane_id: p.plane_id,
                };
                now.entry(key).or_insert_with(|| vec![(false, 0); replicas])[i] =
                    (p.connected, p.connected_agents);
            }
        }
        let changed = now
            .iter()
            .filter(|(key, value)| before.get(*key) != Some(*value))
            .map(|(key, _)| key)
            .chain(before.keys().filter(|key| !now.contains_key(*key)));
        for key in changed {
            // No receiver yet is fine: the controllers' resync covers it.
            let _ = changes.send(key.clone());
        }
        before = now;
    }
}

/// A shareable link; `leases` reads the gateway replicas' Leases where permitted.
pub fn link(
    access: &GatewayAccess,
    leases: Option<Api<Lease>>,
) -> anyhow::Result<Arc<dyn GatewayLink>> {
    Ok(Arc::new(RemoteGateway::new(access, leases)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(connected: bool, agents: usize, last_seen: Option<&str>) -> ConnectionStatus {
        ConnectionStatus {
            plane_type: "dataplane".into(),
            plane_id: "p1".into(),
            namespace: Some("org".into()),
            name: Some("dp1".into()),
            connected,
            connected_agents: agents,
            last_seen: last_seen.map(String::from),
            agents: Vec::new(),
            gateway_certificate_not_after: None,
            gateway_certificate_not_before: None,
            ca_proposal: None,
            client_ca_in_use: Vec::new(),
            partial: false,
            replicas: None,
        }
    }

    #[test]
    fn replicas_answers_combine_into_one_status() {
        let combined = combine(
            vec![
                Ok(status(true, 2, Some("2026-11-22T10:00:02Z"))),
                Ok(status(false, 0, Some("2026-11-22T10:00:01Z"))),
                Err(anyhow::anyhow!("https://10.0.0.3:8444: connection refused")),
            ],
            true,
        )
        .unwrap();
        assert!(combined.connected);
        assert_eq!(combined.connected_agents, 2);
        assert_eq!(combined.last_seen.as_deref(), Some("2026-11-22T10:00:02Z"));
        assert_eq!(combined.replicas.unwrap().to_string(), "1/3");
        // Asked through the Service only: no per-replica count.
        let single = combine(vec![Ok(status(true, 1, None))], false).unwrap();
        assert_eq!(single.replicas, None);
        // No replica answered: the first error.
        let none = combine(
            vec![
                Err(anyhow::anyhow!("first")),
                Err(anyhow::anyhow!("second")),
            ],
            true,
        );
        assert_eq!(none.unwrap_err().to_string(), "first");
    }
}
