//! Environment: a deployment stage, and its reference to a data plane.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::planes::PlaneKind;

/// A deployment stage (development, staging, production) bound to a DataPlane.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "openchoreo.dev",
    version = "v1alpha1",
    kind = "Environment",
    doc = "An Environment: a deployment stage bound to a DataPlane",
    namespaced,
    shortname = "env",
    category = "openchoreo",
    printcolumn = r#"{"name":"DataPlane","type":"string","jsonPath":".spec.dataPlaneRef"}"#,
    printcolumn = r#"{"name":"Production","type":"boolean","jsonPath":".spec.isProduction"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// The data plane this environment deploys to: a DataPlane of its namespace by name,
    /// or (newer OpenChoreo) `{kind, name}` naming a DataPlane or ClusterDataPlane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub data_plane_ref: Option<DataPlaneRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_production: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<EnvironmentGateway>,
}

/// An Environment's `dataPlaneRef`, in either of OpenChoreo's shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataPlaneRef {
    Name(String),
    Object {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        name: String,
    },
}

impl DataPlaneRef {
    /// The plane named, and whether it is cluster-scoped (a ClusterDataPlane).
    pub fn target(&self) -> (PlaneKind, &str) {
        match self {
            DataPlaneRef::Name(name) => (PlaneKind::DataPlane, name),
            DataPlaneRef::Object { kind, name } => match kind.as_deref() {
                Some("ClusterDataPlane") => (PlaneKind::ClusterDataPlane, name),
                _ => (PlaneKind::DataPlane, name),
            },
        }
    }
}

/// A value of any JSON shape, kept as given (a field OpenChoreo's releases spell two ways).
fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentGateway {
    /// Subdomain prefix for deployed applications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_prefix: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::crd::ObservabilityPlaneRef;

    /// An Environment's dataPlaneRef in either shape, and an observabilityPlaneRef's kind
    /// by default the referrer's scope.
    #[test]
    fn references_in_every_shape() {
        let env = |spec: serde_json::Value| -> Environment {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "openchoreo.dev/v1alpha1", "kind": "Environment",
                "metadata": {"name": "dev", "namespace": "org"}, "spec": spec
            }))
            .unwrap()
        };
        let target = |e: Environment| {
            let r = e.spec.data_plane_ref.unwrap();
            let (kind, name) = r.target();
            (kind, name.to_string())
        };
        assert_eq!(
            target(env(serde_json::json!({"dataPlaneRef": "dp"}))),
            (PlaneKind::DataPlane, "dp".into())
        );
        assert_eq!(
            target(env(
                serde_json::json!({"dataPlaneRef": {"kind": "ClusterDataPlane", "name": "shared"}})
            )),
            (PlaneKind::ClusterDataPlane, "shared".into())
        );
        assert_eq!(
            target(env(serde_json::json!({"dataPlaneRef": {"name": "dp"}}))),
            (PlaneKind::DataPlane, "dp".into())
        );

        let named = |kind: Option<&str>| ObservabilityPlaneRef {
            kind: kind.map(str::to_string),
            name: "obs".into(),
        };
        assert_eq!(
            named(None).target_kind(PlaneKind::DataPlane),
            Some(PlaneKind::ObservabilityPlane)
        );
        assert_eq!(
            named(None).target_kind(PlaneKind::ClusterDataPlane),
            Some(PlaneKind::ClusterObservabilityPlane)
        );
        assert_eq!(
            named(Some("ClusterObservabilityPlane")).target_kind(PlaneKind::WorkflowPlane),
            Some(PlaneKind::ClusterObservabilityPlane)
        );
        assert_eq!(
            named(Some("DataPlane")).target_kind(PlaneKind::DataPlane),
            None
        );
    }
}
