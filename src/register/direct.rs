//! `register dataplane|buildplane|observabilityplane NAME --direct --remote-context CTX`:
//! a plane the controller reaches without an agent, built from a kubeconfig context (what
//! OpenChoreo's `add-default-dataplane.sh --multi-cluster` does). The context's server, CA
//! and client certificate or token are checked, then used once against the API server as
//! the controller will use them, before anything is written; the credentials go into a
//! Secret of the control plane that the plane references.

use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use rustls_pki_types::CertificateDer;
use secrecy::ExposeSecret as _;
use serde_json::Value;

use super::args::ExchangeArgs;
use super::exchange::{Failure, fail, gateway_spec, to_value};
use crate::planes::PlaneKind;
use crate::planes::crd::{
    AnyPlane, KubernetesAuth, KubernetesClusterSpec, KubernetesTls, MtlsAuth, PlaneBuilder,
    ValueFrom,
};
use crate::planes::kubernetes::{client_config, kube_config};
use crate::trust::{self, CertInfo, Eku, Validity};

const STEP_READ: &str = "step 1 (the remote context's credentials)";
const STEP_CHECK: &str = "step 2 (check the credentials)";
const STEP_REACH: &str = "step 3 (reach the remote API server)";

/// How the controller will authenticate to the remote API server.
enum Auth {
    ClientCertificate {
        chain: Vec<CertificateDer<'static>>,
        key_pem: String,
    },
    Token(String),
}

/// What a kubeconfig context gives direct mode.
struct Credentials {
    server: String,
    ca: Vec<CertificateDer<'static>>,
    auth: Auth,
}

/// Keys of the Secret holding the credentials (cert-manager's and kubectl's names).
const CA_KEY: &str = "ca.crt";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
const TOKEN_KEY: &str = "token";

/// Reads data given inline (base64, as kubeconfig `*-data` fields hold it) or from a file.
fn data_or_file(
    data: Option<&str>,
    file: Option<&str>,
    what: &str,
    context: &str,
) -> Result<Option<Vec<u8>>, Failure> {
    use base64::Engine as _;
    if let Some(data) = data.filter(|d| !d.trim().is_empty()) {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Some)
            .or_else(|e| {
                fail(
                    STEP_READ,
                    format!("context {context}: {what} data is not base64 ({e})"),
                )
            });
    }
    match file.filter(|f| !f.is_empty()) {
        Some(path) => std::fs::read(path).map(Some).or_else(|e| {
            fail(
                STEP_READ,
                format!("context {context}: cannot read {what} file {path}: {e}"),
            )
        }),
        None => Ok(None),
    }
}

/// The context's server, CA and credentials, as the controller will need them.
async fn read_credentials(args: &ExchangeArgs) -> Result<Credentials, Failure> {
    let context = args.remote_context.as_str();
    let config = kube_config(args.kubeconfig.as_deref(), Some(context))
        .await
        .or_else(|e| fail(STEP_READ, format!("context {context}: {e:#}")))?;
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let ca: Vec<CertificateDer<'static>> = config
        .root_cert
        .iter()
        .flatten()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    if ca.is_empty() {
        let why = if config.accept_invalid_certs {
            "skips TLS verification (insecure-skip-tls-verify)"
        } else {
            "names no certificate authority"
        };
        return fail(
            STEP_READ,
            format!(
                "context {context} {why}; the controller verifies the remote API server, so give \
                 the context certificate-authority-data (the API server's CA)"
            ),
        );
    }
    let user = &config.auth_info;
    if user.exec.is_some() || user.auth_provider.is_some() {
        return fail(
            STEP_READ,
            format!(
                "context {context} authenticates with an exec plugin or auth provider, which the \
                 controller cannot run; use a context with a client certificate or a service \
                 account token (kubectl create token SERVICE_ACCOUNT)"
            ),
        );
    }
    let cert = data_or_file(
        user.client_certificate_data.as_deref(),
        user.client_certificate.as_deref(),
        "client certificate",
        context,
    )?;
    let key = data_or_file(
        user.client_key_data.as_ref().map(|k| k.expose_secret()),
        user.client_key.as_deref(),
        "client key",
        context,
    )?;
    let token = match (&user.token, &user.token_file) {
        (Some(token), _) => Some(token.expose_secret().trim().to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .or_else(|e| {
                    fail(
                        STEP_READ,
                        format!("context {context}: cannot read token file {path}: {e}"),
                    )
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());
    let auth = match (cert, key, token) {
        (Some(cert), Some(key), _) => {
            let chain = trust::parse_certificates(&cert).or_else(|e| {
                fail(
                    STEP_READ,
                    format!("context {context}: client certificate: {e}"),
                )
            })?;
            let key = trust::parse_private_key(&key)
                .or_else(|e| fail(STEP_READ, format!("context {context}: client key: {e}")))?;
            Auth::ClientCertificate {
                chain,
                key_pem: key.to_pem(),
            }
        }
        (Some(_), None, _) | (None, Some(_), _) => {
            return fail(
                STEP_READ,
                format!(
                    "context {context} gives a client certificate or key without the other; give \
                     both (client-certificate-data and client-key-data)"
                ),
            );
        }
        (None, None, Some(token)) => Auth::Token(token),
        (None, None, None) => {
            return fail(
                STEP_READ,
                format!(
                    "context {context} has no client certificate and no token; direct mode needs \
                     one of them"
                ),
            );
        }
    };
    Ok(Credentials { server, ca, auth })
}

/// When a JWT bearer token (a service account's) expires: its `exp` claim, if it has one.
fn token_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?,
    )
    .ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(exp))
}

/// A token that expires within this is refused: the controller would lose the plane soon
/// after it was registered.
const SHORT_LIVED_TOKEN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The checks the API server would make, said before the controller meets them.
fn check_credentials(credentials: &Credentials, context: &str) -> Result<(), Failure> {
    let now = SystemTime::now();
    if let Auth::Token(token) = &credentials.auth
        && let Some(expiry) = token_expiry(token)
        && expiry < now + SHORT_LIVED_TOKEN
    {
        let when = trust::inspect::format_system_time(expiry);
        let state = if expiry <= now { "expired" } else { "expires" };
        return fail(
            STEP_CHECK,
            format!(
                "context {context}: its token {state} on {when}, and the controller would lose the \
                 plane then; give a long-lived token (a Secret of type \
                 kubernetes.io/service-account-token, or kubectl create token --duration=8760h)"
            ),
        );
    }
    // A bundle may hold the server's own certificate next to its CA (kube-apiserver's
    // self-signed apiserver.crt does): one CA among them is what verification needs.
    let mut subjects = Vec::new();
    for der in &credentials.ca {
        let info = CertInfo::from_der(der)
            .or_else(|e| fail(STEP_CHECK, format!("context {context}: CA: {e}")))?;
        if info.can_issue() {
            subjects.clear();
            break;
        }
        subjects.push(info.subject);
    }
    if !subjects.is_empty() {
        return fail(
            STEP_CHECK,
            format!(
                "context {context}: the certificate authority holds no CA certificate (only {}); \
                 give the API server's CA (certificate-authority-data)",
                subjects.join(", ")
            ),
        );
    }
    if let Auth::ClientCertificate { chain, key_pem } = &credentials.auth {
        let leaf = chain.first().ok_or_else(|| Failure {
            step: STEP_CHECK,
            message: format!("context {context}: the client certificate data holds none"),
        })?;
        let info = CertInfo::from_der(leaf).or_else(|e| {
            fail(
                STEP_CHECK,
                format!("context {context}: client certificate: {e}"),
            )
        })?;
        match info.validity_at(now) {
            Validity::Valid => {}
            Validity::Expired => {
                return fail(
                    STEP_CHECK,
                    format!(
                        "context {context}: the client certificate ({}) expired on {}; renew it",
                        info.subject,
                        trust::inspect::format_time(info.not_after)
                    ),
                );
            }
            Validity::NotYetValid => {
                return fail(
                    STEP_CHECK,
                    format!(
                        "context {context}: the client certificate ({}) is not valid before {}; \
                         check this host's clock",
                        info.subject,
                        trust::inspect::format_time(info.not_before)
                    ),
                );
            }
        }
        if !info.allows_eku(&Eku::ClientAuth) {
            return fail(
                STEP_CHECK,
                format!(
                    "context {context}: the client certificate ({}) does not allow clientAuth \
                     (its extended key usages: {}); issue one for client authentication",
                    info.subject,
                    info.eku_list()
                ),
            );
        }
        let key = trust::parse_private_key(key_pem.as_bytes())
            .or_else(|e| fail(STEP_CHECK, format!("context {context}: client key: {e}")))?;
        if !trust::key_matches(leaf, &key)
            .or_else(|e| fail(STEP_CHECK, format!("context {context}: client key: {e}")))?
        {
            return fail(
                STEP_CHECK,
                format!(
                    "context {context}: the client key is not the key of the client certificate \
                     ({}); give the key issued with it",
                    info.subject
                ),
            );
        }
    }
    Ok(())
}

/// One request with exactly these credentials, through the client the controller builds
/// from them (the server, the CA and the one way of authenticating: nothing else of the
/// context, such as impersonation or a proxy, reaches the controller).
async fn reach(credentials: &Credentials, context: &str) -> Result<String, Failure> {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let server = credentials.server.as_str();
    let auth = match &credentials.auth {
        Auth::ClientCertificate { chain, key_pem } => serde_json::json!({
            "client-certificate-data": b64(&trust::pem::certificates_to_pem(chain)),
            "client-key-data": b64(key_pem),
        }),
        Auth::Token(token) => serde_json::json!({ "token": token }),
    };
    let ca = trust::pem::certificates_to_pem(&credentials.ca);
    let config = client_config(server, Some(ca.as_bytes()), auth)
        .or_else(|problem| fail(STEP_REACH, format!("context {context}: {problem}")))?;
    let client = Client::try_from(config)
        .or_else(|e| fail(STEP_REACH, format!("context {context}: {e}")))?;
    match tokio::time::timeout(
        std::time::Duration::from_secs(15),
        client.apiserver_version(),
    )
    .await
    {
        Ok(Ok(version)) => Ok(version.git_version),
        Ok(Err(kube::Error::Api(status))) if status.code == 401 || status.code == 403 => fail(
            STEP_REACH,
            format!(
                "{server} refused context {context}'s credentials ({} {}); the controller would be \
                 refused the same way: give credentials the remote cluster accepts",
                status.code, status.reason
            ),
        ),
        Ok(Err(e)) => fail(
            STEP_REACH,
            format!(
                "cannot reach {server} with context {context}'s credentials: {e}; the controller \
                 would fail the same way"
            ),
        ),
        Err(_) => fail(
            STEP_REACH,
            format!("{server} did not answer within 15 s; is it reachable from here?"),
        ),
    }
}

/// The address is this host's own: reachable from the controller only if it runs here.
fn is_loopback(server: &str) -> bool {
    url::Url::parse(server)
        .ok()
        .and_then(|u| match u.host() {
            Some(url::Host::Ipv4(ip)) => Some(ip.is_loopback()),
            Some(url::Host::Ipv6(ip)) => Some(ip.is_loopback()),
            Some(url::Host::Domain(name)) => Some(name == "localhost"),
            None => None,
        })
        .unwrap_or(false)
}

/// The Secret holding the credentials, and the plane referencing it.
fn objects(kind: PlaneKind, args: &ExchangeArgs, credentials: &Credentials) -> Vec<Value> {
    let secret_name = format!("{}-kubernetes-cluster", args.name);
    let reference = |key: &str| ValueFrom::from_secret(Some(&args.namespace), &secret_name, key);
    let mut data = vec![(
        CA_KEY.to_string(),
        trust::pem::certificates_to_pem(&credentials.ca),
    )];
    let auth = match &credentials.auth {
        Auth::ClientCertificate { chain, key_pem } => {
            data.push((CERT_KEY.into(), trust::pem::certificates_to_pem(chain)));
            data.push((KEY_KEY.into(), key_pem.clone()));
            KubernetesAuth {
                mtls: Some(MtlsAuth {
                    client_cert: reference(CERT_KEY),
                    client_key: reference(KEY_KEY),
                }),
                bearer_token: None,
            }
        }
        Auth::Token(token) => {
            data.push((TOKEN_KEY.into(), token.clone()));
            KubernetesAuth {
                mtls: None,
                bearer_token: Some(reference(TOKEN_KEY)),
            }
        }
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(args.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    };
    let mut builder = PlaneBuilder::new(kind, &args.namespace, &args.name)
        .kubernetes_cluster(KubernetesClusterSpec {
            server: credentials.server.clone(),
            tls: KubernetesTls {
                ca: reference(CA_KEY),
            },
            auth,
        })
        .secret_store(args.secret_store.as_deref())
        .observability_plane(args.observability_plane.as_deref())
        .observer_url(args.observer_url.as_deref());
    if let Some(id) = &args.plane_id {
        builder = builder.plane_id(id);
    }
    if let Some(gateway) = gateway_spec(args) {
        builder = builder.gateway(gateway);
    }
    let plane: AnyPlane = builder.build();
    vec![to_value(&secret), to_value(&plane)]
}

/// The objects as `--dry-run` shows them: a Secret's values (a private key, a token) are
/// replaced by their size, which `kubectl apply` refuses rather than storing.
pub(super) fn redacted(objects: &[Value]) -> Vec<Value> {
    use base64::Engine as _;
    let mut objects = objects.to_vec();
    for object in &mut objects {
        if object["kind"] != "Secret" {
            continue;
        }
        if let Some(data) = object.get_mut("data").and_then(Value::as_object_mut) {
            for value in data.values_mut() {
                let size = value
                    .as_str()
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .map_or(0, |bytes| bytes.len());
                *value = Value::String(format!("<redacted: {size} bytes>"));
            }
        }
    }
    objects
}

/// Steps 1-3 for direct mode: the objects to write once every check passed.
pub(super) async fn prepare(kind: PlaneKind, args: &ExchangeArgs) -> Result<Vec<Value>, Failure> {
    let context = args.remote_context.as_str();
    let credentials = read_credentials(args).await?;
    let how = match &credentials.auth {
        Auth::ClientCertificate { chain, .. } => chain
            .first()
            .and_then(|c| CertInfo::from_der(c).ok())
            .map(|i| format!("client certificate {}", i.subject))
            .unwrap_or_else(|| "client certificate".into()),
        Auth::Token(_) => "bearer token".into(),
    };
    eprintln!(
        "step 1: context {context}: server {}, {} CA certificate(s), {how}",
        credentials.server,
        credentials.ca.len()
    );
    check_credentials(&credentials, context)?;
    eprintln!("step 2: the CA is a CA; the credentials are complete and current");
    let version = reach(&credentials, context).await?;
    eprintln!(
        "step 3: {} answered with these credentials (Kubernetes {version})",
        credentials.server
    );
    if is_loopback(&credentials.server) && args.control_plane_context.as_deref() != Some(context) {
        eprintln!(
            "warning: {} is a loopback address: the controller reaches it only if it runs on \
             this host; use an address the control plane can route to",
            credentials.server
        );
    }
    Ok(objects(kind, args, &credentials))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Usage;
    use crate::trust::issue::{CaOptions, LeafOptions, Window, issue_leaf, new_ca};
    use std::time::Duration;

    fn credentials(
        ca: &trust::issue::Issued,
        leaf: &trust::issue::Issued,
        key: &str,
    ) -> Credentials {
        Credentials {
            server: "https://k8s.example.com:6443".into(),
            ca: vec![ca.cert_der().unwrap()],
            auth: Auth::ClientCertificate {
                chain: vec![leaf.cert_der().unwrap()],
                key_pem: key.to_string(),
            },
        }
    }

    fn message(result: Result<(), Failure>) -> String {
        match result {
            Ok(()) => "ok".into(),
            Err(failure) => format!("{}: {}", failure.step, failure.message),
        }
    }

    /// Each mistake a kubeconfig context can hold is named with its fix before the
    /// controller meets it.
    #[test]
    fn credential_mistakes_are_named() {
        let ca = new_ca(&CaOptions::gateway()).unwrap();
        let good = issue_leaf(&ca, &LeafOptions::client("admin")).unwrap();
        assert_eq!(
            message(check_credentials(
                &credentials(&ca, &good, good.key_pem()),
                "ctx"
            )),
            "ok"
        );

        let other = issue_leaf(&ca, &LeafOptions::client("other")).unwrap();
        assert_eq!(
            message(check_credentials(
                &credentials(&ca, &good, other.key_pem()),
                "ctx"
            )),
            "step 2 (check the credentials): context ctx: the client key is not the key of the \
             client certificate (O=planelink, CN=admin); give the key issued with it"
        );

        let server_only = issue_leaf(
            &ca,
            &LeafOptions::client("admin").usages(vec![Usage::ServerAuth]),
        )
        .unwrap();
        assert_eq!(
            message(check_credentials(
                &credentials(&ca, &server_only, server_only.key_pem()),
                "ctx"
            )),
            "step 2 (check the credentials): context ctx: the client certificate (O=planelink, CN=admin) does \
             not allow clientAuth (its extended key usages: serverAuth); issue one for client \
             authentication"
        );

        let now = SystemTime::now();
        let expired = issue_leaf(
            &ca,
            &LeafOptions::client("admin").window(Window {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            }),
        )
        .unwrap();
        let said = message(check_credentials(
            &credentials(&ca, &expired, expired.key_pem()),
            "ctx",
        ));
        assert!(
            said.starts_with(
                "step 2 (check the credentials): context ctx: the client certificate (O=planelink, CN=admin) expired on "
            ) && said.ends_with("; renew it"),
            "{said}"
        );

        // A leaf where the API server's CA belongs.
        assert_eq!(
            message(check_credentials(
                &credentials(&good, &good, good.key_pem()),
                "ctx"
            )),
            "step 2 (check the credentials): context ctx: the certificate authority holds no CA \
             certificate (only O=planelink, CN=admin); give the API server's CA \
             (certificate-authority-data)"
        );
    }

    /// A short-lived service-account token (what `kubectl create token` gives by default)
    /// is refused with the fix; a token without `exp` is taken as it is.
    #[test]
    fn short_lived_tokens_are_refused() {
        use base64::Engine as _;
        let jwt = |claims: serde_json::Value| {
            let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
            format!(
                "{}.{}.c2ln",
                b64(br#"{"alg":"RS256"}"#),
                b64(claims.to_string().as_bytes())
            )
        };
        let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let with_token = |token: String| Credentials {
            server: "https://k8s.example.com".into(),
            ca: vec![new_ca(&CaOptions::gateway()).unwrap().cert_der().unwrap()],
            auth: Auth::Token(token),
        };
        let in_an_hour = jwt(serde_json::json!({"exp": unix(SystemTime::now()) + 3600}));
        let said = message(check_credentials(&with_token(in_an_hour), "ctx"));
        assert!(
            said.starts_with("step 2 (check the credentials): context ctx: its token expires on ")
                && said.ends_with(
                    ", and the controller would lose the plane then; give a long-lived token (a \
                     Secret of type kubernetes.io/service-account-token, or kubectl create token \
                     --duration=8760h)"
                ),
            "{said}"
        );
        let in_a_year = jwt(serde_json::json!({"exp": unix(SystemTime::now()) + 365 * 86400}));
        assert_eq!(
            message(check_credentials(&with_token(in_a_year), "ctx")),
            "ok"
        );
        assert_eq!(
            message(check_credentials(&with_token("static-token".into()), "ctx")),
            "ok"
        );
    }

    /// A dry run shows what would be written, never the key or token itself.
    #[test]
    fn dry_runs_redact_secret_values() {
        let objects = vec![
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                "data": {"tls.key": "c2VjcmV0LWtleQ==", "token": "dG9rZW4="}}),
            serde_json::json!({"kind": "DataPlane", "metadata": {"name": "dp"}, "spec": {"planeID": "dp"}}),
        ];
        let shown = redacted(&objects);
        assert_eq!(
            shown[0]["data"],
            serde_json::json!({"tls.key": "<redacted: 10 bytes>", "token": "<redacted: 5 bytes>"})
        );
        assert_eq!(shown[1], objects[1]);
    }

    #[test]
    fn loopback_servers_are_named() {
        assert!(is_loopback("https://127.0.0.1:6443"));
        assert!(is_loopback("https://localhost:6443"));
        assert!(is_loopback("https://[::1]:6443"));
        assert!(!is_loopback("https://k8s-api.example.com:6443"));
        assert!(!is_loopback("https://10.0.0.1"));
    }
}
