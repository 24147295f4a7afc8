//! `register inspect`: what a file holds, and whether it suits the use at hand.

use std::io::Read as _;
use std::time::SystemTime;

use super::args::{InspectArgs, InspectPurpose};
use crate::trust::inspect::format_time;
use crate::trust::{self, CertInfo, Purpose, Report, Severity, TrustError};

use super::Outcome;

pub fn run(args: &InspectArgs) -> Outcome {
    let purpose = args.purpose.map(|p| match p {
        InspectPurpose::ClientCa => Purpose::ClientCa,
        InspectPurpose::ServerCa => Purpose::ServerCa,
        InspectPurpose::ClientCert => Purpose::ClientCert,
        InspectPurpose::ServerCert => Purpose::ServerCert,
    });
    let name = args.file.display().to_string();
    let bytes = if name == "-" {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
            eprintln!("error: cannot read standard input: {e}");
            return Outcome::Failed;
        }
        buf
    } else {
        match std::fs::read(&args.file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read {name}: {e}");
                return Outcome::Failed;
            }
        }
    };
    let gateway_ca = match &args.gateway_ca {
        Some(path) => match trust::load_certificates(path) {
            Ok(certs) => certs,
            Err(e) => {
                eprintln!("error: --gateway-ca: {e}");
                return Outcome::Usage;
            }
        },
        None => Vec::new(),
    };
    let report = trust::pem::parse(&bytes).and_then(|c| {
        let mut report = trust::assess(&c, purpose, SystemTime::now())?;
        if purpose == Some(Purpose::ClientCa)
            && let Some(finding) = trust::purpose::gateway_ca_finding(&c.certificates, &gateway_ca)
        {
            report.findings.retain(|f| f.severity != Severity::Info);
            report.findings.push(finding);
        }
        Ok(report)
    });
    match report {
        Ok(report) => {
            print_report(&name, &report, purpose);
            if report.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Failed
            }
        }
        Err(e) => {
            println!("{name}: {e}");
            if let Some(hint) = unparseable_hint(&e, purpose) {
                println!("  hint: {hint}");
            }
            println!("verdict: NOT USABLE");
            Outcome::Failed
        }
    }
}

/// Extra advice when the file is not a certificate at all.
pub(super) fn unparseable_hint(e: &TrustError, purpose: Option<Purpose>) -> Option<&'static str> {
    match (e.root(), purpose) {
        (
            TrustError::NotPem | TrustError::NoCertificate | TrustError::Empty,
            Some(Purpose::ServerCa) | None,
        ) => Some(
            "if this came from ConfigMap cluster-gateway-ca, the install Job may have written a placeholder \
             before the CA existed; take ca.crt from Secret cluster-gateway-ca in the control plane instead: \
             kubectl get secret cluster-gateway-ca -n openchoreo-control-plane -o jsonpath='{.data.ca\\.crt}' | base64 -d",
        ),
        (
            TrustError::NotPem | TrustError::NoCertificate | TrustError::Empty,
            Some(Purpose::ClientCa),
        ) => Some(
            "take ca.crt from Secret cluster-agent-tls in the remote plane: kubectl get secret cluster-agent-tls \
             -n openchoreo-data-plane -o jsonpath='{.data.ca\\.crt}' | base64 -d",
        ),
        _ => None,
    }
}

fn print_report(name: &str, report: &Report, purpose: Option<Purpose>) {
    let now = SystemTime::now();
    println!("{name}:");
    for (i, cert) in report.certificates.iter().enumerate() {
        print_certificate(i, cert, now);
    }
    if let Some(format) = report.private_key {
        println!("  private key ({format})");
    }
    if let Some(p) = purpose {
        println!("checked for: {}", p.describe());
    }
    for finding in &report.findings {
        let tag = match finding.severity {
            Severity::Info => "  ok:     ",
            Severity::Warning => "  warning:",
            Severity::Error => "  ERROR:  ",
        };
        println!("{tag} {}", finding.message);
    }
    let verdict = match (report.is_ok(), purpose) {
        (true, Some(_)) => "OK",
        (true, None) => "OK (give --for to check it for a use)",
        (false, _) => "NOT USABLE",
    };
    println!("verdict: {verdict}");
}

fn print_certificate(index: usize, c: &CertInfo, now: SystemTime) {
    let kind = if c.is_ca {
        match c.path_len {
            Some(n) => format!("CA (pathlen {n})"),
            None => "CA".into(),
        }
    } else {
        "leaf".into()
    };
    let state = match c.validity_at(now) {
        trust::Validity::Valid => "valid",
        trust::Validity::Expired => "EXPIRED",
        trust::Validity::NotYetValid => "NOT YET VALID",
    };
    println!(
        "  certificate {}: {kind}{}",
        index + 1,
        if c.self_signed { ", self-signed" } else { "" }
    );
    println!("    subject      {}", c.subject);
    println!("    issuer       {}", c.issuer);
    println!("    serial       {}", c.serial);
    println!(
        "    validity     {} .. {} ({state})",
        format_time(c.not_before),
        format_time(c.not_after)
    );
    println!("    key          {}", c.public_key_algorithm);
    if c.key_usage_present {
        println!("    key usage    {}", c.key_usage.join(", "));
    }
    println!("    ext. usage   {}", c.eku_list());
    if !c.dns_names.is_empty() {
        println!("    DNS SANs     {}", c.dns_names.join(", "));
    }
    if !c.ip_addresses.is_empty() {
        let ips: Vec<String> = c.ip_addresses.iter().map(|i| i.to_string()).collect();
        println!("    IP SANs      {}", ips.join(", "));
    }
    println!("    sha256       {}", c.sha256_fingerprint);
}
