//! The agent's certificate files, followed: a renewed set (a mounted Secret swapped
//! through its symlink, files rewritten on a bare host) becomes a new generation, and the
//! agent replaces its tunnels make-before-break. A set that does not load (a swap caught
//! half-way, a key that does not match) is logged and the current one kept, so a bad
//! renewal never takes a working agent down.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::config::TlsFiles;
use crate::trust;
use crate::tunnel::dial::{DialError, TlsIdentity};

/// One loaded set of certificate files.
pub struct Identity {
    /// Counts the sets loaded since start; a tunnel dialled with an older one is replaced.
    pub generation: u64,
    /// `None` with `--tls-enabled=false`.
    pub tls: Option<TlsIdentity>,
    /// The CA that issued the client certificate (`--client-ca`, `ca.crt` of Secret
    /// cluster-agent-tls), when that file exists: what the agent proposes to the gateway
    /// when it changes.
    pub own_ca: Option<Vec<CertificateDer<'static>>>,
    fingerprint: [u8; 32],
}

impl Identity {
    /// The identity of an agent without TLS.
    pub fn plain() -> Identity {
        Identity {
            generation: 0,
            tls: None,
            own_ca: None,
            fingerprint: [0; 32],
        }
    }

    /// The client certificate chain, leaf first.
    pub fn chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls
            .as_ref()
            .and_then(|t| t.client.as_ref())
            .map(|(chain, _)| chain.as_slice())
    }

    /// The CA rollover this identity calls for: its own CA and its certificate, when the
    /// certificate verifies against that CA (nothing else is worth proposing).
    pub fn proposal(&self) -> Option<trust::rollover::Proposal> {
        let proposal = trust::rollover::Proposal {
            cas: self.own_ca.clone()?,
            chain: self.chain()?.to_vec(),
        };
        let (cas, chain) = proposal.to_headers();
        let fits = cas.len().max(chain.len()) <= trust::rollover::MAX_HEADER_LEN;
        match proposal.verify(std::time::SystemTime::now()) {
            Ok(()) if fits => Some(proposal),
            Ok(()) => {
                tracing::warn!(
                    "the renewed certificate's CA (--client-ca) is not proposed to the gateway: \
                     over {} bytes encoded; register it by hand",
                    trust::rollover::MAX_HEADER_LEN
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    "the renewed certificate's CA (--client-ca) is not proposed to the gateway: {e}"
                );
                None
            }
        }
    }

    /// Reads and checks the files: the client key must be the certificate's.
    pub fn load(files: &TlsFiles, generation: u64) -> Result<Identity, DialError> {
        FileSet::read(files)?.parse(files, generation)
    }
}

/// The certificate files' bytes as read, before parsing: comparing fingerprints first
/// keeps the once-a-second poll to a few reads when nothing changed.
struct FileSet {
    cert: Vec<u8>,
    key: Vec<u8>,
    server_ca: Vec<u8>,
    own_ca: Option<Vec<u8>>,
    fingerprint: [u8; 32],
}

impl FileSet {
    fn read(files: &TlsFiles) -> Result<FileSet, DialError> {
        let read = |path: &std::path::Path, flag: &str| {
            std::fs::read(path)
                .map_err(|e| DialError::Identity(format!("{flag} {}: {e}", path.display())))
        };
        let cert = read(&files.client_cert, "--client-cert")?;
        let key = read(&files.client_key, "--client-key")?;
        let server_ca = read(&files.server_ca, "--server-ca")?;
        // The agent's own CA is optional: absent, nothing is proposed.
        let own_ca = match &files.client_ca {
            Some(path) => std::fs::read(path).ok(),
            None => None,
        };
        let mut digest = Sha256::new();
        for part in [&cert, &key, &server_ca] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        if let Some(own) = &own_ca {
            digest.update(own);
        }
        Ok(FileSet {
            cert,
            key,
            server_ca,
            own_ca,
            fingerprint: digest.finalize().into(),
        })
    }

    fn parse(self, files: &TlsFiles, generation: u64) -> Result<Identity, DialError> {
        let bad =
            |flag: &str, e: &dyn std::fmt::Display| DialError::Identity(format!("{flag}: {e}"));
        let chain = trust::parse_certificates(&self.cert).map_err(|e| bad("--client-cert", &e))?;
        let private = trust::parse_private_key(&self.key).map_err(|e| bad("--client-key", &e))?;
        if !trust::key_matches(&chain[0], &private).map_err(|e| bad("--client-key", &e))? {
            return Err(DialError::Identity(format!(
                "--client-key {} is not the private key of --client-cert {}",
                files.client_key.display(),
                files.client_cert.display()
            )));
        }
        let server_ca =
            trust::parse_certificates(&self.server_ca).map_err(|e| bad("--server-ca", &e))?;
        let own_ca = self
            .own_ca
            .and_then(|bytes| trust::parse_certificates(&bytes).ok());
        Ok(Identity {
            generation,
            tls: Some(TlsIdentity {
                server_ca,
                client: Some((chain, private)),
            }),
            own_ca,
            fingerprint: self.fingerprint,
        })
    }
}

/// Re-reads the files every [`trust::tls::RELOAD_INTERVAL`] and publishes a new
/// generation when their contents changed and load; ends with `stop`.
pub fn spawn_watcher(
    files: TlsFiles,
    current: watch::Sender<Arc<Identity>>,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(trust::tls::RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: the files were just loaded by the caller.
        tick.tick().await;
        // Why the last set failed to load, so it is logged once, and its fingerprint, so
        // it is not parsed again until it changes.
        let mut last_bad: Option<String> = None;
        let mut bad_fingerprint: Option<[u8; 32]> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let (fingerprint, generation) = {
                let now = current.borrow();
                (now.fingerprint, now.generation + 1)
            };
            let files = files.clone();
            let skip = bad_fingerprint;
            let loaded = tokio::task::spawn_blocking(move || {
                let set = FileSet::read(&files).map_err(|e| (None, Some(e)))?;
                if set.fingerprint == fingerprint {
                    return Ok(None);
                }
                if Some(set.fingerprint) == skip {
                    return Err((skip, None));
                }
                let print = set.fingerprint;
                set.parse(&files, generation)
                    .map(Some)
                    .map_err(|e| (Some(print), Some(e)))
            })
            .await;
            match loaded {
                Ok(Ok(None)) => last_bad = None,
                Ok(Ok(Some(identity))) => {
                    last_bad = None;
                    bad_fingerprint = None;
                    tracing::info!(
                        generation,
                        "the certificate files changed; replacing the tunnels with ones using them"
                    );
                    current.send_replace(Arc::new(identity));
                }
                // The same broken set as last time: already logged.
                Ok(Err((_, None))) => {}
                Ok(Err((print, Some(e)))) => {
                    bad_fingerprint = print;
                    let text = e.to_string();
                    if last_bad.as_deref() != Some(text.as_str()) {
                        tracing::warn!(
                            "the certificate files changed but cannot be used; keeping the current ones: {text}"
                        );
                        last_bad = Some(text);
                    }
                }
                Err(join) => tracing::warn!("reading the certificate files failed: {join}"),
            }
        }
    });
}
