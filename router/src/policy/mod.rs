//! Replica choice: small policies that pick an index from a snapshot of the fleet.
//!
//! A policy does no I/O and reads no clock. The fleet hands it a [`FleetView`] (one
//! [`Candidate`] per member: stable id, effective load, health, availability) and the request's
//! [`RoutingKey`]; it answers with the index to use. The fleet calls it under one lock and bumps
//! the chosen replica's in-flight count before the lock is released, so concurrent decisions see
//! each other and a policy can keep state (`&mut self`) without its own locking.
//!
//! Policies: [`PolicyKind::PrefixHash`] (the default and the point of the router, see
//! `prefix_hash`), and, for comparison in benchmarks, round robin, least loaded and
//! power-of-two choices.

mod affinity;
mod least_loaded;
mod power_of_two;
mod prefix_hash;
mod ring;
mod round_robin;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

pub use affinity::AffinityMap;
pub use least_loaded::LeastLoaded;
pub use power_of_two::PowerOfTwo;
pub use prefix_hash::PrefixHash;
pub use ring::Ring;
pub use round_robin::RoundRobin;

use crate::routing_key::RoutingKey;

/// Which policy the router uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Prefix affinity over bounded-load consistent hashing (default).
    PrefixHash,
    /// Next available replica in turn.
    RoundRobin,
    /// Available replica with the least effective load.
    LeastLoaded,
    /// The less loaded of two random available replicas.
    PowerOfTwo,
}

impl PolicyKind {
    /// The name used in config files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrefixHash => "prefix-hash",
            Self::RoundRobin => "round-robin",
            Self::LeastLoaded => "least-loaded",
            Self::PowerOfTwo => "power-of-two",
        }
    }
}

/// Parameters the policies need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyConfig {
    /// The load bound `c` (≥ 1) of bounded-load consistent hashing.
    pub load_bound: f64,
    /// Most block keys the affinity map remembers (memory bound).
    pub affinity_capacity: usize,
    /// Seed for the randomized policies.
    pub seed: u64,
}

/// Build a policy.
pub fn build(kind: PolicyKind, cfg: &PolicyConfig) -> Box<dyn Policy> {
    match kind {
        PolicyKind::PrefixHash => Box::new(PrefixHash::new(cfg.load_bound, cfg.affinity_capacity)),
        PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
        PolicyKind::LeastLoaded => Box::new(LeastLoaded::default()),
        PolicyKind::PowerOfTwo => Box::new(PowerOfTwo::new(cfg.seed)),
    }
}

/// Stable identity of a replica: the xxh3 of its base URL, so ring points and remembered
/// decisions survive reordering and re-discovery of the same address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(pub u64);

impl ReplicaId {
    /// The id of the replica at `name` (its base URL).
    pub fn from_name(name: &str) -> Self {
        Self(xxh3_64(name.as_bytes()))
    }
}

/// One member of the fleet as a policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Stable identity.
    pub id: ReplicaId,
    /// Effective load: this router's in-flight requests plus work the replica reports from
    /// elsewhere (other routers, direct clients).
    pub load: u64,
    /// Healthy members make up the fleet average of the load bound.
    pub healthy: bool,
    /// May take this request: healthy, under the hard in-flight cap, not tried by this request.
    pub available: bool,
    /// Reports KV-cache pressure: chosen only when no unsaturated replica is available.
    pub saturated: bool,
}

/// The fleet at decision time.
#[derive(Clone, Copy, Debug)]
pub struct FleetView<'a> {
    /// Changes whenever membership changes (not on health changes), so policies can cache
    /// structures built from the member list.
    pub epoch: u64,
    /// All members, in a stable order for a given epoch.
    pub replicas: &'a [Candidate],
}

/// Why a replica was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The replica that last served the longest known prefix of this request.
    Affinity,
    /// The ring owner of the request's key (no remembered prefix).
    Hashed,
    /// The first preference was over the load bound or unavailable: the next one on the ring.
    Spill,
    /// Chosen by load alone (load-only policies, or an empty key).
    Balanced,
    /// No candidate satisfied the bound (KV pressure everywhere): least loaded.
    Fallback,
}

impl Outcome {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Affinity => "affinity",
            Self::Hashed => "hashed",
            Self::Spill => "spill",
            Self::Balanced => "balanced",
            Self::Fallback => "fallback",
        }
    }
}

/// A policy's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Index into [`FleetView::replicas`].
    pub index: usize,
    /// Why.
    pub outcome: Outcome,
}

/// Picks a replica for a request.
pub trait Policy: Send {
    /// Choose an available replica, or `None` when none is available. Must only return indices
    /// of candidates with `available == true`.
    fn pick(&mut self, key: &RoutingKey, fleet: &FleetView<'_>) -> Option<Decision>;

    /// How many prefix blocks the policy remembers (0 for stateless policies).
    fn tracked_prefixes(&self) -> usize {
        0
    }
}

/// Least effective load among available candidates, preferring unsaturated ones; ties go to the
/// first at or after `start` (callers rotate `start` to spread ties).
pub(crate) fn least_loaded_index(replicas: &[Candidate], start: usize) -> Option<usize> {
    let n = replicas.len();
    let mut best: Option<(bool, u64, usize)> = None;
    for offset in 0..n {
        let i = (start + offset) % n;
        let c = &replicas[i];
        if !c.available {
            continue;
        }
        let rank = (c.saturated, c.load, i);
        if best.is_none_or(|(s, l, _)| (rank.0, rank.1) < (s, l)) {
            best = Some(rank);
        }
    }
    best.map(|(_, _, i)| i)
}

/// SplitMix64: a tiny deterministic generator for the randomized policies.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn fleet(loads: &[u64]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &load)| Candidate {
                id: ReplicaId::from_name(&format!("http://10.0.0.{i}:8000")),
                load,
                healthy: true,
                available: true,
                saturated: false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::fleet;
    use super::*;

    #[test]
    fn least_loaded_prefers_unsaturated_then_low_load() {
        let mut f = fleet(&[3, 1, 1, 0]);
        f[3].saturated = true;
        assert_eq!(least_loaded_index(&f, 0), Some(1));
        assert_eq!(least_loaded_index(&f, 2), Some(2));
        f[1].available = false;
        f[2].available = false;
        assert_eq!(least_loaded_index(&f, 0), Some(0));
        f[0].available = false;
        assert_eq!(least_loaded_index(&f, 0), Some(3));
        f[3].available = false;
        assert_eq!(least_loaded_index(&f, 0), None);
    }

    #[test]
    fn splitmix_below_is_in_range_and_covers() {
        let mut rng = SplitMix::new(7);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let v = rng.below(5);
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn policy_kind_names_round_trip() {
        for kind in [
            PolicyKind::PrefixHash,
            PolicyKind::RoundRobin,
            PolicyKind::LeastLoaded,
            PolicyKind::PowerOfTwo,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }
}
