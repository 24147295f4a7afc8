//! The CRDs generated from the types, with what derive cannot say: unknown fields kept,
//! documented defaults, planeID required on the cluster-scoped kinds.

/// The CRDs of every kind, as `kubectl apply` takes them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt as _;
    let mut crds = super::kinds::plane_crds();
    crds.push(super::Environment::crd());
    for crd in &mut crds {
        let cluster_scoped = crd.spec.scope == "Cluster";
        for version in &mut crd.spec.versions {
            let mut root = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut());
            for part in ["spec", "status"] {
                if let Some(schema) = root
                    .as_deref_mut()
                    .and_then(|r| r.properties.as_mut())
                    .and_then(|p| p.get_mut(part))
                {
                    preserve_unknown_fields(schema);
                    if part == "spec" {
                        default_agent_disabled(schema);
                    }
                    // OpenChoreo's gateway keys a cluster-scoped plane by its planeID
                    // alone: there is no namespaced name to fall back on.
                    if cluster_scoped && part == "spec" {
                        schema
                            .required
                            .get_or_insert_with(Vec::new)
                            .push("planeID".to_string());
                        if let Some(plane_id) = schema
                            .properties
                            .as_mut()
                            .and_then(|p| p.get_mut("planeID"))
                        {
                            plane_id.nullable = None;
                            plane_id.min_length = Some(1);
                        }
                    }
                }
            }
        }
    }
    crds
}

/// `spec.agent.enabled` defaults to false, as OpenChoreo documents it (`clusterAgent`,
/// the current spelling, is on when given).
fn default_agent_disabled(
    spec: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    if let Some(enabled) = spec
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("agent"))
        .and_then(|agent| agent.properties.as_mut())
        .and_then(|p| p.get_mut("enabled"))
    {
        enabled.default = Some(JSON(serde_json::Value::Bool(false)));
        enabled.description = Some(
            "Whether agent-based communication is enabled (default false, as documented)".into(),
        );
    }
}

/// Marks every object of a schema to keep fields it does not name: these CRDs replace
/// OpenChoreo's, whose controllers may use fields planelink does not know (and newer
/// OpenChoreo releases add some); the API server must not prune them on the way.
fn preserve_unknown_fields(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    if let Some(properties) = schema.properties.as_mut() {
        if schema.additional_properties.is_none() {
            schema.x_kubernetes_preserve_unknown_fields = Some(true);
        }
        properties.values_mut().for_each(preserve_unknown_fields);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => preserve_unknown_fields(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(preserve_unknown_fields)
        }
        None => {}
    }
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serialises"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_are_structural_and_name_both_spellings() {
        let yaml = crds_yaml();
        for needle in [
            "name: dataplanes.openchoreo.dev",
            "name: environments.openchoreo.dev",
            "clusterAgent:",
            "secretKeyRef:",
            "secretRef:",
            "planeID:",
            "observerURL:",
            "publicVirtualHost:",
            "ingress:",
            "listenerName:",
            "subresources:",
            "x-kubernetes-preserve-unknown-fields: true",
            "default: false\n                    description: Whether agent-based communication is enabled (default false, as documented)",
        ] {
            assert!(yaml.contains(needle), "{needle} missing from:\n{yaml}");
        }
    }
}
