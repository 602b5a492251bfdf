//! Power of two choices: the less loaded of two random available replicas (a baseline).
//!
//! Nearly as good as a full scan for balance, with no affinity at all (A9).

use super::{Decision, FleetView, Outcome, Policy, SplitMix};
use crate::routing_key::RoutingKey;

/// The less loaded of two random available replicas.
#[derive(Debug)]
pub struct PowerOfTwo {
    rng: SplitMix,
    scratch: Vec<usize>,
}

impl PowerOfTwo {
    /// A policy whose random choices are reproducible from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix::new(seed),
            scratch: Vec::new(),
        }
    }
}

impl Policy for PowerOfTwo {
    fn pick(&mut self, _key: &RoutingKey, fleet: &FleetView<'_>) -> Option<Decision> {
        let replicas = fleet.replicas;
        self.scratch.clear();
        self.scratch
            .extend((0..replicas.len()).filter(|&i| replicas[i].available));
        let index = match self.scratch.len() {
            0 => return None,
            1 => self.scratch[0],
            n => {
                let a = self.scratch[self.rng.below(n)];
                let mut b = self.scratch[self.rng.below(n - 1)];
                if b == a {
                    b = self.scratch[n - 1];
                }
                let rank = |i: usize| (replicas[i].saturated, replicas[i].load);
                if rank(b) < rank(a) {
                    b
                } else {
                    a
                }
            }
        };
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
    fn never_picks_the_most_loaded_of_many() {
        let mut policy = PowerOfTwo::new(3);
        let mut f = fleet(&[9, 1, 2, 3]);
        f[2].available = false;
        let view = FleetView {
            epoch: 0,
            replicas: &f,
        };
        for _ in 0..200 {
            let d = policy.pick(&RoutingKey::default(), &view).unwrap();
            assert_ne!(d.index, 0);
            assert_ne!(d.index, 2);
        }
    }
}
