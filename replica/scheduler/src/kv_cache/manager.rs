//! The scheduler's only door to KV memory: prefix lookup, slot allocation and release.
//!
//! A request's blocks are held in an opaque [`RequestBlocks`]; the scheduler never touches
//! reference counts or hashes itself.
//! * [`KvCacheManager::lookup`] finds the longest cached prefix of a request, capped so that at
//!   least the last known token is recomputed (its logits are needed).
//! * [`KvCacheManager::allocate_slots`] grows a request's block table to cover the tokens
//!   scheduled this step (all or nothing) and registers newly full blocks in the prefix cache
//!   as soon as they are scheduled (vLLM's behaviour: a later seq of the same batch may use them).
//! * [`KvCacheManager::free`] releases blocks tail first, so a request's last blocks are evicted
//!   before its (more shareable) first ones.

use crate::config::SchedulerConfig;
use crate::error::ConfigError;
use crate::kv_cache::block_hash::BlockHash;
use crate::kv_cache::block_pool::{BlockId, BlockPool};

/// The KV blocks held by one request (its block table), managed by [`KvCacheManager`].
#[derive(Debug, Default, Clone)]
pub struct RequestBlocks {
    ids: Vec<BlockId>,
    /// Leading full blocks already offered to the prefix cache.
    num_hashed: usize,
}

impl RequestBlocks {
    pub fn ids(&self) -> &[BlockId] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Result of a prefix lookup, to be passed to the next `allocate_slots`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PrefixHit {
    pub num_blocks: usize,
    pub num_tokens: usize,
}

/// One allocation request: grow `blocks` to cover `num_computed + num_new + num_lookahead`
/// tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotRequest<'a> {
    /// Full-block hashes of the request (empty when caching is off).
    pub hashes: &'a [BlockHash],
    /// Cached prefix blocks to take over (admission only; from the last `lookup`).
    pub hit: PrefixHit,
    /// Tokens computed before this step, including `hit.num_tokens`.
    pub num_computed: usize,
    pub num_new: usize,
    pub num_lookahead: usize,
    /// Known tokens of the request (prompt + output); only those can be cached.
    pub num_known: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_caching: bool,
    /// Blocks found by the last `lookup` (reused buffer).
    hits: Vec<BlockId>,
}

impl KvCacheManager {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            pool: BlockPool::new(cfg.num_blocks)?,
            block_size: cfg.block_size,
            enable_caching: cfg.enable_prefix_caching,
            hits: Vec::new(),
        })
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn reset_prefix_cache(&mut self) -> usize {
        self.pool.reset_prefix_cache()
    }

    /// Longest cached prefix of a request with `num_tokens` known tokens, in whole blocks and
    /// never all of them (the last token is always recomputed).
    pub fn lookup(&mut self, hashes: &[BlockHash], num_tokens: usize) -> PrefixHit {
        self.hits.clear();
        if !self.enable_caching || num_tokens == 0 {
            return PrefixHit::default();
        }
        let max_blocks = ((num_tokens - 1) / self.block_size).min(hashes.len());
        let n = self
            .pool
            .find_cached_prefix(&hashes[..max_blocks], &mut self.hits);
        PrefixHit {
            num_blocks: n,
            num_tokens: n * self.block_size,
        }
    }

    /// Grows `blocks` for this step; false (nothing changed) if the pool cannot supply enough
    /// blocks, in which case the caller preempts or waits.
    pub fn allocate_slots(&mut self, blocks: &mut RequestBlocks, req: SlotRequest<'_>) -> bool {
        let hit_blocks = req.hit.num_blocks.min(self.hits.len());
        debug_assert!(
            hit_blocks == 0 || blocks.ids.is_empty(),
            "prefix hits only at admission"
        );
        let hits = &self.hits[..hit_blocks];
        let total = req.num_computed + req.num_new + req.num_lookahead;
        let num_needed = total.div_ceil(self.block_size);
        let num_new_blocks = num_needed.saturating_sub(blocks.ids.len() + hit_blocks);
        // Hit blocks sitting in the free list stop being allocatable once taken.
        let evictable_hits = hits
            .iter()
            .filter(|&&b| self.pool.ref_count(b) == Some(0))
            .count();
        if num_new_blocks + evictable_hits > self.pool.num_free() {
            return false;
        }
        for &b in hits {
            self.pool.touch(b);
        }
        blocks.ids.extend_from_slice(hits);
        let allocated = self.pool.allocate_many(num_new_blocks, &mut blocks.ids);
        debug_assert!(allocated, "capacity was checked");
        if self.enable_caching {
            let num_full = ((req.num_computed + req.num_new).min(req.num_known) / self.block_size)
                .min(req.hashes.len())
                .min(blocks.ids.len());
            for i in blocks.num_hashed..num_full {
                self.pool.cache_block(blocks.ids[i], req.hashes[i]);
            }
            blocks.num_hashed = blocks.num_hashed.max(num_full);
        }
        true
    }

    /// Releases every block of a request, tail first. Blocks whose KV was not fully computed
    /// (`num_computed_tokens` committed tokens) lose their hash when they become free, so an
    /// abort between `schedule` and `update_from_output` cannot leave a cached block whose
    /// content was never written.
    pub fn free(&mut self, blocks: &mut RequestBlocks, num_computed_tokens: usize) {
        let computed_full = num_computed_tokens / self.block_size;
        for (i, &id) in blocks.ids.iter().enumerate().rev() {
            if self.pool.free(id) == Some(0) && i >= computed_full {
                self.pool.uncache(id);
            }
        }
        blocks.ids.clear();
        blocks.num_hashed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::BlockHasher;

    fn manager(num_blocks: usize, caching: bool) -> KvCacheManager {
        let cfg = SchedulerConfig {
            block_size: 4,
            num_blocks,
            enable_prefix_caching: caching,
            ..Default::default()
        };
        KvCacheManager::new(&cfg).unwrap()
    }

    /// Block hashes (block size 4, as in [`manager`]) of the prompt `0, 1, …, len - 1`.
    fn hashes_of(len: u32) -> Vec<BlockHash> {
        let tokens: Vec<u32> = (0..len).collect();
        BlockHasher::new(4).unwrap().hash_prefix(&tokens, None)
    }

    fn slots(
        hashes: &[BlockHash],
        hit: PrefixHit,
        computed: usize,
        new: usize,
        known: usize,
    ) -> SlotRequest<'_> {
        SlotRequest {
            hashes,
            hit,
            num_computed: computed,
            num_new: new,
            num_lookahead: 0,
            num_known: known,
        }
    }

    #[test]
    fn allocate_caches_full_blocks_and_second_request_hits() {
        let mut m = manager(8, true);
        let hashes = hashes_of(10);
        let mut a = RequestBlocks::default();
        assert_eq!(m.lookup(&hashes, 10), PrefixHit::default());
        assert!(m.allocate_slots(&mut a, slots(&hashes, PrefixHit::default(), 0, 10, 10)));
        assert_eq!(a.len(), 3);
        assert_eq!(m.pool().num_cached(), 2);

        let mut b = RequestBlocks::default();
        let hit = m.lookup(&hashes, 10);
        assert_eq!(
            hit,
            PrefixHit {
                num_blocks: 2,
                num_tokens: 8
            }
        );
        assert!(m.allocate_slots(&mut b, slots(&hashes, hit, 8, 2, 10)));
        assert_eq!(&b.ids()[..2], &a.ids()[..2]);
        assert_ne!(b.ids()[2], a.ids()[2]);
        assert_eq!(m.pool().ref_count(a.ids()[0]), Some(2));

        m.free(&mut a, 10);
        m.free(&mut b, 10);
        assert_eq!(m.pool().num_free(), 8);
        assert_eq!(m.pool().num_cached_free(), 2);
        m.pool().check_invariants().unwrap();
    }

    #[test]
    fn last_token_is_always_recomputed() {
        let mut m = manager(8, true);
        let hashes = hashes_of(8);
        let mut a = RequestBlocks::default();
        assert!(m.allocate_slots(&mut a, slots(&hashes, PrefixHit::default(), 0, 8, 8)));
        // Exactly two full blocks cached; a request with the same 8 tokens reuses only one.
        assert_eq!(m.lookup(&hashes, 8).num_blocks, 1);
        assert_eq!(m.lookup(&hashes, 9).num_blocks, 2);
    }

    #[test]
    fn allocation_fails_cleanly_and_counts_free_hits() {
        let mut m = manager(3, true);
        let hashes = hashes_of(8);
        let mut a = RequestBlocks::default();
        assert!(m.allocate_slots(&mut a, slots(&hashes, PrefixHit::default(), 0, 8, 8)));
        m.free(&mut a, 8);
        // Both cached blocks are free; a 12-token request hitting them needs 1 more block, and
        // 3 free blocks cover hits + 1.
        let hit = m.lookup(&hashes, 12);
        assert_eq!(hit.num_blocks, 2);
        let mut b = RequestBlocks::default();
        assert!(
            !m.allocate_slots(&mut b, slots(&hashes, hit, 8, 8, 12)),
            "needs 4 blocks"
        );
        assert!(b.is_empty());
        assert!(m.allocate_slots(&mut b, slots(&hashes, hit, 8, 4, 12)));
        assert_eq!(m.pool().num_free(), 0);
        m.pool().check_invariants().unwrap();
    }

    #[test]
    fn free_uncaches_blocks_not_yet_computed() {
        let mut m = manager(4, true);
        let hashes = hashes_of(8);
        let mut a = RequestBlocks::default();
        assert!(m.allocate_slots(&mut a, slots(&hashes, PrefixHit::default(), 0, 8, 8)));
        assert_eq!(m.pool().num_cached(), 2);
        // Aborted after schedule, before the step committed: only block 0 was computed.
        m.free(&mut a, 4);
        assert_eq!(m.pool().num_cached(), 1);
        assert_eq!(m.lookup(&hashes, 9).num_blocks, 1);
    }

    #[test]
    fn caching_off_never_hits() {
        let mut m = manager(4, false);
        let hashes = hashes_of(8);
        let mut a = RequestBlocks::default();
        assert!(m.allocate_slots(&mut a, slots(&[], PrefixHit::default(), 0, 8, 8)));
        assert_eq!(m.pool().num_cached(), 0);
        assert_eq!(m.lookup(&hashes, 9), PrefixHit::default());
    }
}
