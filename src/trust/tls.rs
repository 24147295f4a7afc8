//! rustls glue: a server-certificate verifier that verifies exactly as strictly as
//! rustls' own WebPKI verifier, but keeps the presented chain and explains a
//! rejection in the operator's terms (wrong CA, leaf as CA, host not in SANs, expiry).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{TrustError, Usage, check_host, verify_chain};

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
