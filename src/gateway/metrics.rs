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
pub struct ProtocolLabels {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

pub struct Metrics {
    pub agents_connected: Family<PlaneLabels, Gauge>,
    pub tunnels: Family<ProtocolLabels, Gauge>,
    pub handshake_rejections: Family<ReasonLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<TargetLabels, Histogram>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub open_streams: Gauge,
    pub certificate_verifications: Counter,
    pub tunnels_replaced: Counter,
    pub ca_proposals: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            agents_connected: Family::default(),
            tunnels: Family::default(),
            handshake_rejections: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            bytes: Family::default(),
            open_streams: Gauge::default(),
            certificate_verifications: Counter::default(),
            tunnels_replaced: Counter::default(),
            ca_proposals: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("planelink_gateway");
        registry.register(
            "agents_connected",
            "Agents connected, per plane",
            metrics.agents_connected.clone(),
        );
        registry.register(
            "tunnels",
            "Agent tunnels open, by the protocol the agent speaks (planelink.v1-h2, planelink.v1, openchoreo)",
            metrics.tunnels.clone(),
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
        registry.register(
            "ca_proposals",
            "CA rollovers proposed by agents, by result (accepted, invalid, unauthorised)",
            metrics.ca_proposals.clone(),
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

    pub fn ca_proposal(&self, result: &str) {
        self.ca_proposals
            .get_or_create(&ResultLabels {
                result: result.to_string(),
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

/// The client CAs each plane CR trusts and the certificates of the connected agents,
/// read at each scrape from the registry and the hub: when each expires (Unix time).
pub struct PlaneCertificateExpiry(Arc<super::Core>);

impl std::fmt::Debug for PlaneCertificateExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlaneCertificateExpiry")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrLabels {
    plane_type: String,
    plane_id: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    plane_type: String,
    plane_id: String,
    instance: String,
}

impl PlaneCertificateExpiry {
    pub(crate) fn register(registry: &mut Registry, core: Arc<super::Core>) {
        registry
            .sub_registry_with_prefix("planelink_gateway")
            .register_collector(Box::new(PlaneCertificateExpiry(core)));
    }
}

impl Collector for PlaneCertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let core = &self.0;
        if let Some(snapshot) = core.registry.current() {
            let mut family = encoder.encode_descriptor(
                "client_ca_expiry_timestamp_seconds",
                "When the last CA of each plane CR's clientCA expires (Unix time): its agents \
                 are cut off then unless a renewed CA is registered",
                None,
                MetricType::Gauge,
            )?;
            for entry in &snapshot.entries {
                let Ok(cas) = &entry.client_ca else { continue };
                let Some(latest) = cas
                    .iter()
                    .filter_map(|c| crate::trust::CertInfo::from_der(c).ok())
                    .map(|i| i.not_after.unix_timestamp())
                    .max()
                else {
                    continue;
                };
                let labels = CrLabels {
                    plane_type: entry.key.plane_type.as_str().to_string(),
                    plane_id: entry.key.plane_id.clone(),
                    namespace: entry.cr.namespace_or_cluster().to_string(),
                    name: entry.cr.name.clone(),
                };
                ConstGauge::new(latest).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "agent_certificate_expiry_timestamp_seconds",
            "When each connected agent's client certificate expires (Unix time)",
            None,
            MetricType::Gauge,
        )?;
        for agent in core.hub.agents().iter().filter(|a| a.is_usable()) {
            let Some(not_after) = agent.certificate_not_after() else {
                continue;
            };
            let labels = AgentLabels {
                plane_type: agent.key.plane_type.as_str().to_string(),
                plane_id: agent.key.plane_id.clone(),
                instance: agent
                    .hello
                    .instance
                    .clone()
                    .unwrap_or_else(|| agent.id.to_string()),
            };
            ConstGauge::new(not_after.as_second()).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
