//! A request as the scheduler sees it: its tokens (prompt then output), how many of them have
//! KV computed, its KV blocks and its state (`Waiting -> Running <-> Preempted`, then removed).

use crate::kv_cache::{BlockHash, BlockHasher, RequestBlocks};
use crate::queue::QueueKey;

/// Engine-assigned request id, unique among live requests.
pub type RequestId = u64;

/// A request as submitted by the engine (already tokenized and validated for sampling).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRequest {
    pub id: RequestId,
    pub prompt_token_ids: Vec<u32>,
    /// Maximum number of generated tokens (at least 1).
    pub max_tokens: usize,
    /// EOS and stop token ids do not finish the request before this many generated tokens.
    pub min_tokens: usize,
    /// Used by [`crate::QueuePolicy::Priority`]: lower is served first.
    pub priority: i32,
    /// Separates prefix-cache namespaces (e.g. per tenant): only requests with the same salt
    /// share cached blocks.
    pub cache_salt: Option<String>,
    /// End-of-sequence ids; ignored when `ignore_eos`.
    pub eos_token_ids: Vec<u32>,
    /// Extra ids that finish the request (always honoured, after `min_tokens`).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum FinishReason {
    /// An EOS or stop token was generated (the id is in `RequestUpdate::stop_token`), or the
    /// engine stopped it (stop string) through [`crate::Scheduler::finish`].
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Aborted (client disconnect or engine decision).
    Abort,
}

impl FinishReason {
    /// OpenAI-style name: `"stop"`, `"length"`, `"abort"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// Where a live request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    /// Queued, never admitted.
    Waiting,
    /// Admitted: holds KV blocks and is scheduled every step it fits in the budget.
    Running,
    /// Queued again after preemption; its KV will be recomputed.
    Preempted,
}

/// A read-only snapshot of one live request (see [`crate::Scheduler::request_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub status: RequestStatus,
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    pub num_computed_tokens: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    pub num_cached_tokens: usize,
    pub num_preemptions: u32,
    pub block_table: Vec<u32>,
}

/// Scheduler-side state of a live request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub id: RequestId,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    pub num_prompt_tokens: usize,
    /// Tokens whose KV is in this request's blocks (committed by `update_from_output`).
    pub num_computed_tokens: usize,
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub priority: i32,
    pub eos_token_ids: Vec<u32>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub cache_salt: Option<String>,
    /// Arrival order (unique, increasing); FCFS and priority ties use it.
    pub arrival: u64,
    /// Chained hashes of every full block of `tokens` (empty when prefix caching is off).
    pub block_hashes: Vec<BlockHash>,
    pub blocks: RequestBlocks,
    pub status: RequestStatus,
    /// Prefix-cache hit at first admission; `None` until then.
    pub num_cached_tokens: Option<usize>,
    pub num_preemptions: u32,
    /// Position in the waiting queue while waiting or preempted.
    pub queue_key: Option<QueueKey>,
    /// Draft tokens proposed after the last token (speculative decoding), scheduled with the
    /// next decode step. Only running requests hold drafts.
    pub draft_token_ids: Vec<u32>,
}

impl Request {
    pub fn new(r: NewRequest, arrival: u64) -> Self {
        let num_prompt_tokens = r.prompt_token_ids.len();
        let mut tokens = r.prompt_token_ids;
        tokens.reserve(r.max_tokens);
        Self {
            id: r.id,
            tokens,
            num_prompt_tokens,
            num_computed_tokens: 0,
            max_tokens: r.max_tokens,
            min_tokens: r.min_tokens,
            priority: r.priority,
            eos_token_ids: r.eos_token_ids,
            stop_token_ids: r.stop_token_ids,
            ignore_eos: r.ignore_eos,
            cache_salt: r.cache_salt,
            arrival,
            block_hashes: Vec::new(),
            blocks: RequestBlocks::default(),
            status: RequestStatus::Waiting,
            num_cached_tokens: None,
            num_preemptions: 0,
            queue_key: None,
            draft_token_ids: Vec::new(),
        }
    }

    /// Known tokens: prompt + output.
    #[inline]
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    #[inline]
    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }

    /// Extends `block_hashes` to cover every full block of `tokens`.
    pub fn update_block_hashes(&mut self, hasher: &mut BlockHasher) {
        hasher.extend(
            &mut self.block_hashes,
            &self.tokens,
            self.cache_salt.as_deref(),
        );
    }

    pub fn info(&self) -> RequestInfo {
        RequestInfo {
            status: self.status,
            num_prompt_tokens: self.num_prompt_tokens,
            num_output_tokens: self.num_output_tokens(),
            num_computed_tokens: self.num_computed_tokens,
            num_cached_tokens: self.num_cached_tokens.unwrap_or(0),
            num_preemptions: self.num_preemptions,
            block_table: self.blocks.ids().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_request_starts_waiting_with_prompt_as_tokens() {
        let r = Request::new(
            NewRequest {
                id: 7,
                prompt_token_ids: vec![1, 2, 3],
                max_tokens: 4,
                ..Default::default()
            },
            0,
        );
        assert_eq!(
            (r.num_tokens(), r.num_output_tokens(), r.num_computed_tokens),
            (3, 0, 0)
        );
        assert_eq!(r.status, RequestStatus::Waiting);
        assert_eq!(r.info().num_cached_tokens, 0);
    }

    #[test]
    fn finish_reason_names() {
        assert_eq!(FinishReason::Stop.as_str(), "stop");
        assert_eq!(FinishReason::Length.as_str(), "length");
        assert_eq!(FinishReason::Abort.as_str(), "abort");
    }
}
