//! KV-cache bookkeeping: which device blocks hold which tokens, and which full blocks can be
//! shared between requests (prefix caching). The K/V tensors themselves live in the model crate,
//! addressed by [`BlockId`].

mod block_hash;
mod block_pool;
mod manager;

pub use block_hash::{BlockHash, BlockHasher, BLOCK_HASH_SEED};
pub use block_pool::{BlockId, BlockPool};
pub(crate) use manager::{KvCacheManager, PrefixHit, RequestBlocks, SlotRequest};
