//! The verifiers that do not follow rustls' stock path, each saying exactly what it
//! checks, what it leaves to later code, and why that is safe.
//!
//! - [`DeferredClientVerifier`]: the gateway's public listener. The CA an agent must chain
//!   to is known only once its `/ws` request names the plane, so the TLS layer checks the
//!   handshake signature (key possession) and the certificate's encoding, and the chain is
//!   verified per plane CR right after, before any tunnel exists.
//! - [`DiagnosingServerVerifier`]: the agent and `register check`. As strict as rustls'
//!   WebPKI verifier (chain to the configured CA for serverAuth, host in the SANs, validity),
//!   but it keeps the presented chain and explains a refusal in the operator's terms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{TrustError, Usage, check_host, verify_chain};

/// The handshake-signature checks both verifiers make exactly as rustls' own do: the
/// proof that the peer holds the key of the certificate it shows.
struct Signatures<'a>(&'a rustls::crypto::WebPkiSupportedAlgorithms);

fn signatures(provider: &CryptoProvider) -> Signatures<'_> {
    Signatures(&provider.signature_verification_algorithms)
}

impl Signatures<'_> {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.0)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.0)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
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
        super::CertInfo::from_der(end_entity).map_err(|_| {
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
        signatures(&self.provider).tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures(&self.provider).tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures(&self.provider).schemes()
    }
}

/// What the server presented and what was wrong with it, if anything.
#[derive(Debug, Default)]
pub struct ServerVerdict {
    pub chain: Vec<CertificateDer<'static>>,
    pub error: Option<String>,
}

/// Verifies the server chain against `trusted` for serverAuth and the dialed host,
/// recording the verdict for diagnostics.
#[derive(Debug)]
pub struct DiagnosingServerVerifier {
    trusted: Vec<CertificateDer<'static>>,
    host: String,
    provider: Arc<CryptoProvider>,
    verdict: Mutex<ServerVerdict>,
}

impl DiagnosingServerVerifier {
    pub fn new(
        trusted: Vec<CertificateDer<'static>>,
        host: &str,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        DiagnosingServerVerifier {
            trusted,
            host: host.to_string(),
            provider,
            verdict: Mutex::new(ServerVerdict::default()),
        }
    }

    /// The chain seen and the diagnosis, once a handshake got that far.
    pub fn take_verdict(&self) -> ServerVerdict {
        std::mem::take(&mut *self.verdict.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn judge(&self, chain: &[CertificateDer<'static>], now: SystemTime) -> Result<(), TrustError> {
        verify_chain(chain, &self.trusted, Usage::ServerAuth, now)?;
        check_host(&chain[0], &self.host)
    }
}

impl ServerCertVerifier for DiagnosingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let result = self.judge(&chain, now);
        let mut verdict = self.verdict.lock().unwrap_or_else(|p| p.into_inner());
        verdict.chain = chain;
        match result {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                let message = e.to_string();
                verdict.error = Some(message.clone());
                Err(rustls::Error::General(message))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures(&self.provider).tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures(&self.provider).tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures(&self.provider).schemes()
    }
}
