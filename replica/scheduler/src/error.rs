//! Typed errors of the crate: bad configuration, rejected requests, broken invariants.

use thiserror::Error;

use crate::request::RequestId;

/// A [`crate::SchedulerConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("scheduler config: {0} must be greater than 0")]
    Zero(&'static str),
    /// More blocks than block ids (u32) can address.
    #[error("scheduler config: num_blocks ({0}) must be below 2^32 - 1")]
    TooManyBlocks(usize),
    /// The token budget cannot give every running request one decode token per step.
    #[error(
        "scheduler config: max_num_batched_tokens ({max_num_batched_tokens}) must be at least \
         max_num_seqs ({max_num_seqs})"
    )]
    BudgetBelowSeqs {
        max_num_batched_tokens: usize,
        max_num_seqs: usize,
    },
    /// A step could not hold a decode token plus its draft tokens.
    #[error(
        "scheduler config: num_speculative_tokens ({num_speculative_tokens}) must be below \
         max_num_batched_tokens ({max_num_batched_tokens})"
    )]
    SpecAboveBudget {
        num_speculative_tokens: usize,
        max_num_batched_tokens: usize,
    },
}

/// Why [`crate::Scheduler::add_request`] refused a request. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddError {
    /// `prompt + max_tokens` exceeds the context window.
    #[error(
        "request is too long: prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds \
         max_model_len ({max_model_len})"
    )]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        max_model_len: usize,
    },
    /// Even alone, the request could never hold all its tokens in the KV cache.
    /// `kv_tokens` = KV slots the request may need: `prompt + max_tokens - 1` (the last
    /// generated token is never computed) `+ num_lookahead_tokens`.
    #[error(
        "request is too large for the KV cache: up to {kv_tokens} tokens of KV need \
         {blocks_needed} blocks, the cache has {num_blocks}"
    )]
    TooLargeForCache {
        kv_tokens: usize,
        blocks_needed: usize,
        num_blocks: usize,
    },
    /// The prompt has no tokens.
    #[error("prompt must contain at least one token")]
    EmptyPrompt,
    /// `max_tokens` is zero: nothing to generate.
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    /// A request with this id is already queued or running.
    #[error("request id {0} is already in use")]
    DuplicateId(RequestId),
}

/// A violated internal invariant, found by [`crate::Scheduler::check_invariants`] (a bug).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("scheduler invariant violated: {0}")]
pub struct InvariantError(pub String);

impl InvariantError {
    pub(crate) fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), Self> {
        if ok {
            Ok(())
        } else {
            Err(Self(msg()))
        }
    }
}
