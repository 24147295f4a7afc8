//! The one trust diagnosis: the certificate bundles of a plane's trust exchange, each in
//! the role it plays, in; findings (what, how bad, the fix) out. The controller, the
//! gateway's registry, `register`, `register inspect` and `check` all render these
//! findings, so each documented mistake is recognised, and worded, in this one place.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::inspect::format_time;
use super::purpose::Severity;
use super::{CertInfo, Usage, Validity, verify_chain};

/// The role a bundle plays in the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The CA a plane CR registers (`clientCA`), or is about to register, to verify its
    /// agents.
    ClientCa,
    /// `ca.crt` of the agent's Secret `cluster-agent-tls` in the remote plane: the CA
    /// that issued the agent's certificate.
    AgentSecretCa,
    /// The CA that signs the gateway's serving certificate (Secret `cluster-gateway-ca`,
    /// or the file an agent trusts as `--server-ca`).
    GatewayCa,
}

/// What a finding is about; the controller maps these to its reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// A CA role holds a certificate that cannot issue (a leaf issued by another).
    CaIsLeaf,
    /// A client CA role holds a self-signed end-entity certificate: pinned, accepted for
    /// the agent that presents exactly it (OpenChoreo's charts issue agents so).
    PinnedSelfSigned,
    /// A client CA role holds the gateway's own CA.
    CaIsGatewayCa,
    /// Every CA of a client CA bundle has expired.
    CaExpired,
    /// The agent's CA role holds a CA of its own (the expected case).
    AgentCaOwn,
    /// The agent's certificate does not verify against the CA its own Secret holds.
    AgentCertNotFromItsCa,
    /// The plane's client CA verifies the agent's certificate (the expected case).
    ClientCaTrustsAgent,
    /// The plane's client CA does not verify the agent's certificate.
    ClientCaDistrustsAgent,
    /// A published copy of the gateway CA is the same as the gateway's.
    PublishedSame,
    /// A published copy holds the gateway's CA and more: a rollover's overlap.
    PublishedOverlap,
    /// A published copy is another CA than the gateway's.
    PublishedDiffers,
    /// A published copy holds no certificate: a placeholder.
    PublishedPlaceholder,
}

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: Code,
    pub severity: Severity,
    /// What was found, naming where (the bundle's origin).
    pub message: String,
    /// What to do; empty for a pass.
    pub fix: String,
}

impl Finding {
    fn new(code: Code, severity: Severity, message: String, fix: impl Into<String>) -> Finding {
        Finding {
            code,
            severity,
            message,
            fix: fix.into(),
        }
    }

    fn pass(code: Code, message: String) -> Finding {
        Finding::new(code, Severity::Info, message, "")
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Message and fix in one line, for renderers with one line to give.
    pub fn sentence(&self) -> String {
        if self.fix.is_empty() {
            self.message.clone()
        } else {
            format!("{}; {}", self.message, self.fix)
        }
    }
}

/// A bundle and where it was read, as messages name it ("ca.crt of Secret ns/name").
#[derive(Debug, Clone, Copy)]
pub struct Bundle<'a> {
    pub certificates: &'a [CertificateDer<'a>],
    pub origin: &'a str,
}

/// A copy of the gateway CA published for agents (ConfigMap `cluster-gateway-ca`): its
/// text as found (a placeholder is no PEM) and where.
#[derive(Debug, Clone, Copy)]
pub struct Published<'a> {
    pub certificates: Result<&'a [CertificateDer<'a>], &'a str>,
    pub origin: &'a str,
    /// How the renderer names the gateway CA it is compared with ("the Secret").
    pub compared_with: &'a str,
}

/// Checks `bundle` in `role`: a CA role must hold CAs only; a client CA must not be the
/// gateway's (`gateway_ca`, empty when unknown) and not be wholly expired at `at`. The
/// first mistake found ends the diagnosis: each one alone makes the bundle unusable.
pub fn ca_bundle(
    bundle: Bundle<'_>,
    role: Role,
    gateway_ca: &[CertificateDer<'_>],
    at: SystemTime,
) -> Vec<Finding> {
    let mistake = leaf(bundle, role)
        .or_else(|| gateway_ca_in(bundle, role, gateway_ca))
        .or_else(|| {
            (role == Role::ClientCa)
                .then(|| expired(bundle, at))
                .flatten()
        });
    if let Some(mistake) = mistake {
        return vec![mistake];
    }
    match (pinned(bundle, role), role) {
        (Some(pinned), _) => vec![pinned],
        (None, Role::AgentSecretCa) => vec![Finding::pass(
            Code::AgentCaOwn,
            format!("{} is a CA of the agent's own", bundle.origin),
        )],
        (None, _) => Vec::new(),
    }
}

/// A self-signed end-entity certificate in a role that accepts one pinned (the agent's
/// client CA and its own Secret's `ca.crt`): what it is, and what its renewal needs.
pub fn pinned(bundle: Bundle<'_>, role: Role) -> Option<Finding> {
    if role == Role::GatewayCa {
        return None;
    }
    let pinned = infos(bundle).into_iter().find(CertInfo::is_pinnable)?;
    Some(pinned_certificate(bundle.origin, &pinned))
}

/// The warning for `certificate`, a pinned self-signed certificate found in `origin`.
pub fn pinned_certificate(origin: &str, certificate: &CertInfo) -> Finding {
    Finding::new(
        Code::PinnedSelfSigned,
        Severity::Warning,
        format!(
            "{origin} holds a pinned self-signed certificate ({}, until {}): only the agent that \
             presents exactly it, and proves its key, is accepted",
            certificate.subject,
            format_time(certificate.not_after)
        ),
        "its renewal replaces it (cert-manager, under OpenChoreo's chart: on day 75 of 90), and \
         the plane pins it by value: annotate the plane planelink.dev/ca-rotation=agent so that \
         the agent carries the renewal over, or run planelink register rotate after each one",
    )
}

/// A certificate of `bundle` that cannot issue, where `role` wants a CA (a pinned
/// self-signed one aside, where the role takes it).
pub fn leaf(bundle: Bundle<'_>, role: Role) -> Option<Finding> {
    let pinning = role != Role::GatewayCa;
    let leaf = infos(bundle)
        .into_iter()
        .find(|i| !(i.can_issue() || pinning && i.is_pinnable()))?;
    Some(Finding::new(
        Code::CaIsLeaf,
        Severity::Error,
        format!(
            "{} holds a leaf certificate ({}), not a CA",
            bundle.origin, leaf.subject
        ),
        leaf_fix(role, &leaf.issuer),
    ))
}

/// The gateway's own CA found in `bundle`, where `role` wants the agent's CA: both are
/// CAs, so nothing but the comparison tells.
pub fn gateway_ca_in(
    bundle: Bundle<'_>,
    role: Role,
    gateway_ca: &[CertificateDer<'_>],
) -> Option<Finding> {
    if role == Role::GatewayCa {
        return None;
    }
    let same = bundle
        .certificates
        .iter()
        .find(|c| gateway_ca.iter().any(|g| g.as_ref() == c.as_ref()))?;
    let subject = CertInfo::from_der(same)
        .map(|i| i.subject)
        .unwrap_or_default();
    let origin = bundle.origin;
    let (message, fix) = match role {
        Role::AgentSecretCa => (
            format!(
                "{origin} is the control plane's gateway CA ({subject}), not the agent's own client CA"
            ),
            "install the remote plane with its own agent CA (clusterAgent.tls.generateCerts=true, \
             caSecretName=\"\")",
        ),
        _ => (
            format!(
                "{origin} is the gateway's own server CA ({subject}), not the agent's client CA"
            ),
            "this is the gateway's server CA (Secret cluster-gateway-ca) registered by mistake; \
             register ca.crt of Secret cluster-agent-tls from the remote plane",
        ),
    };
    Some(Finding::new(
        Code::CaIsGatewayCa,
        Severity::Error,
        message,
        fix,
    ))
}

/// Every CA of `bundle` expired at `at`: no agent can verify against it any more.
pub fn expired(bundle: Bundle<'_>, at: SystemTime) -> Option<Finding> {
    let infos = infos(bundle);
    let all_expired = infos.iter().all(|i| i.validity_at(at) == Validity::Expired);
    let latest = infos.iter().map(|i| i.not_after).max()?;
    all_expired.then(|| {
        Finding::new(
            Code::CaExpired,
            Severity::Error,
            format!("{} expired on {}", bundle.origin, format_time(latest)),
            "the agent's CA was renewed: register its current ca.crt",
        )
    })
}

fn infos(bundle: Bundle<'_>) -> Vec<CertInfo> {
    bundle
        .certificates
        .iter()
        .filter_map(|c| CertInfo::from_der(c).ok())
        .collect()
}

/// What to do about a leaf where `role` wants a CA; `issuer` names the CA that issued it.
pub fn leaf_fix(role: Role, issuer: &str) -> String {
    match role {
        Role::ClientCa => format!(
            "this is tls.crt, the leaf; register ca.crt, the CA that issued it ({issuer}), from \
             Secret cluster-agent-tls in the remote plane"
        ),
        Role::AgentSecretCa => {
            "issue the agent's certificate from a CA and keep that CA in ca.crt \
             (otherwise the gateway cannot build a trust chain: websocket: bad handshake)"
                .into()
        }
        Role::GatewayCa => format!(
            "this is tls.crt, the gateway's leaf certificate; trust ca.crt, the CA that issued it \
             ({issuer}), from Secret cluster-gateway-ca in the control plane"
        ),
    }
}

/// The agent's Secret (`cluster-agent-tls`, named by `origin`): its `ca.crt` (`ca`) is a
/// CA of the agent's own, and its `tls.crt` (`cert`, when there is one) was issued by it
/// for client authentication.
pub fn agent_secret(
    origin: &str,
    ca: &[CertificateDer<'_>],
    cert: Option<&[CertificateDer<'_>]>,
    gateway_ca: &[CertificateDer<'_>],
    at: SystemTime,
) -> Vec<Finding> {
    let ca_crt = format!("ca.crt of {origin}");
    let own_ca = Bundle {
        certificates: ca,
        origin: &ca_crt,
    };
    let mut findings = ca_bundle(own_ca, Role::AgentSecretCa, gateway_ca, at);
    if findings.iter().any(Finding::is_error) {
        return findings;
    }
    if let Some(cert) = cert {
        let tls_crt = format!("tls.crt of {origin}");
        let cert = Bundle {
            certificates: cert,
            origin: &tls_crt,
        };
        let its_ca = Bundle {
            certificates: ca,
            origin: "its ca.crt",
        };
        findings.extend(issued_by_own_ca(cert, its_ca, at));
    }
    findings
}

/// The agent's certificate (`cert`, leaf first) against the CA of its own Secret
/// (`own_ca`): an error when the CA did not issue it for client authentication.
pub fn issued_by_own_ca(cert: Bundle<'_>, own_ca: Bundle<'_>, at: SystemTime) -> Option<Finding> {
    let e = verify_chain(
        cert.certificates,
        own_ca.certificates,
        Usage::ClientAuth,
        at,
    )
    .err()?;
    Some(Finding::new(
        Code::AgentCertNotFromItsCa,
        Severity::Error,
        format!(
            "{} does not verify against {} as a client certificate: {e}",
            cert.origin, own_ca.origin
        ),
        format!(
            "reissue the agent's certificate from the CA in {}",
            own_ca.origin
        ),
    ))
}

/// Whether the plane's registered client CA (`client_ca`) verifies the agent's
/// certificate; the fix names the agent's own CA (`own_ca`) to register instead.
pub fn client_ca_trusts_agent(
    cert: Bundle<'_>,
    client_ca: Bundle<'_>,
    own_ca: Bundle<'_>,
    at: SystemTime,
) -> Finding {
    match verify_chain(
        cert.certificates,
        client_ca.certificates,
        Usage::ClientAuth,
        at,
    ) {
        Ok(()) => Finding::pass(
            Code::ClientCaTrustsAgent,
            format!(
                "{} trusts the agent's certificate ({})",
                client_ca.origin, cert.origin
            ),
        ),
        Err(_) => Finding::new(
            Code::ClientCaDistrustsAgent,
            Severity::Error,
            format!(
                "{} does not trust the agent's certificate ({}): another CA is registered",
                client_ca.origin, cert.origin
            ),
            format!("register {} as the plane's clientCA", own_ca.origin),
        ),
    }
}

/// A published copy of the gateway CA against the gateway's own (`gateway_ca`, not
/// empty): the same, the same and more (a rollover's overlap, in which agents trust the
/// old and the new CA), another CA, or a placeholder.
pub fn published_gateway_ca(
    published: Published<'_>,
    gateway_ca: &[CertificateDer<'_>],
) -> Finding {
    let origin = published.origin;
    let with = published.compared_with;
    match published.certificates {
        Err(e) => Finding::new(
            Code::PublishedPlaceholder,
            Severity::Error,
            format!(
                "{origin} holds no CA ({e}): a placeholder, so agents cannot verify the gateway"
            ),
            "",
        ),
        Ok(certs) if certs == gateway_ca => {
            Finding::pass(Code::PublishedSame, format!("{origin} matches {with}"))
        }
        Ok(certs)
            if certs.len() > gateway_ca.len() && gateway_ca.iter().all(|g| certs.contains(g)) =>
        {
            Finding::pass(
                Code::PublishedOverlap,
                format!(
                    "{origin} holds {with} and {} more (a CA rollover's overlap)",
                    certs.len() - gateway_ca.len()
                ),
            )
        }
        Ok(_) => Finding::new(
            Code::PublishedDiffers,
            Severity::Error,
            format!("{origin} differs from {with}"),
            "",
        ),
    }
}

/// The first error of `findings`, if any.
pub fn first_error(findings: Vec<Finding>) -> Option<Finding> {
    findings.into_iter().find(Finding::is_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::issue::{self, CaOptions, LeafOptions, Window};

    fn bundle<'a>(certs: &'a [CertificateDer<'a>], origin: &'a str) -> Bundle<'a> {
        Bundle {
            certificates: certs,
            origin,
        }
    }

    fn codes(findings: &[Finding]) -> Vec<(Code, Severity)> {
        findings.iter().map(|f| (f.code, f.severity)).collect()
    }

    #[test]
    fn each_ca_mistake_in_each_role() {
        let now = SystemTime::now();
        let agent = issue::new_ca(&CaOptions::agent("p")).unwrap();
        let gateway = issue::new_ca(&CaOptions::gateway()).unwrap();
        let leaf = issue::issue_leaf(&agent, &LeafOptions::client("a")).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let expired = issue::new_ca(&CaOptions::agent("old").window(Window {
            not_before: now - 10 * day,
            not_after: now - day,
        }))
        .unwrap();
        let der = |i: &issue::Issued| vec![i.cert_der().unwrap()];
        let (agent, gateway, leaf, expired) =
            (der(&agent), der(&gateway), der(&leaf), der(&expired));
        let error = Severity::Error;
        for (certs, role, want) in [
            (&agent, Role::ClientCa, vec![]),
            (
                &agent,
                Role::AgentSecretCa,
                vec![(Code::AgentCaOwn, Severity::Info)],
            ),
            (&leaf, Role::ClientCa, vec![(Code::CaIsLeaf, error)]),
            (&leaf, Role::AgentSecretCa, vec![(Code::CaIsLeaf, error)]),
            (&leaf, Role::GatewayCa, vec![(Code::CaIsLeaf, error)]),
            (&gateway, Role::ClientCa, vec![(Code::CaIsGatewayCa, error)]),
            (
                &gateway,
                Role::AgentSecretCa,
                vec![(Code::CaIsGatewayCa, error)],
            ),
            (&gateway, Role::GatewayCa, vec![]),
            (&expired, Role::ClientCa, vec![(Code::CaExpired, error)]),
        ] {
            let findings = ca_bundle(bundle(certs, "clientCA"), role, &gateway, now);
            assert_eq!(codes(&findings), want, "{role:?}: {findings:?}");
        }
        let pinned = vec![
            issue::self_signed_leaf(&LeafOptions::client("default"))
                .unwrap()
                .cert_der()
                .unwrap(),
        ];
        for role in [Role::ClientCa, Role::AgentSecretCa] {
            let findings = ca_bundle(bundle(&pinned, "clientCA"), role, &gateway, now);
            assert_eq!(
                codes(&findings),
                vec![(Code::PinnedSelfSigned, Severity::Warning)],
                "{role:?}"
            );
            assert!(
                findings[0]
                    .message
                    .starts_with("clientCA holds a pinned self-signed certificate (O=OpenChoreo, CN=default, until "),
                "{}",
                findings[0].message
            );
        }
        assert_eq!(
            codes(&ca_bundle(
                bundle(&pinned, "ca.crt"),
                Role::GatewayCa,
                &[],
                now
            )),
            vec![(Code::CaIsLeaf, error)]
        );
        let leaf_as_client_ca = ca_bundle(bundle(&leaf, "clientCA"), Role::ClientCa, &[], now);
        assert!(
            leaf_as_client_ca[0]
                .sentence()
                .starts_with("clientCA holds a leaf certificate (O=planelink, CN=a), not a CA; this is tls.crt, the leaf; register ca.crt, the CA that issued it ("),
            "{}",
            leaf_as_client_ca[0].sentence()
        );
    }

    #[test]
    fn the_agent_certificate_against_both_cas() {
        let now = SystemTime::now();
        let own = issue::new_ca(&CaOptions::agent("p")).unwrap();
        let other = issue::new_ca(&CaOptions::agent("q")).unwrap();
        let cert = vec![
            issue::issue_leaf(&own, &LeafOptions::client("a"))
                .unwrap()
                .cert_der()
                .unwrap(),
        ];
        let (own, other) = (
            vec![own.cert_der().unwrap()],
            vec![other.cert_der().unwrap()],
        );
        let cert = bundle(&cert, "tls.crt");
        let from = |ca: &[CertificateDer<'_>]| {
            issued_by_own_ca(cert, bundle(ca, "ca.crt"), now).map(|f| (f.code, f.severity))
        };
        assert_eq!(from(&own), None);
        assert_eq!(
            from(&other),
            Some((Code::AgentCertNotFromItsCa, Severity::Error))
        );
        let trusted_by = |client: &[CertificateDer<'_>]| {
            client_ca_trusts_agent(
                cert,
                bundle(client, "clientCA"),
                bundle(&own, "ca.crt"),
                now,
            )
        };
        assert_eq!(trusted_by(&own).code, Code::ClientCaTrustsAgent);
        let distrusted = trusted_by(&other);
        assert_eq!(
            (distrusted.code, distrusted.sentence().as_str()),
            (
                Code::ClientCaDistrustsAgent,
                "clientCA does not trust the agent's certificate (tls.crt): another CA is \
                 registered; register ca.crt as the plane's clientCA"
            )
        );
    }

    #[test]
    fn published_copies_same_overlap_other_placeholder() {
        let a = issue::new_ca(&CaOptions::gateway())
            .unwrap()
            .cert_der()
            .unwrap();
        let b = issue::new_ca(&CaOptions::gateway())
            .unwrap()
            .cert_der()
            .unwrap();
        let current = vec![a.clone()];
        let published = |certs: Result<&[CertificateDer<'_>], &str>| {
            published_gateway_ca(
                Published {
                    certificates: certs,
                    origin: "ConfigMap x/cluster-gateway-ca",
                    compared_with: "the gateway CA",
                },
                &current,
            )
            .code
        };
        assert_eq!(published(Ok(std::slice::from_ref(&a))), Code::PublishedSame);
        assert_eq!(
            published(Ok(&[a.clone(), b.clone()])),
            Code::PublishedOverlap
        );
        assert_eq!(
            published(Ok(std::slice::from_ref(&b))),
            Code::PublishedDiffers
        );
        assert_eq!(published(Err("no certificate")), Code::PublishedPlaceholder);
    }
}
