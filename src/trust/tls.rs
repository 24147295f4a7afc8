//! rustls configuration shared by the roles' listeners: a serving certificate that
//! follows its files, server configs, and standard client-CA verification. Anything that
//! relaxes verification lives in [`super::danger`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

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
    let chain = crate::trust::parse_certificates(&cert_bytes)?;
    let private = crate::trust::parse_private_key(&key_bytes)?;
    if !crate::trust::key_matches(&chain[0], &private)? {
        anyhow::bail!(
            "{} is not the private key of {}",
            key.display(),
            cert.display()
        );
    }
    let signing = crate::trust::crypto_provider()
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

    /// When the certificate being served became valid and when it expires.
    pub fn validity(&self) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let leaf = current.1.cert.first()?;
        crate::trust::inspect::CertInfo::from_der(leaf)
            .ok()
            .map(|info| (info.not_before, info.not_after))
    }

    /// When the certificate being served expires (Unix seconds).
    pub fn not_after_unix(&self) -> Option<i64> {
        self.validity().map(|(_, until)| until.unix_timestamp())
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

/// A server config presenting `cert`, with the given client verification and ALPN.
pub fn server_config(
    cert: Arc<ReloadingCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(crate::trust::crypto_provider())
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
    for cert in crate::trust::load_certificates(ca_file)? {
        roots.add(cert)?;
    }
    Ok(WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::trust::crypto_provider(),
    )
    .build()?)
}
