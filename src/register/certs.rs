//! `register certs`: issue the gateway's and agents' certificates on hosts without
//! cert-manager, named like cert-manager's Secrets so the same mounts work.

use std::net::IpAddr;
use std::path::Path;

use super::args::{AgentCertsArgs, GatewayCertsArgs};
use crate::trust::inspect::format_time;
use crate::trust::issue::{self, CaOptions, Issued, LeafOptions, Window};
use crate::trust::{CertInfo, TrustError};

use super::Outcome;

pub fn gateway(args: &GatewayCertsArgs) -> Outcome {
    let mut dns_names = Vec::new();
    let mut ip_addresses: Vec<IpAddr> = args.ip_addresses.clone();
    for name in &args.dns_names {
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => {
                eprintln!(
                    "note: --dns-name {name} is an IP address; X.509 ignores IPs in DNS SANs, so it goes into the IP SANs"
                );
                ip_addresses.push(ip);
            }
            Err(_) => dns_names.push(name.clone()),
        }
    }
    if dns_names.is_empty() && ip_addresses.is_empty() {
        eprintln!(
            "error: give at least one --dns-name or --ip-address: the names agents put in --server-url \
             (e.g. --dns-name cluster-gateway.openchoreo-control-plane.svc --dns-name gateway.example.com \
             --ip-address 203.0.113.10)"
        );
        return Outcome::Usage;
    }
    ip_addresses.dedup();
    let ca_dir = args.ca_dir.as_deref().unwrap_or(&args.out);
    let ca = match existing_or_new_ca(ca_dir, args.ca_dir.is_some(), || {
        CaOptions::gateway().window(Window::days(args.ca_days))
    }) {
        Ok(ca) => ca,
        Err(outcome) => return outcome,
    };
    let opts = LeafOptions::server("cluster-gateway", dns_names, ip_addresses)
        .window(Window::days(args.days));
    let next = format!(
        "serve tls.crt/tls.key with `planelink gateway --server-cert {0}/tls.crt --server-key {0}/tls.key`;\n\
         agents trust ca.crt (`--server-ca {0}/ca.crt`). Keep ca.key private: it signs new gateway certificates.",
        args.out.display()
    );
    issue_and_write(&args.out, &ca, &opts, &next)
}

pub fn agent(args: &AgentCertsArgs) -> Outcome {
    if args.plane_id.trim().is_empty() {
        eprintln!("error: --plane-id must name the plane (its CR's spec.planeID)");
        return Outcome::Usage;
    }
    let ca = match existing_or_new_ca(&args.out, false, || {
        CaOptions::agent(&args.plane_id).window(Window::days(args.ca_days))
    }) {
        Ok(ca) => ca,
        Err(outcome) => return outcome,
    };
    let opts = LeafOptions::client(&format!("cluster-agent {}", args.plane_id))
        .window(Window::days(args.days));
    let next = format!(
        "register ca.crt (not tls.crt) as the plane's clientCA in the control plane;\n\
         the agent presents tls.crt/tls.key (`--client-cert {0}/tls.crt --client-key {0}/tls.key --plane-id {1}`).",
        args.out.display(),
        args.plane_id
    );
    issue_and_write(&args.out, &ca, &opts, &next)
}

/// Issues the leaf, writes the bundle into `out`, and prints what was done and what comes next.
fn issue_and_write(out: &Path, ca: &CaSource, opts: &LeafOptions, next: &str) -> Outcome {
    let result = issue::issue_leaf(&ca.issued, opts).and_then(|leaf| {
        issue::write_bundle(out, &ca.issued, ca.write_key, &leaf).map(|w| (leaf, w))
    });
    match result {
        Ok((leaf, written)) => {
            report(ca, &leaf, &written);
            println!("\nnext: {next}");
            Outcome::Ok
        }
        Err(e) => fail(e),
    }
}

struct CaSource {
    issued: Issued,
    reused: bool,
    /// Whether ca.key goes into --out (a CA from another --ca-dir stays where it is).
    write_key: bool,
}

fn existing_or_new_ca(
    dir: &Path,
    must_exist: bool,
    options: impl FnOnce() -> CaOptions,
) -> Result<CaSource, Outcome> {
    let has_cert = dir.join("ca.crt").exists();
    let has_key = dir.join("ca.key").exists();
    match (has_cert, has_key) {
        (true, true) => match Issued::load_ca(dir) {
            Ok(issued) => Ok(CaSource {
                issued,
                reused: true,
                write_key: !must_exist,
            }),
            Err(e) => Err(fail(e)),
        },
        (true, false) | (false, true) => {
            let missing = if has_cert { "ca.key" } else { "ca.crt" };
            eprintln!(
                "error: {} holds half a CA ({missing} is missing); restore it, or remove the other file to create a new CA",
                dir.display()
            );
            Err(Outcome::Usage)
        }
        (false, false) if must_exist => {
            eprintln!(
                "error: --ca-dir {} holds no CA (ca.crt and ca.key); point it at the directory `register certs` wrote",
                dir.display()
            );
            Err(Outcome::Usage)
        }
        (false, false) => match issue::new_ca(&options()) {
            Ok(issued) => Ok(CaSource {
                issued,
                reused: false,
                write_key: true,
            }),
            Err(e) => Err(fail(e)),
        },
    }
}

fn report(ca: &CaSource, leaf: &Issued, written: &[std::path::PathBuf]) {
    let describe = |issued: &Issued| issued.cert_der().and_then(|d| CertInfo::from_der(&d));
    if let (Ok(ca_info), Ok(leaf_info)) = (describe(&ca.issued), describe(leaf)) {
        let how = if ca.reused { "reused" } else { "created" };
        println!(
            "CA        {} ({how}, valid until {})",
            ca_info.subject,
            format_time(ca_info.not_after)
        );
        println!("          sha256 {}", ca_info.sha256_fingerprint);
        println!(
            "leaf      {} (valid until {})",
            leaf_info.subject,
            format_time(leaf_info.not_after)
        );
        println!(
            "          usage {}; SANs: {}",
            leaf_info.eku_list(),
            leaf_info.san_list()
        );
    }
    for path in written {
        println!("wrote     {}", path.display());
    }
}

fn fail(e: TrustError) -> Outcome {
    eprintln!("error: {e}");
    Outcome::Failed
}
