//! Header rules both ends of the tunnel apply when they forward a request or response.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus our own
/// control headers, which callers must not be able to inject.
pub fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "http2-settings"
    ) || name.as_str().starts_with("planelink-")
}

/// Copies end-to-end headers, also dropping those the `Connection` header names.
pub fn end_to_end_headers(from: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if !is_hop_header(name) && !named.iter().any(|n| n == name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Identity is the agent's: a caller's `Authorization` never reaches an upstream that
/// authenticates the agent (`drop_authorization`: Kubernetes always), and `Impersonate-*`,
/// `X-Remote-*` (front-proxy identity) and `X-Forwarded-*` never reach any upstream unless
/// a route opts in to impersonation. Otherwise any caller could act as whoever the agent
/// may impersonate.
pub fn strip_caller_identity(
    headers: &mut HeaderMap,
    drop_authorization: bool,
    pass_impersonation: bool,
) {
    if drop_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    let banned: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            (name.starts_with("impersonate-") && !pass_impersonation)
                || name.starts_with("x-remote-")
                || name.starts_with("x-forwarded-")
                || name == "forwarded"
        })
        .cloned()
        .collect();
    for name in banned {
        headers.remove(name);
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to, if any.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}
