//! `planelink check`: the troubleshooting guide and the controller's reasons, run in
//! order against the control plane and (with `--remote-context`) a remote plane. Each
//! check passes, warns or fails; every failure says how to fix it.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PostParams};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use serde_json::Value;

use super::facts::{self, GATEWAY_CA, Mode, PlaneFacts};
use super::{CheckArgs, CheckFormat, Style, default_remote_namespace};
use crate::planes::crd::{DEFAULT_PUBLIC_HTTP_PORT, DEFAULT_PUBLIC_HTTPS_PORT};
use crate::planes::{PlaneType, conditions, secret_data};
use crate::safe_text::{printable, shell_word};
use crate::trust::{self, CertInfo, ExpiryState, Severity, Usage, diagnose};

const GATEWAY_DEPLOYMENT: &str = "cluster-gateway";
const GATEWAY_TLS: &str = "cluster-gateway-tls";
const AGENT_DEPLOYMENT: &str = "cluster-agent";
const AGENT_TLS: &str = "cluster-agent-tls";
/// The ConfigMap of the control plane's install that names the host agents dial.
const GATEWAY_SETTINGS: &str = "cluster-gateway";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What the check is about: `control plane`, `DataPlane ns/name`, `remote plane`.
    pub section: String,
    pub verdict: Verdict,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The findings in the order they were made.
#[derive(Default)]
struct Findings {
    section: String,
    list: Vec<Finding>,
}

impl Findings {
    fn section(&mut self, name: impl Into<String>) {
        self.section = name.into();
    }

    fn add(&mut self, verdict: Verdict, message: impl Into<String>, fix: Option<String>) {
        self.list.push(Finding {
            section: self.section.clone(),
            verdict,
            message: message.into(),
            fix,
        });
    }

    fn pass(&mut self, message: impl Into<String>) {
        self.add(Verdict::Pass, message, None);
    }

    fn warn(&mut self, message: impl Into<String>, fix: impl Into<String>) {
        self.add(Verdict::Warn, message, Some(fix.into()));
    }

    fn fail(&mut self, message: impl Into<String>, fix: impl Into<String>) {
        self.add(Verdict::Fail, message, Some(fix.into()));
    }

    /// Renders a verdict of the trust diagnosis; `fix`, when given, replaces its own
    /// with this check's concrete command.
    fn diagnosed(&mut self, finding: diagnose::Finding, fix: Option<String>) {
        let verdict = match finding.severity {
            Severity::Info => Verdict::Pass,
            Severity::Warning => Verdict::Warn,
            Severity::Error => Verdict::Fail,
        };
        let fix = (verdict != Verdict::Pass)
            .then(|| fix.unwrap_or(finding.fix))
            .filter(|fix| !fix.is_empty());
        self.add(verdict, finding.message, fix);
    }
}

/// What the checks share: the clients, the flags, and what earlier checks learnt.
struct Context<'a> {
    args: &'a CheckArgs,
    control: Client,
    now: SystemTime,
    warn: Duration,
    /// `--context X ` for the fixes' kubectl commands.
    cp: String,
    /// Secret cluster-gateway-ca's certificates, once read.
    gateway_ca: Vec<CertificateDer<'static>>,
    /// The gateway's serving certificate chain, once read.
    gateway_cert: Vec<CertificateDer<'static>>,
}

fn context_flag(context: Option<&str>) -> String {
    context.map_or(String::new(), |c| format!("--context {} ", shell_word(c)))
}

fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

pub fn run(args: CheckArgs) -> u8 {
    super::block_on(async move {
        let control = match super::control_client(&args.kube).await {
            Ok(client) => client,
            Err(message) => {
                eprintln!("error: {message}");
                return 1;
            }
        };
        let mut ctx = Context {
            cp: context_flag(args.kube.context.as_deref()),
            args: &args,
            control,
            now: SystemTime::now(),
            warn: args.kube.expiry_warning,
            gateway_ca: Vec::new(),
            gateway_cert: Vec::new(),
        };
        let mut findings = Findings::default();
        match checks(&mut ctx, &mut findings).await {
            Ok(()) => {}
            Err(message) => {
                eprintln!("error: {message}");
                return 1;
            }
        }
        let failed = findings.list.iter().any(|f| f.verdict == Verdict::Fail);
        match args.output {
            CheckFormat::Text => print!("{}", text(&findings.list, Style::detect())),
            CheckFormat::Json => println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "passed": !failed,
                    "checks": findings.list,
                }))
                .unwrap_or_default()
            ),
        }
        u8::from(failed)
    })
}

/// The findings as the terminal shows them: a heading per section, a mark per check,
/// the fix under each one that did not pass, and a summary.
pub fn text(findings: &[Finding], style: Style) -> String {
    let mut out = String::new();
    let mut section = "";
    for finding in findings {
        if finding.section != section {
            section = &finding.section;
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&style.bold(section));
            out.push('\n');
        }
        let mark = match finding.verdict {
            Verdict::Pass => style.good("✔"),
            Verdict::Warn => style.warn("⚠"),
            Verdict::Fail => style.bad("✘"),
        };
        // Findings quote CR fields, certificate subjects and remote-cluster data.
        out.push_str(&format!("  {mark} {}\n", printable(&finding.message)));
        if let Some(fix) = &finding.fix {
            out.push_str(&format!("      fix: {}\n", printable(fix)));
        }
    }
    let count = |v: Verdict| findings.iter().filter(|f| f.verdict == v).count();
    let (failed, warned) = (count(Verdict::Fail), count(Verdict::Warn));
    let summary = format!(
        "{} checks: {} passed, {warned} warnings, {failed} failed",
        findings.len(),
        count(Verdict::Pass)
    );
    out.push('\n');
    out.push_str(&match (failed, warned) {
        (0, 0) => style.good(&summary),
        (0, _) => style.warn(&summary),
        _ => style.bad(&summary),
    });
    out.push('\n');
    out
}

async fn checks(ctx: &mut Context<'_>, findings: &mut Findings) -> Result<(), String> {
    let args = ctx.args;
    findings.section(format!(
        "control plane ({})",
        args.kube
            .context
            .as_deref()
            .map_or("current context".to_string(), |c| format!("context {c}"))
    ));
    crds(ctx, findings).await;
    gateway_ca(ctx, findings).await;
    gateway_deployment(ctx, findings).await;
    let mut dialled: Vec<(String, String)> = Vec::new();
    if let Some(url) = &args.server_url {
        dialled.push((url.clone(), "--server-url".into()));
    }
    if let Ok(Some(settings)) =
        Api::<ConfigMap>::namespaced(ctx.control.clone(), &args.kube.control_plane_namespace)
            .get_opt(GATEWAY_SETTINGS)
            .await
        && let Some(host) = settings.data.as_ref().and_then(|d| d.get("publicHost"))
    {
        dialled.push((
            format!("wss://{host}/ws"),
            format!("publicHost of ConfigMap {GATEWAY_SETTINGS}"),
        ));
    }
    gateway_certificate(ctx, findings, &dialled).await;

    let namespace = if args.kube.all_namespaces {
        None
    } else {
        args.kube.namespace.as_deref()
    };
    let inventory = facts::inventory(&ctx.control, namespace, &ctx.gateway_ca)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let planes: Vec<&PlaneFacts> = inventory
        .planes
        .iter()
        .filter(|p| {
            args.plane
                .as_ref()
                .is_none_or(|n| n.plane_type == p.plane.plane_type() && n.name == p.name)
        })
        .collect();
    if let Some(wanted) = &args.plane
        && planes.is_empty()
    {
        return Err(format!(
            "no {} named {} {}",
            wanted.plane_type.kind(),
            wanted.name,
            namespace.map_or("in any namespace".to_string(), |n| format!(
                "in namespace {n}"
            ))
        ));
    }
    for invalid in &inventory.undecodable {
        findings.section("plane resources");
        findings.fail(
            format!("not a valid plane: {}", crate::safe_text::escape(invalid)),
            "fix the resource so that it matches the CRD (kubectl explain dataplane.spec)",
        );
    }
    for plane in &planes {
        plane_checks(ctx, findings, plane);
    }
    if let Some(remote) = &args.remote_context {
        let plane = match planes.as_slice() {
            [plane] => *plane,
            [] => return Err("no plane to check the remote side of".into()),
            _ => {
                return Err(format!(
                    "{} planes are in scope; name the one of context {remote}: planelink check \
                     KIND/NAME --remote-context {remote}",
                    planes.len()
                ));
            }
        };
        remote_checks(ctx, findings, plane, remote).await;
    }
    Ok(())
}

/// The paths of every property a schema defines (`spec.clusterAgent.clientCA`…), and
/// those under which it keeps unknown fields.
fn schema_paths(schema: &Value, prefix: &str, paths: &mut Vec<String>, open: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) {
        open.push(prefix.to_string());
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, child) in properties {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            paths.push(path.clone());
            schema_paths(child, &path, paths, open);
        }
    }
    if schema["items"].is_object() {
        schema_paths(&schema["items"], &format!("{prefix}[]"), paths, open);
    }
}

/// Fields this planelink's CRD has that the installed one lacks.
fn missing_fields(
    ours: &CustomResourceDefinition,
    installed: &CustomResourceDefinition,
) -> Vec<String> {
    let schema = |crd: &CustomResourceDefinition| {
        crd.spec
            .versions
            .iter()
            .find(|v| v.name == "v1alpha1")
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| serde_json::to_value(&s.open_api_v3_schema).ok())
            .unwrap_or(Value::Null)
    };
    let (mut want, mut want_open) = (Vec::new(), Vec::new());
    schema_paths(&schema(ours), "", &mut want, &mut want_open);
    let (mut have, mut have_open) = (Vec::new(), Vec::new());
    schema_paths(&schema(installed), "", &mut have, &mut have_open);
    want.retain(|path| {
        !have.contains(path)
            && !have_open.iter().any(|open| {
                open.is_empty()
                    || path.starts_with(&format!("{open}."))
                    || path.starts_with(&format!("{open}[]"))
            })
    });
    // Report the outermost missing field only.
    let all = want.clone();
    want.retain(|path| {
        !all.iter().any(|other| {
            other != path
                && (path.starts_with(&format!("{other}."))
                    || path.starts_with(&format!("{other}[]")))
        })
    });
    want
}

async fn crds(ctx: &Context<'_>, findings: &mut Findings) {
    let api = Api::<CustomResourceDefinition>::all(ctx.control.clone());
    let apply = "planelink controller crds | kubectl apply --server-side -f - (or apply \
                 packaging/kubernetes/control-plane)";
    for ours in crate::planes::crd::crds() {
        let name = ours.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await {
            Ok(None) => findings.fail(format!("CRD {name} is not installed"), apply),
            Err(e) => findings.warn(
                format!("cannot read CRD {name}: {}", describe_kube_error(&e)),
                "run check with a user that may get customresourcedefinitions",
            ),
            Ok(Some(installed)) => {
                let missing = missing_fields(&ours, &installed);
                if missing.is_empty() {
                    findings.pass(format!("CRD {name} is installed and current"));
                } else {
                    findings.warn(
                        format!(
                            "CRD {name} is older than this planelink: it lacks {}",
                            missing.join(", ")
                        ),
                        apply,
                    );
                }
            }
        }
    }
}

/// The PEM of ca.crt of a Secret or ConfigMap's data.
fn certificates(pem: Option<&[u8]>) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = pem.ok_or("it has no ca.crt")?;
    trust::parse_certificates(pem).map_err(|e| e.to_string())
}

async fn gateway_ca(ctx: &mut Context<'_>, findings: &mut Findings) {
    let ns = ctx.args.kube.control_plane_namespace.clone();
    let origin = format!("Secret {ns}/{GATEWAY_CA}");
    let secret = match facts::gateway_ca(&ctx.control, &ns).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return findings.fail(
                format!("{origin} does not exist"),
                format!(
                    "install the control plane (kubectl {}apply --server-side -k packaging/kubernetes/control-plane) \
                     or give --control-plane-namespace",
                    ctx.cp
                ),
            );
        }
        Err(e) => {
            return findings.fail(
                format!("cannot read {origin}: {}", describe_kube_error(&e)),
                "run check with a user that may get Secrets in the control plane's namespace",
            );
        }
    };
    let data = secret_data(&secret);
    let certs = match certificates(data.get("ca.crt").map(Vec::as_slice)) {
        Ok(certs) => certs,
        Err(e) => {
            return findings.fail(
                format!("{origin}: {e}"),
                format!(
                    "rerun the certificate Job: kubectl {}-n {ns} delete job cluster-gateway-certs, then \
                     apply packaging/kubernetes/control-plane again",
                    ctx.cp
                ),
            );
        }
    };
    let ca_crt = format!("ca.crt of {origin}");
    let bundle = diagnose::Bundle {
        certificates: &certs,
        origin: &ca_crt,
    };
    if let Some(leaf) = diagnose::leaf(bundle, diagnose::Role::GatewayCa) {
        let fix = "ca.crt must be the CA that signs the gateway's serving certificate";
        return findings.diagnosed(leaf, Some(fix.into()));
    }
    let infos: Vec<CertInfo> = certs
        .iter()
        .filter_map(|c| CertInfo::from_der(c).ok())
        .collect();
    expiry_finding(
        findings,
        &format!("gateway CA ({origin})"),
        &infos,
        ctx.now,
        ctx.warn,
    );
    ctx.gateway_ca = certs;

    // The ConfigMap of the same name is what OpenChoreo's docs copy to remote planes;
    // its extractor Job may have written a placeholder before the CA existed.
    let map = Api::<ConfigMap>::namespaced(ctx.control.clone(), &ns)
        .get_opt(GATEWAY_CA)
        .await;
    if let Ok(Some(map)) = map {
        let published = map
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|s| s.as_bytes());
        let published = certificates(published);
        let finding = diagnose::published_gateway_ca(
            diagnose::Published {
                certificates: published.as_deref().map_err(String::as_str),
                origin: &format!("ConfigMap {ns}/{GATEWAY_CA}"),
                compared_with: "the Secret",
            },
            &ctx.gateway_ca,
        );
        findings.diagnosed(finding, Some(publish_fix(ctx, &ns)));
    }
}

fn publish_fix(ctx: &Context<'_>, ns: &str) -> String {
    format!(
        "publish the Secret's ca.crt: kubectl {cp}-n {ns} get secret {GATEWAY_CA} -o jsonpath='{{.data.ca\\.crt}}' \
         | base64 -d > ca.crt && kubectl {cp}-n {ns} create configmap {GATEWAY_CA} --from-file=ca.crt \
         --dry-run=client -o yaml | kubectl {cp}apply -f -",
        cp = ctx.cp
    )
}

fn expiry_finding(
    findings: &mut Findings,
    what: &str,
    infos: &[CertInfo],
    now: SystemTime,
    warn: Duration,
) {
    let Some(expiry) = infos
        .iter()
        .map(|i| i.expiry(now, warn))
        .max_by_key(|e| e.not_after)
    else {
        return;
    };
    let until = trust::inspect::format_time(expiry.not_after);
    match expiry.state {
        ExpiryState::Valid => findings.pass(format!(
            "{what} is valid until {until} ({} days)",
            expiry.days_left
        )),
        ExpiryState::ExpiringSoon => findings.warn(
            format!("{what} expires in {} days ({until})", expiry.days_left),
            "renew it before then (planelink register certs, or cert-manager's renewBefore)",
        ),
        ExpiryState::Expired => findings.fail(
            format!("{what} expired on {until}"),
            "renew it (planelink register certs, or delete the Secret so that cert-manager reissues it)",
        ),
    }
}

async fn gateway_deployment(ctx: &Context<'_>, findings: &mut Findings) {
    let ns = &ctx.args.kube.control_plane_namespace;
    let what = format!("Deployment {ns}/{GATEWAY_DEPLOYMENT}");
    let logs = format!(
        "kubectl {}-n {ns} describe deployment {GATEWAY_DEPLOYMENT}; kubectl {}-n {ns} logs deployment/{GATEWAY_DEPLOYMENT}",
        ctx.cp, ctx.cp
    );
    match Api::<Deployment>::namespaced(ctx.control.clone(), ns)
        .get_opt(GATEWAY_DEPLOYMENT)
        .await
    {
        Ok(Some(deployment)) => {
            let (ready, desired) = readiness(&deployment);
            if desired > 0 && ready >= desired {
                findings.pass(format!("gateway {what}: {ready}/{desired} replicas ready"));
            } else {
                findings.fail(format!("gateway {what}: {ready}/{desired} replicas ready"), logs);
            }
        }
        Ok(None) => findings.fail(
            format!("gateway {what} does not exist"),
            format!(
                "install the control plane (kubectl {}apply --server-side -k packaging/kubernetes/control-plane)",
                ctx.cp
            ),
        ),
        Err(e) => findings.warn(
            format!("cannot read {what}: {}", describe_kube_error(&e)),
            "run check with a user that may get Deployments there",
        ),
    }
}

fn readiness(deployment: &Deployment) -> (i32, i32) {
    let desired = deployment.spec.replicas.unwrap_or(1);
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    (ready, desired)
}

/// The serving certificate: it chains to the gateway CA, is not expiring, and covers
/// every host agents dial.
async fn gateway_certificate(
    ctx: &mut Context<'_>,
    findings: &mut Findings,
    dialled: &[(String, String)],
) {
    let ns = ctx.args.kube.control_plane_namespace.clone();
    let origin = format!("Secret {ns}/{GATEWAY_TLS}");
    let chain = match Api::<Secret>::namespaced(ctx.control.clone(), &ns)
        .get_opt(GATEWAY_TLS)
        .await
    {
        Ok(Some(secret)) => {
            match certificates(secret_data(&secret).get("tls.crt").map(Vec::as_slice)) {
                Ok(chain) => chain,
                Err(e) => {
                    return findings.fail(
                        format!("{origin} tls.crt: {e}"),
                        "reissue the gateway's serving certificate",
                    );
                }
            }
        }
        Ok(None) => {
            return findings.fail(
                format!("the gateway's serving certificate ({origin}) does not exist"),
                format!(
                    "run the certificate Job (kubectl {}-n {ns} logs job/cluster-gateway-certs) or check \
                     cert-manager's Certificate {GATEWAY_TLS}",
                    ctx.cp
                ),
            );
        }
        Err(e) => {
            return findings.warn(
                format!("cannot read {origin}: {}", describe_kube_error(&e)),
                "run check with a user that may get Secrets in the control plane's namespace",
            );
        }
    };
    if !ctx.gateway_ca.is_empty() {
        match trust::verify_chain(&chain, &ctx.gateway_ca, Usage::ServerAuth, ctx.now) {
            Ok(()) => findings.pass(format!("the gateway's serving certificate ({origin}) chains to its CA")),
            Err(e) => findings.fail(
                format!("the gateway's serving certificate ({origin}) does not verify against Secret {GATEWAY_CA}: {e}"),
                "reissue the serving certificate from the CA in Secret cluster-gateway-ca (delete the Secret \
                 and rerun job/cluster-gateway-certs, or let cert-manager reissue it)",
            ),
        }
    }
    let infos: Vec<CertInfo> = chain
        .first()
        .and_then(|c| CertInfo::from_der(c).ok())
        .into_iter()
        .collect();
    expiry_finding(
        findings,
        &format!("the gateway's serving certificate ({origin})"),
        &infos,
        ctx.now,
        ctx.warn,
    );
    ctx.gateway_cert = chain;
    for (url, from) in dialled {
        covers(ctx, findings, url, from);
    }
}

/// Whether the gateway's certificate covers the host of `url` (named by `from`).
fn covers(ctx: &Context<'_>, findings: &mut Findings, url: &str, from: &str) {
    let Some(leaf) = ctx.gateway_cert.first() else {
        return;
    };
    let host = match crate::tunnel::dial::server_url(url) {
        Ok(parsed) => crate::tunnel::dial::host_port(&parsed).0,
        Err(e) => return findings.fail(format!("{from}: {e}"), "agents dial wss://HOST:PORT/ws"),
    };
    match trust::check_host(leaf, &host) {
        Ok(()) => findings.pass(format!(
            "the gateway's serving certificate covers {host} ({from})"
        )),
        Err(trust::TrustError::HostNotInSans {
            valid_for, fix, ..
        }) => {
            let kind = if host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok() {
                "IP SANs lack it"
            } else {
                "DNS SANs lack it"
            };
            findings.fail(
                format!(
                    "the gateway's serving certificate does not cover {host} ({from}): its {kind} \
                     (valid for {valid_for})"
                ),
                fix,
            )
        }
        Err(trust::TrustError::NoIpSans { fix, .. }) => findings.fail(
            format!(
                "the gateway's serving certificate does not cover {host} ({from}): it has no IP SANs \
                 (valid for {})",
                CertInfo::from_der(leaf).map(|i| i.san_list()).unwrap_or_default()
            ),
            fix,
        ),
        Err(e) => findings.fail(
            format!("{host} ({from}): {e}"),
            "reissue the gateway's serving certificate",
        ),
    }
}

fn plane_checks(ctx: &Context<'_>, findings: &mut Findings, plane: &PlaneFacts) {
    findings.section(format!("{} (planeID {})", plane.title(), plane.plane_id));
    if plane.mode == Mode::Agent {
        match &plane.client_ca {
            Some(Err(problem)) => findings.fail(
                format!("clientCA: {}", problem.message),
                problem.reason.meaning(),
            ),
            Some(Ok(certs)) => {
                let infos: Vec<CertInfo> = certs
                    .iter()
                    .filter_map(|c| CertInfo::from_der(c).ok())
                    .collect();
                let subjects: Vec<&str> = infos.iter().map(|i| i.subject.as_str()).collect();
                findings.pass(format!("clientCA holds the CA {}", subjects.join(", ")));
                expiry_finding(findings, "clientCA", &infos, ctx.now, ctx.warn);
            }
            None => {}
        }
        rollover_findings(findings, plane);
    }
    let controller_logs = format!(
        "is the controller running? kubectl {}-n {} logs deployment/controller-manager",
        ctx.cp, ctx.args.kube.control_plane_namespace
    );
    match &plane.ready {
        None => findings.fail(
            "no Ready condition: no controller has reconciled the plane",
            controller_logs,
        ),
        Some(ready) if ready.status == conditions::Truth::True.as_str() => findings.pass("Ready"),
        Some(ready) => {
            let fix = plane
                .ready_reason()
                .map_or(controller_logs.clone(), |r| r.meaning().to_string());
            findings.fail(
                format!(
                    "not Ready: {} ({})",
                    ready.reason,
                    crate::safe_text::escape(&ready.message)
                ),
                fix,
            );
        }
    }
    if plane.mode != Mode::Agent {
        return;
    }
    let connection = plane.connection.as_ref();
    let remote_ns = default_remote_namespace(plane.plane.plane_type());
    match connection {
        Some(c) if c.connected => {
            let replicas = c.gateway_replicas.as_deref();
            let message = match replicas {
                Some(r) => format!("{} agent(s) connected, to {r} gateway replicas", c.connected_agents),
                None => format!("{} agent(s) connected", c.connected_agents),
            };
            let complete = replicas
                .and_then(|r| r.split_once('/'))
                .is_none_or(|(holding, live)| holding == live);
            if complete {
                findings.pass(message);
            } else {
                findings.warn(
                    message,
                    "an agent reaches every replica within seconds; if this lasts, check that the load \
                     balancer spreads new connections over all gateway pods",
                );
            }
        }
        _ => findings.fail(
            "no agent connected",
            format!(
                "read the agent's log in the remote cluster (kubectl -n {remote_ns} logs deployment/{AGENT_DEPLOYMENT}), \
                 or run planelink check {}/{} --remote-context REMOTE",
                plane.plane.plane_type().as_str(),
                plane.name
            ),
        ),
    }
    if let Some(expiry) = plane.agent_certificate_expiry(ctx.now, ctx.warn) {
        let until = trust::inspect::format_time(expiry.not_after);
        match expiry.state {
            ExpiryState::Valid => findings.pass(format!(
                "agent certificates are valid until {until} ({} days)",
                expiry.days_left
            )),
            ExpiryState::ExpiringSoon => findings.warn(
                format!("an agent's certificate expires in {} days ({until})", expiry.days_left),
                format!("renew Secret {AGENT_TLS} in {remote_ns} (rerun job/cluster-agent-certs, or cert-manager)"),
            ),
            ExpiryState::Expired => findings.fail(
                format!("an agent's certificate expired on {until}"),
                format!("renew Secret {AGENT_TLS} in {remote_ns}"),
            ),
        }
    }
}

/// A client CA rollover proposed by an agent and waiting for the operator, or under way.
fn rollover_findings(findings: &mut Findings, plane: &PlaneFacts) {
    use crate::planes::rollover::{PROPOSED, RETIRING, STARTED, rotate_command};
    let Some(annotations) = plane.plane.meta().annotations.as_ref() else {
        return;
    };
    if annotations.contains_key(PROPOSED) {
        findings.warn(
            "an agent proposes a new CA that this plane does not trust yet (its certificate was renewed)",
            format!(
                "roll the client CA over: {}",
                rotate_command(plane.plane.plane_type(), &plane.namespace, &plane.name)
            ),
        );
    }
    if let Some(retiring) = annotations.get(RETIRING) {
        findings.warn(
            format!(
                "a client CA rollover is under way since {}: the old CA ({}) is removed once no \
                 connected agent uses it",
                crate::safe_text::escape(annotations.get(STARTED).map_or("-", String::as_str)),
                crate::safe_text::escape(retiring)
            ),
            "if it lasts, renew the agents' certificates from the new CA (planelink status shows \
             their expiry) and check that planelink's controller runs",
        );
    }
}

/// The `planelink register` command that redoes the plane's trust exchange (copies the
/// gateway CA to the remote plane, registers the agent's CA), ready to run.
fn register_command(ctx: &Context<'_>, plane: &PlaneFacts, remote: &str) -> String {
    let kube = &ctx.args.kube;
    // Every value is one shell word: CR fields are a tenant's to write.
    let cp = kube.context.as_deref().map_or_else(
        || "\"$(kubectl config current-context)\"".to_string(),
        shell_word,
    );
    let mut command = format!(
        "planelink register {} {} --control-plane-context {cp} --remote-context {} --namespace {}",
        plane.plane.plane_type().as_str(),
        shell_word(&plane.name),
        shell_word(remote),
        shell_word(&plane.namespace)
    );
    if plane.plane_id != plane.name {
        command += &format!(" --plane-id {}", shell_word(&plane.plane_id));
    }
    if let Some(ns) = &ctx.args.remote_namespace {
        command += &format!(" --remote-namespace {}", shell_word(ns));
    }
    if kube.control_plane_namespace != "openchoreo-control-plane" {
        command += &format!(
            " --control-plane-namespace {}",
            shell_word(&kube.control_plane_namespace)
        );
    }
    // Only the older shape has flags; register leaves a current-shape gateway as it is.
    if let Some(gateway) = plane.plane.gateway_spec()
        && let (Some(public), Some(organization)) = (
            &gateway.public_virtual_host,
            &gateway.organization_virtual_host,
        )
    {
        command += &format!(
            " --public-virtual-host {} --organization-virtual-host {}",
            shell_word(public),
            shell_word(organization)
        );
        if gateway.http_port() != DEFAULT_PUBLIC_HTTP_PORT {
            command += &format!(" --public-http-port {}", gateway.http_port());
        }
        if gateway.https_port() != DEFAULT_PUBLIC_HTTPS_PORT {
            command += &format!(" --public-https-port {}", gateway.https_port());
        }
    }
    if plane
        .plane
        .client_ca()
        .is_some_and(|ca| ca.inline_value().is_none())
    {
        command += " --ca-from-secret";
    }
    command
}

/// The value of an agent flag in its Deployment: `--flag=V`/`--flag V` in args, or the
/// env var (inline, or from the ConfigMap it names).
async fn agent_setting(
    remote: &Client,
    namespace: &str,
    deployment: &Deployment,
    flag: &str,
    env: &str,
) -> Option<String> {
    let container = deployment.spec.template.spec.as_ref()?.containers.first()?;
    let args: Vec<&String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .collect();
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
            return Some(value.to_string());
        }
        if *arg == flag {
            return args.get(i + 1).map(|v| v.to_string());
        }
    }
    let maps = Api::<ConfigMap>::namespaced(remote.clone(), namespace);
    for var in container.env.iter().flatten().filter(|v| v.name == env) {
        if let Some(value) = &var.value {
            return Some(value.clone());
        }
        if let Some(key) = var
            .value_from
            .as_ref()
            .and_then(|f| f.config_map_key_ref.as_ref())
            && let Ok(Some(map)) = maps.get_opt(&key.name).await
        {
            return map.data.and_then(|d| d.get(&key.key).cloned());
        }
    }
    for source in container.env_from.iter().flatten() {
        if let Some(reference) = &source.config_map_ref
            && let Ok(Some(map)) = maps.get_opt(&reference.name).await
            && let Some(value) = map.data.and_then(|d| d.get(env).cloned())
        {
            return Some(value);
        }
    }
    None
}

/// What the control plane must be able to do through a plane's agent (a sample of what
/// OpenChoreo's controllers do there): (group, resource, verb).
fn needed_access(plane_type: PlaneType) -> &'static [(&'static str, &'static str, &'static str)] {
    match plane_type {
        PlaneType::DataPlane => &[
            ("", "namespaces", "create"),
            ("apps", "deployments", "create"),
            ("", "services", "create"),
            ("", "secrets", "create"),
            ("gateway.networking.k8s.io", "httproutes", "create"),
        ],
        PlaneType::BuildPlane => &[("", "namespaces", "create"), ("", "pods", "list")],
        PlaneType::ObservabilityPlane => &[("", "pods", "list"), ("", "services", "get")],
    }
}

async fn remote_checks(
    ctx: &Context<'_>,
    findings: &mut Findings,
    plane: &PlaneFacts,
    context: &str,
) {
    let args = ctx.args;
    let plane_type = plane.plane.plane_type();
    let ns = args
        .remote_namespace
        .clone()
        .unwrap_or_else(|| default_remote_namespace(plane_type).to_string());
    findings.section(format!("remote plane (context {context}, namespace {ns})"));
    let rc = context_flag(Some(context));
    let remote = match crate::planes::kubernetes::kube_client(
        args.kube.kubeconfig.as_deref(),
        Some(context),
    )
    .await
    {
        Ok(client) => client,
        Err(e) => {
            return findings.fail(
                format!("cannot reach context {context}: {e:#}"),
                "check --remote-context and --kubeconfig",
            );
        }
    };
    let register = register_command(ctx, plane, context);
    match Api::<Namespace>::all(remote.clone()).get_opt(&ns).await {
        Ok(Some(_)) => findings.pass(format!("namespace {ns} exists")),
        Ok(None) => {
            return findings.fail(
                format!("namespace {ns} does not exist"),
                format!(
                    "install the remote plane (kubectl {rc}apply --server-side -k packaging/kubernetes/remote-plane/{}) \
                     or give --remote-namespace",
                    plane_type.as_str()
                ),
            );
        }
        Err(e) => {
            return findings.fail(
                format!("cannot read namespace {ns}: {}", describe_kube_error(&e)),
                "check --remote-context and your access there",
            );
        }
    }

    // The server CA the agent trusts.
    let origin = format!("ConfigMap {ns}/{GATEWAY_CA}");
    match Api::<ConfigMap>::namespaced(remote.clone(), &ns)
        .get_opt(GATEWAY_CA)
        .await
    {
        Ok(Some(map)) => {
            let published = map
                .data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .map(|s| s.as_bytes());
            let fix =
                format!("copy ca.crt of Secret {GATEWAY_CA} from the control plane: {register}");
            match certificates(published) {
                // The control plane's CA is unknown (its own check says why): nothing to compare.
                Ok(_) if ctx.gateway_ca.is_empty() => findings.pass(format!(
                    "{origin} holds a CA (not compared: the control plane's gateway CA is unknown)"
                )),
                published => {
                    let finding = diagnose::published_gateway_ca(
                        diagnose::Published {
                            certificates: published.as_deref().map_err(String::as_str),
                            origin: &origin,
                            compared_with: "the control plane's gateway CA",
                        },
                        &ctx.gateway_ca,
                    );
                    findings.diagnosed(finding, Some(fix));
                }
            }
        }
        Ok(None) => findings.fail(format!("{origin} does not exist"), register.clone()),
        Err(e) => findings.warn(
            format!("cannot read {origin}: {}", describe_kube_error(&e)),
            "check your access to ConfigMaps there",
        ),
    }

    // The agent's own CA and certificate, against the plane's clientCA.
    let origin = format!("Secret {ns}/{AGENT_TLS}");
    match Api::<Secret>::namespaced(remote.clone(), &ns).get_opt(AGENT_TLS).await {
        Ok(Some(secret)) => agent_secret(ctx, findings, plane, &origin, &secret_data(&secret), &register),
        Ok(None) => findings.fail(
            format!("{origin} does not exist: the agent has no certificate"),
            format!("kubectl {rc}-n {ns} logs job/cluster-agent-certs (or describe cert-manager's Certificate there)"),
        ),
        Err(e) => findings.warn(
            format!("cannot read {origin}: {}", describe_kube_error(&e)),
            "check your access to Secrets there",
        ),
    }

    // The agent itself: running, dialling a name the certificate covers, for this plane.
    let deployment = match Api::<Deployment>::namespaced(remote.clone(), &ns)
        .get_opt(AGENT_DEPLOYMENT)
        .await
    {
        Ok(Some(deployment)) => deployment,
        Ok(None) => {
            return findings.fail(
                format!("Deployment {ns}/{AGENT_DEPLOYMENT} does not exist"),
                format!(
                    "kubectl {rc}apply --server-side -k packaging/kubernetes/remote-plane/{}",
                    plane_type.as_str()
                ),
            );
        }
        Err(e) => {
            return findings.warn(
                format!(
                    "cannot read Deployment {ns}/{AGENT_DEPLOYMENT}: {}",
                    describe_kube_error(&e)
                ),
                "check your access to Deployments there",
            );
        }
    };
    let (ready, desired) = readiness(&deployment);
    if desired > 0 && ready >= desired {
        findings.pass(format!(
            "agent Deployment {ns}/{AGENT_DEPLOYMENT}: {ready}/{desired} replicas ready"
        ));
    } else {
        findings.fail(
            format!("agent Deployment {ns}/{AGENT_DEPLOYMENT}: {ready}/{desired} replicas ready"),
            format!("kubectl {rc}-n {ns} logs deployment/{AGENT_DEPLOYMENT}"),
        );
    }
    match agent_setting(&remote, &ns, &deployment, "--plane-id", "PLANE_ID").await {
        Some(id) if id == plane.plane_id => findings.pass(format!("the agent serves planeID {id}")),
        Some(id) => findings.fail(
            format!(
                "the agent sends planeID {}, the plane's is {}: the gateway never authorises it for this plane",
                crate::safe_text::escape(&id),
                plane.plane_id
            ),
            format!("set PLANE_ID (ConfigMap {AGENT_DEPLOYMENT}) to {}, or spec.planeID to the agent's", plane.plane_id),
        ),
        None => {}
    }
    if let Some(url) = agent_setting(&remote, &ns, &deployment, "--server-url", "SERVER_URL").await
    {
        covers(ctx, findings, &url, "the agent's --server-url");
    }
    rbac(findings, &remote, &ns, &deployment, plane_type, &rc).await;
}

fn agent_secret(
    ctx: &Context<'_>,
    findings: &mut Findings,
    plane: &PlaneFacts,
    origin: &str,
    data: &std::collections::BTreeMap<String, Vec<u8>>,
    register: &str,
) {
    let ca = match certificates(data.get("ca.crt").map(Vec::as_slice)) {
        Ok(ca) => ca,
        Err(e) => {
            return findings.fail(
                format!("{origin}: {e}"),
                "issue the agent's certificate from its own self-signed CA (clusterAgent.tls.generateCerts=true, caSecretName=\"\")",
            );
        }
    };
    let chain = match certificates(data.get("tls.crt").map(Vec::as_slice)) {
        Ok(chain) => chain,
        Err(e) => {
            return findings.fail(
                format!("tls.crt of {origin}: {e}"),
                "reissue the agent's certificate",
            );
        }
    };
    let verdicts = diagnose::agent_secret(origin, &ca, Some(&chain), &ctx.gateway_ca, ctx.now);
    let mistaken = verdicts.iter().any(diagnose::Finding::is_error);
    for verdict in verdicts {
        findings.diagnosed(verdict, None);
    }
    if mistaken {
        return;
    }
    let tls_crt = format!("tls.crt of {origin}");
    let leaf: Vec<CertInfo> = chain
        .first()
        .and_then(|c| CertInfo::from_der(c).ok())
        .into_iter()
        .collect();
    expiry_finding(findings, &tls_crt, &leaf, ctx.now, ctx.warn);
    let Some(Ok(client_ca)) = &plane.client_ca else {
        return;
    };
    let verdict = diagnose::client_ca_trusts_agent(
        diagnose::Bundle {
            certificates: &chain,
            origin,
        },
        diagnose::Bundle {
            certificates: client_ca,
            origin: "the plane's clientCA",
        },
        diagnose::Bundle {
            certificates: &ca,
            origin: &format!("ca.crt of {origin}"),
        },
        ctx.now,
    );
    let fix = format!("{}: {register}", verdict.fix);
    findings.diagnosed(verdict, Some(fix));
}

/// The agent's ServiceAccount may do what the control plane needs there.
async fn rbac(
    findings: &mut Findings,
    remote: &Client,
    ns: &str,
    deployment: &Deployment,
    plane_type: PlaneType,
    rc: &str,
) {
    let account = deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let user = format!("system:serviceaccount:{ns}:{account}");
    let api = Api::<SubjectAccessReview>::all(remote.clone());
    let mut denied = Vec::new();
    for (group, resource, verb) in needed_access(plane_type) {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.clone()),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    verb: Some(verb.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        match api.create(&PostParams::default(), &review).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => {
                let qualified = if group.is_empty() {
                    resource.to_string()
                } else {
                    format!("{resource}.{group}")
                };
                denied.push(format!("{verb} {qualified}"));
            }
            Err(e) => {
                return findings.warn(
                    format!(
                        "cannot review the agent's RBAC: {}",
                        describe_kube_error(&e)
                    ),
                    "run check with a user that may create subjectaccessreviews",
                );
            }
        }
    }
    if denied.is_empty() {
        findings.pass(format!(
            "the agent's ServiceAccount {account} may do what the control plane needs"
        ));
    } else {
        findings.fail(
            format!("the agent's ServiceAccount {account} may not {}", denied.join(", ")),
            format!(
                "bind it to the plane's ClusterRole: kubectl {rc}apply --server-side -k packaging/kubernetes/remote-plane/{}",
                plane_type.as_str()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_crd_lacks_fields_and_an_open_one_lacks_none() {
        let ours = crate::planes::crd::crds().remove(0);
        assert_eq!(missing_fields(&ours, &ours), Vec::<String>::new());
        // An older CRD (or OpenChoreo's) keeps no unknown fields and lacks one of ours.
        fn closed(value: &mut Value) {
            match value {
                Value::Object(map) => {
                    map.remove("x-kubernetes-preserve-unknown-fields");
                    map.values_mut().for_each(closed);
                }
                Value::Array(items) => items.iter_mut().for_each(closed),
                _ => {}
            }
        }
        let mut older = serde_json::to_value(&ours).unwrap();
        closed(&mut older);
        let status =
            &mut older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        status["properties"]["agentConnection"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("agents");
        let older: CustomResourceDefinition = serde_json::from_value(older).unwrap();
        assert_eq!(
            missing_fields(&ours, &older),
            vec!["status.agentConnection.agents".to_string()]
        );
        let mut open = serde_json::to_value(&older).unwrap();
        open["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] =
            Value::Bool(true);
        let open: CustomResourceDefinition = serde_json::from_value(open).unwrap();
        assert_eq!(missing_fields(&ours, &open), Vec::<String>::new());
    }

    #[test]
    fn the_text_marks_each_check_and_says_each_fix() {
        let findings = vec![
            Finding {
                section: "control plane".into(),
                verdict: Verdict::Pass,
                message: "CRD dataplanes.openchoreo.dev is installed and current".into(),
                fix: None,
            },
            Finding {
                section: "DataPlane a/b".into(),
                verdict: Verdict::Fail,
                message: "no agent connected".into(),
                fix: Some("read the agent's log".into()),
            },
        ];
        assert_eq!(
            text(&findings, Style { colour: false }),
            "control plane\n  ✔ CRD dataplanes.openchoreo.dev is installed and current\n\nDataPlane a/b\n  \
             ✘ no agent connected\n      fix: read the agent's log\n\n2 checks: 1 passed, 0 warnings, 1 failed\n"
        );
        let coloured = text(&findings, Style { colour: true });
        assert!(coloured.contains("\x1b[32m✔\x1b[0m"), "{coloured:?}");
        assert!(coloured.contains("\x1b[31m✘\x1b[0m"), "{coloured:?}");
    }
}
