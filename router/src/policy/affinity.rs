//! Bounded memory of recent routing decisions: block key → replica that last took it.
//!
//! Two generations of hash maps approximate an LRU at a fraction of its cost: inserts go to the
//! current generation; when it reaches half the capacity it becomes the old generation and the
//! previous old one is dropped. Lookups see both. Memory is therefore bounded by `capacity`
//! entries (about 16–24 bytes each) whatever the traffic (compare A10 item 4: routers whose
//! prefix trees grew until they were OOM-killed).
//!
//! Prefix monotonicity: [`AffinityMap::record`] writes a request's blocks from the last to the
//! first, so a block is never older than any block after it in the same chain. Hence if block k
//! of a chain is remembered, so are blocks 0..k, and [`AffinityMap::longest_match`] can find the
//! longest remembered prefix by binary search in O(log n) lookups.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::ReplicaId;

/// Keys are already uniform 64-bit hashes; hashing them again is wasted work.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Generation = HashMap<u64, ReplicaId, BuildHasherDefault<PassThrough>>;

/// Block key → replica, bounded to `capacity` entries.
#[derive(Debug, Default)]
pub struct AffinityMap {
    current: Generation,
    old: Generation,
    generation_cap: usize,
}

impl AffinityMap {
    /// A map holding at most `capacity` entries (at least 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            current: Generation::default(),
            old: Generation::default(),
            generation_cap: (capacity / 2).max(1),
        }
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        self.current.len() + self.old.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The replica remembered for `block`.
    pub fn get(&self, block: u64) -> Option<ReplicaId> {
        self.current
            .get(&block)
            .or_else(|| self.old.get(&block))
            .copied()
    }

    /// Length of the longest remembered prefix of `blocks`, and the replica remembered for its
    /// last block (`(0, None)` when even the first block is unknown).
    pub fn longest_match(&self, blocks: &[u64]) -> (usize, Option<ReplicaId>) {
        // Invariant: blocks[..lo] remembered (by monotonicity), blocks[hi..] not.
        let (mut lo, mut hi) = (0usize, blocks.len());
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.get(blocks[mid - 1]).is_some() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        match lo {
            0 => (0, None),
            k => (k, self.get(blocks[k - 1])),
        }
    }

    /// Remember that `chosen` took a request with `blocks`, whose first `matched` blocks were
    /// already known. Those keep `prefix_owner` when given (the owner stays the first choice for
    /// the shared prefix, so its spill target stays deterministic); all others map to `chosen`.
    pub fn record(
        &mut self,
        blocks: &[u64],
        matched: usize,
        prefix_owner: Option<ReplicaId>,
        chosen: ReplicaId,
    ) {
        let matched = matched.min(blocks.len());
        for &block in blocks[matched..].iter().rev() {
            self.insert(block, chosen);
        }
        let owner = prefix_owner.unwrap_or(chosen);
        for &block in blocks[..matched].iter().rev() {
            if self.current.get(&block) != Some(&owner) {
                self.insert(block, owner);
            }
        }
    }

    fn insert(&mut self, block: u64, replica: ReplicaId) {
        if self.current.len() >= self.generation_cap && !self.current.contains_key(&block) {
            self.old = std::mem::take(&mut self.current);
        }
        self.old.remove(&block);
        self.current.insert(block, replica);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ReplicaId = ReplicaId(1);
    const B: ReplicaId = ReplicaId(2);

    #[test]
    fn longest_match_finds_the_remembered_prefix() {
        let mut map = AffinityMap::new(1_000);
        map.record(&[10, 11, 12], 0, None, A);
        assert_eq!(map.longest_match(&[10, 11, 12, 13, 14]), (3, Some(A)));
        assert_eq!(map.longest_match(&[10, 11, 99]), (2, Some(A)));
        assert_eq!(map.longest_match(&[99]), (0, None));
        assert_eq!(map.longest_match(&[]), (0, None));
    }

    #[test]
    fn spilled_extension_keeps_prefix_owner() {
        let mut map = AffinityMap::new(1_000);
        map.record(&[10, 11], 0, None, A);
        // A request extending the prefix spilled to B.
        map.record(&[10, 11, 20, 21], 2, Some(A), B);
        assert_eq!(map.longest_match(&[10, 11, 30]), (2, Some(A)));
        assert_eq!(map.longest_match(&[10, 11, 20, 21, 22]), (4, Some(B)));
        // Owner gone: the prefix follows the new choice.
        map.record(&[10, 11, 40], 2, None, B);
        assert_eq!(map.longest_match(&[10, 11]), (2, Some(B)));
    }

    #[test]
    fn memory_is_bounded_and_prefixes_outlive_suffixes() {
        let cap = 100;
        let mut map = AffinityMap::new(cap);
        let mut chains = Vec::new();
        for c in 0..200u64 {
            let chain: Vec<u64> = (0..7).map(|i| (c << 8) | i).collect();
            map.record(&chain, 0, None, A);
            chains.push(chain);
            assert!(map.len() <= cap, "len {}", map.len());
        }
        // Monotonicity: for every chain, the remembered blocks form a prefix.
        for chain in &chains {
            let present: Vec<bool> = chain.iter().map(|&b| map.get(b).is_some()).collect();
            let k = present.iter().take_while(|&&p| p).count();
            assert!(present[k..].iter().all(|&p| !p), "{present:?}");
            assert_eq!(map.longest_match(chain).0, k);
        }
        // The most recent chain is fully remembered.
        assert_eq!(map.longest_match(chains.last().unwrap()).0, 7);
    }
}
