//! The HTTPS client planelink uses towards upstreams (the agent's targets) and the
//! gateway's internal listener (the controller): pooled HTTP/1.1 over rustls.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE_PER_HOST: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled HTTPS client (HTTP/1.1) sending planelink bodies.
pub type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<HttpConnector>,
    crate::tunnel::Body,
>;

pub fn http_client(connector: hyper_rustls::HttpsConnector<HttpConnector>) -> HttpsClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(connector)
}

/// `server_name`: the name every server's certificate is checked for, whatever address
/// the URL names (one replica of a service, reached at its own address); `None`: the
/// URL's host.
pub fn connector(
    tls: rustls::ClientConfig,
    server_name: Option<rustls_pki_types::ServerName<'static>>,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    match server_name {
        Some(name) => builder
            .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            .enable_http1()
            .wrap_connector(http),
        None => builder.enable_http1().wrap_connector(http),
    }
}
