//! Device-side paged KV cache: per layer one K and one V tensor of `[num_blocks * block_size, kv_heads,
//! head_dim]` slots, addressed by block id. The scheduler owns which blocks a request holds; the model
//! only reads and writes the slots a block table names (`slot = block * block_size + pos % block_size`).
//! The layout keeps a per-slot row so an FP8 cache (one byte per element plus scales) slots in later.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::Glm4MoeConfig;
use crate::error::{ModelError, Result};

pub struct LayerKv<B: Backend> {
    /// `[slots, kv_heads, head_dim]`
    pub k: Tensor<B, 3>,
    pub v: Tensor<B, 3>,
}

pub struct PagedKvCache<B: Backend> {
    pub block_size: usize,
    pub num_blocks: usize,
    pub layers: Vec<LayerKv<B>>,
}

impl<B: Backend> PagedKvCache<B> {
    /// A zeroed cache for `num_layers` attention layers (the main stack, plus one for the MTP layer if used).
    pub fn new(
        cfg: &Glm4MoeConfig,
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        device: &B::Device,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::KvCache(
                "block size and block count must be > 0".into(),
            ));
        }
        let slots = num_blocks * block_size;
        let shape = [slots, cfg.num_key_value_heads, cfg.head_dim];
        let layers = (0..num_layers)
            .map(|_| LayerKv {
                k: Tensor::zeros(shape, device),
                v: Tensor::zeros(shape, device),
            })
            .collect();
        Ok(Self {
            block_size,
            num_blocks,
            layers,
        })
    }

    /// Bytes per block across all layers for f32/bf16/fp8 elements of `elem_bytes`.
    pub fn bytes_per_block(
        cfg: &Glm4MoeConfig,
        num_layers: usize,
        block_size: usize,
        elem_bytes: usize,
    ) -> usize {
        cfg.kv_bytes_per_token_per_layer(elem_bytes) * num_layers * block_size
    }

    /// Slot of position `pos` for a block table.
    pub fn slot(&self, block_table: &[u32], pos: usize) -> Result<usize> {
        let b = *block_table.get(pos / self.block_size).ok_or_else(|| {
            ModelError::KvCache(format!(
                "block table of {} blocks does not cover position {pos}",
                block_table.len()
            ))
        })? as usize;
        if b >= self.num_blocks {
            return Err(ModelError::KvCache(format!(
                "block id {b} out of range (cache has {} blocks)",
                self.num_blocks
            )));
        }
        Ok(b * self.block_size + pos % self.block_size)
    }
}

pub(crate) fn int_tensor<B: Backend>(v: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}
