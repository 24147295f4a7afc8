//! Reconcile metrics, served on the controller's /metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            reconciles: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0])
            }),
        };
        let sub = registry.sub_registry_with_prefix("planelink_controller");
        sub.register(
            "reconciles",
            "Reconciles of plane resources, by kind and result (ok, or the error's label)",
            metrics.reconciles.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by kind",
            metrics.duration.clone(),
        );
        metrics
    }

    pub fn observe(&self, kind: &str, took: Duration, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}
