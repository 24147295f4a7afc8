//! `register dataplane|buildplane|observabilityplane NAME`: the reference guide's trust
//! exchange (Steps 1-4) as one command that reads the right objects, checks each
//! certificate before it is used, and writes idempotently with server-side apply.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use super::Outcome;
use super::args::ExchangeArgs;
use crate::planes::crd::{AnyPlane, GatewaySpec, PlaneBuilder, ValueFrom};
use crate::planes::kubernetes::kube_client;
use crate::planes::manifest::{API_GROUP, to_yaml};
use crate::planes::{PlaneKind, PlaneType, secret_data};
use crate::trust::{self, Severity, diagnose};
use crate::tunnel::dial::{self, TlsIdentity};

const FIELD_MANAGER: &str = "planelink-register";
const GATEWAY_CA: &str = "cluster-gateway-ca";
const AGENT_TLS: &str = "cluster-agent-tls";
const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// A failed step: which one, and what to do, in the words of the reference guide.
pub(super) struct Failure {
    pub step: &'static str,
    pub message: String,
}

pub(super) fn fail<T>(step: &'static str, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        step,
        message: message.into(),
    })
}

/// Registers a plane of `kind` (a namespaced kind: DataPlane, BuildPlane, WorkflowPlane,
/// ObservabilityPlane).
pub fn run(kind: PlaneKind, args: &ExchangeArgs) -> Outcome {
    if let Err(message) = validate(kind.plane_type(), args) {
        eprintln!("planelink register: {message}");
        return Outcome::Usage;
    }
    let _ = rustls::crypto::CryptoProvider::install_default(std::sync::Arc::unwrap_or_clone(
        trust::crypto_provider(),
    ));
    super::block_on(async {
        match exchange(kind, args).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                eprintln!(
                    "error: {}: {}",
                    failure.step,
                    crate::safe_text::printable(&failure.message)
                );
                Outcome::Failed
            }
        }
    })
}

fn remote_namespace(kind: PlaneKind, args: &ExchangeArgs) -> String {
    args.remote_namespace.clone().unwrap_or_else(|| {
        match kind {
            PlaneKind::WorkflowPlane | PlaneKind::ClusterWorkflowPlane => {
                "openchoreo-workflow-plane"
            }
            _ => match kind.plane_type() {
                PlaneType::DataPlane => "openchoreo-data-plane",
                PlaneType::BuildPlane => "openchoreo-build-plane",
                PlaneType::ObservabilityPlane => "openchoreo-observability-plane",
            },
        }
        .to_string()
    })
}

fn validate(plane_type: PlaneType, args: &ExchangeArgs) -> Result<(), String> {
    if plane_type == PlaneType::DataPlane
        && (args.public_virtual_host.is_none() || args.organization_virtual_host.is_none())
    {
        return Err(
            "a DataPlane needs --public-virtual-host and --organization-virtual-host (its gateway settings)"
                .into(),
        );
    }
    if plane_type != PlaneType::DataPlane
        && (args.public_virtual_host.is_some() || args.organization_virtual_host.is_some())
    {
        return Err(
            "--public-virtual-host and --organization-virtual-host are DataPlane settings".into(),
        );
    }
    if plane_type == PlaneType::ObservabilityPlane && args.observability_plane.is_some() {
        return Err(
            "--observability-plane links a DataPlane or BuildPlane to an ObservabilityPlane".into(),
        );
    }
    if let Some(url) = &args.observer_url {
        if plane_type != PlaneType::ObservabilityPlane {
            return Err("--observer-url is an ObservabilityPlane setting".into());
        }
        let separate = args.control_plane_context.as_deref() != Some(args.remote_context.as_str());
        let host = url::Url::parse(url)
            .map_err(|e| format!("--observer-url {url:?} is not a URL ({e})"))?
            .host_str()
            .unwrap_or_default()
            .to_string();
        if separate && (host.ends_with(".svc.cluster.local") || host.ends_with(".svc")) {
            return Err(format!(
                "--observer-url {url} is an in-cluster address, which the control plane cannot reach \
                 from another cluster; use the observability plane's external gateway URL or a routable \
                 DNS name"
            ));
        }
    }
    Ok(())
}

/// Step 1: the gateway CA from Secret cluster-gateway-ca (never the ConfigMap).
async fn gateway_ca(
    control: Option<&Client>,
    args: &ExchangeArgs,
) -> Result<Vec<CertificateDer<'static>>, Failure> {
    const STEP: &str = "step 1 (control plane CA)";
    let (bytes, origin) = match (control, &args.gateway_ca) {
        (_, Some(file)) => (
            std::fs::read(file)
                .or_else(|e| fail(STEP, format!("cannot read {}: {e}", file.display())))?,
            file.display().to_string(),
        ),
        (Some(client), None) => {
            let ns = &args.control_plane_namespace;
            let origin = format!("Secret {ns}/{GATEWAY_CA}");
            let secret = Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(GATEWAY_CA)
                .await
                .or_else(|e| fail(STEP, format!("cannot read {origin}: {e}")))?;
            let Some(secret) = secret else {
                return fail(
                    STEP,
                    format!(
                        "{origin} does not exist in the control plane; is the control plane installed in \
                         namespace {ns}? (give --control-plane-namespace)"
                    ),
                );
            };
            let data = secret_data(&secret);
            let Some(ca) = data.get("ca.crt").cloned() else {
                return fail(STEP, format!("{origin} has no ca.crt"));
            };
            if let Ok(Some(map)) = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(GATEWAY_CA)
                .await
            {
                published_copy(ns, &map, &ca);
            }
            (ca, origin)
        }
        (None, None) => return fail(STEP, "give --gateway-ca with --planes-dir"),
    };
    let certs =
        trust::parse_certificates(&bytes).or_else(|e| fail(STEP, format!("{origin}: {e}")))?;
    let bundle = diagnose::Bundle {
        certificates: &certs,
        origin: &origin,
    };
    if let Some(leaf) = diagnose::leaf(bundle, diagnose::Role::GatewayCa) {
        return fail(STEP, leaf.sentence());
    }
    Ok(certs)
}

/// Warns when the ConfigMap copy of the gateway CA, which OpenChoreo's docs copy to
/// remote planes, is not the Secret's (a rollover's overlap is fine).
fn published_copy(ns: &str, map: &ConfigMap, secret_ca: &[u8]) {
    let Ok(secret_ca) = trust::parse_certificates(secret_ca) else {
        return; // the caller reports the Secret itself
    };
    let published = map
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .ok_or_else(|| "it has no ca.crt".to_string())
        .and_then(|pem| trust::parse_certificates(pem.as_bytes()).map_err(|e| e.to_string()));
    let finding = diagnose::published_gateway_ca(
        diagnose::Published {
            certificates: published.as_deref().map_err(String::as_str),
            origin: &format!("ConfigMap {ns}/{GATEWAY_CA}"),
            compared_with: "the Secret",
        },
        &secret_ca,
    );
    if finding.is_error() {
        eprintln!(
            "warning: {}; planelink uses the Secret",
            crate::safe_text::printable(&finding.message)
        );
    }
}

/// Step 1 also: the gateway's serving certificate must cover --server-url's host.
async fn check_server_url(url: &str, ca: &[CertificateDer<'static>]) -> Result<(), Failure> {
    const STEP: &str = "step 1 (gateway certificate)";
    let parsed = dial::server_url(url).or_else(|e| fail(STEP, format!("--server-url: {e}")))?;
    // The gateway may not be exposed yet when planes are registered: check what can be.
    let (host, port) = dial::host_port(&parsed);
    if dial::connect(&host, port, Duration::from_secs(5))
        .await
        .is_err()
    {
        eprintln!(
            "warning: cannot reach {url} from here, so the gateway certificate's SANs are not \
             checked; run `planelink register check --server-url {url} --server-ca ca.crt` where \
             the agents run"
        );
        return Ok(());
    }
    eprintln!("checking {url} against the control plane CA:");
    let input = super::check::CheckInput {
        url: parsed,
        identity: TlsIdentity {
            server_ca: ca.to_vec(),
            client: None,
        },
        plane_type: PlaneType::DataPlane,
        plane_id: None,
        timeout: Duration::from_secs(10),
    };
    match super::check::check(&input).await {
        Outcome::Ok => Ok(()),
        _ => fail(
            STEP,
            format!(
                "agents dialling {url} would fail TLS (diagnosis above); fix the gateway certificate's \
                 SANs (Step 0) or the URL"
            ),
        ),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_object(client: &Client, object: &Value, step: &'static str) -> Result<(), Failure> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = object["metadata"]["namespace"].as_str();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(name, &apply_params(), &Patch::Apply(object))
        .await
        .map(|_| ())
        .or_else(|e| {
            fail(
                step,
                format!(
                    "cannot apply {kind} {}{name}: {e}",
                    namespace.map(|n| format!("{n}/")).unwrap_or_default()
                ),
            )
        })
}

/// A wait's progress on stderr: one line rewritten in place on a terminal; in a pipe or
/// log, a line every 10 s.
pub(super) struct Progress {
    what: String,
    wait: Duration,
    started: Instant,
    terminal: bool,
    /// What was last printed: the second on a terminal, else the 10-second period.
    last_line: Option<u64>,
}

impl Progress {
    pub(super) fn new(what: String, wait: Duration) -> Progress {
        use std::io::IsTerminal as _;
        Progress {
            what,
            wait,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_line: None,
        }
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub(super) fn tick(&mut self) {
        let secs = self.started.elapsed().as_secs();
        let of = self.wait.as_secs();
        if self.terminal {
            self.last_line = Some(secs);
            eprint!("\r{} ({secs}s of {of}s)", self.what);
        } else if self.last_line != Some(secs / 10) {
            self.last_line = Some(secs / 10);
            eprintln!("{} ({secs}s of {of}s)", self.what);
        }
    }

    /// Ends the line rewritten in place, if one was written.
    pub(super) fn done(&self) {
        if self.terminal && self.last_line.is_some() {
            eprintln!();
        }
    }
}

/// Waits (with a progress line) for the agent's Secret, up to `--wait`.
async fn wait_for_secret(
    remote: &Client,
    namespace: &str,
    origin: &str,
    args: &ExchangeArgs,
) -> Result<Secret, Failure> {
    const STEP: &str = "step 3 (agent CA)";
    let api = Api::<Secret>::namespaced(remote.clone(), namespace);
    let wait = args.wait.unwrap_or(DEFAULT_WAIT);
    let mut progress = Progress::new(format!("waiting for {origin}"), wait);
    let secret = loop {
        match api.get_opt(AGENT_TLS).await {
            Ok(Some(secret)) => break secret,
            Ok(None) if progress.elapsed() < wait => {
                progress.tick();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(None) => {
                progress.done();
                return fail(
                    STEP,
                    format!(
                        "{origin} did not appear within {}s. Is the remote plane installed? With \
                         packaging/kubernetes/remote-plane the Job cluster-agent-certs writes it (`kubectl \
                         --context {ctx} logs -n {namespace} job/cluster-agent-certs`); with cert-manager \
                         (clusterAgent.tls.generateCerts=true) check `kubectl --context {ctx} describe \
                         certificate -n {namespace}` and the cert-manager logs (Troubleshooting: \
                         Certificate Not Ready)",
                        wait.as_secs(),
                        ctx = crate::safe_text::shell_word(&args.remote_context)
                    ),
                );
            }
            Err(e) => return fail(STEP, format!("cannot read {origin}: {e}")),
        }
    };
    progress.done();
    Ok(secret)
}

/// Step 3: the agent's CA from Secret cluster-agent-tls, checked.
async fn agent_ca(
    remote: &Client,
    namespace: &str,
    args: &ExchangeArgs,
    gateway_ca: &[CertificateDer<'_>],
) -> Result<Vec<CertificateDer<'static>>, Failure> {
    const STEP: &str = "step 3 (agent CA)";
    let origin = format!(
        "Secret {namespace}/{AGENT_TLS} in context {}",
        args.remote_context
    );
    let secret = wait_for_secret(remote, namespace, &origin, args).await?;
    let data = secret_data(&secret);
    let Some(ca_bytes) = data.get("ca.crt") else {
        return fail(
            STEP,
            format!(
                "{origin} has no ca.crt: the agent's certificate must come from its own self-signed CA \
                 (clusterAgent.tls.caSecretName=\"\")"
            ),
        );
    };
    let ca = trust::parse_certificates(ca_bytes)
        .or_else(|e| fail(STEP, format!("{origin} ca.crt: {e}")))?;
    let chain = match data.get("tls.crt") {
        Some(pem) => Some(
            trust::parse_certificates(pem)
                .or_else(|e| fail(STEP, format!("{origin} tls.crt: {e}")))?,
        ),
        None => None,
    };
    let verdicts = diagnose::agent_secret(
        &origin,
        &ca,
        chain.as_deref(),
        gateway_ca,
        SystemTime::now(),
    );
    for warning in verdicts.iter().filter(|v| v.severity == Severity::Warning) {
        eprintln!(
            "warning: {}",
            crate::safe_text::printable(&warning.sentence())
        );
    }
    if let Some(mistake) = diagnose::first_error(verdicts) {
        return fail(STEP, mistake.sentence());
    }
    Ok(ca)
}

/// The plane CR (and, with `--ca-from-secret`, the Secret holding the agent's CA).
fn plane_object(
    kind: PlaneKind,
    args: &ExchangeArgs,
    agent_ca: &str,
) -> (AnyPlane, Option<Secret>) {
    let secret_name = format!("{}-agent-ca", args.name);
    let client_ca = if args.ca_from_secret {
        ValueFrom::from_secret(Some(&args.namespace), &secret_name, "ca.crt")
    } else {
        ValueFrom::inline(agent_ca)
    };
    let mut builder = PlaneBuilder::new(kind, &args.namespace, &args.name)
        .plane_id(args.plane_id.as_deref().unwrap_or(&args.name))
        .client_ca(client_ca)
        .secret_store(args.secret_store.as_deref())
        .observability_plane(args.observability_plane.as_deref())
        .observer_url(args.observer_url.as_deref());
    if let Some(gateway) = gateway_spec(args) {
        builder = builder.gateway(gateway);
    }
    let secret = args.ca_from_secret.then(|| Secret {
        metadata: ObjectMeta {
            name: Some(secret_name),
            namespace: Some(args.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        // `data`, not `stringData`: stringData is write-only, so applying it again would
        // always count as a change.
        data: Some(
            [(
                "ca.crt".to_string(),
                ByteString(agent_ca.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Secret::default()
    });
    (builder.build(), secret)
}

/// A DataPlane's gateway settings, from the flags.
pub(super) fn gateway_spec(args: &ExchangeArgs) -> Option<GatewaySpec> {
    let (public, organization) = (
        args.public_virtual_host.as_ref()?,
        args.organization_virtual_host.as_ref()?,
    );
    Some(GatewaySpec::virtual_hosts(
        public,
        organization,
        i32::from(args.public_http_port),
        i32::from(args.public_https_port),
    ))
}

/// An object as server-side apply takes it (typed objects serialise their apiVersion and kind).
pub(super) fn to_value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// Step 4: the plane (and its CA Secret) into the control plane, or a planes directory.
async fn register_plane(
    control: Option<&Client>,
    kind: PlaneKind,
    args: &ExchangeArgs,
    writes: &[Value],
) -> Result<(), Failure> {
    match (control, &args.planes_dir) {
        (Some(client), _) => {
            for object in writes {
                apply_object(client, object, "step 4 (register the plane)").await?;
            }
            eprintln!(
                "step 4: {} {}/{} registered in context {}",
                kind,
                args.namespace,
                args.name,
                args.control_plane_context.as_deref().unwrap_or_default()
            );
        }
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir).or_else(|e| {
                fail(
                    "step 4 (register the plane)",
                    format!("{}: {e}", dir.display()),
                )
            })?;
            let prefix = kind.plane_type().as_str();
            let file = dir.join(format!("{prefix}-{}.yaml", args.name));
            let tmp = dir.join(format!(".{prefix}-{}.yaml.tmp", args.name));
            std::fs::write(&tmp, to_yaml(writes))
                .and_then(|_| std::fs::rename(&tmp, &file))
                .or_else(|e| {
                    fail(
                        "step 4 (register the plane)",
                        format!("{}: {e}", file.display()),
                    )
                })?;
            eprintln!(
                "step 4: {} written; the gateway picks it up within a second",
                file.display()
            );
        }
        (None, None) => {
            return fail(
                "step 4 (register the plane)",
                "give --control-plane-context or --planes-dir",
            );
        }
    }
    Ok(())
}

/// Step 2's objects: the remote plane's namespace and ConfigMap `cluster-gateway-ca`.
fn remote_objects(remote_ns: &str, gateway_ca: &[CertificateDer<'_>]) -> (Value, Value) {
    let namespace = to_value(&Namespace {
        metadata: ObjectMeta {
            name: Some(remote_ns.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    });
    let config_map = to_value(&ConfigMap {
        metadata: ObjectMeta {
            name: Some(GATEWAY_CA.into()),
            namespace: Some(remote_ns.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(
            [(
                "ca.crt".to_string(),
                trust::pem::certificates_to_pem(gateway_ca),
            )]
            .into(),
        ),
        ..ConfigMap::default()
    });
    (namespace, config_map)
}

async fn exchange(kind: PlaneKind, args: &ExchangeArgs) -> Result<Outcome, Failure> {
    let kubeconfig = args.kubeconfig.as_deref();
    let control = match &args.control_plane_context {
        Some(context) => Some(kube_client(kubeconfig, Some(context)).await.or_else(|e| {
            fail(
                "connecting",
                format!("control-plane context {context}: {e:#}"),
            )
        })?),
        None => None,
    };
    if args.direct {
        let writes = super::direct::prepare(kind, args).await?;
        if args.dry_run {
            print!("{}", to_yaml(&super::direct::redacted(&writes)));
            return Ok(Outcome::Ok);
        }
        register_plane(control.as_ref(), kind, args, &writes).await?;
        if let (Some(client), Some(wait)) = (&control, args.wait) {
            return wait_connected(client, kind, args, wait).await;
        }
        return Ok(Outcome::Ok);
    }
    let remote = kube_client(kubeconfig, Some(&args.remote_context))
        .await
        .or_else(|e| {
            fail(
                "connecting",
                format!("remote context {}: {e:#}", args.remote_context),
            )
        })?;
    let gateway_ca = gateway_ca(control.as_ref(), args).await?;
    eprintln!(
        "step 1: control plane CA read ({} certificate(s))",
        gateway_ca.len()
    );
    if let Some(url) = &args.server_url {
        check_server_url(url, &gateway_ca).await?;
    }

    let remote_ns = remote_namespace(kind, args);
    let (namespace, config_map) = remote_objects(&remote_ns, &gateway_ca);
    if !args.dry_run {
        apply_object(&remote, &namespace, "step 2 (server CA for the agent)").await?;
        apply_object(&remote, &config_map, "step 2 (server CA for the agent)").await?;
        eprintln!(
            "step 2: ConfigMap {remote_ns}/{GATEWAY_CA} in context {} holds the control plane CA",
            args.remote_context
        );
    }

    let agent_ca = agent_ca(&remote, &remote_ns, args, &gateway_ca).await?;
    eprintln!("step 3: agent CA read from Secret {remote_ns}/{AGENT_TLS} and checked");
    let (plane, secret) = plane_object(kind, args, &trust::pem::certificates_to_pem(&agent_ca));
    let mut writes: Vec<Value> = Vec::new();
    writes.extend(secret.as_ref().map(to_value));
    writes.push(to_value(&plane));

    if args.dry_run {
        let mut all = vec![namespace, config_map];
        all.extend(writes);
        print!("{}", to_yaml(&all));
        return Ok(Outcome::Ok);
    }
    register_plane(control.as_ref(), kind, args, &writes).await?;

    if let (Some(client), Some(wait)) = (&control, args.wait) {
        return wait_connected(client, kind, args, wait).await;
    }
    Ok(Outcome::Ok)
}

/// Step 5: until the plane's status says its agent is connected.
async fn wait_connected(
    client: &Client,
    kind: PlaneKind,
    args: &ExchangeArgs,
    wait: Duration,
) -> Result<Outcome, Failure> {
    let gvk = GroupVersionKind::gvk(API_GROUP, "v1alpha1", kind.as_str());
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &args.namespace,
        &ApiResource::from_gvk(&gvk),
    );
    let what = if args.direct {
        "waiting for the controller to reach the remote API server"
    } else {
        "waiting for the agent to connect"
    };
    let mut progress = Progress::new(what.into(), wait);
    let mut last =
        String::from("no status yet (is planelink's or OpenChoreo's controller running?)");
    while progress.elapsed() < wait {
        if let Ok(object) = api.get(&args.name).await {
            let status = object.data.get("status").cloned().unwrap_or(Value::Null);
            let connected = status["conditions"].as_array().and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == crate::planes::conditions::CONNECTED)
            });
            if args.direct && connected.is_some_and(|c| c["status"] == "True") {
                progress.done();
                println!(
                    "connected to the remote API server: {}: {}",
                    args.name,
                    crate::safe_text::printable(
                        connected
                            .and_then(|c| c["message"].as_str())
                            .unwrap_or_default()
                    )
                );
                return Ok(Outcome::Ok);
            }
            if !args.direct && status["agentConnection"]["connected"] == json!(true) {
                progress.done();
                println!(
                    "connected to control plane: {} ({} agent(s))",
                    args.name, status["agentConnection"]["connectedAgents"]
                );
                return Ok(Outcome::Ok);
            }
            if let Some(ready) = status["conditions"].as_array().and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == crate::planes::conditions::READY)
            }) {
                last = format!(
                    "{}: {}",
                    ready["reason"].as_str().unwrap_or(""),
                    ready["message"].as_str().unwrap_or("")
                );
            }
        }
        progress.tick();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    progress.done();
    fail(
        "step 5 (connection)",
        format!(
            "{} within {}s; the plane says {last}",
            if args.direct {
                "the controller did not reach the remote API server"
            } else {
                "no agent connected"
            },
            wait.as_secs()
        ),
    )
}
