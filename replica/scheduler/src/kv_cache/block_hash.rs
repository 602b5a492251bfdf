//! Chained block hashes: the identity of a full KV block is its whole prefix.
//!
//! `hash(block i) = xxh3_128(seed, hash(block i-1) ‖ tokens of block i ‖ extra keys)`, where the
//! first block's parent is a fixed root and the extra keys are the request's cache salt (first
//! block only, so it taints every later hash through the chain). Two requests therefore share a
//! block exactly when they share every token before and in it, and the same salt. The seed is
//! fixed, so hashes are stable across processes and restarts (needed for any cross-replica use).
//! 128 bits keep accidental collisions out of reach (~2^-64 at 2^32 live blocks).

use std::hash::{Hash, Hasher};

use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::error::ConfigError;

/// Fixed seed ("glmfleet" in ASCII).
pub const BLOCK_HASH_SEED: u64 = 0x676c_6d66_6c65_6574;

/// Parent hash of the first block of every sequence.
const ROOT: BlockHash = BlockHash(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834);

/// Hash of a full block and, through the chain, of everything before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

impl Hash for BlockHash {
    // The value is already uniformly distributed: feed one folded word to the map's hasher.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64((self.0 as u64) ^ ((self.0 >> 64) as u64));
    }
}

/// Computes block hashes for one block size, reusing a byte buffer between calls.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    block_size: usize,
    buf: Vec<u8>,
}

impl BlockHasher {
    pub fn new(block_size: usize) -> Result<Self, ConfigError> {
        if block_size == 0 {
            return Err(ConfigError::Zero("block_size"));
        }
        Ok(Self {
            block_size,
            buf: Vec::with_capacity(16 + 4 * block_size + 64),
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Hash of one block given its parent (`None` for the first block), its tokens and extra
    /// keys. The encoding is unambiguous: a fixed-size trailer records the token count, the
    /// extra-key length and whether extra keys are present.
    pub fn hash_block(
        &mut self,
        parent: Option<BlockHash>,
        tokens: &[u32],
        extra: Option<&[u8]>,
    ) -> BlockHash {
        let buf = &mut self.buf;
        buf.clear();
        buf.extend_from_slice(&parent.unwrap_or(ROOT).0.to_le_bytes());
        for t in tokens {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        let extra_len = extra.map_or(0, <[u8]>::len);
        if let Some(extra) = extra {
            buf.extend_from_slice(extra);
        }
        buf.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(extra_len as u64).to_le_bytes());
        buf.push(u8::from(extra.is_some()));
        BlockHash(xxh3_128_with_seed(buf, BLOCK_HASH_SEED))
    }

    /// Appends to `hashes` the hashes of the full blocks of `tokens` not yet hashed
    /// (`hashes[i]` covers `tokens[i*bs..(i+1)*bs]`). `cache_salt` keys the first block.
    pub fn extend(
        &mut self,
        hashes: &mut Vec<BlockHash>,
        tokens: &[u32],
        cache_salt: Option<&str>,
    ) {
        let bs = self.block_size;
        let num_full = tokens.len() / bs;
        hashes.reserve(num_full.saturating_sub(hashes.len()));
        for i in hashes.len()..num_full {
            let parent = hashes.last().copied();
            let extra = if i == 0 {
                cache_salt.map(str::as_bytes)
            } else {
                None
            };
            let hash = self.hash_block(parent, &tokens[i * bs..(i + 1) * bs], extra);
            hashes.push(hash);
        }
    }

    /// Hashes of every full block of `tokens`.
    pub fn hash_prefix(&mut self, tokens: &[u32], cache_salt: Option<&str>) -> Vec<BlockHash> {
        let mut hashes = Vec::new();
        self.extend(&mut hashes, tokens, cache_salt);
        hashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_identifies_the_whole_prefix() {
        let mut h = BlockHasher::new(2).unwrap();
        let a = h.hash_prefix(&[1, 2, 3, 4, 5], None);
        let b = h.hash_prefix(&[1, 2, 3, 4], None);
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        // Same second block, different first block: different second hash.
        let c = h.hash_prefix(&[9, 2, 3, 4], None);
        assert_ne!(a[0], c[0]);
        assert_ne!(a[1], c[1]);
        // Deterministic across hashers.
        assert_eq!(
            BlockHasher::new(2)
                .unwrap()
                .hash_prefix(&[1, 2, 3, 4], None),
            a
        );
    }

    #[test]
    fn salt_taints_every_block() {
        let mut h = BlockHasher::new(2).unwrap();
        let plain = h.hash_prefix(&[1, 2, 3, 4], None);
        let salted = h.hash_prefix(&[1, 2, 3, 4], Some("tenant-a"));
        let other = h.hash_prefix(&[1, 2, 3, 4], Some("tenant-b"));
        let empty = h.hash_prefix(&[1, 2, 3, 4], Some(""));
        for i in 0..2 {
            assert_ne!(plain[i], salted[i]);
            assert_ne!(salted[i], other[i]);
            assert_ne!(plain[i], empty[i]);
        }
    }

    #[test]
    fn extend_is_incremental() {
        let mut h = BlockHasher::new(3).unwrap();
        let tokens: Vec<u32> = (0..10).collect();
        let mut inc = Vec::new();
        for n in 0..=tokens.len() {
            h.extend(&mut inc, &tokens[..n], Some("s"));
            assert_eq!(inc.len(), n / 3);
        }
        assert_eq!(inc, h.hash_prefix(&tokens, Some("s")));
    }

    #[test]
    fn encoding_is_unambiguous() {
        let mut h = BlockHasher::new(1).unwrap();
        // Token bytes vs extra-key bytes that spell the same thing.
        let a = h.hash_block(None, &[0x0403_0201], None);
        let b = h.hash_block(None, &[], Some(&[1, 2, 3, 4]));
        assert_ne!(a, b);
        assert!(BlockHasher::new(0).is_err());
    }
}
