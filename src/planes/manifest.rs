//! Decoding manifest files (a planes directory) into the CRD types of [`super::crd`] and
//! v1 Secrets: the same types the Kubernetes source reads, so a plane means the same
//! thing from either source. Several YAML documents per file, JSON values or streams,
//! and `List`s are accepted, as `kubectl apply -f` accepts them.

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use super::PlaneKind;
use super::crd::{AnyPlane, DEFAULT_NAMESPACE};
use crate::safe_text::{redact_values, yaml_error, yaml_options};

pub const API_GROUP: &str = "openchoreo.dev";
pub const API_VERSION: &str = "openchoreo.dev/v1alpha1";

/// One decoded object.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Plane(Box<AnyPlane>),
    Secret(Box<Secret>),
    /// A kind the registry does not use; kept so callers can say what they skipped.
    Other {
        kind: String,
        name: String,
    },
}

/// Just enough of an object to know how to decode the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: NameOnly,
    #[serde(default)]
    items: Option<Vec<serde_json::Value>>,
}

#[derive(Default, Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: String,
}

/// Decodes one document (already a JSON value); a `List` yields its items.
pub fn parse_document(doc: serde_json::Value) -> Result<Vec<Object>, String> {
    if doc.is_null() {
        return Ok(Vec::new());
    }
    let meta = TypeMeta::deserialize(&doc).map_err(|e| redact_values(&e.to_string()))?;
    if meta.kind.ends_with("List") {
        let mut out = Vec::new();
        for item in meta.items.unwrap_or_default() {
            out.extend(parse_document(item)?);
        }
        return Ok(out);
    }
    let (kind, name) = (meta.kind, meta.metadata.name);
    if kind.is_empty() {
        return Err("the document has no kind".into());
    }
    if name.is_empty() {
        return Err(format!("{kind} without metadata.name"));
    }
    if kind == "Secret" {
        let mut secret: Secret = serde_json::from_value(doc).map_err(|e| {
            format!(
                "Secret {name}: {}; data values are base64, put plain text under stringData instead",
                redact_values(&e.to_string())
            )
        })?;
        secret
            .metadata
            .namespace
            .get_or_insert_with(|| DEFAULT_NAMESPACE.to_string());
        return Ok(vec![Object::Secret(Box::new(secret))]);
    }
    let Some(plane_kind) = PlaneKind::parse(&kind) else {
        return Ok(vec![Object::Other { kind, name }]);
    };
    if !meta.api_version.starts_with(&format!("{API_GROUP}/")) {
        return Err(format!(
            "{kind} {name}: apiVersion {:?} is not in group {API_GROUP}; write apiVersion: {API_VERSION}",
            meta.api_version
        ));
    }
    let mut plane = AnyPlane::from_value(plane_kind, doc)
        .map_err(|e| format!("{kind} {name}: {}", redact_values(&e.to_string())))?;
    if plane_kind.cluster_scoped() {
        // As the API server would: a cluster-scoped object has no namespace, and its
        // planeID is required (the gateway has no namespaced name to fall back on).
        plane.meta_mut().namespace = None;
        if plane.common().plane_id.is_none_or(str::is_empty) {
            return Err(format!(
                "{kind} {name}: spec.planeID is required on a cluster-scoped plane; set it to \
                 the planeID its agents send"
            ));
        }
    } else {
        plane
            .meta_mut()
            .namespace
            .get_or_insert_with(|| DEFAULT_NAMESPACE.to_string());
    }
    Ok(vec![Object::Plane(Box::new(plane))])
}

/// Decodes a file's text: several YAML documents, or JSON (one value or a stream).
pub fn parse_file(text: &str, is_json: bool) -> Result<Vec<Object>, String> {
    let docs: Vec<serde_json::Value> = if is_json {
        serde_json::Deserializer::from_str(text)
            .into_iter::<serde_json::Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid JSON: {}", redact_values(&e.to_string())))?
    } else {
        serde_saphyr::from_multiple_with_options(text, yaml_options())
            .map_err(|e| format!("invalid YAML: {}", yaml_error(&e)))?
    };
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let objects = parse_document(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        out.extend(objects);
    }
    Ok(out)
}

/// Writes objects as a multi-document YAML stream, as `kubectl apply -f` reads it.
pub fn to_yaml<T: serde::Serialize>(objects: &[T]) -> String {
    objects
        .iter()
        .map(|o| format!("---\n{}", serde_saphyr::to_string(o).unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::crd::PlaneResource as _;
    use crate::planes::secret_data;

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
  gateway: {publicVirtualHost: a.example.com, organizationVirtualHost: b.example.com}
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
        let Object::Plane(plane) = &objects[0] else {
            panic!("{objects:?}")
        };
        let AnyPlane::DataPlane(dp) = plane.as_ref() else {
            panic!("{objects:?}")
        };
        assert_eq!(dp.plane_id(), "us-east");
        assert_eq!(dp.cr().namespace.as_deref(), Some("org"));
        assert_eq!(dp.client_ca().unwrap().secret().unwrap().name, "agent-ca");
        let Object::Plane(plane) = &objects[1] else {
            panic!()
        };
        let AnyPlane::BuildPlane(bp) = plane.as_ref() else {
            panic!()
        };
        assert_eq!(bp.plane_id(), "builds");
        assert_eq!(bp.cr().namespace.as_deref(), Some(DEFAULT_NAMESPACE));
        let secret_ref = bp.client_ca().unwrap().secret().unwrap();
        assert_eq!(secret_ref.key.as_deref(), Some("ca.pem"));
        let Object::Secret(s) = &objects[2] else {
            panic!()
        };
        let data = secret_data(s);
        assert_eq!(data["ca.crt"], b"hello");
        assert_eq!(data["extra"], b"plain");
    }

    #[test]
    fn json_streams_lists_and_unused_kinds() {
        let objects = parse_file(
            r#"{"apiVersion":"v1","kind":"List","items":[
                 {"apiVersion":"openchoreo.dev/v1alpha1","kind":"ObservabilityPlane","metadata":{"name":"obs"},"spec":{}}]}
               {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            true,
        )
        .unwrap();
        let Object::Plane(p) = &objects[0] else {
            panic!()
        };
        assert!(
            !p.agent_enabled(),
            "a plane without an agent block is not agent-enabled, as from Kubernetes"
        );
        assert!(matches!(&objects[1], Object::Other { kind, .. } if kind == "ConfigMap"));
    }

    /// A mistake in a file holding a private key names where, never what.
    #[test]
    fn errors_never_echo_values() {
        let secret = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData:\n  tls.key: {secret}\n  bad: [unclosed\n"
        );
        let err = parse_file(&yaml, false).unwrap_err();
        assert!(!err.contains("MIIEvQ"), "{err}");
        assert!(err.starts_with("invalid YAML: line "), "{err}");
        let typed = format!(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {{name: a}}\nspec: {{gateway: {{publicVirtualHost: a, organizationVirtualHost: b, publicHTTPPort: \"{secret}\"}}}}\n"
        );
        let err = parse_file(&typed, false).unwrap_err();
        assert!(!err.contains("MIIEvQ"), "{err}");
        assert!(err.contains("invalid type: string \"…\""), "{err}");
    }

    /// OpenChoreo's newer kinds serve the same plane types: a WorkflowPlane is a build
    /// plane, a cluster-scoped kind has no namespace (`_cluster` in proxy paths) and its
    /// Secret references name their own.
    #[test]
    fn newer_and_cluster_scoped_kinds() {
        let objects = parse_file(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: WorkflowPlane\nmetadata: {name: wf, namespace: org}\n\
             spec: {clusterAgent: {clientCA: {value: PEM}}}\n---\n\
             apiVersion: openchoreo.dev/v1alpha1\nkind: ClusterDataPlane\nmetadata: {name: shared, namespace: ignored}\n\
             spec: {planeID: prod, clusterAgent: {clientCA: {secretKeyRef: {name: ca, namespace: planes, key: ca.crt}}},\n\
             gateway: {publicVirtualHost: p, organizationVirtualHost: o}}\n",
            false,
        )
        .unwrap();
        let planes: Vec<&AnyPlane> = objects
            .iter()
            .map(|o| match o {
                Object::Plane(p) => p.as_ref(),
                other => panic!("not a plane: {other:?}"),
            })
            .collect();
        assert_eq!(planes[0].kind(), PlaneKind::WorkflowPlane);
        assert_eq!(planes[0].key().to_string(), "buildplane/wf");
        assert_eq!(planes[0].cr().to_string(), "org/wf");
        assert_eq!(planes[1].kind(), PlaneKind::ClusterDataPlane);
        assert_eq!(planes[1].key().to_string(), "dataplane/prod");
        assert_eq!(planes[1].cr().to_string(), "_cluster/shared");
        assert_eq!(planes[1].meta().namespace, None);

        let unnamed = crate::planes::crd::ValueFrom::from_secret(None, "ca", "ca.crt");
        let err = crate::planes::registry::resolve_client_ca(
            PlaneKind::ClusterDataPlane,
            crate::planes::registry::CLUSTER_SCOPE,
            Some(&unnamed),
            |_, _| None,
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "ClusterDataPlane clientCA's secretKeyRef names no namespace, and a cluster-scoped \
             plane has none to lend it; add the Secret's namespace to the secretKeyRef"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse_file(
            "kind: DataPlane\napiVersion: v1\nmetadata: {name: a}\n",
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "document 1: DataPlane a: apiVersion \"v1\" is not in group openchoreo.dev; write apiVersion: openchoreo.dev/v1alpha1"
        );
        let err = parse_file("kind: DataPlane\nmetadata: {}\n", false).unwrap_err();
        assert_eq!(err, "document 1: DataPlane without metadata.name");
        let err = parse_file(
            "kind: Secret\nmetadata: {name: s}\ndata: {ca.crt: '-----BEGIN'}\n",
            false,
        )
        .unwrap_err();
        assert!(
            err.ends_with("put plain text under stringData instead"),
            "{err}"
        );
        let err = parse_file(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: a}\n\
             spec: {gateway: {ingress: {external: {namespace: ns1}}}}\n",
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "document 1: DataPlane a: spec.gateway.ingress.external: missing field `name`"
        );
        let err = parse_file(
            "apiVersion: openchoreo.dev/v1alpha1\nkind: ClusterDataPlane\nmetadata: {name: a}\n\
             spec: {gateway: {publicVirtualHost: p, organizationVirtualHost: o}}\n",
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "document 1: ClusterDataPlane a: spec.planeID is required on a cluster-scoped plane; \
             set it to the planeID its agents send"
        );
        assert!(
            parse_file("a: [unclosed", false)
                .unwrap_err()
                .starts_with("invalid YAML")
        );
    }
}
