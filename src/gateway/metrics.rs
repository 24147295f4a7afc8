//! The gateway's Prometheus metrics.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::trust::tls::ReloadingCert;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaneLabels {
    pub plane_type: String,
    pub plane_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub plane_type: String,
    pub plane_id: String,
    pub target: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub plane_type: String,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

pub struct Metrics {
    pub agents_connected: Family<PlaneLabels, Gauge>,
    pub handshake_rejections: Family<ReasonLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<TargetLabels, Histogram>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub open_streams: Gauge,
    pub certificate_verifications: Counter,
    pub tunnels_replaced: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            agents_connected: Family::default(),
            handshake_rejections: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            bytes: Family::default(),
            open_streams: Gauge::default(),
            certificate_verifications: Counter::default(),
            tunnels_replaced: Counter::default(),
        };
        let registry = registry.sub_registry_with_prefix("planelink_gateway");
        registry.register(
            "agents_connected",
            "Agents connected, per plane",
            metrics.agents_connected.clone(),
        );
        registry.register(
            "handshake_rejections",
            "Agent connections refused, by reason",
            metrics.handshake_rejections.clone(),
        );
        registry.register(
            "proxy_requests",
            "Proxied requests by plane, target and status code",
            metrics.requests.clone(),
        );
        registry.register(
            "proxy_response_seconds",
            "Time from a proxied request to its response headers",
            metrics.request_duration.clone(),
        );
        registry.register(
            "proxy_bytes",
            "Body bytes carried through the proxy (request = to the plane, response = from it)",
            metrics.bytes.clone(),
        );
        registry.register(
            "open_streams",
            "Proxied requests and upgraded streams in flight",
            metrics.open_streams.clone(),
        );
        registry.register(
            "certificate_verifications",
            "Agent certificate chains verified against plane CAs: one per connecting agent, \
             and one per connected agent whenever trust changes",
            metrics.certificate_verifications.clone(),
        );
        registry.register(
            "tunnels_replaced",
            "Agent tunnels replaced by a newer one of the same agent (a renewed certificate), \
             closed once their requests finished",
            metrics.tunnels_replaced.clone(),
        );
        metrics
    }

    pub fn reject(&self, reason: &str) {
        self.handshake_rejections
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn add_bytes(&self, direction: &str, n: u64) {
        self.bytes
            .get_or_create(&DirectionLabels {
                direction: direction.to_string(),
            })
            .inc_by(n);
    }
}

/// The serving certificate's expiry, read at each scrape: the certificate follows its
/// files, so a renewal shows at once.
#[derive(Debug)]
pub struct ServingCertificateExpiry(pub Arc<ReloadingCert>);

impl ServingCertificateExpiry {
    pub fn register(registry: &mut Registry, cert: Arc<ReloadingCert>) {
        registry
            .sub_registry_with_prefix("planelink_gateway")
            .register_collector(Box::new(ServingCertificateExpiry(cert)));
    }
}

impl Collector for ServingCertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(not_after) = self.0.not_after_unix() else {
            return Ok(());
        };
        let metric = encoder.encode_descriptor(
            "serving_certificate_expiry_timestamp_seconds",
            "When the serving certificate (--server-cert) expires (Unix time)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(not_after).encode(metric)
    }
}
