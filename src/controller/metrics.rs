//! Reconcile metrics, served on the controller's /metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaneLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// A plane resource, without its reason.
type PlaneId = (String, String, String);

#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    plane_ready: Family<PlaneLabels, Gauge>,
    /// The reason each plane's series carries now, so that a changed reason replaces
    /// its series instead of leaving a stale one behind.
    reasons: Arc<Mutex<HashMap<PlaneId, String>>>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            reconciles: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0])
            }),
            plane_ready: Family::default(),
            reasons: Arc::default(),
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
        sub.register(
            "plane_ready",
            "1 while a plane's Ready condition is True, 0 otherwise, with the condition's \
             reason (exported by the leader only)",
            metrics.plane_ready.clone(),
        );
        metrics
    }

    /// Records a plane's Ready condition as last written.
    pub fn plane_ready(&self, kind: &str, namespace: &str, name: &str, ready: bool, reason: &str) {
        let id = (kind.to_string(), namespace.to_string(), name.to_string());
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = reasons.insert(id.clone(), reason.to_string())
            && old != reason
        {
            self.plane_ready.remove(&labels(&id, &old));
        }
        self.plane_ready
            .get_or_create(&labels(&id, reason))
            .set(i64::from(ready));
    }

    /// A deleted plane leaves the metric.
    pub fn plane_gone(&self, kind: &str, namespace: &str, name: &str) {
        let id = (kind.to_string(), namespace.to_string(), name.to_string());
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = reasons.remove(&id) {
            self.plane_ready.remove(&labels(&id, &old));
        }
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

fn labels((kind, namespace, name): &PlaneId, reason: &str) -> PlaneLabels {
    PlaneLabels {
        kind: kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series, sorted (a family's order is a hash map's).
    fn exposed(registry: &Registry) -> Vec<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        let mut series: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("planelink_controller_plane_ready{"))
            .map(String::from)
            .collect();
        series.sort();
        series
    }

    #[test]
    fn a_plane_has_one_ready_series_and_none_once_deleted() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.plane_ready("DataPlane", "org", "dp1", false, "AgentDisconnected");
        metrics.plane_ready("DataPlane", "org", "dp1", true, "AgentConnected");
        metrics.plane_ready("BuildPlane", "org", "bp1", false, "InvalidClientCA");
        assert_eq!(
            exposed(&registry),
            [
                "planelink_controller_plane_ready{kind=\"BuildPlane\",namespace=\"org\",name=\"bp1\",reason=\"InvalidClientCA\"} 0",
                "planelink_controller_plane_ready{kind=\"DataPlane\",namespace=\"org\",name=\"dp1\",reason=\"AgentConnected\"} 1",
            ]
        );
        metrics.plane_gone("DataPlane", "org", "dp1");
        assert_eq!(
            exposed(&registry),
            [
                "planelink_controller_plane_ready{kind=\"BuildPlane\",namespace=\"org\",name=\"bp1\",reason=\"InvalidClientCA\"} 0"
            ]
        );
    }
}
