//! Chain verification for client or server authentication, with webpki doing the
//! cryptography and this module turning its verdicts into diagnoses an operator can act on.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};

use super::inspect::{format_time, join};
use super::{CertInfo, Eku, TrustError, Validity};

/// What a certificate is being verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    ServerAuth,
    ClientAuth,
}

impl Usage {
    pub fn eku(self) -> Eku {
        match self {
            Usage::ServerAuth => Eku::ServerAuth,
            Usage::ClientAuth => Eku::ClientAuth,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Usage::ServerAuth => "serverAuth",
            Usage::ClientAuth => "clientAuth",
        }
    }

    fn untrusted_fix(self) -> &'static str {
        match self {
            Usage::ClientAuth => {
                "register the agent's own CA: ca.crt from Secret cluster-agent-tls in the remote plane \
                 (not tls.crt, and not the gateway's server CA)"
            }
            Usage::ServerAuth => {
                "trust the control plane's CA: ca.crt from Secret cluster-gateway-ca \
                 (not the ConfigMap of the same name, which may hold a placeholder)"
            }
        }
    }
}

const EXPIRED_LEAF_FIX: &str = "re-issue it (cert-manager: delete the Secret to force re-issuance; \
                                bare hosts: planelink register certs)";
const EXPIRED_CA_FIX: &str =
    "issue a new CA and re-issue the certificates it signs, then register the new ca.crt";

/// The CAs of `trusted` that each verify `chain` (clientAuth) on their own: which CA of a
/// bundle an agent's certificate comes from.
pub fn issuing_cas<'a>(
    chain: &[CertificateDer<'_>],
    trusted: &'a [CertificateDer<'static>],
    at: SystemTime,
) -> impl Iterator<Item = &'a CertificateDer<'static>> {
    trusted.iter().filter(move |ca| {
        verify_chain(chain, std::slice::from_ref(*ca), Usage::ClientAuth, at).is_ok()
    })
}

/// Verifies `chain` (leaf first, then any intermediates) against the CA bundle
/// `trusted`, for `usage`, at time `at`.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    trusted: &[CertificateDer<'_>],
    usage: Usage,
    at: SystemTime,
) -> Result<(), TrustError> {
    let leaf_der = chain.first().ok_or(TrustError::NoCertificate)?;
    if trusted.is_empty() {
        return Err(TrustError::NoCertificate);
    }
    let leaf = CertInfo::from_der(leaf_der)?;
    let mut anchors = Vec::new();
    let mut anchors_info = Vec::new();
    let mut pinned = Vec::new();
    for der in trusted {
        let info = CertInfo::from_der(der)?;
        if info.is_ca {
            anchors.push(der);
            anchors_info.push(info);
        } else if usage == Usage::ClientAuth && info.is_pinnable() {
            // Never an anchor: webpki ignores an anchor's basicConstraints, so its key
            // could mint more agents.
            pinned.push((der, info));
        } else {
            // A leaf in the CA bundle can never verify anything: say so before anything else.
            return Err(TrustError::LeafAsCa {
                subject: info.subject,
                issuer: info.issuer,
            });
        }
    }
    if leaf.is_ca {
        return Err(TrustError::CaAsLeaf {
            subject: leaf.subject,
        });
    }
    check_validity(&leaf, at, EXPIRED_LEAF_FIX)?;
    // A pinned certificate trusts exactly itself; the handshake proved its key.
    if pinned
        .iter()
        .any(|(der, _)| der.as_ref() == leaf_der.as_ref())
    {
        if !leaf.extended_key_usages.is_empty() && !leaf.extended_key_usages.contains(&usage.eku())
        {
            return Err(TrustError::MissingEku {
                subject: leaf.subject.clone(),
                usage: usage.name(),
                present: leaf.eku_list(),
            });
        }
        return Ok(());
    }
    if anchors.is_empty() {
        return Err(TrustError::NotPinned {
            subject: leaf.subject,
            pinned: join(
                &pinned
                    .into_iter()
                    .map(|(_, i)| i.subject)
                    .collect::<Vec<_>>(),
            ),
        });
    }

    let anchors = anchors
        .into_iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map_err(|e| TrustError::BadCertificate(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let end_entity =
        EndEntityCert::try_from(leaf_der).map_err(|e| TrustError::BadCertificate(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let key_usage = match usage {
        Usage::ServerAuth => KeyUsage::server_auth(),
        Usage::ClientAuth => KeyUsage::client_auth(),
    };
    let intermediates: Vec<CertificateDer<'_>> = chain[1..].to_vec();
    let verified = end_entity.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        time,
        key_usage,
        None,
        None,
    );
    match verified {
        Ok(path) => {
            // webpki does not check trust anchors' own validity; an expired CA is a
            // problem operators need to hear about.
            let anchor_subject = path.anchor().subject.as_ref().to_vec();
            let anchor_ders = trusted
                .iter()
                .filter(|der| CertInfo::from_der(der).is_ok_and(|info| info.is_ca));
            for (der, info) in anchor_ders.zip(&anchors_info) {
                if webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.subject.as_ref() == anchor_subject.as_slice())
                    .unwrap_or(false)
                {
                    check_validity(info, at, EXPIRED_CA_FIX)?;
                }
            }
            Ok(())
        }
        Err(e) => Err(explain(e, &leaf, chain, &anchors_info, usage, at)),
    }
}

fn check_validity(info: &CertInfo, at: SystemTime, fix: &'static str) -> Result<(), TrustError> {
    let now = format_time(OffsetDateTime::from(at));
    match info.validity_at(at) {
        Validity::Valid => Ok(()),
        Validity::NotYetValid => Err(TrustError::NotYetValid {
            subject: info.subject.clone(),
            not_before: format_time(info.not_before),
            now,
        }),
        Validity::Expired => Err(TrustError::Expired {
            subject: info.subject.clone(),
            not_after: format_time(info.not_after),
            now,
            fix,
        }),
    }
}

fn explain(
    error: webpki::Error,
    leaf: &CertInfo,
    chain: &[CertificateDer<'_>],
    anchors: &[CertInfo],
    usage: Usage,
    at: SystemTime,
) -> TrustError {
    use webpki::Error as E;
    match error {
        E::UnknownIssuer => TrustError::UntrustedIssuer {
            subject: leaf.subject.clone(),
            issuer: leaf.issuer.clone(),
            trusted: join(
                &anchors
                    .iter()
                    .map(|a| a.subject.clone())
                    .collect::<Vec<_>>(),
            ),
            fix: usage.untrusted_fix(),
        },
        E::CaUsedAsEndEntity => TrustError::CaAsLeaf {
            subject: leaf.subject.clone(),
        },
        E::RequiredEkuNotFoundContext(_) => TrustError::MissingEku {
            subject: leaf.subject.clone(),
            usage: usage.name(),
            present: leaf.eku_list(),
        },
        E::CertExpired { .. } | E::CertNotValidYet { .. } => {
            // The leaf was checked already, so an intermediate is out of its window.
            for der in &chain[1..] {
                if let Ok(info) = CertInfo::from_der(der)
                    && let Err(e) = check_validity(&info, at, EXPIRED_CA_FIX)
                {
                    return e;
                }
            }
            TrustError::Chain(format!("{error:?}"))
        }
        E::InvalidSignatureForPublicKey => TrustError::UntrustedIssuer {
            subject: leaf.subject.clone(),
            issuer: format!("{} (a different key with the same name)", leaf.issuer),
            trusted: join(
                &anchors
                    .iter()
                    .map(|a| a.subject.clone())
                    .collect::<Vec<_>>(),
            ),
            fix: usage.untrusted_fix(),
        },
        other => TrustError::Chain(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::issue::{self, CaOptions, LeafOptions, Window};
    use std::time::Duration;

    fn der(i: &issue::Issued) -> CertificateDer<'static> {
        i.cert_der().unwrap()
    }

    /// OpenChoreo's chart registers the agent's self-signed certificate itself: exactly
    /// that certificate is accepted, and nothing it could sign.
    #[test]
    fn a_pinned_self_signed_certificate_trusts_exactly_itself() {
        let now = SystemTime::now();
        let pinned = issue::self_signed_leaf(&LeafOptions::client("default")).unwrap();
        let trusted = [der(&pinned)];
        assert_eq!(
            verify_chain(&[der(&pinned)], &trusted, Usage::ClientAuth, now).ok(),
            Some(())
        );
        // Another self-signed certificate of the same name: refused.
        let impostor = issue::self_signed_leaf(&LeafOptions::client("default")).unwrap();
        let err = verify_chain(&[der(&impostor)], &trusted, Usage::ClientAuth, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate O=OpenChoreo, CN=default is not the pinned self-signed certificate the plane \
             registered (O=OpenChoreo, CN=default); register the agent's current certificate (ca.crt of \
             Secret cluster-agent-tls), or let its CA rollover carry the renewal"
        );
        // A certificate the pinned key signed: the pin is no anchor, so refused too.
        let minted = issue::issue_leaf(&pinned, &LeafOptions::client("other")).unwrap();
        assert!(matches!(
            verify_chain(&[der(&minted)], &trusted, Usage::ClientAuth, now),
            Err(TrustError::NotPinned { .. })
        ));
        // Beside a CA, the CA still verifies its own leaves.
        let (ca, leaf) = agent();
        let both = [der(&pinned), der(&ca)];
        assert_eq!(
            verify_chain(&[der(&leaf)], &both, Usage::ClientAuth, now).ok(),
            Some(())
        );
        // A leaf some CA issued is no pin: the documented tls.crt mistake stays refused.
        assert!(matches!(
            verify_chain(&[der(&leaf)], &[der(&leaf)], Usage::ClientAuth, now),
            Err(TrustError::LeafAsCa { .. })
        ));
        // And a pin is no server CA.
        assert!(matches!(
            verify_chain(&[der(&pinned)], &trusted, Usage::ServerAuth, now),
            Err(TrustError::LeafAsCa { .. })
        ));
    }

    fn agent() -> (issue::Issued, issue::Issued) {
        let ca = issue::new_ca(&CaOptions::agent("p1")).unwrap();
        let leaf = issue::issue_leaf(&ca, &LeafOptions::client("agent p1")).unwrap();
        (ca, leaf)
    }

    #[test]
    fn client_chain_verifies_against_its_ca() {
        let (ca, leaf) = agent();
        verify_chain(
            &[der(&leaf)],
            &[der(&ca)],
            Usage::ClientAuth,
            SystemTime::now(),
        )
        .unwrap();
    }

    #[test]
    fn wrong_ca_is_untrusted_with_the_fix() {
        let (_, leaf) = agent();
        let other = issue::new_ca(&CaOptions::agent("other")).unwrap();
        let err = verify_chain(
            &[der(&leaf)],
            &[der(&other)],
            Usage::ClientAuth,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::UntrustedIssuer { .. }), "{err}");
        assert!(err.to_string().contains("cluster-agent-tls"), "{err}");
    }

    #[test]
    fn leaf_registered_as_ca_is_named() {
        let (_, leaf) = agent();
        let err = verify_chain(
            &[der(&leaf)],
            &[der(&leaf)],
            Usage::ClientAuth,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::LeafAsCa { .. }), "{err}");
        assert!(err.to_string().contains("register ca.crt"), "{err}");
    }

    #[test]
    fn server_cert_used_as_client_lacks_eku() {
        let ca = issue::new_ca(&CaOptions::gateway()).unwrap();
        let server =
            issue::issue_leaf(&ca, &LeafOptions::server("gw", vec!["gw".into()], vec![])).unwrap();
        let err = verify_chain(
            &[der(&server)],
            &[der(&ca)],
            Usage::ClientAuth,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                TrustError::MissingEku {
                    usage: "clientAuth",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn expired_and_future_leaves() {
        let ca = issue::new_ca(&CaOptions::agent("p")).unwrap();
        let now = SystemTime::now();
        let old = issue::issue_leaf(
            &ca,
            &LeafOptions::client("old").window(Window {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            }),
        )
        .unwrap();
        let err = verify_chain(&[der(&old)], &[der(&ca)], Usage::ClientAuth, now).unwrap_err();
        assert!(matches!(err, TrustError::Expired { .. }), "{err}");
        let future = issue::issue_leaf(
            &ca,
            &LeafOptions::client("future").window(Window {
                not_before: now + Duration::from_secs(3600),
                not_after: now + Duration::from_secs(7200),
            }),
        )
        .unwrap();
        let err = verify_chain(&[der(&future)], &[der(&ca)], Usage::ClientAuth, now).unwrap_err();
        assert!(matches!(err, TrustError::NotYetValid { .. }), "{err}");
    }

    #[test]
    fn expired_ca_is_reported() {
        let now = SystemTime::now();
        let ca = issue::new_ca(&CaOptions::agent("p").window(Window {
            not_before: now - Duration::from_secs(7200),
            not_after: now + Duration::from_secs(60),
        }))
        .unwrap();
        let leaf = issue::issue_leaf(
            &ca,
            &LeafOptions::client("a").valid_for(Duration::from_secs(86400)),
        )
        .unwrap();
        let later = now + Duration::from_secs(120);
        let err = verify_chain(&[der(&leaf)], &[der(&ca)], Usage::ClientAuth, later).unwrap_err();
        assert!(matches!(err, TrustError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("new CA"), "{err}");
    }

    #[test]
    fn ca_presented_as_leaf() {
        let (ca, _) = agent();
        let err = verify_chain(
            &[der(&ca)],
            &[der(&ca)],
            Usage::ClientAuth,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::CaAsLeaf { .. }), "{err}");
    }

    #[test]
    fn same_name_different_key_is_untrusted() {
        let (_, leaf) = agent();
        let impostor = issue::new_ca(&CaOptions::agent("p1")).unwrap();
        let err = verify_chain(
            &[der(&leaf)],
            &[der(&impostor)],
            Usage::ClientAuth,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::UntrustedIssuer { .. }), "{err}");
    }
}
