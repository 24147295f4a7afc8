//! Kubernetes-style manifests of plane resources and Secrets, as a planes directory
//! holds them: only the fields the gateway's trust decisions need, both spellings of
//! DESIGN.md accepted (`spec.clusterAgent` / `spec.agent`, `secretKeyRef` / `secretRef`).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::PlaneType;

pub const API_GROUP: &str = "openchoreo.dev";
pub const API_VERSION: &str = "openchoreo.dev/v1alpha1";

/// Where a value comes from: inline, or a key of a Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// The older spelling of `secretKeyRef`.
    #[serde(default)]
    pub secret_ref: Option<SecretKeyRef>,
}

impl ValueFrom {
    pub fn secret(&self) -> Option<&SecretKeyRef> {
        self.secret_key_ref.as_ref().or(self.secret_ref.as_ref())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    /// Defaults to the namespace of the resource that refers to it.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Defaults to `ca.crt`, the key cert-manager writes.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentSpec {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default, rename = "clientCA")]
    client_ca: Option<ValueFrom>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlaneSpec {
    #[serde(default, rename = "planeID")]
    plane_id: Option<String>,
    #[serde(default)]
    cluster_agent: Option<AgentSpec>,
    #[serde(default)]
    agent: Option<AgentSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    generation: Option<i64>,
}

/// A plane custom resource (DataPlane, BuildPlane, ObservabilityPlane, or a
/// cluster-scoped `Cluster…` variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneObject {
    pub plane_type: PlaneType,
    /// `None` for a cluster-scoped resource.
    pub namespace: Option<String>,
    pub name: String,
    /// `spec.planeID`, or the name when unset.
    pub plane_id: String,
    pub generation: Option<i64>,
    /// `false` when `spec.agent.enabled: false`: the plane is reached directly, not by agents.
    pub agent_enabled: bool,
    pub client_ca: Option<ValueFrom>,
}

/// A v1 Secret, its `data` decoded and its `stringData` merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretObject {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Plane(PlaneObject),
    Secret(SecretObject),
    /// A kind the registry does not use; kept so callers can say what they skipped.
    Other {
        kind: String,
        name: String,
    },
}

/// The namespace kubectl would use for a namespaced object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Option<serde_json::Value>,
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
    #[serde(default)]
    string_data: Option<BTreeMap<String, String>>,
    #[serde(default)]
    items: Option<Vec<serde_json::Value>>,
}

/// Parses one document (already turned into JSON values); a `List` yields its items.
pub fn parse_document(doc: serde_json::Value) -> Result<Vec<Object>, String> {
    if doc.is_null() {
        return Ok(Vec::new());
    }
    let envelope: Envelope = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    if envelope.kind.ends_with("List") {
        let mut out = Vec::new();
        for item in envelope.items.unwrap_or_default() {
            out.extend(parse_document(item)?);
        }
        return Ok(out);
    }
    let name = envelope.metadata.name.clone();
    if envelope.kind.is_empty() {
        return Err("the document has no kind".into());
    }
    if name.is_empty() {
        return Err(format!("{} without metadata.name", envelope.kind));
    }
    if envelope.kind == "Secret" {
        return secret(envelope).map(|s| vec![Object::Secret(s)]);
    }
    let (cluster_scoped, plane_kind) = match envelope.kind.strip_prefix("Cluster") {
        Some(rest) => (true, rest),
        None => (false, envelope.kind.as_str()),
    };
    let Some(plane_type) = PlaneType::ALL.into_iter().find(|t| t.kind() == plane_kind) else {
        return Ok(vec![Object::Other {
            kind: envelope.kind,
            name,
        }]);
    };
    if !envelope.api_version.starts_with(&format!("{API_GROUP}/")) {
        return Err(format!(
            "{} {name}: apiVersion {:?} is not in group {API_GROUP}; write apiVersion: {API_VERSION}",
            envelope.kind, envelope.api_version
        ));
    }
    let spec: PlaneSpec = match envelope.spec {
        Some(spec) => serde_json::from_value(spec)
            .map_err(|e| format!("{} {name}: spec: {e}", envelope.kind))?,
        None => PlaneSpec::default(),
    };
    let agent = spec.cluster_agent.or(spec.agent).unwrap_or_default();
    let namespace = if cluster_scoped {
        None
    } else {
        Some(
            envelope
                .metadata
                .namespace
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        )
    };
    Ok(vec![Object::Plane(PlaneObject {
        plane_type,
        namespace,
        plane_id: spec
            .plane_id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| name.clone()),
        name,
        generation: envelope.metadata.generation,
        agent_enabled: agent.enabled != Some(false),
        client_ca: agent.client_ca,
    })])
}

fn secret(envelope: Envelope) -> Result<SecretObject, String> {
    let name = envelope.metadata.name;
    let mut data = BTreeMap::new();
    for (key, value) in envelope.data.unwrap_or_default() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| {
                format!("Secret {name}: data.{key} is not base64 ({e}); put plain text under stringData instead")
            })?;
        data.insert(key, decoded);
    }
    for (key, value) in envelope.string_data.unwrap_or_default() {
        data.insert(key, value.into_bytes());
    }
    Ok(SecretObject {
        namespace: envelope
            .metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        name,
        data,
    })
}

/// Parses a file's text: several YAML documents, or JSON (one value or a stream).
pub fn parse_file(text: &str, is_json: bool) -> Result<Vec<Object>, String> {
    let docs: Vec<serde_json::Value> = if is_json {
        serde_json::Deserializer::from_str(text)
            .into_iter::<serde_json::Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_saphyr::from_multiple(text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let objects = parse_document(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        out.extend(objects);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_and_defaults() {
        let objects = parse_file(
            r#"
apiVersion: openchoreo.dev/v1alpha1
kind: DataPlane
metadata: {name: prod, namespace: org}
spec:
  planeID: us-east
  clusterAgent:
    clientCA:
      secretKeyRef: {name: agent-ca}
---
apiVersion: openchoreo.dev/v1alpha1
kind: BuildPlane
metadata: {name: builds}
spec:
  agent:
    enabled: true
    clientCA:
      secretRef: {name: b, namespace: other, key: ca.pem}
---
apiVersion: v1
kind: Secret
metadata: {name: agent-ca, namespace: org}
data: {ca.crt: aGVsbG8=}
stringData: {extra: plain}
---
"#,
            false,
        )
        .unwrap();
        assert_eq!(objects.len(), 3);
        let Object::Plane(dp) = &objects[0] else {
            panic!("{objects:?}")
        };
        assert_eq!(dp.plane_id, "us-east");
        assert_eq!(dp.namespace.as_deref(), Some("org"));
        assert_eq!(
            dp.client_ca.as_ref().unwrap().secret().unwrap().name,
            "agent-ca"
        );
        let Object::Plane(bp) = &objects[1] else {
            panic!()
        };
        assert_eq!(bp.plane_id, "builds");
        assert_eq!(bp.namespace.as_deref(), Some(DEFAULT_NAMESPACE));
        let secret_ref = bp.client_ca.as_ref().unwrap().secret().unwrap();
        assert_eq!(secret_ref.key.as_deref(), Some("ca.pem"));
        let Object::Secret(s) = &objects[2] else {
            panic!()
        };
        assert_eq!(s.data["ca.crt"], b"hello");
        assert_eq!(s.data["extra"], b"plain");
    }

    #[test]
    fn json_streams_lists_and_cluster_scope() {
        let objects = parse_file(
            r#"{"apiVersion":"v1","kind":"List","items":[
                 {"apiVersion":"openchoreo.dev/v1alpha1","kind":"ClusterDataPlane","metadata":{"name":"shared"}}]}
               {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            true,
        )
        .unwrap();
        let Object::Plane(p) = &objects[0] else {
            panic!()
        };
        assert_eq!(p.namespace, None);
        assert!(p.agent_enabled);
        assert!(matches!(&objects[1], Object::Other { kind, .. } if kind == "ConfigMap"));
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse_file(
            "kind: DataPlane\napiVersion: v1\nmetadata: {name: a}\n",
            false,
        )
        .unwrap_err();
        assert!(err.contains("openchoreo.dev/v1alpha1"), "{err}");
        let err = parse_file("kind: DataPlane\nmetadata: {}\n", false).unwrap_err();
        assert!(err.contains("without metadata.name"), "{err}");
        let err = parse_file(
            "kind: Secret\nmetadata: {name: s}\ndata: {ca.crt: '-----BEGIN'}\n",
            false,
        )
        .unwrap_err();
        assert!(err.contains("stringData"), "{err}");
        assert!(
            parse_file("a: [unclosed", false)
                .unwrap_err()
                .contains("invalid YAML")
        );
    }
}
