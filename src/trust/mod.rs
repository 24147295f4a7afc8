//! Certificates: PEM loading, inspection (CA or leaf, SANs, expiry), chain
//! verification, host matching, issuance, and the rustls configurations built from them
//! (`tls`; the relaxed verifiers in `danger`).
//!
//! This module knows nothing of kube or hyper, and of tokio only the file watcher that
//! reloads a serving certificate: data in, verdict out, so every role and every test can
//! use it the same way.

pub mod danger;
pub mod diagnose;
mod error;
pub mod hostname;
pub mod inspect;
pub mod issue;
pub mod pem;
pub mod purpose;
pub mod rollover;
pub mod tls;
pub mod verify;

pub use error::TrustError;
pub use hostname::check_host;
pub use inspect::{CertInfo, Eku, Expiry, ExpiryState, Validity};
pub use pem::{
    PrivateKey, load_certificates, load_private_key, parse_certificates, parse_private_key,
};
pub use purpose::{Finding, Purpose, Report, Severity, assess};
pub use verify::{Usage, verify_chain};

/// The rustls crypto provider planelink uses everywhere, chosen explicitly so that
/// no feature unification elsewhere can switch it silently.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Name of the crypto provider, as `planelink version` reports it.
pub const CRYPTO_PROVIDER_NAME: &str = "ring";

/// Whether `key` is the private key of `cert` (compares the public key info).
pub fn key_matches(
    cert: &rustls_pki_types::CertificateDer<'_>,
    key: &PrivateKey,
) -> Result<bool, TrustError> {
    use x509_parser::prelude::FromDer as _;
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(key.der().clone_key())
        .map_err(|e| TrustError::BadCertificate(format!("unsupported private key: {e}")))?;
    let Some(public) = signing_key.public_key() else {
        return Err(TrustError::BadCertificate(
            "cannot derive the key's public part".into(),
        ));
    };
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TrustError::BadCertificate(e.to_string()))?;
    Ok(parsed.public_key().raw == public.as_ref())
}
