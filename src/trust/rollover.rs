//! A CA rollover an agent proposes: the CA bundle that issued its renewed client
//! certificate, and that certificate, carried as two headers on a dial authenticated with
//! the certificate the gateway still trusts. The gateway accepts a proposal only from an
//! agent it authorised, only for the plane CRs it authorised it for, and only when the
//! renewed certificate verifies against the proposed CAs.

use std::time::SystemTime;

use base64::Engine as _;
use rustls_pki_types::CertificateDer;

use super::{CertInfo, Usage, Validity, inspect::fingerprint, verify_chain};

/// `/ws` request header: base64 of the PEM of the proposed CA bundle.
pub const CA_HEADER: &str = "planelink-proposed-ca";
/// `/ws` request header: base64 of the PEM of the renewed certificate chain, leaf first.
pub const CERTIFICATE_HEADER: &str = "planelink-proposed-certificate";

/// Most CAs one proposal may carry, and most certificates in its chain.
pub const MAX_CERTIFICATES: usize = 4;
/// Longest header value accepted (a P-256 certificate is about 1 KiB of base64 PEM, an
/// RSA-4096 one about 2.5 KiB).
pub const MAX_HEADER_LEN: usize = 12 * 1024;

/// A proposed CA bundle and the certificate it must verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub cas: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
}

impl Proposal {
    /// The two header values.
    pub fn to_headers(&self) -> (String, String) {
        let encode = |certs: &[CertificateDer<'_>]| {
            base64::engine::general_purpose::STANDARD.encode(super::pem::certificates_to_pem(certs))
        };
        (encode(&self.cas), encode(&self.chain))
    }

    /// Reads the two header values, bounded.
    pub fn from_headers(cas: &str, chain: &str) -> Result<Proposal, String> {
        let decode = |what: &str, value: &str| {
            if value.len() > MAX_HEADER_LEN {
                return Err(format!(
                    "the proposed {what} is over {MAX_HEADER_LEN} bytes"
                ));
            }
            let pem = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|e| format!("the proposed {what} is not base64: {e}"))?;
            let certs =
                super::parse_certificates(&pem).map_err(|e| format!("the proposed {what}: {e}"))?;
            if certs.len() > MAX_CERTIFICATES {
                return Err(format!(
                    "the proposed {what} holds {} certificates, more than {MAX_CERTIFICATES}",
                    certs.len()
                ));
            }
            Ok(certs)
        };
        Ok(Proposal {
            cas: decode("CA bundle", cas)?,
            chain: decode("certificate", chain)?,
        })
    }

    /// Every proposed CA can issue and is valid now, and the renewed certificate verifies
    /// against them as a client certificate. A renewed pinned self-signed certificate is
    /// proposed as itself: exactly one, the same as the certificate.
    pub fn verify(&self, at: SystemTime) -> Result<(), String> {
        let renewed_pin = self.cas.len() == 1 && self.chain.len() == 1 && self.cas == self.chain;
        for ca in &self.cas {
            let info = CertInfo::from_der(ca).map_err(|e| e.to_string())?;
            if renewed_pin && info.is_pinnable() {
                if info.validity_at(at) != Validity::Valid {
                    return Err(format!(
                        "the certificate {:?} is not valid now",
                        info.subject
                    ));
                }
                continue;
            }
            if !info.can_issue() {
                return Err(format!("{:?} is not a CA", info.subject));
            }
            if info.validity_at(at) != Validity::Valid {
                return Err(format!("the CA {:?} is not valid now", info.subject));
            }
        }
        verify_chain(&self.chain, &self.cas, Usage::ClientAuth, at).map_err(|e| {
            format!("the renewed certificate does not verify against the proposed CAs: {e}")
        })
    }

    /// The renewed certificate names the same agent as the one `presented` on the dial
    /// (same subject and SANs): a renewal, not another identity riding on this one.
    pub fn renews(&self, presented: &[CertificateDer<'_>]) -> Result<(), String> {
        let leaf = |chain: &[CertificateDer<'_>]| {
            chain
                .first()
                .ok_or_else(|| "no certificate".to_string())
                .and_then(|c| CertInfo::from_der(c).map_err(|e| e.to_string()))
        };
        let (renewed, current) = (leaf(&self.chain)?, leaf(presented)?);
        if renewed.subject != current.subject || renewed.san_list() != current.san_list() {
            return Err(format!(
                "the renewed certificate names {:?} ({}), not the presented {:?} ({})",
                renewed.subject,
                renewed.san_list(),
                current.subject,
                current.san_list()
            ));
        }
        Ok(())
    }

    /// The proposed CA bundle as PEM.
    pub fn ca_pem(&self) -> String {
        super::pem::certificates_to_pem(&self.cas)
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.cas.iter().map(fingerprint).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::issue::{self, CaOptions, LeafOptions};

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        crate::trust::parse_certificates(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_proposal_round_trips_and_must_verify_its_certificate() {
        let ca = issue::new_ca(&CaOptions::agent("a")).unwrap();
        let other = issue::new_ca(&CaOptions::agent("b")).unwrap();
        let leaf = issue::issue_leaf(&ca, &LeafOptions::client("a")).unwrap();
        let proposal = Proposal {
            cas: der(&ca.cert_pem),
            chain: der(&leaf.cert_pem),
        };
        let (cas, chain) = proposal.to_headers();
        let read = Proposal::from_headers(&cas, &chain).unwrap();
        assert_eq!(read, proposal);
        read.verify(SystemTime::now()).unwrap();

        // A certificate from another CA: refused.
        let wrong = Proposal {
            cas: der(&other.cert_pem),
            chain: der(&leaf.cert_pem),
        };
        let error = wrong.verify(SystemTime::now()).unwrap_err();
        assert!(
            error.starts_with("the renewed certificate does not verify against the proposed CAs: "),
            "{error}"
        );
        // A leaf proposed as the CA: refused.
        let leaf_as_ca = Proposal {
            cas: der(&leaf.cert_pem),
            chain: der(&leaf.cert_pem),
        };
        assert_eq!(
            leaf_as_ca.verify(SystemTime::now()).unwrap_err(),
            format!(
                "{:?} is not a CA",
                CertInfo::from_der(&der(&leaf.cert_pem)[0]).unwrap().subject
            )
        );
    }

    /// A proposal renews the presented certificate's identity, not another one.
    #[test]
    fn the_renewed_certificate_must_name_the_same_agent() {
        let old_ca = issue::new_ca(&CaOptions::agent("a")).unwrap();
        let new_ca = issue::new_ca(&CaOptions::agent("a")).unwrap();
        let presented = der(&issue::issue_leaf(&old_ca, &LeafOptions::client("agent-1"))
            .unwrap()
            .cert_pem);
        let renewal = |cn: &str| Proposal {
            cas: der(&new_ca.cert_pem),
            chain: der(&issue::issue_leaf(&new_ca, &LeafOptions::client(cn))
                .unwrap()
                .cert_pem),
        };
        renewal("agent-1").renews(&presented).unwrap();
        let error = renewal("agent-2").renews(&presented).unwrap_err();
        assert!(
            error.starts_with("the renewed certificate names \"O=planelink, CN=agent-2\""),
            "{error}"
        );
    }

    #[test]
    fn oversized_and_malformed_headers_are_refused() {
        let long = "A".repeat(MAX_HEADER_LEN + 1);
        assert_eq!(
            Proposal::from_headers(&long, "").unwrap_err(),
            format!("the proposed CA bundle is over {MAX_HEADER_LEN} bytes")
        );
        assert!(
            Proposal::from_headers("not base64!", "")
                .unwrap_err()
                .starts_with("the proposed CA bundle is not base64: ")
        );
        let ca = issue::new_ca(&CaOptions::agent("a")).unwrap();
        let five = base64::engine::general_purpose::STANDARD.encode(ca.cert_pem.repeat(5));
        assert_eq!(
            Proposal::from_headers(&five, &five).unwrap_err(),
            "the proposed CA bundle holds 5 certificates, more than 4"
        );
    }
}
