//! Scheduler configuration: token budget, sequence cap, KV capacity and queue policy.
//!
//! The engine computes `num_blocks` from free device memory; everything here is a plain value,
//! validated once by [`SchedulerConfig::validate`] (called by `Scheduler::new`).

use crate::error::ConfigError;

/// Order in which waiting requests are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum QueuePolicy {
    /// First come, first served. Preempted requests go back to the head of the queue.
    #[default]
    Fcfs,
    /// Lower `priority` value first, ties by arrival. Preempted requests keep their place.
    /// Under memory pressure the running request with the highest `priority` value (newest on
    /// ties) is preempted first, even if it was already scheduled in the same step.
    Priority,
}

/// Limits and switches of one scheduler instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct SchedulerConfig {
    /// Token budget of one step: the sum of all scheduled chunk lengths. Default 8192.
    /// Must be at least `max_num_seqs` so every running request can decode each step.
    pub max_num_batched_tokens: usize,
    /// Maximum number of running requests (admitted, holding KV blocks). Default 256.
    pub max_num_seqs: usize,
    /// Maximum `prompt + max_tokens` of a request, in tokens. Default 4096.
    pub max_model_len: usize,
    /// Tokens per KV block. Default 16.
    pub block_size: usize,
    /// Number of KV blocks on the device (block ids `0..num_blocks`). Default 1024.
    pub num_blocks: usize,
    /// Reuse full KV blocks across requests with the same prefix. Default true.
    pub enable_prefix_caching: bool,
    /// Waiting-queue order. Default FCFS.
    pub policy: QueuePolicy,
    /// Extra KV slots reserved after the last scheduled token of every sampling seq (e.g. for
    /// the KV a multi-step drafter writes beyond the verified tokens). Default 0.
    pub num_lookahead_tokens: usize,
    /// Speculative decoding: the most draft tokens a request may carry into one step (see
    /// [`crate::Scheduler::set_draft_tokens`]). Default 0 (off).
    pub num_speculative_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_batched_tokens: 8192,
            max_num_seqs: 256,
            max_model_len: 4096,
            block_size: 16,
            num_blocks: 1024,
            enable_prefix_caching: true,
            policy: QueuePolicy::Fcfs,
            num_lookahead_tokens: 0,
            num_speculative_tokens: 0,
        }
    }
}

impl SchedulerConfig {
    /// Checks that the configuration can schedule anything at all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_num_seqs", self.max_num_seqs),
            ("max_model_len", self.max_model_len),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero(field));
        }
        // Block ids travel as u32; u32::MAX is reserved as the free list's "none".
        if self.num_blocks >= u32::MAX as usize {
            return Err(ConfigError::TooManyBlocks(self.num_blocks));
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return Err(ConfigError::BudgetBelowSeqs {
                max_num_batched_tokens: self.max_num_batched_tokens,
                max_num_seqs: self.max_num_seqs,
            });
        }
        if self.num_speculative_tokens >= self.max_num_batched_tokens {
            return Err(ConfigError::SpecAboveBudget {
                num_speculative_tokens: self.num_speculative_tokens,
                max_num_batched_tokens: self.max_num_batched_tokens,
            });
        }
        Ok(())
    }

    /// Number of blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_contract_and_is_valid() {
        let c = SchedulerConfig::default();
        assert_eq!(
            (
                c.max_num_batched_tokens,
                c.max_num_seqs,
                c.max_model_len,
                c.block_size
            ),
            (8192, 256, 4096, 16)
        );
        assert_eq!((c.num_blocks, c.enable_prefix_caching), (1024, true));
        assert_eq!((c.policy, c.num_lookahead_tokens), (QueuePolicy::Fcfs, 0));
        assert_eq!(c.num_speculative_tokens, 0);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn rejects_zero_fields_and_small_budget() {
        let c = SchedulerConfig {
            block_size: 0,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("block_size")));
        let c = SchedulerConfig {
            num_blocks: 0,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("num_blocks")));
        let c = SchedulerConfig {
            max_num_batched_tokens: 8,
            max_num_seqs: 16,
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BudgetBelowSeqs { .. })
        ));
        let c = SchedulerConfig {
            num_blocks: u32::MAX as usize,
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::TooManyBlocks(_))));
        let c = SchedulerConfig {
            max_num_batched_tokens: 4,
            max_num_seqs: 4,
            num_speculative_tokens: 4,
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SpecAboveBudget { .. })
        ));
    }

    #[test]
    fn blocks_for_rounds_up() {
        let c = SchedulerConfig {
            block_size: 16,
            ..Default::default()
        };
        assert_eq!(
            (
                c.blocks_for(0),
                c.blocks_for(1),
                c.blocks_for(16),
                c.blocks_for(17)
            ),
            (0, 1, 1, 2)
        );
    }
}
