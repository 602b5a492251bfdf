//! One replica as the router sees it: address, in-flight count, health state and last load report.
//!
//! Health is a small state machine driven by two sources:
//! * **requests** (passive): `eject_after` consecutive failed attempts (connect error, timeout,
//!   5xx, stream cut) eject the replica; any success resets the count;
//! * **probes** (active, `GET /health`): `eject_after` consecutive failed probes eject it; a
//!   successful probe re-admits an ejected replica once its back-off has passed. The back-off
//!   doubles with every ejection not followed by a served request (capped at 32 probe intervals),
//!   so a replica that passes probes but fails requests does not flap at probe frequency.
//!
//! New replicas start out of rotation and join after their first successful probe. Nothing here
//! ever touches the in-flight count except [`InflightGuard`] (compare A10 item 3: health checks
//! that reset in-flight counters).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use http::uri::{Authority, Scheme};
use http::Uri;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{Metrics, ReplicaMetrics};
use crate::policy::ReplicaId;

/// What a replica's `GET /load` returns. Unknown fields are ignored, missing ones read as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadReport {
    /// Sequences being processed.
    pub running: u64,
    /// Sequences queued.
    pub waiting: u64,
    /// Fraction of KV blocks in use, 0..1.
    pub kv_usage: f64,
    /// Free KV blocks.
    pub free_blocks: u64,
    /// Total KV blocks.
    pub num_blocks: u64,
}

/// Thresholds shared by all replicas.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HealthSettings {
    /// Consecutive failures (of requests, or of probes) that eject a replica.
    pub eject_after: u32,
    /// First re-admission back-off (the probe interval).
    pub readmit_base_ms: u64,
    /// A load report older than this is ignored.
    pub report_ttl_ms: u64,
    /// KV usage at or above which a replica counts as saturated.
    pub kv_pressure: f64,
}

/// Milliseconds since the first call (monotonic, process-wide).
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A replica of the fleet.
#[derive(Debug)]
pub struct Replica {
    id: ReplicaId,
    name: String,
    scheme: Scheme,
    authority: Authority,
    inflight: AtomicU64,
    /// Highest `inflight` since the last `/load` poll was sent (see [`Replica::begin_poll`]).
    poll_peak: AtomicU64,
    healthy: AtomicBool,
    health: watch::Sender<bool>,
    request_failures: AtomicU32,
    probe_failures: AtomicU32,
    ejections: AtomicU64,
    backoff_level: AtomicU32,
    readmit_at_ms: AtomicU64,
    external: AtomicU64,
    saturated: AtomicBool,
    report_at_ms: AtomicU64,
    last_report: Mutex<Option<LoadReport>>,
    settings: HealthSettings,
    metrics: ReplicaMetrics,
    all_metrics: Metrics,
}

impl Replica {
    pub(crate) fn new(
        name: &str,
        settings: HealthSettings,
        metrics: &Metrics,
    ) -> Result<Self, http::Error> {
        let uri: Uri = name.parse()?;
        let parts = uri.into_parts();
        let scheme = parts.scheme.unwrap_or(Scheme::HTTP);
        let authority = match parts.authority {
            Some(a) => a,
            None => Authority::try_from("")?,
        };
        let replica_metrics = metrics.for_replica(name);
        replica_metrics.healthy.set(0);
        Ok(Self {
            id: ReplicaId::from_name(name),
            name: name.to_owned(),
            scheme,
            authority,
            inflight: AtomicU64::new(0),
            poll_peak: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            health: watch::Sender::new(false),
            request_failures: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            backoff_level: AtomicU32::new(0),
            readmit_at_ms: AtomicU64::new(0),
            external: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
            report_at_ms: AtomicU64::new(0),
            last_report: Mutex::new(None),
            settings,
            metrics: replica_metrics,
            all_metrics: metrics.clone(),
        })
    }

    /// Stable identity.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// Base URL, e.g. `http://10.0.0.5:8001`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests this router has in flight on the replica.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Relaxed)
    }

    /// Routable now.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Times the replica has been ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// Consecutive failed requests.
    pub fn consecutive_failures(&self) -> u32 {
        self.request_failures.load(Relaxed)
    }

    /// The last load report and its age in milliseconds.
    pub fn last_report(&self) -> Option<(LoadReport, u64)> {
        let report = *self.last_report.lock().unwrap_or_else(|e| e.into_inner());
        report.map(|r| (r, now_ms().saturating_sub(self.report_at_ms.load(Relaxed))))
    }

    /// Work the replica reports beyond this router's in-flight (0 when the report is stale).
    pub fn external_load(&self, now: u64) -> u64 {
        if self.report_fresh(now) {
            self.external.load(Relaxed)
        } else {
            0
        }
    }

    /// In-flight plus fresh external load.
    pub fn effective_load(&self, now: u64) -> u64 {
        self.inflight() + self.external_load(now)
    }

    /// Reports KV pressure (fresh report only).
    pub fn is_saturated(&self, now: u64) -> bool {
        self.report_fresh(now) && self.saturated.load(Relaxed)
    }

    fn report_fresh(&self, now: u64) -> bool {
        let at = self.report_at_ms.load(Relaxed);
        at != 0 && now.saturating_sub(at) <= self.settings.report_ttl_ms
    }

    /// The upstream URI for a path-and-query of the client's request.
    pub(crate) fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// A receiver that sees every health change.
    pub(crate) fn subscribe_health(&self) -> watch::Receiver<bool> {
        self.health.subscribe()
    }

    /// Call when sending a `/load` poll; pass the result to [`Replica::apply_report`]. Returns
    /// the highest in-flight count since the previous poll was sent, and starts a new window.
    pub(crate) fn begin_poll(&self) -> u64 {
        self.poll_peak.swap(self.inflight(), Relaxed)
    }

    /// Apply a `/load` report. The replica's running+waiting beyond our requests is load from
    /// elsewhere. The replica's count of our requests lags ours: a request we already saw end
    /// can still be counted there (its final event goes out before the replica's counters
    /// move, and the report travels back). So ours are taken as the highest in-flight count
    /// from the previous poll until now (`peak_before_poll` from [`Replica::begin_poll`]);
    /// otherwise a request that just ended lingers as phantom external load until the next
    /// report and pushes the next lone request off its prefix owner. The cost: external load
    /// reads low by our own churn within one poll period.
    pub(crate) fn apply_report(&self, report: LoadReport, peak_before_poll: u64) {
        let ours = self
            .inflight()
            .max(peak_before_poll)
            .max(self.poll_peak.load(Relaxed));
        let external = (report.running + report.waiting).saturating_sub(ours);
        self.external.store(external, Relaxed);
        self.metrics
            .external_load
            .set(i64::try_from(external).unwrap_or(i64::MAX));
        self.saturated
            .store(report.kv_usage >= self.settings.kv_pressure, Relaxed);
        *self.last_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        self.report_at_ms.store(now_ms().max(1), Relaxed);
    }

    /// A request attempt succeeded.
    pub(crate) fn record_success(&self) {
        self.request_failures.store(0, Relaxed);
        self.backoff_level.store(0, Relaxed);
    }

    /// A request attempt failed in a way that is the replica's fault. Returns true when this
    /// failure ejected the replica.
    pub(crate) fn record_failure(&self, kind: &str) -> bool {
        self.all_metrics
            .upstream_errors
            .with_label_values(&[crate::metrics::replica_label(&self.name), kind])
            .inc();
        let failures = self.request_failures.fetch_add(1, Relaxed) + 1;
        failures >= self.settings.eject_after && self.eject("requests")
    }

    /// A health probe succeeded. Returns true when this admitted the replica.
    pub(crate) fn probe_succeeded(&self) -> bool {
        self.probe_failures.store(0, Relaxed);
        if self.is_healthy() || now_ms() < self.readmit_at_ms.load(Relaxed) {
            return false;
        }
        self.request_failures.store(0, Relaxed);
        if self.healthy.swap(true, Relaxed) {
            return false;
        }
        self.metrics.healthy.set(1);
        self.health.send_replace(true);
        tracing::info!(replica = %self.name, "replica admitted");
        true
    }

    /// A health probe failed. Returns true when this ejected the replica.
    pub(crate) fn probe_failed(&self) -> bool {
        let failures = self.probe_failures.fetch_add(1, Relaxed) + 1;
        failures >= self.settings.eject_after && self.eject("probes")
    }

    fn eject(&self, reason: &'static str) -> bool {
        if !self.healthy.swap(false, Relaxed) {
            return false;
        }
        let level = self.backoff_level.fetch_add(1, Relaxed).min(5);
        let backoff = self.settings.readmit_base_ms << level;
        self.readmit_at_ms.store(now_ms() + backoff, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        self.metrics.healthy.set(0);
        self.all_metrics
            .ejections
            .with_label_values(&[crate::metrics::replica_label(&self.name), reason])
            .inc();
        self.health.send_replace(false);
        tracing::warn!(replica = %self.name, reason, backoff_ms = backoff, "replica ejected");
        true
    }

    pub(crate) fn forget_metrics(&self) {
        self.all_metrics.forget_replica(&self.name);
    }
}

/// Counts one in-flight request on a replica for as long as it lives.
///
/// The proxy moves it into the response body, so the count drops when the body ends, fails, or
/// is dropped because the client went away.
#[derive(Debug)]
pub struct InflightGuard {
    replica: Arc<Replica>,
}

impl InflightGuard {
    pub(crate) fn acquire(replica: Arc<Replica>) -> Self {
        let now = replica.inflight.fetch_add(1, Relaxed) + 1;
        replica.poll_peak.fetch_max(now, Relaxed);
        replica.metrics.inflight.inc();
        Self { replica }
    }

    /// The replica this guard counts on.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.replica.inflight.fetch_sub(1, Relaxed);
        self.replica.metrics.inflight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(eject_after: u32, readmit_base_ms: u64) -> Replica {
        let settings = HealthSettings {
            eject_after,
            readmit_base_ms,
            report_ttl_ms: 1_000,
            kv_pressure: 0.9,
        };
        Replica::new("http://127.0.0.1:9", settings, &Metrics::new()).unwrap()
    }

    #[test]
    fn starts_out_of_rotation_and_joins_on_probe() {
        let r = replica(3, 0);
        assert!(!r.is_healthy());
        assert!(r.probe_succeeded());
        assert!(r.is_healthy());
        assert_eq!(r.ejections(), 0);
    }

    #[test]
    fn consecutive_request_failures_eject_and_success_resets() {
        let r = replica(3, 0);
        r.probe_succeeded();
        assert!(!r.record_failure("status"));
        assert!(!r.record_failure("status"));
        r.record_success();
        assert!(!r.record_failure("status"));
        assert!(!r.record_failure("status"));
        assert!(r.record_failure("status"));
        assert!(!r.is_healthy());
        assert_eq!(r.ejections(), 1);
        assert!(r.probe_succeeded());
        assert!(r.is_healthy());
    }

    #[test]
    fn probe_failures_eject_and_backoff_delays_readmission() {
        let r = replica(2, 60_000);
        r.readmit_at_ms.store(0, Relaxed);
        r.probe_succeeded();
        assert!(!r.probe_failed());
        assert!(r.probe_failed());
        // Back-off of one minute: the next good probe does not re-admit yet.
        assert!(!r.probe_succeeded());
        assert!(!r.is_healthy());
    }

    #[test]
    fn guard_counts_while_alive() {
        let r = Arc::new(replica(3, 0));
        let a = InflightGuard::acquire(r.clone());
        let b = InflightGuard::acquire(r.clone());
        assert_eq!(r.inflight(), 2);
        drop(a);
        assert_eq!(r.inflight(), 1);
        drop(b);
        assert_eq!(r.inflight(), 0);
    }

    #[test]
    fn reports_give_external_load_and_pressure() {
        let r = Arc::new(replica(3, 0));
        let _g = InflightGuard::acquire(r.clone());
        r.apply_report(
            LoadReport {
                running: 4,
                waiting: 2,
                kv_usage: 0.95,
                ..LoadReport::default()
            },
            0,
        );
        let now = now_ms();
        assert_eq!(r.external_load(now), 5);
        assert_eq!(r.effective_load(now), 6);
        assert!(r.is_saturated(now));
        assert_eq!(r.external_load(now + 5_000), 0, "stale reports are ignored");
        let parsed: LoadReport =
            serde_json::from_str(r#"{"running":1,"waiting":0,"kv_usage":0.5,"extra":true}"#)
                .unwrap();
        assert_eq!(parsed.running, 1);
    }

    #[test]
    fn our_recently_ended_requests_are_not_external() {
        let r = Arc::new(replica(3, 0));
        let report = |running| LoadReport {
            running,
            ..LoadReport::default()
        };
        // Ended after the replica counted it, before its report arrived.
        let g = InflightGuard::acquire(r.clone());
        let peak = r.begin_poll();
        drop(g);
        r.apply_report(report(1), peak);
        assert_eq!(r.external_load(now_ms()), 0);
        // Ended just before the poll was sent, but the replica's count still had it.
        let g = InflightGuard::acquire(r.clone());
        drop(g);
        let peak = r.begin_poll();
        r.apply_report(report(1), peak);
        assert_eq!(r.external_load(now_ms()), 0);
        // With nothing of ours in the last window, the replica's work is external.
        let peak = r.begin_poll();
        r.apply_report(report(2), peak);
        assert_eq!(r.external_load(now_ms()), 2);
    }
}
