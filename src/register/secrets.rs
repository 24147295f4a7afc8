//! `register certs … --secret NAMESPACE/NAME`: certificates kept in Kubernetes Secrets
//! the way cert-manager keeps them, without cert-manager. Run as a Job (or by hand) it is
//! idempotent: a certificate that is still good is kept, one that expires soon or no
//! longer fits is reissued, and a Secret another tool wrote is never overwritten.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use rustls_pki_types::CertificateDer;

use super::Outcome;
use super::args::{CertsDestination, ObjectRef};
use super::certs::Request;
use crate::planes::kubernetes::kube_client;
use crate::planes::secret_data;
use crate::trust::inspect::{Validity, format_time};
use crate::trust::issue::{self, Issued, LeafOptions};
use crate::trust::{self, CertInfo, Usage};

/// The label that marks objects planelink wrote (and may therefore rewrite).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "planelink";
/// Decisions are retried when another writer changed an object between read and write.
const ATTEMPTS: usize = 5;

enum Failure {
    /// Another writer got there first: read and decide again.
    Conflict,
    /// Exit 1 with this message (it names the fix).
    Refused(String),
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Failure {
        match e {
            kube::Error::Api(status) if status.code == 409 => Failure::Conflict,
            kube::Error::Api(status) if status.code == 403 => Failure::Refused(format!(
                "the Kubernetes API refused: {} (the Job's Role must allow get, create and update on \
                 these Secrets and ConfigMaps)",
                status.message
            )),
            other => Failure::Refused(format!("the Kubernetes API: {other}")),
        }
    }
}

pub fn keep(destination: &CertsDestination, request: &Request) -> Outcome {
    let Some(secret) = destination.secret.clone() else {
        eprintln!("error: give --out DIR or --secret NAMESPACE/NAME");
        return Outcome::Usage;
    };
    let _ = rustls::crypto::CryptoProvider::install_default(std::sync::Arc::unwrap_or_clone(
        trust::crypto_provider(),
    ));
    super::block_on(async move {
        let client = match kube_client(
            destination.kubeconfig.as_deref(),
            destination.context.as_deref(),
        )
        .await
        {
            Ok(client) => client,
            Err(e) => {
                eprintln!("error: cannot reach Kubernetes: {e:#}");
                return Outcome::Failed;
            }
        };
        let ca_secret = destination.ca_secret.clone().unwrap_or(ObjectRef {
            namespace: secret.namespace.clone(),
            name: request.default_ca_secret.into(),
        });
        let also_published = match &destination.also_publish_ca {
            None => None,
            Some(path) => match crate::trust::load_certificates(path) {
                Ok(certs) => Some(crate::planes::rollover::bundle_pem(&certs)),
                Err(e) => {
                    eprintln!("error: --also-publish-ca {}: {e}", path.display());
                    return Outcome::Usage;
                }
            },
        };
        let targets = Targets {
            secret,
            ca_secret,
            ca_configmap: destination.ca_configmap.clone(),
            also_published,
            renew_before: destination.renew_before,
        };
        for _ in 0..ATTEMPTS {
            match keep_once(&client, &targets, request).await {
                Ok(()) => return Outcome::Ok,
                Err(Failure::Conflict) => continue,
                Err(Failure::Refused(message)) => {
                    eprintln!("error: {message}");
                    return Outcome::Failed;
                }
            }
        }
        eprintln!(
            "error: {} kept changing while it was being written ({ATTEMPTS} attempts); is another \
             writer (cert-manager, a second Job) managing it?",
            targets.secret
        );
        Outcome::Failed
    })
}

struct Targets {
    secret: ObjectRef,
    ca_secret: ObjectRef,
    ca_configmap: Option<ObjectRef>,
    /// `--also-publish-ca`: published next to the current CA.
    also_published: Option<String>,
    renew_before: Duration,
}

async fn keep_once(client: &Client, targets: &Targets, request: &Request) -> Result<(), Failure> {
    let ca = ca(client, &targets.ca_secret, request).await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), &targets.secret.namespace);
    let existing = secrets.get_opt(&targets.secret.name).await?;
    let reason = match &existing {
        None => "there was none".to_string(),
        Some(existing) => {
            refuse_foreign(existing, &targets.secret)?;
            match judge(existing, &ca, &request.leaf, targets.renew_before) {
                Ok(still_good) => {
                    println!("leaf      Secret {}: kept ({still_good})", targets.secret);
                    return publish_ca(client, targets, &ca).await;
                }
                Err(why) => why,
            }
        }
    };
    let leaf = issue::issue_leaf(&ca, &request.leaf)
        .map_err(|e| Failure::Refused(format!("issuing the certificate: {e}")))?;
    let mut object = tls_secret(&targets.secret, &ca.cert_pem, &leaf);
    match existing {
        None => {
            secrets.create(&PostParams::default(), &object).await?;
        }
        Some(existing) => {
            object.metadata.resource_version = existing.metadata.resource_version;
            object.metadata.labels = merged(existing.metadata.labels, &object.metadata.labels);
            secrets
                .replace(&targets.secret.name, &PostParams::default(), &object)
                .await?;
        }
    }
    let info = describe(&leaf)?;
    println!(
        "leaf      Secret {}: issued, because {reason} ({}, valid until {}; {})",
        targets.secret,
        info.subject,
        format_time(info.not_after),
        covers(&info)
    );
    publish_ca(client, targets, &ca).await
}

/// The CA from its Secret (read, never rewritten), or a new one written there.
async fn ca(client: &Client, at: &ObjectRef, request: &Request) -> Result<Issued, Failure> {
    let api = Api::<Secret>::namespaced(client.clone(), &at.namespace);
    if let Some(existing) = api.get_opt(&at.name).await? {
        let (ca, info) = ca_from_secret(&existing, at)?;
        println!(
            "CA        Secret {at}: reused ({}, valid until {})",
            info.subject,
            format_time(info.not_after)
        );
        return Ok(ca);
    }
    let ca = issue::new_ca(&request.ca).map_err(|e| Failure::Refused(e.to_string()))?;
    api.create(&PostParams::default(), &tls_secret(at, &ca.cert_pem, &ca))
        .await?;
    let info = describe(&ca)?;
    println!(
        "CA        Secret {at}: created ({}, valid until {})\n          sha256 {}",
        info.subject,
        format_time(info.not_after),
        info.sha256_fingerprint
    );
    Ok(ca)
}

/// What a certificate just issued is, for the report.
fn describe(issued: &Issued) -> Result<CertInfo, Failure> {
    issued
        .cert_der()
        .and_then(|der| CertInfo::from_der(&der))
        .map_err(|e| Failure::Refused(e.to_string()))
}

/// A CA Secret as cert-manager writes one (`tls.crt` the CA, `tls.key` its key), checked:
/// a CA that can sign, with its own key, still valid.
fn ca_from_secret(secret: &Secret, at: &ObjectRef) -> Result<(Issued, CertInfo), Failure> {
    let data = secret_data(secret);
    let (Some(cert), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
        return Err(Failure::Refused(format!(
            "Secret {at} has no tls.crt and tls.key: it must hold the CA and its key (as cert-manager \
             writes a CA Certificate's Secret); delete it to let planelink create a new CA, or point \
             --ca-secret at the Secret that holds the CA"
        )));
    };
    let bad = |what: String| Failure::Refused(format!("Secret {at}: {what}"));
    let der = trust::parse_certificates(cert).map_err(|e| bad(format!("tls.crt: {e}")))?;
    let info = CertInfo::from_der(&der[0]).map_err(|e| bad(format!("tls.crt: {e}")))?;
    if !info.can_issue() {
        return Err(bad(format!(
            "tls.crt is a leaf certificate ({}), not a CA; point --ca-secret at the CA's Secret",
            info.subject
        )));
    }
    let key_parsed = trust::parse_private_key(key).map_err(|e| bad(format!("tls.key: {e}")))?;
    if !trust::key_matches(&der[0], &key_parsed).map_err(|e| bad(e.to_string()))? {
        return Err(bad("tls.key is not the key of tls.crt".into()));
    }
    if info.validity_at(SystemTime::now()) == Validity::Expired {
        return Err(bad(format!(
            "the CA expired on {}; delete the Secret to create a new CA (everything that trusts the \
             old one must then be given the new ca.crt)",
            format_time(info.not_after)
        )));
    }
    let ca = Issued::new(
        String::from_utf8_lossy(cert).into_owned(),
        String::from_utf8_lossy(key).into_owned(),
    );
    Ok((ca, info))
}

fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// A Secret planelink did not write is someone else's: never overwritten.
fn refuse_foreign(existing: &Secret, at: &ObjectRef) -> Result<(), Failure> {
    if is_managed(&existing.metadata) {
        return Ok(());
    }
    let owner = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("cert-manager.io/certificate-name"))
        .map(|c| format!(" (cert-manager's Certificate {c} writes it)"))
        .or_else(|| {
            existing
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .map(|m| format!(" (managed by {})", crate::safe_text::escape(m)))
        })
        .unwrap_or_default();
    Err(Failure::Refused(format!(
        "Secret {at} exists and planelink did not write it{owner}; planelink never overwrites \
         another tool's Secret. Keep that tool (the cert-manager overlay), or delete the Secret \
         (kubectl delete secret -n {} {}) and run this again",
        crate::safe_text::shell_word(&at.namespace),
        crate::safe_text::shell_word(&at.name)
    )))
}

/// Whether a Secret planelink wrote still holds a good certificate: `Ok` says why it is
/// kept, `Err` why it must be reissued.
fn judge(
    existing: &Secret,
    ca: &Issued,
    wanted: &LeafOptions,
    renew_before: Duration,
) -> Result<String, String> {
    let data = secret_data(existing);
    let field = |key: &str| {
        data.get(key)
            .ok_or_else(|| format!("the Secret has no {key}"))
    };
    let chain = trust::parse_certificates(field("tls.crt")?)
        .map_err(|e| format!("its tls.crt does not parse ({e})"))?;
    let key = trust::parse_private_key(field("tls.key")?)
        .map_err(|e| format!("its tls.key does not parse ({e})"))?;
    if !trust::key_matches(&chain[0], &key).unwrap_or(false) {
        return Err("its tls.key is not the key of its tls.crt".into());
    }
    let ca_der = ca.cert_der().map_err(|e| e.to_string())?;
    let published = trust::parse_certificates(field("ca.crt")?).unwrap_or_default();
    if published != [ca_der.clone()] {
        return Err("its ca.crt is not the CA's certificate".into());
    }
    let usage = wanted.usages.first().copied().unwrap_or(Usage::ServerAuth);
    let anchors: [CertificateDer<'static>; 1] = [ca_der];
    trust::verify_chain(&chain, &anchors, usage, SystemTime::now())
        .map_err(|e| format!("it does not verify against the CA now ({e})"))?;
    let info = CertInfo::from_der(&chain[0]).map_err(|e| e.to_string())?;
    if trust::verify_chain(&chain, &anchors, usage, SystemTime::now() + renew_before).is_err() {
        return Err(format!(
            "it expires on {}, within --renew-before {}",
            format_time(info.not_after),
            humantime::format_duration(renew_before)
        ));
    }
    let names = wanted
        .dns_names
        .iter()
        .cloned()
        .chain(wanted.ip_addresses.iter().map(ToString::to_string));
    for name in names {
        if trust::hostname::check_host(&chain[0], &name).is_err() {
            return Err(format!("it does not cover {name} ({})", covers(&info)));
        }
    }
    if !info
        .subject
        .ends_with(&format!("CN={}", wanted.common_name))
    {
        return Err(format!(
            "its subject is {}, not CN={}",
            info.subject, wanted.common_name
        ));
    }
    Ok(format!(
        "{}, valid until {}; {}",
        info.subject,
        format_time(info.not_after),
        covers(&info)
    ))
}

fn covers(info: &CertInfo) -> String {
    if info.dns_names.is_empty() && info.ip_addresses.is_empty() {
        format!("usage {}", info.eku_list())
    } else {
        format!("usage {}, SANs {}", info.eku_list(), info.san_list())
    }
}

fn managed_labels() -> BTreeMap<String, String> {
    [(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()
}

fn merged(
    existing: Option<BTreeMap<String, String>>,
    ours: &Option<BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let mut labels = existing.unwrap_or_default();
    labels.extend(ours.clone().unwrap_or_default());
    Some(labels)
}

/// A `kubernetes.io/tls` Secret: `tls.crt`/`tls.key` of `issued`, and `ca.crt`.
fn tls_secret(at: &ObjectRef, ca_pem: &str, issued: &Issued) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(at.name.clone()),
            namespace: Some(at.namespace.clone()),
            labels: Some(managed_labels()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("ca.crt".to_string(), bytes(ca_pem)),
                ("tls.crt".to_string(), bytes(&issued.cert_pem)),
                ("tls.key".to_string(), bytes(issued.key_pem())),
            ]
            .into(),
        ),
        ..Secret::default()
    }
}

/// `ca.crt` of the ConfigMap becomes the CA certificate (the other keys stay). The
/// ConfigMap holds nothing secret, so one written by another tool (OpenChoreo's
/// placeholder) is updated too.
async fn publish_ca(client: &Client, targets: &Targets, ca: &Issued) -> Result<(), Failure> {
    let Some(at) = &targets.ca_configmap else {
        return Ok(());
    };
    // The current CA first, then the other one of a rollover's overlap.
    let published = match &targets.also_published {
        Some(other) if other.trim() != ca.cert_pem.trim() => {
            format!("{}\n{other}", ca.cert_pem.trim_end())
        }
        _ => ca.cert_pem.clone(),
    };
    let api = Api::<ConfigMap>::namespaced(client.clone(), &at.namespace);
    match api.get_opt(&at.name).await? {
        Some(existing)
            if existing
                .data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .is_some_and(|v| v == &published) =>
        {
            println!("CA        ConfigMap {at}: ca.crt already current");
        }
        Some(mut existing) => {
            existing
                .data
                .get_or_insert_with(BTreeMap::new)
                .insert("ca.crt".into(), published.clone());
            api.replace(&at.name, &PostParams::default(), &existing)
                .await?;
            println!("CA        ConfigMap {at}: ca.crt updated");
        }
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(at.name.clone()),
                    namespace: Some(at.namespace.clone()),
                    labels: Some(managed_labels()),
                    ..ObjectMeta::default()
                },
                data: Some([("ca.crt".to_string(), published.clone())].into()),
                ..ConfigMap::default()
            };
            api.create(&PostParams::default(), &map).await?;
            println!("CA        ConfigMap {at}: created with ca.crt");
        }
    }
    Ok(())
}
