//! The agent's Prometheus metrics (`planelink_agent_*`), served on its health port.

use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub target: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub target: String,
    pub direction: String,
}

pub struct Metrics {
    tunnels: Gauge,
    gateway_replicas: Gauge,
    dials: Family<ResultLabels, Counter>,
    disconnects: Counter,
    requests: Family<RequestLabels, Counter>,
    /// The sum of `requests`, not exported: tells the connect loop a tunnel was used.
    served_total: Counter,
    response_seconds: Family<TargetLabels, Histogram>,
    bytes: Family<BytesLabels, Counter>,
    pub open_streams: Gauge,
    client_certificate_expiry: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            tunnels: Gauge::default(),
            gateway_replicas: Gauge::default(),
            dials: Family::default(),
            disconnects: Counter::default(),
            requests: Family::default(),
            served_total: Counter::default(),
            response_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            bytes: Family::default(),
            open_streams: Gauge::default(),
            client_certificate_expiry: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix("planelink_agent");
        registry.register(
            "tunnels",
            "Tunnels to the gateway that are up (0: the plane is unreachable from the control plane)",
            metrics.tunnels.clone(),
        );
        registry.register(
            "gateway_replicas",
            "Gateway replicas the gateway last reported; the agent holds a tunnel to each (fewer tunnels: it is still dialling)",
            metrics.gateway_replicas.clone(),
        );
        registry.register(
            "dials",
            "Attempts to open a tunnel, by result: connected, or the step that failed \
             (identity, connect, tls, refused, upgrade, not_planelink)",
            metrics.dials.clone(),
        );
        registry.register(
            "disconnects",
            "Tunnels lost after they were up (the agent then reconnects)",
            metrics.disconnects.clone(),
        );
        registry.register(
            "requests",
            "Tunnelled requests served, by target and status code",
            metrics.requests.clone(),
        );
        registry.register(
            "response_seconds",
            "Time from a tunnelled request to the upstream's response headers, by target",
            metrics.response_seconds.clone(),
        );
        registry.register(
            "bytes",
            "Body bytes carried, by target and direction (request = to the upstream)",
            metrics.bytes.clone(),
        );
        registry.register(
            "open_streams",
            "Tunnelled requests and upgraded streams in flight",
            metrics.open_streams.clone(),
        );
        registry.register(
            "client_certificate_expiry_timestamp_seconds",
            "When the agent's client certificate expires (Unix time), as last read from --client-cert",
            metrics.client_certificate_expiry.clone(),
        );
        metrics
    }

    pub fn tunnel_up(&self) {
        self.tunnels.inc();
        self.dial("connected");
    }

    pub fn gateway_replicas(&self, count: usize) {
        self.gateway_replicas.set(count as i64);
    }

    pub fn tunnel_down(&self) {
        self.tunnels.dec();
    }

    pub fn tunnel_lost(&self) {
        self.tunnel_down();
        self.disconnects.inc();
    }

    pub fn dial(&self, result: &str) {
        self.dials
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn served(&self, target: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                target: target.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.served_total.inc();
        self.response_seconds
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Requests served since start (every target and code).
    pub fn requests_served(&self) -> u64 {
        self.served_total.get()
    }

    pub fn add_bytes(&self, target: &str, direction: &str, n: u64) {
        self.bytes
            .get_or_create(&BytesLabels {
                target: target.to_string(),
                direction: direction.to_string(),
            })
            .inc_by(n);
    }

    pub fn client_certificate_expires(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.client_certificate_expiry
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }
}
