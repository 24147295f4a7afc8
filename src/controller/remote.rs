//! A gateway in another process, reached through its plane API on the internal listener
//! (`--gateway-url`, with the internal mTLS client certificate). Works with planelink's
//! gateway and with OpenChoreo's, which serve the same API.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, future::BoxFuture};
use http::{Method, Request, header};
use http_body_util::BodyExt as _;
use rustls_pki_types::PrivateKeyDer;

use super::clients::GatewayAccess;
use crate::planes::connection::{ConnectionStatus, GatewayLink, Notification, broadcast_stream};
use crate::planes::{CrRef, PlaneKey, PlaneType};
use crate::tunnel::body;
use crate::tunnel::client::{HttpsClient, connector, http_client};

/// How often connection changes are looked for; a remote gateway cannot push them.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);
/// A plane API answer is small; anything larger is not the plane API.
const MAX_ANSWER: usize = 1 << 20;

pub struct RemoteGateway {
    client: HttpsClient,
    base: String,
    changes: OnceLock<tokio::sync::broadcast::Sender<PlaneKey>>,
}

impl RemoteGateway {
    pub fn new(access: &GatewayAccess) -> anyhow::Result<RemoteGateway> {
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
        Ok(RemoteGateway {
            client: http_client(connector(tls)),
            base: access.url.trim_end_matches('/').to_string(),
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
        format!("the gateway at {}", self.base)
    }

    fn status(
        &self,
        key: &PlaneKey,
        cr: &CrRef,
    ) -> BoxFuture<'static, anyhow::Result<ConnectionStatus>> {
        let url = format!(
            "{}/api/v1/planes/{}/{}/status?namespace={}&name={}",
            self.base,
            key.plane_type,
            encode(&key.plane_id),
            encode(cr.namespace_or_cluster()),
            encode(&cr.name)
        );
        let client = self.client.clone();
        async move {
            let value = Self::call(client, Method::GET, url.clone(), None).await?;
            serde_json::from_value(value).with_context(|| format!("{url}: not a plane status"))
        }
        .boxed()
    }

    fn notify(&self, notification: Notification) -> BoxFuture<'static, anyhow::Result<()>> {
        let url = format!("{}/api/v1/planes/notify", self.base);
        let client = self.client.clone();
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
            tokio::spawn(poll_changes(
                self.client.clone(),
                format!("{}/api/v1/planes/status", self.base),
                sender.clone(),
            ));
            sender
        });
        broadcast_stream(sender.subscribe())
    }
}

/// Polls the all-planes status every [`POLL_INTERVAL`] and sends each plane whose
/// connection changed since the last answer.
async fn poll_changes(
    client: HttpsClient,
    url: String,
    changes: tokio::sync::broadcast::Sender<PlaneKey>,
) {
    let mut before: HashMap<PlaneKey, (bool, usize)> = HashMap::new();
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let Ok(value) = RemoteGateway::call(client.clone(), Method::GET, url.clone(), None).await
        else {
            continue;
        };
        let planes: Vec<ConnectionStatus> = value
            .get("planes")
            .cloned()
            .and_then(|p| serde_json::from_value(p).ok())
            .unwrap_or_default();
        let now: HashMap<PlaneKey, (bool, usize)> = planes
            .into_iter()
            .filter_map(|p| {
                let plane_type = PlaneType::parse(&p.plane_type)?;
                let key = PlaneKey {
                    plane_type,
                    plane_id: p.plane_id,
                };
                Some((key, (p.connected, p.connected_agents)))
            })
            .collect();
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

/// A shareable link.
pub fn link(access: &GatewayAccess) -> anyhow::Result<Arc<dyn GatewayLink>> {
    Ok(Arc::new(RemoteGateway::new(access)?))
}
