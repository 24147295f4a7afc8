//! What a certificate is: names, validity, CA or leaf, usages, SANs, fingerprint.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TrustError;

/// An extended key usage, as far as planelink cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eku {
    ServerAuth,
    ClientAuth,
    Any,
    Other(String),
}

impl fmt::Display for Eku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Eku::ServerAuth => f.write_str("serverAuth"),
            Eku::ClientAuth => f.write_str("clientAuth"),
            Eku::Any => f.write_str("anyExtendedKeyUsage"),
            Eku::Other(oid) => f.write_str(oid),
        }
    }
}

/// Where a point in time falls relative to a certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    NotYetValid,
    Valid,
    Expired,
}

/// The facts about one certificate that operators and verdicts need.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Colon-separated hex, as openssl prints it.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Colon-separated upper-case hex of the DER's SHA-256.
    pub sha256_fingerprint: String,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    pub path_len: Option<u32>,
    /// Key usage names; empty when the extension is absent.
    pub key_usage: Vec<&'static str>,
    pub key_usage_present: bool,
    /// Extended key usages; empty when the extension is absent (then any usage is allowed).
    pub extended_key_usages: Vec<Eku>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Subject equals issuer and the certificate's own key verifies its signature.
    pub self_signed: bool,
    pub public_key_algorithm: String,
}

impl CertInfo {
    pub fn from_der(der: &CertificateDer<'_>) -> Result<CertInfo, TrustError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| TrustError::BadCertificate(e.to_string()))?;
        Ok(Self::from_parsed(der, &cert))
    }

    fn from_parsed(der: &CertificateDer<'_>, cert: &X509Certificate<'_>) -> CertInfo {
        let (is_ca, path_len) = match cert.basic_constraints() {
            Ok(Some(bc)) => (bc.value.ca, bc.value.path_len_constraint),
            _ => (false, None),
        };
        let (key_usage, key_usage_present) = match cert.key_usage() {
            Ok(Some(ku)) => (key_usage_names(ku.value), true),
            _ => (Vec::new(), false),
        };
        let extended_key_usages = match cert.extended_key_usage() {
            Ok(Some(eku)) => {
                let v = eku.value;
                let mut out = Vec::new();
                if v.server_auth {
                    out.push(Eku::ServerAuth);
                }
                if v.client_auth {
                    out.push(Eku::ClientAuth);
                }
                if v.any {
                    out.push(Eku::Any);
                }
                out.extend(v.other.iter().map(|oid| Eku::Other(oid.to_id_string())));
                out
            }
            _ => Vec::new(),
        };
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            ip_addresses.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Decided by the signature: names and key IDs can be copied from any CA.
        let same_name = cert.subject().as_raw() == cert.issuer().as_raw();
        let self_signed = same_name && cert.verify_signature(None).is_ok();
        CertInfo {
            subject: display_name(&cert.subject().to_string()),
            issuer: display_name(&cert.issuer().to_string()),
            serial: cert.raw_serial_as_string(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            sha256_fingerprint: fingerprint(der),
            is_ca,
            path_len,
            key_usage,
            key_usage_present,
            extended_key_usages,
            dns_names,
            ip_addresses,
            self_signed,
            public_key_algorithm: public_key_algorithm(cert),
        }
    }

    pub fn validity_at(&self, at: SystemTime) -> Validity {
        let at = OffsetDateTime::from(at);
        if at < self.not_before {
            Validity::NotYetValid
        } else if at > self.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// True when the certificate may be used for `eku` (an absent EKU extension allows all).
    pub fn allows_eku(&self, eku: &Eku) -> bool {
        self.extended_key_usages.is_empty()
            || self.extended_key_usages.contains(eku)
            || self.extended_key_usages.contains(&Eku::Any)
    }

    /// A CA that may sign certificates: CA:TRUE, and keyCertSign when key usage is present.
    pub fn can_issue(&self) -> bool {
        self.is_ca && (!self.key_usage_present || self.key_usage.contains(&"keyCertSign"))
    }

    /// A self-signed end-entity certificate: trusted only as itself (pinned), never as an
    /// issuer. OpenChoreo's charts issue agent certificates so (cert-manager `selfSigned`,
    /// `isCA: false`) and register them as `clientCA`.
    pub fn is_pinnable(&self) -> bool {
        !self.is_ca && self.self_signed
    }

    pub fn eku_list(&self) -> String {
        if self.extended_key_usages.is_empty() {
            "no extended key usage extension (any usage)".into()
        } else {
            join(&self.extended_key_usages)
        }
    }

    /// All SANs, DNS then IP, for messages.
    pub fn san_list(&self) -> String {
        let mut names: Vec<String> = self.dns_names.clone();
        names.extend(self.ip_addresses.iter().map(|ip| ip.to_string()));
        if names.is_empty() {
            "no subject alternative names".into()
        } else {
            names.join(", ")
        }
    }
}

/// The default warning window before a certificate's expiry.
pub const DEFAULT_EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Where a certificate stands against its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ExpiryState {
    Valid,
    ExpiringSoon,
    Expired,
}

/// How long a certificate has left, judged against a warning window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub not_after: OffsetDateTime,
    /// Whole days left; negative once expired.
    pub days_left: i64,
    pub state: ExpiryState,
}

impl Expiry {
    /// Judged at `now` against `warn`, or against a third of the certificate's lifetime
    /// when that is shorter (a 30-day certificate is not "expiring soon" on its first day);
    /// without `not_before` (the lifetime unknown), against `warn`.
    pub fn at(
        not_before: Option<OffsetDateTime>,
        not_after: OffsetDateTime,
        now: SystemTime,
        warn: std::time::Duration,
    ) -> Expiry {
        let now = OffsetDateTime::from(now);
        let mut window = time::Duration::try_from(warn).unwrap_or(time::Duration::MAX);
        if let Some(from) = not_before {
            window = window.min((not_after - from) / 3);
        }
        let left = not_after - now;
        let state = if left <= time::Duration::ZERO {
            ExpiryState::Expired
        } else if left <= window {
            ExpiryState::ExpiringSoon
        } else {
            ExpiryState::Valid
        };
        Expiry {
            not_after,
            days_left: left.whole_days(),
            state,
        }
    }
}

impl CertInfo {
    /// This certificate's [`Expiry`] at `now`.
    pub fn expiry(&self, now: SystemTime, warn: std::time::Duration) -> Expiry {
        Expiry::at(Some(self.not_before), self.not_after, now, warn)
    }
}

/// `t` in RFC 3339, whole seconds (what Kubernetes timestamps carry).
pub fn format_system_time(t: std::time::SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    format_time(t.replace_nanosecond(0).unwrap_or(t))
}

pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

pub(crate) fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn display_name(rendered: &str) -> String {
    if rendered.is_empty() {
        "(empty subject)".into()
    } else {
        rendered.to_string()
    }
}

pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn key_usage_names(ku: &x509_parser::extensions::KeyUsage) -> Vec<&'static str> {
    let mut names = Vec::new();
    let flags = [
        (ku.digital_signature(), "digitalSignature"),
        (ku.non_repudiation(), "nonRepudiation"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.data_encipherment(), "dataEncipherment"),
        (ku.key_agreement(), "keyAgreement"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
        (ku.encipher_only(), "encipherOnly"),
        (ku.decipher_only(), "decipherOnly"),
    ];
    for (set, name) in flags {
        if set {
            names.push(name);
        }
    }
    names
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn public_key_algorithm(cert: &X509Certificate<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {} bits", rsa.key_size()),
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => "ECDSA P-256".into(),
            384 => "ECDSA P-384".into(),
            n => format!("EC {n} bits"),
        },
        Ok(_) => cert.public_key().algorithm.algorithm.to_id_string(),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;
    use std::time::Duration;

    fn day(n: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(n)
    }

    fn at(n: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(n as u64 * 86_400)
    }

    #[test]
    fn the_window_is_the_flag_or_a_third_of_the_lifetime() {
        let warn = DEFAULT_EXPIRY_WARNING;
        // A year-long certificate: warned 30 days before.
        let year = |now| Expiry::at(Some(day(0)), day(365), at(now), warn);
        assert_eq!(year(334).state, ExpiryState::Valid);
        assert_eq!(year(336).state, ExpiryState::ExpiringSoon);
        assert_eq!(year(336).days_left, 29);
        assert_eq!(year(366).state, ExpiryState::Expired);
        // A 30-day certificate: warned in its last 10 days, not from its first.
        let month = |now| Expiry::at(Some(day(0)), day(30), at(now), warn);
        assert_eq!(month(1).state, ExpiryState::Valid);
        assert_eq!(month(19).state, ExpiryState::Valid);
        assert_eq!(month(21).state, ExpiryState::ExpiringSoon);
        // Lifetime unknown: the flag alone.
        assert_eq!(
            Expiry::at(None, day(30), at(1), warn).state,
            ExpiryState::ExpiringSoon
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::issue::{self, CaOptions, LeafOptions};
    use std::time::Duration;

    #[test]
    fn ca_and_leaf_are_told_apart() {
        let ca = issue::new_ca(&CaOptions::gateway()).unwrap();
        let leaf = issue::issue_leaf(
            &ca,
            &LeafOptions::server(
                "gw",
                vec!["gw.example.com".into()],
                vec!["127.0.0.1".parse().unwrap()],
            ),
        )
        .unwrap();
        let ca_info = CertInfo::from_der(&ca.cert_der().unwrap()).unwrap();
        let leaf_info = CertInfo::from_der(&leaf.cert_der().unwrap()).unwrap();
        assert!(ca_info.is_ca && ca_info.can_issue() && ca_info.self_signed);
        assert!(!leaf_info.is_ca && !leaf_info.self_signed);
        assert_eq!(leaf_info.issuer, ca_info.subject);
        assert_eq!(leaf_info.dns_names, vec!["gw.example.com"]);
        assert_eq!(
            leaf_info.ip_addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(leaf_info.extended_key_usages, vec![Eku::ServerAuth]);
        assert!(!leaf_info.allows_eku(&Eku::ClientAuth));
        assert_eq!(leaf_info.public_key_algorithm, "ECDSA P-256");
        assert_eq!(leaf_info.sha256_fingerprint.len(), 32 * 3 - 1);
    }

    #[test]
    fn validity_window() {
        let ca =
            issue::new_ca(&CaOptions::gateway().valid_for(Duration::from_secs(86400))).unwrap();
        let info = CertInfo::from_der(&ca.cert_der().unwrap()).unwrap();
        let now = SystemTime::now();
        assert_eq!(info.validity_at(now), Validity::Valid);
        assert_eq!(
            info.validity_at(now + Duration::from_secs(2 * 86400)),
            Validity::Expired
        );
        assert_eq!(
            info.validity_at(now - Duration::from_secs(3600)),
            Validity::NotYetValid
        );
    }
}
