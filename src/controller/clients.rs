//! The plane-client manager: a kube Client for each plane, built from its
//! `kubernetesCluster` (direct access) or through the gateway's proxy path (agent mode),
//! cached, and rebuilt when the CR's generation or the Secrets it reads change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use crate::planes::crd::{KubernetesClusterSpec, ValueFrom};
use crate::planes::kubernetes::client_config;
use crate::planes::registry::{resolve_value, secret_location};
use crate::planes::{CrRef, PlaneKey, Problem, Reason, SecretKeyLocation, secret_data};

/// How the controller reaches the gateway's internal listener.
#[derive(Clone)]
pub struct GatewayAccess {
    /// `https://host:port` of the internal listener.
    pub url: String,
    /// PEM of the CA that signed the gateway's serving certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for `--internal-mtls`.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for GatewayAccess {
    /// Never prints the client key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAccess")
            .field("url", &self.url)
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .field(
                "client_key",
                &self.client_key_pem.as_ref().map(|_| "(hidden)"),
            )
            .finish()
    }
}

/// The data of the Secret a value reads (`None`: no Secret, or it does not exist).
pub async fn read_secret(
    client: &Client,
    at: Option<&SecretKeyLocation>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Problem> {
    let Some(at) = at else { return Ok(None) };
    let secret = Api::<Secret>::namespaced(client.clone(), &at.namespace)
        .get_opt(&at.name)
        .await
        .map_err(|e| {
            Problem::new(
                Reason::SecretNotReadable,
                format!("cannot read Secret {}/{}: {e}", at.namespace, at.name),
            )
        })?;
    Ok(secret.map(|s| secret_data(&s)))
}

pub struct PlaneClients {
    control: Client,
    gateway: Option<GatewayAccess>,
    cache: Mutex<HashMap<String, (String, Client)>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A bearer token as the API server takes it. An inline value may be base64 of the
/// token (the docs say to encode it) or the token itself (what OpenChoreo's script
/// copies from a kubeconfig): a service-account token is a JWT, whose dots base64 never
/// has, so a value without dots that decodes to printable text was encoded. A Secret's
/// value is the token itself.
fn bearer_token(value: &[u8], inline: bool) -> String {
    let text = String::from_utf8_lossy(value).trim().to_string();
    if !inline || text.contains('.') {
        return text;
    }
    let compact: String = text.split_whitespace().collect();
    match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
        Ok(decoded) if !decoded.is_empty() && decoded.iter().all(|b| b.is_ascii_graphic()) => {
            String::from_utf8_lossy(&decoded).into_owned()
        }
        _ => text,
    }
}

impl PlaneClients {
    pub fn new(control: Client, gateway: Option<GatewayAccess>) -> PlaneClients {
        PlaneClients {
            control,
            gateway,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &str, fingerprint: &str) -> Option<Client> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(f, _)| f == fingerprint)
            .map(|(_, c)| c.clone())
    }

    fn store(&self, key: &str, fingerprint: String, client: Client) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(key.to_string(), (fingerprint, client));
    }

    /// Drops the cached clients (direct and through the gateway) of a deleted CR.
    pub fn forget(&self, cache_key: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(&format!("direct/{cache_key}"));
        cache.remove(&format!("gateway/{cache_key}"));
    }

    /// Reads a value inline or from a Secret of the control plane (the namespace defaults
    /// to the CR's).
    pub async fn resolve(
        &self,
        namespace: &str,
        value: &ValueFrom,
        field: &str,
    ) -> Result<Vec<u8>, Problem> {
        let data = read_secret(&self.control, secret_location(namespace, value).as_ref()).await?;
        resolve_value(
            namespace,
            value,
            field,
            Reason::KubernetesClusterInvalid,
            |_, _| data.as_ref(),
        )
    }

    /// A client for direct access; `cache_key` names the CR.
    pub async fn direct(
        &self,
        cache_key: &str,
        namespace: &str,
        generation: Option<i64>,
        cluster: &KubernetesClusterSpec,
    ) -> Result<Client, Problem> {
        let ca = self
            .resolve(namespace, &cluster.tls.ca, "spec.kubernetesCluster.tls.ca")
            .await?;
        let auth = &cluster.auth;
        let (auth_json, secret_material): (serde_json::Value, Vec<u8>) = match (
            &auth.mtls,
            &auth.bearer_token,
        ) {
            (Some(mtls), _) => {
                let cert = self
                    .resolve(namespace, &mtls.client_cert, "auth.mtls.clientCert")
                    .await?;
                let key = self
                    .resolve(namespace, &mtls.client_key, "auth.mtls.clientKey")
                    .await?;
                // Given as PEM, base64 of PEM (what the docs and OpenChoreo's
                // add-default-dataplane.sh write) or DER: the client takes PEM.
                let pem_cert = crate::trust::parse_certificates(&cert)
                    .map(|chain| crate::trust::pem::certificates_to_pem(&chain))
                    .map_err(|e| {
                        Problem::new(
                            Reason::KubernetesClusterInvalid,
                            format!("auth.mtls.clientCert: {e}; give the client certificate's PEM (or base64 of it)"),
                        )
                    })?;
                let pem_key = crate::trust::parse_private_key(&key)
                    .map(|k| k.to_pem())
                    .map_err(|e| {
                        Problem::new(
                            Reason::KubernetesClusterInvalid,
                            format!("auth.mtls.clientKey: {e}; give the client key's PEM (or base64 of it)"),
                        )
                    })?;
                let json = serde_json::json!({
                    "client-certificate-data": b64(pem_cert.as_bytes()),
                    "client-key-data": b64(pem_key.as_bytes()),
                });
                (json, [cert, key].concat())
            }
            (None, Some(token)) => {
                let inline = token.inline_value().is_some();
                let token = self.resolve(namespace, token, "auth.bearerToken").await?;
                let text = bearer_token(&token, inline);
                (serde_json::json!({ "token": text }), token)
            }
            (None, None) => {
                return Err(Problem::new(
                    Reason::KubernetesClusterInvalid,
                    "spec.kubernetesCluster.auth needs mtls (clientCert, clientKey) or bearerToken",
                ));
            }
        };
        let mut hasher = Sha256::new();
        hasher.update(cluster.server.as_bytes());
        hasher.update(format!("{generation:?}"));
        hasher.update(&ca);
        hasher.update(&secret_material);
        let fingerprint: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = format!("direct/{cache_key}");
        if let Some(client) = self.cached(&key, &fingerprint) {
            return Ok(client);
        }
        let config = client_config(&cluster.server, Some(&ca), auth_json)?;
        let client = Client::try_from(config).map_err(|e| {
            Problem::new(
                Reason::KubernetesClusterInvalid,
                format!("cannot build a client for {}: {e}", cluster.server),
            )
        })?;
        self.store(&key, fingerprint, client.clone());
        Ok(client)
    }

    /// A client that reaches an agent-mode plane's Kubernetes API through the gateway;
    /// `cache_key` names the CR, and a changed planeID builds a new client.
    pub fn through_gateway(
        &self,
        cache_key: &str,
        key: &PlaneKey,
        cr: &CrRef,
    ) -> Result<Client, Problem> {
        let Some(gateway) = &self.gateway else {
            return Err(Problem::new(
                Reason::GatewayNotConfigured,
                "no gateway URL to reach agent-mode planes through; give --gateway-url",
            ));
        };
        let cache_key = format!("gateway/{cache_key}");
        if let Some(client) = self.cached(&cache_key, &key.plane_id) {
            return Ok(client);
        }
        let url = format!(
            "{}/api/proxy/{}/{}/{}/{}/k8s",
            gateway.url.trim_end_matches('/'),
            key.plane_type,
            key.plane_id,
            cr.namespace_or_cluster(),
            cr.name
        );
        let auth = match (&gateway.client_cert_pem, &gateway.client_key_pem) {
            (Some(cert), Some(key)) => serde_json::json!({
                "client-certificate-data": b64(cert),
                "client-key-data": b64(key),
            }),
            _ => serde_json::json!({}),
        };
        let config = client_config(&url, gateway.ca_pem.as_deref(), auth)?;
        let client = Client::try_from(config).map_err(|e| {
            Problem::new(
                Reason::GatewayNotConfigured,
                format!("cannot build a client for {url}: {e}"),
            )
        })?;
        self.store(&cache_key, key.plane_id.clone(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_taken_as_given_or_decoded_once() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        assert_eq!(bearer_token(jwt.as_bytes(), true), jwt);
        assert_eq!(bearer_token(b64(jwt.as_bytes()).as_bytes(), true), jwt);
        assert_eq!(
            bearer_token(b64(b"abc123token").as_bytes(), true),
            "abc123token"
        );
        // From a Secret, the value is the token, whatever it looks like.
        assert_eq!(bearer_token(b"YWJj", false), "YWJj");
        // Not base64 at all: the value as given.
        assert_eq!(bearer_token(b"plain-token!", true), "plain-token!");
    }

    #[test]
    fn client_credentials_are_pem_whatever_their_encoding() {
        use crate::trust::issue::{self, CaOptions, LeafOptions};
        let ca = issue::new_ca(&CaOptions::gateway()).unwrap();
        let leaf = issue::issue_leaf(&ca, &LeafOptions::client("direct")).unwrap();
        for given in [
            leaf.cert_pem.clone().into_bytes(),
            b64(leaf.cert_pem.as_bytes()).into_bytes(),
        ] {
            let chain = crate::trust::parse_certificates(&given).unwrap();
            let pem = crate::trust::pem::certificates_to_pem(&chain);
            assert_eq!(
                crate::trust::parse_certificates(pem.as_bytes()).unwrap(),
                chain
            );
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        }
        let key =
            crate::trust::parse_private_key(b64(leaf.key_pem().as_bytes()).as_bytes()).unwrap();
        let pem = key.to_pem();
        assert_eq!(
            crate::trust::parse_private_key(pem.as_bytes())
                .unwrap()
                .der(),
            key.der()
        );
    }
}
