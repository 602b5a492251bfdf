//! Round robin: the next available replica in turn (a baseline for benchmarks).
//!
//! Replicas under KV pressure are skipped while any other is available.

use super::{Decision, FleetView, Outcome, Policy};
use crate::routing_key::RoutingKey;

/// Next available replica in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Policy for RoundRobin {
    fn pick(&mut self, _key: &RoutingKey, fleet: &FleetView<'_>) -> Option<Decision> {
        let replicas = fleet.replicas;
        let n = replicas.len();
        let order = (0..n).map(|offset| (self.next + offset) % n);
        let index = order
            .clone()
            .find(|&i| replicas[i].available && !replicas[i].saturated)
            .or_else(|| order.clone().find(|&i| replicas[i].available))?;
        self.next = index + 1;
        Some(Decision {
            index,
            outcome: Outcome::Balanced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::fleet;
    use super::*;

    #[test]
    fn cycles_over_available_replicas() {
        let mut policy = RoundRobin::default();
        let mut f = fleet(&[0, 0, 0]);
        f[1].available = false;
        let view = FleetView {
            epoch: 0,
            replicas: &f,
        };
        let picks: Vec<_> = (0..4)
            .map(|_| policy.pick(&RoutingKey::default(), &view).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
    }
}
