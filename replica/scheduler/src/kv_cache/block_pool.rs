//! The block pool: a fixed array of KV blocks with reference counts, an LRU free list and the
//! prefix-cache index (`block hash -> block id`).
//!
//! * A block is free exactly when its reference count is 0; free blocks sit in an intrusive
//!   doubly linked list, least recently freed at the head. Allocation pops the head, freeing
//!   appends to the tail, and `touch` unlinks a free block from anywhere: all O(1).
//! * Lazy eviction: a freed block keeps its hash and stays findable in the index until it is
//!   allocated again; only then is its hash dropped. `touch` revives such a block.
//! * The index holds at most one block per hash. A block computed twice with the same content
//!   (two requests racing on the same prefix) is simply not indexed the second time.

use crate::error::{ConfigError, InvariantError};
use crate::fast_map::FastMap;
use crate::kv_cache::block_hash::BlockHash;

/// Index of a KV block on the device, `0..num_blocks`.
pub type BlockId = u32;

/// "No block" in the free list links.
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Block {
    ref_cnt: u32,
    prev: u32,
    next: u32,
    hash: Option<BlockHash>,
}

/// Reference-counted KV blocks with an LRU free list and a hash index.
#[derive(Debug, Clone)]
pub struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    /// Free blocks that still carry a hash (evictable cached prefixes).
    num_cached_free: usize,
    cached: FastMap<BlockHash, BlockId>,
}

impl BlockPool {
    /// A pool of `num_blocks` free, uncached blocks (`1..u32::MAX` blocks).
    pub fn new(num_blocks: usize) -> Result<Self, ConfigError> {
        if num_blocks == 0 {
            return Err(ConfigError::Zero("num_blocks"));
        }
        if num_blocks >= NIL as usize {
            return Err(ConfigError::TooManyBlocks(num_blocks));
        }
        let n = num_blocks as u32;
        let blocks = (0..n)
            .map(|i| Block {
                ref_cnt: 0,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == n { NIL } else { i + 1 },
                hash: None,
            })
            .collect();
        Ok(Self {
            blocks,
            head: 0,
            tail: n - 1,
            num_free: num_blocks,
            num_cached_free: 0,
            cached: FastMap::default(),
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be allocated now (including cached, evictable ones).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Free blocks that still hold a cached prefix.
    pub fn num_cached_free(&self) -> usize {
        self.num_cached_free
    }

    /// Blocks registered in the prefix-cache index (in use or free).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Fraction of blocks in use, 0..=1.
    pub fn usage(&self) -> f64 {
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    /// Reference count of a block; `None` if the id is out of range.
    pub fn ref_count(&self, id: BlockId) -> Option<u32> {
        self.blocks.get(id as usize).map(|b| b.ref_cnt)
    }

    /// The hash a block is indexed under, if any.
    pub fn block_hash(&self, id: BlockId) -> Option<BlockHash> {
        self.blocks.get(id as usize).and_then(|b| b.hash)
    }

    /// Takes the least recently freed block (evicting its cached hash), with one reference.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = self.head;
        if id == NIL {
            return None;
        }
        self.unlink(id);
        let block = &mut self.blocks[id as usize];
        block.ref_cnt = 1;
        if let Some(hash) = block.hash.take() {
            self.cached.remove(&hash);
        }
        Some(id)
    }

    /// Allocates `n` blocks into `out`, or nothing (returning false) if fewer are free.
    pub fn allocate_many(&mut self, n: usize, out: &mut Vec<BlockId>) -> bool {
        if n > self.num_free {
            return false;
        }
        out.reserve(n);
        for _ in 0..n {
            match self.allocate() {
                Some(id) => out.push(id),
                None => return false, // unreachable: num_free counted them
            }
        }
        true
    }

    /// Adds a reference to a block, reviving it from the free list if it was free (a prefix
    /// cache hit on an evictable block). False if the id is out of range.
    pub fn touch(&mut self, id: BlockId) -> bool {
        let Some(block) = self.blocks.get(id as usize) else {
            return false;
        };
        if block.ref_cnt == 0 {
            self.unlink(id);
        }
        self.blocks[id as usize].ref_cnt += 1;
        true
    }

    /// Drops one reference. Returns the remaining count (`Some(0)`: the block is now free, at
    /// the tail of the LRU list, keeping its hash), or `None` if the block was not in use.
    pub fn free(&mut self, id: BlockId) -> Option<u32> {
        let block = self.blocks.get_mut(id as usize)?;
        if block.ref_cnt == 0 {
            return None;
        }
        block.ref_cnt -= 1;
        let left = block.ref_cnt;
        if left == 0 {
            self.push_tail(id);
        }
        Some(left)
    }

    /// Indexes a block under `hash`. Returns true if the block is (now) indexed under it;
    /// false if another block already holds this hash, the block holds another hash, or the
    /// id is out of range.
    pub fn cache_block(&mut self, id: BlockId, hash: BlockHash) -> bool {
        let Some(block) = self.blocks.get(id as usize) else {
            return false;
        };
        match block.hash {
            Some(h) => return h == hash,
            None if self.cached.contains_key(&hash) => return false,
            None => {}
        }
        if block.ref_cnt == 0 {
            self.num_cached_free += 1;
        }
        self.blocks[id as usize].hash = Some(hash);
        self.cached.insert(hash, id);
        true
    }

    /// Removes a block from the index (its content is not trustworthy). False if it was not
    /// indexed.
    pub fn uncache(&mut self, id: BlockId) -> bool {
        let Some(block) = self.blocks.get_mut(id as usize) else {
            return false;
        };
        let Some(hash) = block.hash.take() else {
            return false;
        };
        if block.ref_cnt == 0 {
            self.num_cached_free -= 1;
        }
        self.cached.remove(&hash);
        true
    }

    /// The block indexed under `hash`, if any.
    pub fn get_cached(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    /// Pushes onto `out` the blocks of the longest prefix of `hashes` found in the index;
    /// returns how many.
    pub fn find_cached_prefix(&self, hashes: &[BlockHash], out: &mut Vec<BlockId>) -> usize {
        let start = out.len();
        for hash in hashes {
            match self.cached.get(hash) {
                Some(&id) => out.push(id),
                None => break,
            }
        }
        out.len() - start
    }

    /// Drops every hash from the index (e.g. after a failed step left cached content in
    /// doubt). Blocks in use stay allocated. Returns how many hashes were dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let n = self.cached.len();
        for (_, id) in self.cached.drain() {
            self.blocks[id as usize].hash = None;
        }
        self.num_cached_free = 0;
        n
    }

    /// Free block ids in eviction order (least recently freed first).
    pub fn free_blocks(&self) -> impl Iterator<Item = BlockId> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let id = cur;
            cur = self.blocks[id as usize].next;
            Some(id)
        })
    }

    fn unlink(&mut self, id: BlockId) {
        let Block {
            prev, next, hash, ..
        } = self.blocks[id as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let block = &mut self.blocks[id as usize];
        block.prev = NIL;
        block.next = NIL;
        self.num_free -= 1;
        if hash.is_some() {
            self.num_cached_free -= 1;
        }
    }

    fn push_tail(&mut self, id: BlockId) {
        let tail = self.tail;
        let block = &mut self.blocks[id as usize];
        block.prev = tail;
        block.next = NIL;
        let cached = block.hash.is_some();
        if tail == NIL {
            self.head = id;
        } else {
            self.blocks[tail as usize].next = id;
        }
        self.tail = id;
        self.num_free += 1;
        if cached {
            self.num_cached_free += 1;
        }
    }

    /// Verifies the free list, counters and index against the blocks (O(num_blocks)).
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let n = self.blocks.len();
        let mut in_list = vec![false; n];
        let (mut count, mut prev) = (0usize, NIL);
        for id in self.free_blocks() {
            let b = &self.blocks[id as usize];
            InvariantError::check(!in_list[id as usize] && count < n, || {
                format!("free list cycles at block {id}")
            })?;
            in_list[id as usize] = true;
            InvariantError::check(b.prev == prev, || {
                format!("free list back link broken at block {id}")
            })?;
            InvariantError::check(b.ref_cnt == 0, || {
                format!("block {id} is free with ref count {}", b.ref_cnt)
            })?;
            prev = id;
            count += 1;
        }
        InvariantError::check(self.tail == prev, || {
            "free list tail is not its last block".into()
        })?;
        InvariantError::check(count == self.num_free, || {
            format!("num_free {} but {count} listed", self.num_free)
        })?;
        for (id, b) in self.blocks.iter().enumerate() {
            InvariantError::check(b.ref_cnt > 0 || in_list[id], || {
                format!("block {id} unreferenced but not free")
            })?;
            if let Some(h) = b.hash {
                InvariantError::check(self.cached.get(&h) == Some(&(id as u32)), || {
                    format!("block {id} has a hash the index does not map to it")
                })?;
            }
        }
        for (h, &id) in &self.cached {
            InvariantError::check(self.block_hash(id) == Some(*h), || {
                format!("index maps a hash to block {id}")
            })?;
        }
        let cached_free = (0..n)
            .filter(|&i| in_list[i] && self.blocks[i].hash.is_some())
            .count();
        InvariantError::check(cached_free == self.num_cached_free, || {
            format!(
                "num_cached_free {} but {cached_free} counted",
                self.num_cached_free
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: u128) -> BlockHash {
        BlockHash(x)
    }

    #[test]
    fn allocate_and_free_follow_lru_order() {
        let mut p = BlockPool::new(4).unwrap();
        let a: Vec<_> = (0..4).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(a, vec![0, 1, 2, 3]);
        assert_eq!(p.allocate(), None);
        assert_eq!(p.usage(), 1.0);
        for id in [2, 0, 3] {
            assert_eq!(p.free(id), Some(0));
        }
        assert_eq!(p.free_blocks().collect::<Vec<_>>(), vec![2, 0, 3]);
        assert_eq!(p.allocate(), Some(2));
        assert_eq!(p.free(2), Some(0));
        assert_eq!(p.free(2), None, "double free is refused");
        assert_eq!(p.free(99), None);
        p.check_invariants().unwrap();
    }

    #[test]
    fn lazy_eviction_and_touch() {
        let mut p = BlockPool::new(3).unwrap();
        let b = p.allocate().unwrap();
        assert!(p.cache_block(b, h(7)));
        assert_eq!(p.free(b), Some(0));
        assert_eq!((p.num_free(), p.num_cached_free()), (3, 1));
        // Still findable after being freed.
        assert_eq!(p.get_cached(&h(7)), Some(b));
        // Touch revives it: in use again, out of the free list, hash kept.
        assert!(p.touch(b));
        assert_eq!(
            (p.num_free(), p.num_cached_free(), p.ref_count(b)),
            (2, 0, Some(1))
        );
        assert!(p.touch(b));
        assert_eq!(p.free(b), Some(1));
        assert_eq!(p.free(b), Some(0));
        p.check_invariants().unwrap();
        // Reallocation evicts the hash once the block reaches the head of the LRU list.
        let got: Vec<_> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got.last(), Some(&b));
        assert_eq!(p.get_cached(&h(7)), None);
        assert_eq!(p.block_hash(b), None);
        p.check_invariants().unwrap();
    }

    #[test]
    fn index_holds_one_block_per_hash() {
        let mut p = BlockPool::new(3).unwrap();
        let (a, b) = (p.allocate().unwrap(), p.allocate().unwrap());
        assert!(p.cache_block(a, h(1)));
        assert!(
            p.cache_block(a, h(1)),
            "re-caching the same pair is a no-op"
        );
        assert!(!p.cache_block(b, h(1)), "duplicate content is not indexed");
        assert!(!p.cache_block(a, h(2)), "a block has one hash");
        let mut out = Vec::new();
        assert!(p.cache_block(b, h(2)));
        assert_eq!(p.find_cached_prefix(&[h(1), h(2), h(3), h(1)], &mut out), 2);
        assert_eq!(out, vec![a, b]);
        assert!(p.uncache(a));
        assert!(!p.uncache(a));
        assert_eq!(p.reset_prefix_cache(), 1);
        assert_eq!(p.num_cached(), 0);
        p.check_invariants().unwrap();
    }

    #[test]
    fn allocate_many_is_all_or_nothing() {
        let mut p = BlockPool::new(3).unwrap();
        let mut out = Vec::new();
        assert!(!p.allocate_many(4, &mut out));
        assert!(out.is_empty());
        assert!(p.allocate_many(3, &mut out));
        assert_eq!(out.len(), 3);
        assert!(BlockPool::new(0).is_err());
    }
}
