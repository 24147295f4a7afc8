//! Request checks on the proxy, as OpenChoreo's gateway makes them and beyond: allowed
//! methods, known targets, traversal and NUL bytes, and path rules that are statements
//! about Kubernetes resources ([`super::paths`]): blocked paths (cluster-wide Secrets,
//! kube-system's Secrets, service-account tokens for every spelling), and optionally an
//! allow-list. Targets and path rules are configurable.

use http::Method;

use super::paths::{ApiPath, PathRule, normalize};
use crate::tunnel::proxy::{ProxyError, Target};

#[derive(Debug, Clone)]
pub struct RequestChecks {
    pub allowed_targets: Vec<Target>,
    pub blocked_paths: Vec<PathRule>,
    /// With `--allowed-paths`: only these are served.
    pub allowed_paths: Option<Vec<PathRule>>,
}

pub const DEFAULT_TARGETS: &str = "k8s,monitoring,logs,agent";
pub const DEFAULT_BLOCKED_PATHS: &str =
    "/api/v1/namespaces/kube-system/secrets,/api/v1/secrets,/api/v1/serviceaccounts";

const ALLOWED_METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];

impl RequestChecks {
    /// `path` is the decoded path below the target.
    pub fn check(&self, method: &Method, target: &Target, path: &str) -> Result<(), ProxyError> {
        if !ALLOWED_METHODS.contains(method) {
            return Err(ProxyError::MethodNotAllowed(format!(
                "HTTP method not allowed: {method}"
            )));
        }
        if !self.allowed_targets.contains(target) {
            let allowed: Vec<&str> = self.allowed_targets.iter().map(Target::as_str).collect();
            return Err(ProxyError::Forbidden(format!(
                "target not allowed: {target} (allowed: {}; add it with --allowed-targets)",
                allowed.join(", ")
            )));
        }
        let normalized = normalize(path).map_err(|e| ProxyError::BadRequest(e.into()))?;
        let api = ApiPath::parse(&normalized);
        let blocked = self
            .blocked_paths
            .iter()
            .any(|rule| rule.matches(&normalized, api.as_ref()))
            || api.as_ref().is_some_and(|api| api.mints_token(method));
        let not_allowed = self.allowed_paths.as_ref().is_some_and(|rules| {
            !rules
                .iter()
                .any(|rule| rule.matches(&normalized, api.as_ref()))
        });
        if blocked || not_allowed {
            return Err(ProxyError::Forbidden(format!(
                "access to path is blocked: {normalized}"
            )));
        }
        Ok(())
    }
}
