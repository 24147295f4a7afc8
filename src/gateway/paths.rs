//! What a proxied path names, so that path rules are statements about Kubernetes
//! resources and hold for every spelling the API server accepts: `//` and `/./` are
//! collapsed, the legacy `/api/v1/watch/…` prefix is understood, core (`/api/v1`) and
//! grouped (`/apis/GROUP/VERSION`) paths, namespaced and all-namespaces forms, names and
//! subresources. The path given here is already percent-decoded once, as the API server
//! decodes it.

/// A path with `//` and `/./` collapsed and no trailing slash; `..` and NUL refused.
pub fn normalize(path: &str) -> Result<String, &'static str> {
    if path.contains('\0') {
        return Err("path contains null bytes");
    }
    let mut segments = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err("path contains directory traversal"),
            other => segments.push(other),
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

/// A Kubernetes API resource path, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    /// `""` for the core group (`/api/v1`).
    pub group: String,
    pub resource: String,
    /// `None` for cluster-scoped resources and the all-namespaces form.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status`, `token`, `exec`, `log`… (joined with `/` when deeper).
    pub subresource: Option<String>,
}

/// Subresources of a Namespace object itself (`/api/v1/namespaces/NAME/status`).
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl ApiPath {
    /// Parses a normalized path; `None` for non-resource paths (`/version`, `/apis`, …).
    pub fn parse(normalized: &str) -> Option<ApiPath> {
        let segments: Vec<&str> = normalized.trim_start_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return None,
        };
        let rest = match rest {
            ["watch", rest @ ..] => rest,
            rest => rest,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, sub] if NAMESPACE_SUBRESOURCES.contains(sub) => {
                return Some(ApiPath::new(
                    group,
                    "namespaces",
                    None,
                    Some(ns),
                    Some(sub.to_string()),
                ));
            }
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
            rest => (None, rest),
        };
        let (resource, name, subresource) = match rest {
            [] => return None,
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(*name), None),
            [resource, name, sub @ ..] => (*resource, Some(*name), Some(sub.join("/"))),
        };
        Some(ApiPath::new(group, resource, namespace, name, subresource))
    }

    fn new(
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        subresource: Option<String>,
    ) -> ApiPath {
        ApiPath {
            group: group.to_string(),
            resource: resource.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource,
        }
    }

    /// `POST …/serviceaccounts/NAME/token` mints a token for that account.
    pub fn mints_token(&self, method: &http::Method) -> bool {
        method == http::Method::POST
            && self.group.is_empty()
            && self.resource == "serviceaccounts"
            && self.subresource.as_deref() == Some("token")
    }
}

/// Which namespaces a resource rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// Written without a namespace: the cluster-scoped or all-namespaces form only.
    AllAtOnce,
    /// `namespaces/*/…`: any one namespace, and the all-namespaces form.
    Any,
    Exactly(String),
}

/// One `--blocked-paths` or `--allowed-paths` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    /// A resource (any version of its group), in some namespaces, optionally one object;
    /// it covers the object's subresources and watches of it too.
    Resource {
        group: String,
        resource: String,
        namespaces: Namespaces,
        name: Option<String>,
    },
    /// A non-resource path (`/version`, `/metrics`): it and everything below it.
    Prefix(String),
}

impl PathRule {
    pub fn parse(rule: &str) -> Result<PathRule, String> {
        let normalized = normalize(rule.trim()).map_err(|e| format!("{rule:?}: {e}"))?;
        let Some(api) = ApiPath::parse(&normalized) else {
            return Ok(PathRule::Prefix(normalized));
        };
        if api.subresource.is_some() {
            return Err(format!(
                "{rule:?} names a subresource; name the resource (its subresources are covered)"
            ));
        }
        let namespaces = match api.namespace.as_deref() {
            None => Namespaces::AllAtOnce,
            Some("*") => Namespaces::Any,
            Some(ns) => Namespaces::Exactly(ns.to_string()),
        };
        Ok(PathRule::Resource {
            group: api.group,
            resource: api.resource,
            namespaces,
            name: api.name,
        })
    }

    /// Whether a request for `normalized` (parsed as `api`) falls under this rule.
    pub fn matches(&self, normalized: &str, api: Option<&ApiPath>) -> bool {
        match self {
            PathRule::Prefix(prefix) => {
                prefix == "/"
                    || normalized == prefix
                    || normalized
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            PathRule::Resource {
                group,
                resource,
                namespaces,
                name,
            } => api.is_some_and(|api| {
                &api.group == group
                    && &api.resource == resource
                    && name.as_ref().is_none_or(|n| api.name.as_ref() == Some(n))
                    && match namespaces {
                        Namespaces::AllAtOnce => api.namespace.is_none(),
                        Namespaces::Any => true,
                        Namespaces::Exactly(ns) => api.namespace.as_ref() == Some(ns),
                    }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(path: &str) -> Option<ApiPath> {
        ApiPath::parse(&normalize(path).unwrap())
    }

    #[test]
    fn spellings_name_the_same_resource() {
        let list = api("/api/v1/namespaces/kube-system/secrets").unwrap();
        for spelling in [
            "/api/v1/watch/namespaces/kube-system/secrets",
            "//api/v1//namespaces/kube-system/./secrets/",
            "/api/./v1/namespaces/kube-system/secrets",
        ] {
            let parsed = api(spelling).unwrap();
            assert_eq!(
                (&parsed.resource, &parsed.namespace),
                (&list.resource, &list.namespace),
                "{spelling}"
            );
        }
        let grouped = api("/apis/apps/v1/namespaces/a/deployments/web/scale").unwrap();
        assert_eq!(grouped.group, "apps");
        assert_eq!(grouped.name.as_deref(), Some("web"));
        assert_eq!(grouped.subresource.as_deref(), Some("scale"));
        let ns_status = api("/api/v1/namespaces/a/status").unwrap();
        assert_eq!(
            (ns_status.resource.as_str(), ns_status.name.as_deref()),
            ("namespaces", Some("a"))
        );
        assert_eq!(api("/version"), None);
        assert_eq!(api("/apis"), None);
        assert_eq!(
            normalize("/a/../b"),
            Err("path contains directory traversal")
        );
    }

    #[test]
    fn rules_are_about_resources() {
        let cluster_secrets = PathRule::parse("/api/v1/secrets").unwrap();
        let kube_system = PathRule::parse("/api/v1/namespaces/kube-system/secrets").unwrap();
        let any_deployments = PathRule::parse("/apis/apps/v1/namespaces/*/deployments").unwrap();
        let check = |rule: &PathRule, path: &str| {
            let normalized = normalize(path).unwrap();
            rule.matches(&normalized, ApiPath::parse(&normalized).as_ref())
        };
        assert!(check(&cluster_secrets, "/api/v1/watch/secrets"));
        assert!(check(&cluster_secrets, "/api/v1/secrets"));
        assert!(!check(&cluster_secrets, "/api/v1/namespaces/app/secrets"));
        assert!(!check(&cluster_secrets, "/api/v1/secretsx"));
        assert!(check(
            &kube_system,
            "/api/v1/watch/namespaces/kube-system/secrets"
        ));
        assert!(check(
            &kube_system,
            "/api/v1/namespaces/kube-system/secrets/token-abc"
        ));
        assert!(!check(
            &kube_system,
            "/api/v1/namespaces/kube-public/secrets"
        ));
        assert!(check(
            &any_deployments,
            "/apis/apps/v2/namespaces/x/deployments/web"
        ));
        assert!(check(&any_deployments, "/apis/apps/v1/deployments"));
        assert!(!check(&any_deployments, "/apis/batch/v1/namespaces/x/jobs"));
        let metrics = PathRule::parse("/metrics").unwrap();
        assert!(check(&metrics, "//metrics/cadvisor"));
        assert!(!check(&metrics, "/metricsx"));
        assert!(PathRule::parse("/api/v1/namespaces/a/pods/p/exec").is_err());
    }
}
