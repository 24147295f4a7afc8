//! Request checks on the proxy, as OpenChoreo's gateway makes them: allowed methods,
//! known targets, blocked paths (cluster-wide Secrets, service-account tokens),
//! traversal and NUL bytes. Targets and blocked paths are configurable.

use http::Method;

use crate::tunnel::proxy::{ProxyError, Target};

#[derive(Debug, Clone)]
pub struct RequestChecks {
    pub allowed_targets: Vec<Target>,
    pub blocked_paths: Vec<String>,
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

fn matches_prefix(path: &str, blocked: &str) -> bool {
    let path = path.trim_end_matches('/');
    let blocked = blocked.trim_end_matches('/');
    path == blocked
        || path
            .strip_prefix(blocked)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token` mints tokens.
fn is_token_request(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    method == Method::POST
        && segments.len() == 7
        && segments[0] == "api"
        && segments[1] == "v1"
        && segments[2] == "namespaces"
        && !segments[3].is_empty()
        && segments[4] == "serviceaccounts"
        && !segments[5].is_empty()
        && segments[6] == "token"
}

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
        if path.contains('\0') {
            return Err(ProxyError::BadRequest("path contains null bytes".into()));
        }
        if path.contains("..") {
            return Err(ProxyError::BadRequest(
                "path contains directory traversal".into(),
            ));
        }
        if self.blocked_paths.iter().any(|b| matches_prefix(path, b))
            || is_token_request(method, path)
        {
            return Err(ProxyError::Forbidden(format!(
                "access to path is blocked: {path}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn checks() -> RequestChecks {
        RequestChecks {
            allowed_targets: DEFAULT_TARGETS
                .split(',')
                .map(|t| t.parse().unwrap())
                .collect(),
            blocked_paths: DEFAULT_BLOCKED_PATHS.split(',').map(String::from).collect(),
        }
    }

    fn status(result: Result<(), ProxyError>) -> StatusCode {
        result.unwrap_err().status()
    }

    #[test]
    fn openchoreo_rules() {
        let c = checks();
        let k8s = Target::Kubernetes;
        assert!(
            c.check(&Method::GET, &k8s, "/api/v1/namespaces/default/pods")
                .is_ok()
        );
        assert_eq!(
            status(c.check(&Method::TRACE, &k8s, "/")),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(c.check(&Method::GET, &"db".parse().unwrap(), "/")),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(c.check(&Method::GET, &k8s, "/api/v1/secrets")),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(c.check(&Method::GET, &k8s, "/api/v1/secrets/")),
            StatusCode::FORBIDDEN
        );
        assert!(c.check(&Method::GET, &k8s, "/api/v1/secretsx").is_ok());
        assert_eq!(
            status(c.check(
                &Method::POST,
                &k8s,
                "/api/v1/namespaces/a/serviceaccounts/b/token"
            )),
            StatusCode::FORBIDDEN
        );
        assert!(
            c.check(
                &Method::GET,
                &k8s,
                "/api/v1/namespaces/a/serviceaccounts/b/token"
            )
            .is_ok()
        );
        assert_eq!(
            status(c.check(&Method::GET, &k8s, "/a/../b")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(c.check(&Method::GET, &k8s, "/a\0")),
            StatusCode::BAD_REQUEST
        );
    }
}
