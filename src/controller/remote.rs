//! A gateway in another process, reached through its plane API on the internal listener
//! (`--gateway-url`, with the internal mTLS client certificate). Works with planelink's
//! gateway and with OpenChoreo's, which serve the same API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _, future::BoxFuture};
use http::{Method, Request, header};
use http_body_util::BodyExt as _;
use rustls_pki_types::PrivateKeyDer;

use super::clients::GatewayAccess;
use crate::planes::connection::{ConnectionStatus, GatewayLink, Notification};
use crate::planes::{CrRef, PlaneKey, PlaneType};
use crate::tls::{HttpsClient, connector, http_client};
use crate::tunnel::body;

/// How often connection changes are looked for; a remote gateway cannot push them.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);
/// A plane API answer is small; anything larger is not the plane API.
const MAX_ANSWER: usize = 1 << 20;

pub struct RemoteGateway {
    client: HttpsClient,
    base: String,
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

    /// Polls the all-planes status and yields the planes whose connection changed.
    fn changes(&self) -> BoxStream<'static, PlaneKey> {
        let client = self.client.clone();
        let url = format!("{}/api/v1/planes/status", self.base);
        let state: HashMap<PlaneKey, (bool, usize)> = HashMap::new();
        futures_util::stream::unfold(
            (client, url, state, Vec::<PlaneKey>::new()),
            |(client, url, mut state, mut pending)| async move {
                loop {
                    if let Some(key) = pending.pop() {
                        return Some((key, (client, url, state, pending)));
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                    let Ok(value) =
                        Self::call(client.clone(), Method::GET, url.clone(), None).await
                    else {
                        continue;
                    };
                    let planes: Vec<ConnectionStatus> = value
                        .get("planes")
                        .cloned()
                        .and_then(|p| serde_json::from_value(p).ok())
                        .unwrap_or_default();
                    let mut now = HashMap::new();
                    for p in planes {
                        let Some(plane_type) = PlaneType::parse(&p.plane_type) else {
                            continue;
                        };
                        let key = PlaneKey {
                            plane_type,
                            plane_id: p.plane_id,
                        };
                        now.insert(key, (p.connected, p.connected_agents));
                    }
                    for (key, value) in &now {
                        if state.get(key) != Some(value) {
                            pending.push(key.clone());
                        }
                    }
                    for key in state.keys() {
                        if !now.contains_key(key) {
                            pending.push(key.clone());
                        }
                    }
                    state = now;
                }
            },
        )
        .boxed()
    }
}

/// A shareable link.
pub fn link(access: &GatewayAccess) -> anyhow::Result<Arc<dyn GatewayLink>> {
    Ok(Arc::new(RemoteGateway::new(access)?))
}
