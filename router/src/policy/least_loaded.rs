//! Least loaded: the available replica with the smallest effective load (a baseline).
//!
//! Decisions are serialized and the in-flight count is bumped before the next decision, so a
//! burst cannot pile onto one replica through a stale snapshot (A10 item 6). Ties rotate.

use super::{least_loaded_index, Decision, FleetView, Outcome, Policy};
use crate::routing_key::RoutingKey;

/// Available replica with the least effective load.
#[derive(Debug, Default)]
pub struct LeastLoaded {
    rotate: usize,
}

impl Policy for LeastLoaded {
    fn pick(&mut self, _key: &RoutingKey, fleet: &FleetView<'_>) -> Option<Decision> {
        self.rotate = self.rotate.wrapping_add(1);
        let start = self.rotate % fleet.replicas.len().max(1);
        least_loaded_index(fleet.replicas, start).map(|index| Decision {
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
    fn picks_the_minimum_and_rotates_ties() {
        let mut policy = LeastLoaded::default();
        let f = fleet(&[2, 0, 0, 5]);
        let view = FleetView {
            epoch: 0,
            replicas: &f,
        };
        let mut seen = [false; 4];
        for _ in 0..4 {
            seen[policy.pick(&RoutingKey::default(), &view).unwrap().index] = true;
        }
        assert_eq!(seen, [false, true, true, false]);
    }
}
