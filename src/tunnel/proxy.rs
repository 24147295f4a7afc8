//! The proxy core both ends share: the [`Target`] a request names, [`ProxyError`] (the
//! response and the metric label of every refusal and failure), waiting for a response
//! head with a time limit unless the request streams, and the pump that carries an
//! upgraded connection (exec, attach, port-forward) after a 101.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{self, Body, BoxError};
use super::protocol::REQUEST_ID_HEADER;

/// The longest target name: a DNS label, as route names are.
const MAX_TARGET: usize = 63;

/// What a proxied request is for, on the agent's side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `k8s`: the remote plane's Kubernetes API, with the agent's identity.
    Kubernetes,
    /// `agent`: the agent's own information.
    Agent,
    /// A route of the agent's `--routes` file (or a name only OpenChoreo agents serve).
    Named(String),
}

impl Target {
    pub const KUBERNETES: &'static str = "k8s";
    pub const AGENT: &'static str = "agent";

    pub fn as_str(&self) -> &str {
        match self {
            Target::Kubernetes => Target::KUBERNETES,
            Target::Agent => Target::AGENT,
            Target::Named(name) => name,
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    /// Names are DNS labels: lower-case letters, digits and `-`, at most 63 characters.
    fn from_str(name: &str) -> Result<Target, String> {
        let valid = !name.is_empty()
            && name.len() <= MAX_TARGET
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            let shown: String = name.chars().take(MAX_TARGET + 1).collect();
            return Err(format!(
                "target {shown:?} is not a name (lower-case letters, digits and '-', at most {MAX_TARGET})"
            ));
        }
        Ok(match name {
            Target::KUBERNETES => Target::Kubernetes,
            Target::AGENT => Target::Agent,
            other => Target::Named(other.to_string()),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why planelink itself answered instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    TooLarge(String),
    /// A request planelink understands but cannot serve for this plane.
    #[error("{0}")]
    NotImplemented(String),
    /// No connected agent can carry the request (here: another gateway replica, or this
    /// one a moment later, may have one): 503 with `Retry-After`.
    #[error("{0}")]
    NoAgent(String),
    /// The tunnel or the upstream failed before a response head.
    #[error("{0}")]
    Failed(String),
    /// No response head within the time limit.
    #[error("{0}")]
    TimedOut(String),
}

/// What a caller is told to wait when no agent can carry its request: agents redial
/// within a second or two of a gateway replica starting.
pub const NO_AGENT_RETRY_AFTER: http::HeaderValue = http::HeaderValue::from_static("1");

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoAgent(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Failed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `reason` label of the metrics that count refusals and failures.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::TooLarge(_) => "too_large",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::NoAgent(_) => "no_agent",
            ProxyError::Failed(_) => "failed",
            ProxyError::TimedOut(_) => "timed_out",
        }
    }

    /// The Kubernetes-style JSON error response, marked with who produced it (`source`)
    /// and carrying the request ID.
    pub fn into_response(self, source: &str, request_id: &str) -> Response<Body> {
        let mut response = body::error_response(self.status(), source, &self.to_string());
        set_request_id(response.headers_mut(), request_id);
        if let ProxyError::NoAgent(_) = self {
            // client-go retries a 5xx that carries Retry-After.
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, NO_AGENT_RETRY_AFTER);
        }
        response
    }
}

pub fn set_request_id(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
}

/// Long-lived responses get no time limit: watches, followed logs, upgrades.
pub fn is_streaming(method: &Method, path: &str, query: Option<&str>, upgrade: bool) -> bool {
    if upgrade {
        return true;
    }
    let flag_set = |name: &str| {
        query.is_some_and(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == name && (v == "true" || v == "1"))
        })
    };
    method == Method::GET && (flag_set("watch") || flag_set("follow") || path.contains("/watch/"))
}

/// Waits for the response head of `sent`: without a limit when the request streams,
/// else for `limit`. `what` names the other end in the messages, `failed` says what its
/// failure means ("dropped the request").
pub async fn response_head<B, E: std::fmt::Display>(
    sent: impl Future<Output = Result<Response<B>, E>>,
    streaming: bool,
    limit: Duration,
    what: &str,
    failed: &str,
) -> Result<Response<B>, ProxyError> {
    let result = if streaming {
        sent.await
    } else {
        match tokio::time::timeout(limit, sent).await {
            Ok(result) => result,
            Err(_) => {
                return Err(ProxyError::TimedOut(format!(
                    "{what} did not answer within {} (--request-timeout)",
                    humantime::format_duration(limit)
                )));
            }
        }
    };
    result.map_err(|e| ProxyError::Failed(format!("{what} {failed}: {e}")))
}

/// Carries an upgraded connection once `on_upgrade` resolves: bytes from it go to
/// `outgoing`, frames of `incoming` are written to it, until both directions end.
pub async fn pump_upgraded(
    on_upgrade: OnUpgrade,
    incoming: Body,
    outgoing: http_body_util::channel::Sender<Bytes, BoxError>,
    request_id: String,
    side: &'static str,
) {
    match on_upgrade.await {
        Ok(upgraded) => {
            let (sent, received) = body::pump(TokioIo::new(upgraded), incoming, outgoing).await;
            tracing::info!(request_id = %request_id, sent, received, "upgraded stream closed");
        }
        Err(e) => tracing::warn!(request_id = %request_id, error = %e, "{side}'s upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        assert_eq!("k8s".parse::<Target>(), Ok(Target::Kubernetes));
        assert_eq!("agent".parse::<Target>(), Ok(Target::Agent));
        assert_eq!("logs".parse::<Target>().unwrap().as_str(), "logs");
        assert!("K8S".parse::<Target>().is_err());
        assert!("".parse::<Target>().is_err());
        assert!("a/b".parse::<Target>().is_err());
        assert!("x".repeat(64).parse::<Target>().is_err());
    }

    #[test]
    fn errors_map_to_status_and_label() {
        let e = ProxyError::TimedOut("late".into());
        assert_eq!(
            (e.status(), e.metric_label()),
            (StatusCode::GATEWAY_TIMEOUT, "timed_out")
        );
        let e = ProxyError::NoAgent("none".into());
        assert_eq!(
            (e.status(), e.metric_label()),
            (StatusCode::SERVICE_UNAVAILABLE, "no_agent")
        );
        let response = e.into_response("gateway", "id-0");
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        let response = ProxyError::Forbidden("no".into()).into_response("gateway", "id-1");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "id-1");
    }

    #[tokio::test(start_paused = true)]
    async fn response_head_limits_only_non_streaming_requests() {
        let never = std::future::pending::<Result<Response<()>, String>>;
        let limited = response_head(
            never(),
            false,
            Duration::from_secs(30),
            "plane p1",
            "failed",
        )
        .await;
        assert_eq!(
            limited.unwrap_err(),
            ProxyError::TimedOut("plane p1 did not answer within 30s (--request-timeout)".into())
        );
        let streaming = tokio::time::timeout(
            Duration::from_secs(3600),
            response_head(never(), true, Duration::from_secs(30), "plane p1", "failed"),
        )
        .await;
        assert!(
            streaming.is_err(),
            "a streaming request waits as long as it takes"
        );
    }
}
