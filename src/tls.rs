//! rustls configuration shared by the roles' listeners and dialers: a serving
//! certificate that follows its files, and the client-certificate verifiers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::trust;

/// How often certificate files are re-read.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A serving certificate loaded from a cert and key file, replaced when either file
/// changes (Kubernetes swaps mounted Secrets through a symlink, so contents are
/// compared, not inotify events). A bad update is logged and the old pair kept.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Arc<CertifiedKey>)> {
    let cert_bytes = std::fs::read(cert)?;
    let key_bytes = std::fs::read(key)?;
    let chain = trust::parse_certificates(&cert_bytes)?;
    let private = trust::parse_private_key(&key_bytes)?;
    if !trust::key_matches(&chain[0], &private)? {
        anyhow::bail!(
            "{} is not the private key of {}",
            key.display(),
            cert.display()
        );
    }
    let signing = trust::crypto_provider()
        .key_provider
        .load_private_key(private.into_der())?;
    let mut fingerprint = cert_bytes;
    fingerprint.extend_from_slice(&key_bytes);
    Ok((fingerprint, Arc::new(CertifiedKey::new(chain, signing))))
}

impl ReloadingCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ReloadingCert>> {
        let pair = load_pair(cert_path, key_path)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(pair),
        }))
    }

    /// Re-reads the files; returns whether the certificate changed.
    pub fn reload(&self) -> bool {
        match load_pair(&self.cert_path, &self.key_path) {
            Ok((fingerprint, key)) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                if current.0 == fingerprint {
                    return false;
                }
                *current = (fingerprint, key);
                tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(cert = %self.cert_path.display(), error = %e,
                    "cannot reload the serving certificate; keeping the current one");
                false
            }
        }
    }

    /// Polls the files until the process ends.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { return };
                tokio::task::spawn_blocking(move || this.reload());
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .clone(),
        )
    }
}

/// Requires a client certificate and verifies the handshake signature made with its
/// key, but leaves the chain to the caller: the gateway learns which CA to verify
/// against only when the `/ws` request names its plane. Without the signature check
/// anyone could replay a certificate they do not hold the key of.
#[derive(Debug)]
pub struct DeferredClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl DeferredClientVerifier {
    pub fn new(provider: Arc<CryptoProvider>) -> Arc<DeferredClientVerifier> {
        Arc::new(DeferredClientVerifier { provider })
    }
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Parse now so that garbage is refused at the handshake, not after it.
        trust::CertInfo::from_der(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server config presenting `cert`, with the given client verification and ALPN.
pub fn server_config(
    cert: Arc<ReloadingCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(trust::crypto_provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Standard chain verification (clientAuth) against the CAs in `ca_file`.
pub fn client_ca_verifier(ca_file: &Path) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in trust::load_certificates(ca_file)? {
        roots.add(cert)?;
    }
    Ok(
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), trust::crypto_provider())
            .build()?,
    )
}

/// A pooled HTTPS client (HTTP/1.1) sending planelink bodies.
pub type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    crate::tunnel::Body,
>;

pub fn http_client(
    connector: hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
) -> HttpsClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(connector)
}

pub fn connector(
    tls: rustls::ClientConfig,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
