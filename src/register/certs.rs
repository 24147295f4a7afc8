//! `register certs`: issue the gateway's and agents' certificates on hosts without
//! cert-manager, named like cert-manager's Secrets so the same mounts work.

use std::net::IpAddr;
use std::path::Path;

use super::args::{AgentCertsArgs, CallerCertsArgs, CertsDestination, GatewayCertsArgs};
use crate::trust::inspect::format_time;
use crate::trust::issue::{self, CaOptions, Issued, LeafOptions, Window};
use crate::trust::{CertInfo, TrustError};

use super::Outcome;

/// What one `register certs` command issues: a CA and one leaf signed by it.
pub(super) struct Request {
    pub ca: CaOptions,
    pub leaf: LeafOptions,
    /// The CA Secret's name when --ca-secret is not given (in the namespace of --secret).
    pub default_ca_secret: &'static str,
}

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
    let request = Request {
        ca: CaOptions::gateway().window(Window::days(args.ca_days)),
        leaf: LeafOptions::server("cluster-gateway", dns_names, ip_addresses)
            .window(Window::days(args.days)),
        default_ca_secret: "cluster-gateway-ca",
    };
    issue(&args.destination, args.ca_dir.as_deref(), &request, |out| {
        format!(
            "serve tls.crt/tls.key with `planelink gateway --server-cert {0}/tls.crt --server-key {0}/tls.key`;\n\
             agents trust ca.crt (`--server-ca {0}/ca.crt`). Keep ca.key private: it signs new gateway certificates.",
            out.display()
        )
    })
}

pub fn agent(args: &AgentCertsArgs) -> Outcome {
    if args.plane_id.trim().is_empty() {
        eprintln!("error: --plane-id must name the plane (its CR's spec.planeID)");
        return Outcome::Usage;
    }
    let request = Request {
        ca: CaOptions::agent(&args.plane_id).window(Window::days(args.ca_days)),
        leaf: LeafOptions::client(&format!("cluster-agent {}", args.plane_id))
            .window(Window::days(args.days)),
        default_ca_secret: "cluster-agent-ca",
    };
    issue(&args.destination, None, &request, |out| {
        format!(
            "register ca.crt (not tls.crt) as the plane's clientCA in the control plane;\n\
             the agent presents tls.crt/tls.key (`--client-cert {0}/tls.crt --client-key {0}/tls.key --plane-id {1}`).",
            out.display(),
            args.plane_id
        )
    })
}

pub fn caller(args: &CallerCertsArgs) -> Outcome {
    if args.common_name.trim().is_empty() {
        eprintln!("error: --common-name must name the caller (e.g. planelink-controller)");
        return Outcome::Usage;
    }
    let request = Request {
        ca: CaOptions::internal().window(Window::days(args.ca_days)),
        leaf: LeafOptions::client(&args.common_name).window(Window::days(args.days)),
        default_ca_secret: "cluster-gateway-internal-ca",
    };
    issue(&args.destination, None, &request, |out| {
        format!(
            "the gateway trusts ca.crt for callers (`--internal-client-ca-cert {0}/ca.crt`);\n\
             the caller presents tls.crt/tls.key (the controller: `--cluster-gateway-client-cert {0}/tls.crt \
             --cluster-gateway-client-key {0}/tls.key`).",
            out.display()
        )
    })
}

/// Issues into the destination: a Kubernetes Secret (kept while good), or files in a
/// directory (the CA from `ca_dir` when given, else reused from or created in it).
fn issue(
    destination: &CertsDestination,
    ca_dir: Option<&Path>,
    request: &Request,
    next: impl FnOnce(&Path) -> String,
) -> Outcome {
    let Some(out) = &destination.out else {
        return super::secrets::keep(destination, request);
    };
    let ca = match existing_or_new_ca(ca_dir.unwrap_or(out), ca_dir.is_some(), || {
        request.ca.clone()
    }) {
        Ok(ca) => ca,
        Err(outcome) => return outcome,
    };
    issue_and_write(out, &ca, &request.leaf, &next(out))
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
