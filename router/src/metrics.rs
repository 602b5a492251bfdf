//! The router's Prometheus metrics, in one registry owned by the app (no globals).
//!
//! Names follow `glmfleet_router_<what>[_unit][_total]`. Per-replica series carry the
//! `replica` label (the replica's base URL) and are removed when discovery drops the replica,
//! so label cardinality follows the fleet.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `glmfleet_router_requests_total` | counter | `replica` (the replica that served) |
//! | `glmfleet_router_decisions_total` | counter | `outcome` (affinity, hashed, spill, balanced, fallback) |
//! | `glmfleet_router_retries_total` | counter | `reason` (connect, timeout, closed, ejected, status, too_large) |
//! | `glmfleet_router_ejections_total` | counter | `replica`, `reason` (requests, probes) |
//! | `glmfleet_router_rejected_total` | counter | `code` (413, 429, 503) |
//! | `glmfleet_router_upstream_errors_total` | counter | `replica`, `kind` |
//! | `glmfleet_router_added_latency_seconds` | histogram | – (router time, upstream waits excluded) |
//! | `glmfleet_router_inflight_requests` | gauge | `replica` |
//! | `glmfleet_router_replica_healthy` | gauge | `replica` (1 routable, 0 ejected/unknown) |
//! | `glmfleet_router_replica_external_load` | gauge | `replica` (reported work not sent by this router) |
//! | `glmfleet_router_affinity_entries` | gauge | – (remembered prefix blocks) |
//! | `glmfleet_router_replicas` | gauge | – (members, healthy or not) |

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Error kinds counted in `upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 7] = [
    "connect",
    "timeout",
    "closed",
    "ejected",
    "status",
    "too_large",
    "midstream",
];

/// Reasons counted in `ejections_total`.
pub const EJECTION_REASONS: [&str; 2] = ["requests", "probes"];

/// All router metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) decisions: IntCounterVec,
    pub(crate) retries: IntCounterVec,
    pub(crate) ejections: IntCounterVec,
    pub(crate) rejected: IntCounterVec,
    pub(crate) upstream_errors: IntCounterVec,
    pub(crate) added_latency: Histogram,
    pub(crate) inflight: IntGaugeVec,
    pub(crate) healthy: IntGaugeVec,
    pub(crate) external_load: IntGaugeVec,
    pub(crate) affinity_entries: IntGauge,
    pub(crate) replicas: IntGauge,
}

/// Handles resolved once per replica, so the hot path does no label lookups.
#[derive(Clone, Debug)]
pub(crate) struct ReplicaMetrics {
    pub(crate) requests: IntCounter,
    pub(crate) inflight: IntGauge,
    pub(crate) healthy: IntGauge,
    pub(crate) external_load: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, Box::new(vec.clone()), name);
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, Box::new(vec.clone()), name);
    vec
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, Box::new(g.clone()), name);
    g
}

fn register(registry: &Registry, collector: Box<dyn prometheus::core::Collector>, name: &str) {
    // Names are static and distinct, and the registry is fresh: failure is a programming error.
    registry
        .register(collector)
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
}

impl Metrics {
    /// A fresh registry with every router metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        let latency_opts = HistogramOpts::new(
            "glmfleet_router_added_latency_seconds",
            "Time the router adds to a request: parsing, routing and relaying, upstream waits excluded",
        )
        .buckets(vec![
            0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
            0.05, 0.1, 0.25, 1.0,
        ]);
        let added_latency = Histogram::with_opts(latency_opts)
            .unwrap_or_else(|e| panic!("metric added_latency: {e}"));
        register(&r, Box::new(added_latency.clone()), "added_latency");
        Self {
            requests: counter_vec(
                &r,
                "glmfleet_router_requests_total",
                "Requests served, by the replica that served them",
                &["replica"],
            ),
            decisions: counter_vec(
                &r,
                "glmfleet_router_decisions_total",
                "Routing decisions by outcome",
                &["outcome"],
            ),
            retries: counter_vec(
                &r,
                "glmfleet_router_retries_total",
                "Requests retried on another replica, by the failure that caused the retry",
                &["reason"],
            ),
            ejections: counter_vec(
                &r,
                "glmfleet_router_ejections_total",
                "Replicas taken out of rotation",
                &["replica", "reason"],
            ),
            rejected: counter_vec(
                &r,
                "glmfleet_router_rejected_total",
                "Requests the router answered itself with an error status",
                &["code"],
            ),
            upstream_errors: counter_vec(
                &r,
                "glmfleet_router_upstream_errors_total",
                "Failed upstream attempts, by replica and kind",
                &["replica", "kind"],
            ),
            added_latency,
            inflight: gauge_vec(
                &r,
                "glmfleet_router_inflight_requests",
                "Requests this router has in flight on each replica",
                &["replica"],
            ),
            healthy: gauge_vec(
                &r,
                "glmfleet_router_replica_healthy",
                "1 if the replica is routable, 0 if ejected or not yet probed",
                &["replica"],
            ),
            external_load: gauge_vec(
                &r,
                "glmfleet_router_replica_external_load",
                "Running plus waiting requests the replica reports beyond this router's in-flight",
                &["replica"],
            ),
            affinity_entries: gauge(
                &r,
                "glmfleet_router_affinity_entries",
                "Prefix blocks remembered by the prefix-hash policy",
            ),
            replicas: gauge(
                &r,
                "glmfleet_router_replicas",
                "Replicas known to the router",
            ),
            registry: r,
        }
    }

    pub(crate) fn for_replica(&self, name: &str) -> ReplicaMetrics {
        ReplicaMetrics {
            requests: self.requests.with_label_values(&[name]),
            inflight: self.inflight.with_label_values(&[name]),
            healthy: self.healthy.with_label_values(&[name]),
            external_load: self.external_load.with_label_values(&[name]),
        }
    }

    /// Drop every series of a replica that left the fleet.
    pub(crate) fn forget_replica(&self, name: &str) {
        let _ = self.requests.remove_label_values(&[name]);
        let _ = self.inflight.remove_label_values(&[name]);
        let _ = self.healthy.remove_label_values(&[name]);
        let _ = self.external_load.remove_label_values(&[name]);
        for reason in EJECTION_REASONS {
            let _ = self.ejections.remove_label_values(&[name, reason]);
        }
        for kind in UPSTREAM_ERROR_KINDS {
            let _ = self.upstream_errors.remove_label_values(&[name, kind]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_forgets_replica_series() {
        let m = Metrics::new();
        let r = m.for_replica("http://a:1");
        r.requests.inc();
        m.upstream_errors
            .with_label_values(&["http://a:1", "connect"])
            .inc();
        m.added_latency.observe(0.0001);
        let text = m.render();
        assert!(text.contains("glmfleet_router_requests_total{replica=\"http://a:1\"} 1"));
        assert!(text.contains("glmfleet_router_added_latency_seconds_bucket"));
        m.forget_replica("http://a:1");
        let text = m.render();
        assert!(!text.contains("replica=\"http://a:1\""));
    }
}
