//! Does a certificate cover the host a client dials? Messages follow Go's x509
//! wording, which is what operators find in the reference troubleshooting guide.

use std::net::IpAddr;

use rustls_pki_types::{CertificateDer, DnsName, ServerName};
use webpki::EndEntityCert;

use super::{CertInfo, TrustError};

/// Checks `host` (a DNS name or an IP address, IPv6 with or without brackets)
/// against the certificate's SANs.
pub fn check_host(cert: &CertificateDer<'_>, host: &str) -> Result<(), TrustError> {
    let info = CertInfo::from_der(cert)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return check_ip(&info, ip);
    }
    let dns = DnsName::try_from(bare.to_string()).map_err(|_| TrustError::HostNotInSans {
        host: host.into(),
        valid_for: info.san_list(),
        fix: format!("{host:?} is not a valid DNS name"),
    })?;
    let end_entity =
        EndEntityCert::try_from(cert).map_err(|e| TrustError::BadCertificate(e.to_string()))?;
    match end_entity.verify_is_valid_for_subject_name(&ServerName::DnsName(dns)) {
        Ok(()) => Ok(()),
        Err(_) => Err(TrustError::HostNotInSans {
            host: host.into(),
            valid_for: info.san_list(),
            fix: format!(
                "add {host} to the gateway certificate's dnsNames (helm: clusterGateway.tls.dnsNames; \
                 bare hosts: planelink register certs gateway --dns-name {host}), or connect by a name it lists"
            ),
        }),
    }
}

fn check_ip(info: &CertInfo, ip: IpAddr) -> Result<(), TrustError> {
    if info.ip_addresses.contains(&ip) {
        return Ok(());
    }
    let in_dns = info
        .dns_names
        .iter()
        .any(|d| d.parse::<IpAddr>().ok() == Some(ip));
    let fix = if in_dns {
        format!(
            "{ip} is listed as a DNS name, and X.509 ignores IP addresses in DNS SANs: put it in the \
             certificate's ipAddresses (kubectl patch certificate cluster-gateway-tls --type merge \
             -p '{{\"spec\":{{\"ipAddresses\":[\"{ip}\"]}}}}'; bare hosts: planelink register certs gateway --ip-address {ip})"
        )
    } else {
        format!(
            "add {ip} to the certificate's ipAddresses (bare hosts: planelink register certs gateway \
             --ip-address {ip}), or connect by a DNS name it lists"
        )
    };
    if info.ip_addresses.is_empty() {
        Err(TrustError::NoIpSans {
            ip: ip.to_string(),
            fix,
        })
    } else {
        Err(TrustError::HostNotInSans {
            host: ip.to_string(),
            valid_for: info.san_list(),
            fix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::issue::{self, CaOptions, LeafOptions};

    fn server(dns: &[&str], ips: &[&str]) -> CertificateDer<'static> {
        let ca = issue::new_ca(&CaOptions::gateway()).unwrap();
        let opts = LeafOptions::server(
            "gw",
            dns.iter().map(|s| s.to_string()).collect(),
            ips.iter().map(|s| s.parse().unwrap()).collect(),
        );
        issue::issue_leaf(&ca, &opts).unwrap().cert_der().unwrap()
    }

    #[test]
    fn dns_names_and_wildcards() {
        let cert = server(
            &[
                "cluster-gateway.openchoreo-control-plane.svc",
                "*.example.com",
            ],
            &[],
        );
        check_host(&cert, "cluster-gateway.openchoreo-control-plane.svc").unwrap();
        check_host(&cert, "gw.example.com").unwrap();
        let err = check_host(&cert, "cluster-gateway.openchoreo.example.org").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "x509: certificate is valid for cluster-gateway.openchoreo-control-plane.svc, *.example.com, not cluster-gateway.openchoreo.example.org"
            ),
            "{err}"
        );
    }

    #[test]
    fn ip_needs_ip_sans() {
        let cert = server(&["gw.local"], &[]);
        let err = check_host(&cert, "10.0.0.5").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("x509: cannot validate certificate for 10.0.0.5 because it doesn't contain any IP SANs"),
            "{err}"
        );
        let cert = server(&[], &["127.0.0.1", "::1"]);
        check_host(&cert, "127.0.0.1").unwrap();
        check_host(&cert, "[::1]").unwrap();
        let err = check_host(&cert, "127.0.0.2").unwrap_err();
        assert!(
            err.to_string()
                .contains("valid for 127.0.0.1, ::1, not 127.0.0.2"),
            "{err}"
        );
    }

    #[test]
    fn ip_in_dns_sans_is_explained() {
        let cert = server(&["10.0.0.5"], &[]);
        let err = check_host(&cert, "10.0.0.5").unwrap_err();
        assert!(matches!(err, TrustError::NoIpSans { .. }));
        assert!(err.to_string().contains("listed as a DNS name"), "{err}");
    }
}
