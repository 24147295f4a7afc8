//! Verdicts: is this file right for the use an operator is about to put it to?
//! Each finding says what is wrong and the fix, in the words of the reference
//! troubleshooting guide.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use super::diagnose;
use super::inspect::format_time;
use super::pem::PemContents;
use super::{CertInfo, Eku, PrivateKey, TrustError, Validity};

/// Warn when a certificate has less than this left.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// The uses a certificate file can be meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The CA registered in a plane CR (`clientCA`) to verify agents.
    ClientCa,
    /// The CA an agent trusts to verify the gateway (`--server-ca`).
    ServerCa,
    /// An agent's client certificate (`--client-cert`).
    ClientCert,
    /// The gateway's serving certificate (`--server-cert`).
    ServerCert,
}

impl Purpose {
    pub fn describe(self) -> &'static str {
        match self {
            Purpose::ClientCa => "the client CA a plane CR registers to verify its agents",
            Purpose::ServerCa => "the server CA an agent trusts to verify the gateway",
            Purpose::ClientCert => "an agent's client certificate",
            Purpose::ServerCert => "the gateway's serving certificate",
        }
    }

    fn wants_ca(self) -> bool {
        matches!(self, Purpose::ClientCa | Purpose::ServerCa)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

/// What a file holds and whether it suits the purpose.
#[derive(Debug)]
pub struct Report {
    pub certificates: Vec<CertInfo>,
    pub private_key: Option<&'static str>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.findings.iter().all(|f| f.severity < Severity::Error)
    }

    fn push(&mut self, severity: Severity, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            message: message.into(),
        });
    }
}

/// Assesses parsed file contents for `purpose` (or just describes them) at time `at`.
pub fn assess(
    contents: &PemContents,
    purpose: Option<Purpose>,
    at: SystemTime,
) -> Result<Report, TrustError> {
    let certificates = contents
        .certificates
        .iter()
        .map(CertInfo::from_der)
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = Report {
        certificates,
        private_key: contents.private_keys.first().map(PrivateKey::format),
        findings: Vec::new(),
    };
    let Some(first) = report.certificates.first().cloned() else {
        let what = if report.private_key.is_some() {
            "a private key only"
        } else {
            "no certificate"
        };
        report.push(
            Severity::Error,
            format!("this file holds {what}; expected a certificate"),
        );
        return Ok(report);
    };

    for info in report.certificates.clone() {
        validity_findings(&mut report, &info, at);
    }

    match purpose {
        None => {
            let kind = if first.is_ca {
                "a CA certificate"
            } else {
                "a leaf certificate"
            };
            report.push(Severity::Info, format!("this is {kind}"));
        }
        Some(p) if p.wants_ca() => ca_findings(&mut report, &first, p),
        Some(p) => leaf_findings(&mut report, &first, &contents.certificates[0], contents, p),
    }
    if report
        .findings
        .iter()
        .all(|f| f.severity < Severity::Warning)
        && let Some(p) = purpose
    {
        report.push(Severity::Info, format!("suitable as {}", p.describe()));
    }
    Ok(report)
}

fn validity_findings(report: &mut Report, info: &CertInfo, at: SystemTime) {
    match info.validity_at(at) {
        Validity::NotYetValid => report.push(
            Severity::Error,
            format!(
                "{} is not valid before {}; check this host's clock, or wait",
                info.subject,
                format_time(info.not_before)
            ),
        ),
        Validity::Expired => report.push(
            Severity::Error,
            format!(
                "{} expired at {}; re-issue it (cert-manager: delete the Secret to force re-issuance; \
                 bare hosts: planelink register certs)",
                info.subject,
                format_time(info.not_after)
            ),
        ),
        Validity::Valid => {
            if info.validity_at(at + EXPIRY_WARNING) == Validity::Expired {
                report.push(
                    Severity::Warning,
                    format!("{} expires soon, at {}", info.subject, format_time(info.not_after)),
                );
            }
        }
    }
}

fn ca_findings(report: &mut Report, first: &CertInfo, purpose: Purpose) {
    if purpose == Purpose::ClientCa && first.is_pinnable() {
        let pinned = diagnose::pinned_certificate("this file", first);
        report.push(pinned.severity, pinned.sentence());
        return;
    }
    if !first.is_ca {
        let role = match purpose {
            Purpose::ClientCa => diagnose::Role::ClientCa,
            _ => diagnose::Role::GatewayCa,
        };
        report.push(Severity::Error, diagnose::leaf_fix(role, &first.issuer));
        return;
    }
    if !first.can_issue() {
        report.push(
            Severity::Error,
            format!(
                "{} is marked CA but its key usage lacks keyCertSign, so it cannot have signed anything; \
                 re-issue the CA with keyCertSign",
                first.subject
            ),
        );
    }
    if purpose == Purpose::ClientCa && first.extended_key_usages.contains(&Eku::ServerAuth) {
        report.push(
            Severity::Warning,
            "this CA carries the serverAuth usage: it may be the gateway's server CA registered by mistake; \
             the client CA is the agent's own ca.crt from Secret cluster-agent-tls",
        );
    }
    if report.private_key.is_some() {
        report.push(
            Severity::Warning,
            "this file also holds a private key; a CA file handed to another party should hold only the certificate",
        );
    }
    if report.certificates.len() > 1 {
        report.push(
            Severity::Info,
            format!(
                "a bundle of {} certificates; each is trusted",
                report.certificates.len()
            ),
        );
    }
}

fn leaf_findings(
    report: &mut Report,
    first: &CertInfo,
    first_der: &CertificateDer<'_>,
    contents: &PemContents,
    purpose: Purpose,
) {
    if first.is_ca {
        report.push(
            Severity::Error,
            "this is ca.crt, a CA; give tls.crt, the leaf certificate it issued",
        );
        return;
    }
    let eku = if purpose == Purpose::ClientCert {
        Eku::ClientAuth
    } else {
        Eku::ServerAuth
    };
    if !first.allows_eku(&eku) {
        report.push(
            Severity::Error,
            format!(
                "{} lacks the {eku} extended key usage (it has: {}); re-issue it with {eku}",
                first.subject,
                first.eku_list()
            ),
        );
    }
    if purpose == Purpose::ServerCert && first.dns_names.is_empty() && first.ip_addresses.is_empty()
    {
        report.push(
            Severity::Error,
            "no subject alternative names: agents cannot verify any host against it; \
             re-issue with the gateway's DNS names and IP addresses",
        );
    }
    if purpose == Purpose::ServerCert {
        let ips_in_dns: Vec<&String> = first
            .dns_names
            .iter()
            .filter(|d| d.parse::<std::net::IpAddr>().is_ok())
            .collect();
        for ip in ips_in_dns {
            report.push(
                Severity::Warning,
                format!(
                    "{ip} is listed as a DNS name; X.509 ignores IP addresses in DNS SANs, \
                     so agents dialing {ip} fail: put it in ipAddresses"
                ),
            );
        }
    }
    if let Some(key) = contents.private_keys.first() {
        match super::key_matches(first_der, key) {
            Ok(true) => report.push(
                Severity::Info,
                "the private key in this file matches the certificate",
            ),
            Ok(false) => report.push(
                Severity::Error,
                "the private key in this file does not belong to the certificate",
            ),
            Err(e) => report.push(
                Severity::Warning,
                format!("cannot compare key and certificate: {e}"),
            ),
        }
    }
}

/// The finding for a client CA that is in fact the gateway's own server CA, a
/// mistake the reference guide warns about: both are CAs, so nothing else tells.
pub fn gateway_ca_finding(
    client_ca: &[CertificateDer<'_>],
    gateway_ca: &[CertificateDer<'_>],
) -> Option<Finding> {
    let bundle = diagnose::Bundle {
        certificates: client_ca,
        origin: "this file",
    };
    diagnose::gateway_ca_in(bundle, diagnose::Role::ClientCa, gateway_ca).map(|mistake| Finding {
        severity: mistake.severity,
        message: mistake.fix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::issue::{self, CaOptions, LeafOptions};
    use crate::trust::pem::parse;

    fn report(pem: &str, purpose: Purpose) -> Report {
        assess(
            &parse(pem.as_bytes()).unwrap(),
            Some(purpose),
            SystemTime::now(),
        )
        .unwrap()
    }

    #[test]
    fn a_self_signed_agent_certificate_is_a_pinned_client_ca() {
        let pinned = issue::self_signed_leaf(&LeafOptions::client("default")).unwrap();
        let r = report(&pinned.cert_pem, Purpose::ClientCa);
        assert_eq!(errors(&r), "");
        let warning = &r.findings.last().unwrap();
        assert_eq!(warning.severity, Severity::Warning);
        assert!(
            warning.message.starts_with(
                "this file holds a pinned self-signed certificate (O=OpenChoreo, CN=default, until "
            ),
            "{}",
            warning.message
        );
        // As the gateway's server CA it is still no CA.
        let r = report(&pinned.cert_pem, Purpose::ServerCa);
        assert!(
            errors(&r).starts_with("this is tls.crt, the gateway's leaf certificate"),
            "{}",
            errors(&r)
        );
    }

    fn errors(r: &Report) -> String {
        r.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn agent_ca_suits_client_ca() {
        let ca = issue::new_ca(&CaOptions::agent("p")).unwrap();
        assert!(report(&ca.cert_pem, Purpose::ClientCa).is_ok());
    }

    #[test]
    fn leaf_as_client_ca_names_ca_crt() {
        let ca = issue::new_ca(&CaOptions::agent("p")).unwrap();
        let leaf = issue::issue_leaf(&ca, &LeafOptions::client("a")).unwrap();
        let r = report(&leaf.cert_pem, Purpose::ClientCa);
        assert!(!r.is_ok());
        assert!(
            errors(&r).contains("this is tls.crt, the leaf; register ca.crt"),
            "{}",
            errors(&r)
        );
    }

    #[test]
    fn server_cert_with_client_usage_is_wrong() {
        let ca = issue::new_ca(&CaOptions::agent("p")).unwrap();
        let leaf = issue::issue_leaf(&ca, &LeafOptions::client("a")).unwrap();
        let r = report(&leaf.cert_pem, Purpose::ServerCert);
        assert!(
            errors(&r).contains("lacks the serverAuth"),
            "{}",
            errors(&r)
        );
        assert!(report(&leaf.cert_pem, Purpose::ClientCert).is_ok());
    }

    #[test]
    fn gateway_ca_as_client_ca() {
        let gw = issue::new_ca(&CaOptions::gateway()).unwrap();
        let agent = issue::new_ca(&CaOptions::agent("p")).unwrap();
        let gw_der = vec![gw.cert_der().unwrap()];
        assert!(gateway_ca_finding(&gw_der, &gw_der).is_some());
        assert!(gateway_ca_finding(&[agent.cert_der().unwrap()], &gw_der).is_none());
    }

    #[test]
    fn mismatched_key_is_caught() {
        let ca = issue::new_ca(&CaOptions::agent("p")).unwrap();
        let a = issue::issue_leaf(&ca, &LeafOptions::client("a")).unwrap();
        let b = issue::issue_leaf(&ca, &LeafOptions::client("b")).unwrap();
        let good = format!("{}{}", a.cert_pem, a.key_pem());
        assert!(report(&good, Purpose::ClientCert).is_ok());
        let bad = format!("{}{}", a.cert_pem, b.key_pem());
        assert!(errors(&report(&bad, Purpose::ClientCert)).contains("does not belong"));
    }
}
