//! The router's Prometheus metrics, in one registry owned by the app (no globals).
//!
//! Names, types and labels are the contract of `ops/metrics-router.txt`, which the dashboards
//! and alerts use; names follow `glmfleet_router_<what>[_unit][_total]`. Per-replica series carry
//! the `replica` label (the replica's `host:port`) and are removed when discovery drops the
//! replica, so label cardinality follows the fleet. Labelled counters are created at 0 for their
//! known label values (per replica when it joins), so every series exists before its first event.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `glmfleet_router_requests_total` | counter | `replica` (served it; `""` if none), `status` (final HTTP status) |
//! | `glmfleet_router_affinity_hits_total` | counter | – (placed on the prefix-hash owner: `affinity` or `hashed` decisions) |
//! | `glmfleet_router_spills_total` | counter | – (moved off the owner by the load bound: `spill` decisions) |
//! | `glmfleet_router_decisions_total` | counter | `outcome` (affinity, hashed, spill, balanced, fallback) |
//! | `glmfleet_router_retries_total` | counter | `reason` (connect, timeout, closed, ejected, status, too_large) |
//! | `glmfleet_router_ejections_total` | counter | `replica`, `reason` (requests, probes) |
//! | `glmfleet_router_rejected_total` | counter | `reason` (too_large, body_timeout, bad_request, overloaded, no_replica) |
//! | `glmfleet_router_upstream_errors_total` | counter | `replica`, `kind` |
//! | `glmfleet_router_added_latency_seconds` | histogram | – (router time, upstream waits excluded) |
//! | `glmfleet_router_inflight` | gauge | `replica` |
//! | `glmfleet_router_replica_healthy` | gauge | `replica` (1 routable, 0 ejected/unknown) |
//! | `glmfleet_router_replica_external_load` | gauge | `replica` (reported work not sent by this router) |
//! | `glmfleet_router_affinity_entries` | gauge | – (remembered prefix blocks) |
//! | `glmfleet_router_replicas` | gauge | – (members, healthy or not) |

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::policy::Outcome;

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

/// Reasons counted in `retries_total` (the failure of the attempt that was retried).
pub const RETRY_REASONS: [&str; 6] = [
    "connect",
    "timeout",
    "closed",
    "ejected",
    "status",
    "too_large",
];

/// Reasons counted in `rejected_total`.
pub const REJECT_REASONS: [&str; 5] = [
    "too_large",
    "body_timeout",
    "bad_request",
    "overloaded",
    "no_replica",
];

/// The `replica` label value of a replica named by its base URL: `host:port`.
pub fn replica_label(name: &str) -> &str {
    name.strip_prefix("http://").unwrap_or(name)
}

/// The `reason` label of a request the router refused with `status` itself.
pub fn reject_reason(status: u16) -> &'static str {
    match status {
        408 => "body_timeout",
        413 => "too_large",
        429 => "overloaded",
        503 => "no_replica",
        _ => "bad_request",
    }
}

/// All router metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) affinity_hits: IntCounter,
    pub(crate) spills: IntCounter,
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

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, Box::new(c.clone()), name);
    c
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
        let metrics = Self {
            requests: counter_vec(
                &r,
                "glmfleet_router_requests_total",
                "Client requests by the replica that served them (\"\" if none) and final HTTP status",
                &["replica", "status"],
            ),
            affinity_hits: counter(
                &r,
                "glmfleet_router_affinity_hits_total",
                "Requests placed on their prefix-hash owner",
            ),
            spills: counter(
                &r,
                "glmfleet_router_spills_total",
                "Requests moved off their prefix-hash owner by the load bound",
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
                "Requests the router refused itself (413, 400, 429, 503), by reason",
                &["reason"],
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
                "glmfleet_router_inflight",
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
        };
        for reason in RETRY_REASONS {
            metrics.retries.with_label_values(&[reason]);
        }
        for reason in REJECT_REASONS {
            metrics.rejected.with_label_values(&[reason]);
        }
        metrics
    }

    /// Handles of a replica joining the fleet (named by its base URL); its labelled counters
    /// start at 0.
    pub(crate) fn for_replica(&self, name: &str) -> ReplicaMetrics {
        let label = replica_label(name);
        for reason in EJECTION_REASONS {
            self.ejections.with_label_values(&[label, reason]);
        }
        for kind in UPSTREAM_ERROR_KINDS {
            self.upstream_errors.with_label_values(&[label, kind]);
        }
        ReplicaMetrics {
            inflight: self.inflight.with_label_values(&[label]),
            healthy: self.healthy.with_label_values(&[label]),
            external_load: self.external_load.with_label_values(&[label]),
        }
    }

    /// Counts one client request with its final status; `replica` is the base URL of the
    /// replica that served it, if any.
    pub(crate) fn count_request(&self, replica: Option<&str>, status: u16) {
        let label = replica.map_or("", replica_label);
        self.requests
            .with_label_values(&[label, &status.to_string()])
            .inc();
    }

    /// Counts one routing decision.
    pub(crate) fn count_decision(&self, outcome: Outcome) {
        self.decisions.with_label_values(&[outcome.as_str()]).inc();
        match outcome {
            Outcome::Affinity | Outcome::Hashed => self.affinity_hits.inc(),
            Outcome::Spill => self.spills.inc(),
            Outcome::Balanced | Outcome::Fallback => {}
        }
    }

    /// Drop every series of a replica that left the fleet (named by its base URL).
    pub(crate) fn forget_replica(&self, name: &str) {
        let label = replica_label(name);
        let _ = self.inflight.remove_label_values(&[label]);
        let _ = self.healthy.remove_label_values(&[label]);
        let _ = self.external_load.remove_label_values(&[label]);
        for reason in EJECTION_REASONS {
            let _ = self.ejections.remove_label_values(&[label, reason]);
        }
        for kind in UPSTREAM_ERROR_KINDS {
            let _ = self.upstream_errors.remove_label_values(&[label, kind]);
        }
        // requests_total has one series per status seen: find them.
        let statuses: Vec<String> = self
            .requests
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter_map(|m| {
                let pairs = m.get_label();
                let has = |k: &str, v: &str| pairs.iter().any(|p| p.name() == k && p.value() == v);
                has("replica", label).then(|| {
                    pairs
                        .iter()
                        .find(|p| p.name() == "status")
                        .map(|p| p.value().to_owned())
                })?
            })
            .collect();
        for status in statuses {
            let _ = self.requests.remove_label_values(&[label, status.as_str()]);
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
        let _r = m.for_replica("http://a:1");
        m.count_request(Some("http://a:1"), 200);
        m.count_request(Some("http://a:1"), 500);
        m.count_request(None, 429);
        m.count_decision(Outcome::Hashed);
        m.count_decision(Outcome::Spill);
        m.added_latency.observe(0.0001);
        let text = m.render();
        for line in [
            "glmfleet_router_requests_total{replica=\"a:1\",status=\"200\"} 1",
            "glmfleet_router_requests_total{replica=\"a:1\",status=\"500\"} 1",
            "glmfleet_router_requests_total{replica=\"\",status=\"429\"} 1",
            "glmfleet_router_upstream_errors_total{kind=\"connect\",replica=\"a:1\"} 0",
            "glmfleet_router_ejections_total{reason=\"probes\",replica=\"a:1\"} 0",
            "glmfleet_router_retries_total{reason=\"closed\"} 0",
            "glmfleet_router_rejected_total{reason=\"overloaded\"} 0",
            "glmfleet_router_affinity_hits_total 1",
            "glmfleet_router_spills_total 1",
            "glmfleet_router_inflight{replica=\"a:1\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(text.contains("glmfleet_router_added_latency_seconds_bucket"));
        m.forget_replica("http://a:1");
        let text = m.render();
        assert!(!text.contains("replica=\"a:1\""), "{text}");
        assert!(text.contains("replica=\"\",status=\"429\""));
    }
}
