//! The fleet: membership, and the one place where a replica is chosen and its load accounted.
//!
//! `Fleet::choose` snapshots every member (effective load, health, availability), asks the
//! policy, and acquires the chosen replica's [`InflightGuard`], all under one mutex. Serializing
//! the decision with the increment is what makes the load bound hold under concurrency: no two
//! requests decide on the same stale snapshot (A10 items 2 and 6). The critical section is a few
//! microseconds; the guard is released without the lock.

mod discovery;
pub(crate) mod monitor;
mod replica;

use std::sync::{Arc, Mutex, MutexGuard};

pub use discovery::Discovery;
pub(crate) use replica::{now_ms, HealthSettings};
pub use replica::{InflightGuard, LoadReport, Replica};

use crate::metrics::Metrics;
use crate::policy::{Candidate, FleetView, Outcome, Policy, ReplicaId};
use crate::routing_key::RoutingKey;

/// Why no replica could be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChooseError {
    /// No member is healthy.
    NoHealthyReplica,
    /// Healthy, untried members exist but all are at the hard in-flight cap.
    Overloaded,
    /// Every healthy member was already tried by this request.
    Exhausted,
}

/// A chosen replica with its in-flight count already taken.
#[derive(Debug)]
pub(crate) struct Chosen {
    pub guard: InflightGuard,
    pub outcome: Outcome,
}

struct Decider {
    policy: Box<dyn Policy>,
    members: Arc<[Arc<Replica>]>,
    epoch: u64,
    scratch: Vec<Candidate>,
}

/// Members plus the decision lock.
pub(crate) struct Fleet {
    decider: Mutex<Decider>,
    max_inflight: u64,
    health: HealthSettings,
    metrics: Metrics,
}

impl Fleet {
    pub(crate) fn new(
        policy: Box<dyn Policy>,
        max_inflight: u64,
        health: HealthSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            decider: Mutex::new(Decider {
                policy,
                members: Arc::from(Vec::new()),
                epoch: 0,
                scratch: Vec::new(),
            }),
            max_inflight,
            health,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Decider> {
        // A panic inside a policy must not take the router down with it.
        self.decider.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current members.
    pub(crate) fn members(&self) -> Arc<[Arc<Replica>]> {
        self.lock().members.clone()
    }

    /// Replace the member set by `names` (base URLs). Existing replicas keep their state; new
    /// ones start out of rotation. Returns the replicas that joined.
    pub(crate) fn set_members(&self, names: &[String]) -> Vec<Arc<Replica>> {
        let mut decider = self.lock();
        let old = decider.members.clone();
        let mut added = Vec::new();
        let mut next: Vec<Arc<Replica>> = Vec::with_capacity(names.len());
        for name in names {
            if next.iter().any(|r| r.name() == name) {
                continue;
            }
            if let Some(existing) = old.iter().find(|r| r.name() == name) {
                next.push(existing.clone());
                continue;
            }
            match Replica::new(name, self.health, &self.metrics) {
                Ok(replica) => {
                    let replica = Arc::new(replica);
                    added.push(replica.clone());
                    next.push(replica);
                }
                Err(e) => {
                    tracing::warn!(replica = %name, error = %e, "ignoring bad replica address")
                }
            }
        }
        let removed: Vec<_> = old
            .iter()
            .filter(|r| !next.iter().any(|n| n.name() == r.name()))
            .cloned()
            .collect();
        if added.is_empty() && removed.is_empty() {
            return added;
        }
        for r in &removed {
            tracing::info!(replica = %r.name(), "replica left the fleet");
            r.forget_metrics();
        }
        for r in &added {
            tracing::info!(replica = %r.name(), "replica joined the fleet (awaiting probe)");
        }
        self.metrics
            .replicas
            .set(i64::try_from(next.len()).unwrap_or(i64::MAX));
        decider.members = Arc::from(next);
        decider.epoch += 1;
        added
    }

    /// Choose a replica for `key`, skipping `tried`, and count the request on it.
    pub(crate) fn choose(
        &self,
        key: &RoutingKey,
        tried: &[ReplicaId],
    ) -> Result<Chosen, ChooseError> {
        let now = now_ms();
        let mut guard = self.lock();
        let decider = &mut *guard;
        decider.scratch.clear();
        let (mut any_healthy, mut any_untried) = (false, false);
        for r in decider.members.iter() {
            let healthy = r.is_healthy();
            let inflight = r.inflight();
            let untried = !tried.contains(&r.id());
            any_healthy |= healthy;
            any_untried |= healthy && untried;
            decider.scratch.push(Candidate {
                id: r.id(),
                load: inflight + r.external_load(now),
                healthy,
                available: healthy && untried && inflight < self.max_inflight,
                saturated: r.is_saturated(now),
            });
        }
        let view = FleetView {
            epoch: decider.epoch,
            replicas: &decider.scratch,
        };
        let decision = decider.policy.pick(key, &view);
        let tracked = decider.policy.tracked_prefixes();
        let chosen = decision.map(|d| Chosen {
            guard: InflightGuard::acquire(decider.members[d.index].clone()),
            outcome: d.outcome,
        });
        drop(guard);
        self.metrics
            .affinity_entries
            .set(i64::try_from(tracked).unwrap_or(i64::MAX));
        match chosen {
            Some(c) => {
                self.metrics.count_decision(c.outcome);
                Ok(c)
            }
            None if !any_healthy => Err(ChooseError::NoHealthyReplica),
            None if any_untried => Err(ChooseError::Overloaded),
            None => Err(ChooseError::Exhausted),
        }
    }

    /// Number of routable members.
    pub(crate) fn healthy_count(&self) -> usize {
        self.members().iter().filter(|r| r.is_healthy()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{build, PolicyConfig, PolicyKind};

    fn fleet(kind: PolicyKind, max_inflight: u64) -> Fleet {
        let policy = build(
            kind,
            &PolicyConfig {
                load_bound: 1.25,
                affinity_capacity: 1_000,
                seed: 1,
            },
        );
        let health = HealthSettings {
            eject_after: 3,
            readmit_base_ms: 0,
            report_ttl_ms: 1_000,
            kv_pressure: 0.98,
        };
        Fleet::new(policy, max_inflight, health, Metrics::new())
    }

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 9000 + i))
            .collect()
    }

    #[test]
    fn membership_diff_keeps_state() {
        let f = fleet(PolicyKind::RoundRobin, 10);
        assert_eq!(f.set_members(&names(3)).len(), 3);
        let first = f.members()[0].clone();
        first.probe_succeeded();
        let added = f.set_members(&names(4));
        assert_eq!(added.len(), 1);
        assert!(Arc::ptr_eq(&f.members()[0], &first));
        assert!(f.members()[0].is_healthy());
        assert!(f.set_members(&names(4)).is_empty());
        f.set_members(&names(2));
        assert_eq!(f.members().len(), 2);
    }

    #[test]
    fn choose_reports_why_nothing_fits() {
        let f = fleet(PolicyKind::LeastLoaded, 1);
        f.set_members(&names(2));
        assert_eq!(
            f.choose(&RoutingKey::default(), &[]).unwrap_err(),
            ChooseError::NoHealthyReplica
        );
        for r in f.members().iter() {
            r.probe_succeeded();
        }
        let a = f.choose(&RoutingKey::default(), &[]).unwrap();
        let b = f.choose(&RoutingKey::default(), &[]).unwrap();
        assert_ne!(a.guard.replica().id(), b.guard.replica().id());
        assert_eq!(
            f.choose(&RoutingKey::default(), &[]).unwrap_err(),
            ChooseError::Overloaded
        );
        let tried = [a.guard.replica().id(), b.guard.replica().id()];
        drop(a);
        assert_eq!(
            f.choose(&RoutingKey::default(), &tried).unwrap_err(),
            ChooseError::Exhausted
        );
        drop(b);
        assert!(f.choose(&RoutingKey::default(), &[]).is_ok());
        assert!(f.members().iter().all(|r| r.inflight() == 0));
    }
}
