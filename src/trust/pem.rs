//! Reading certificates and private keys from what operators actually paste.
//!
//! Besides plain PEM this accepts: base64 of a PEM (the older DataPlane doc says
//! "base64-encoded PEM"), leading indentation left over from YAML block scalars,
//! CRLF line endings, and raw DER. Anything else is rejected with an error that
//! says what was found and what was expected.

use std::path::Path;

use base64::Engine as _;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TrustError;

/// A private key whose `Debug` output never shows the key material.
pub struct PrivateKey(PrivateKeyDer<'static>);

impl PrivateKey {
    pub fn der(&self) -> &PrivateKeyDer<'static> {
        &self.0
    }

    pub fn into_der(self) -> PrivateKeyDer<'static> {
        self.0
    }

    /// Which encoding the key came in, for diagnostics.
    /// The key as PEM text, in its own format's block.
    pub fn to_pem(&self) -> String {
        let label = match self.0 {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        to_pem(label, self.0.secret_der())
    }

    pub fn format(&self) -> &'static str {
        match self.0 {
            PrivateKeyDer::Pkcs1(_) => "PKCS#1 RSA",
            PrivateKeyDer::Sec1(_) => "SEC1 EC",
            PrivateKeyDer::Pkcs8(_) => "PKCS#8",
            _ => "unknown",
        }
    }
}

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        PrivateKey(self.0.clone_key())
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, <redacted>)", self.format())
    }
}

/// Everything found in one input: certificates and at most one private key.
#[derive(Debug, Default)]
pub struct PemContents {
    pub certificates: Vec<CertificateDer<'static>>,
    pub private_keys: Vec<PrivateKey>,
    /// Section kinds that are neither certificates nor keys (CSR, CRL, public key).
    pub other_sections: Vec<&'static str>,
}

/// Reads a file and parses every certificate in it (a bundle may hold several).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let bytes = read_file(path)?;
    parse_certificates(&bytes).map_err(|e| e.in_file(path))
}

/// Reads a file and parses the one private key in it.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, TrustError> {
    let bytes = read_file(path)?;
    parse_private_key(&bytes).map_err(|e| e.in_file(path))
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Certificates as PEM text, in order.
pub fn certificates_to_pem(certificates: &[CertificateDer<'_>]) -> String {
    certificates
        .iter()
        .map(|c| to_pem("CERTIFICATE", c))
        .collect()
}

/// Parses certificates; errors when the input holds none.
pub fn parse_certificates(input: &[u8]) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let contents = parse(input)?;
    if contents.certificates.is_empty() {
        if !contents.private_keys.is_empty() {
            return Err(TrustError::WrongContent {
                found: "a private key".into(),
                expected: "a certificate",
            });
        }
        return Err(TrustError::NoCertificate);
    }
    Ok(contents.certificates)
}

/// Parses exactly one private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn parse_private_key(input: &[u8]) -> Result<PrivateKey, TrustError> {
    if contains(input, b"ENCRYPTED PRIVATE KEY") || contains(input, b"Proc-Type: 4,ENCRYPTED") {
        return Err(TrustError::EncryptedKey);
    }
    let mut contents = parse(input)?;
    match contents.private_keys.len() {
        1 => Ok(contents.private_keys.remove(0)),
        0 if !contents.certificates.is_empty() => Err(TrustError::WrongContent {
            found: "a certificate".into(),
            expected: "a private key",
        }),
        0 => Err(TrustError::NoPrivateKey),
        n => Err(TrustError::SeveralPrivateKeys(n)),
    }
}

/// Parses any mix of certificates and keys, normalising pasted text first.
pub fn parse(input: &[u8]) -> Result<PemContents, TrustError> {
    parse_depth(input, 0)
}

fn parse_depth(input: &[u8], depth: u8) -> Result<PemContents, TrustError> {
    let trimmed = input.trim_ascii();
    if trimmed.is_empty() {
        return Err(TrustError::Empty);
    }
    if contains(trimmed, b"-----BEGIN ") {
        return parse_pem_text(&normalise_text(trimmed));
    }
    // Raw DER: an ASN.1 SEQUENCE. A certificate parses as one; otherwise try a key.
    if trimmed[0] == 0x30 {
        return parse_der(input);
    }
    // Base64 of a PEM (or of DER), possibly wrapped over several lines.
    if depth == 0 && looks_like_base64(trimmed) {
        let compact: Vec<u8> = trimmed
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&compact) {
            return parse_depth(&decoded, depth + 1).map_err(|e| match e {
                TrustError::Empty => TrustError::NotPem,
                other => other,
            });
        }
    }
    Err(TrustError::NotPem)
}

fn parse_der(input: &[u8]) -> Result<PemContents, TrustError> {
    let der = input.to_vec();
    if x509_parser::parse_x509_certificate(&der).is_ok() {
        return Ok(PemContents {
            certificates: vec![CertificateDer::from(der)],
            ..Default::default()
        });
    }
    match PrivateKeyDer::try_from(der) {
        Ok(key) => Ok(PemContents {
            private_keys: vec![PrivateKey(key)],
            ..Default::default()
        }),
        Err(_) => Err(TrustError::NotPem),
    }
}

fn parse_pem_text(text: &[u8]) -> Result<PemContents, TrustError> {
    let mut contents = PemContents::default();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
        let (kind, der) = section.map_err(|e| TrustError::BadPem(e.to_string()))?;
        match kind {
            SectionKind::Certificate => contents.certificates.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => contents
                .private_keys
                .push(PrivateKey(PrivateKeyDer::Pkcs8(der.into()))),
            SectionKind::RsaPrivateKey => contents
                .private_keys
                .push(PrivateKey(PrivateKeyDer::Pkcs1(der.into()))),
            SectionKind::EcPrivateKey => contents
                .private_keys
                .push(PrivateKey(PrivateKeyDer::Sec1(der.into()))),
            SectionKind::Csr => contents
                .other_sections
                .push("a certificate signing request"),
            SectionKind::Crl => contents
                .other_sections
                .push("a certificate revocation list"),
            SectionKind::PublicKey => contents.other_sections.push("a bare public key"),
            _ => contents.other_sections.push("an unsupported PEM section"),
        }
    }
    if contents.certificates.is_empty()
        && contents.private_keys.is_empty()
        && let Some(other) = contents.other_sections.first()
    {
        return Err(TrustError::WrongContent {
            found: (*other).to_string(),
            expected: "a certificate or private key",
        });
    }
    Ok(contents)
}

/// Drops CR and the indentation YAML block scalars leave in front of each line.
fn normalise_text(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    for line in input.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        if !line.is_empty() {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

fn looks_like_base64(input: &[u8]) -> bool {
    input.iter().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=') || b.is_ascii_whitespace()
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// PEM text of one DER object (`label` e.g. CERTIFICATE), 64 characters a line.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::issue::{self, CaOptions};

    fn sample() -> (String, String) {
        let ca = issue::new_ca(&CaOptions::agent("p1")).unwrap();
        (ca.cert_pem.clone(), ca.key_pem().to_string())
    }

    #[test]
    fn plain_pem_parses() {
        let (cert, key) = sample();
        assert_eq!(parse_certificates(cert.as_bytes()).unwrap().len(), 1);
        assert_eq!(
            parse_private_key(key.as_bytes()).unwrap().format(),
            "PKCS#8"
        );
    }

    #[test]
    fn yaml_indentation_and_crlf_are_tolerated() {
        let (cert, _) = sample();
        let pasted: String = cert.lines().map(|l| format!("      {l}\r\n")).collect();
        assert_eq!(parse_certificates(pasted.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn base64_of_pem_is_accepted() {
        let (cert, _) = sample();
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_bytes());
        let certs = parse_certificates(b64.as_bytes()).unwrap();
        assert_eq!(certs, parse_certificates(cert.as_bytes()).unwrap());
    }

    #[test]
    fn der_is_accepted() {
        let (cert, _) = sample();
        let der = parse_certificates(cert.as_bytes()).unwrap().remove(0);
        assert_eq!(parse_certificates(der.as_ref()).unwrap(), vec![der]);
    }

    #[test]
    fn garbage_is_rejected_clearly() {
        let err = parse_certificates(b"hello world, not a cert").unwrap_err();
        assert!(
            err.to_string().contains("-----BEGIN CERTIFICATE-----"),
            "{err}"
        );
        assert!(matches!(
            parse_certificates(b"  \n").unwrap_err(),
            TrustError::Empty
        ));
        // Base64 that decodes to nonsense is still "not PEM", not a base64 error.
        assert!(matches!(
            parse_certificates(b"aGVsbG8=").unwrap_err(),
            TrustError::NotPem
        ));
    }

    #[test]
    fn key_where_certificate_belongs_is_named() {
        let (_, key) = sample();
        let err = parse_certificates(key.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("holds a private key"), "{err}");
        let (cert, _) = sample();
        let err = parse_private_key(cert.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("holds a certificate"), "{err}");
    }

    #[test]
    fn truncated_pem_is_rejected() {
        let (cert, _) = sample();
        let cut = &cert[..cert.len() - 30];
        let err = parse_certificates(cut.as_bytes()).unwrap_err();
        assert!(matches!(err, TrustError::BadPem(_)), "{err:?}");
    }

    #[test]
    fn encrypted_key_is_explained() {
        let text =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            parse_private_key(text.as_bytes()).unwrap_err(),
            TrustError::EncryptedKey
        ));
    }

    #[test]
    fn debug_hides_key_material() {
        let (_, key) = sample();
        let key = parse_private_key(key.as_bytes()).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "PrivateKey(PKCS#8, <redacted>)");
    }
}
