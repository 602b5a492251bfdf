//! What one step hands to the model runner ([`SchedulerOutput`]) and what the scheduler hands
//! back to the engine after the step ([`RequestUpdate`]).

use crate::request::{FinishReason, RequestId};

/// One request's share of a step: a chunk of its tokens to compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    /// The tokens to compute this step (a prefill chunk, or the last sampled token), followed
    /// by `num_draft_tokens` draft tokens to verify.
    pub token_ids: Vec<u32>,
    /// Tokens already computed before this step = position of `token_ids[0]`.
    pub start_pos: usize,
    /// All KV blocks of this request so far, covering `start_pos + token_ids.len()` (plus
    /// `num_lookahead_tokens` reserved slots when `sample`).
    pub block_table: Vec<u32>,
    /// True iff this chunk reaches the end of the known tokens: the model must sample a token.
    pub sample: bool,
    /// Speculative decoding: the last `num_draft_tokens` of `token_ids` are draft tokens (not
    /// yet part of the request) whose KV is computed speculatively. The engine verifies them
    /// against the model's tokens at the positions before them and passes the accepted prefix
    /// plus one token of its own to `update_from_output`. Only non-zero when `sample`.
    pub num_draft_tokens: usize,
}

impl ScheduledSeq {
    /// Position of each token of `token_ids`.
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.start_pos..self.start_pos + self.token_ids.len()
    }

    /// KV slot (`block_id * block_size + offset`) of each token of `token_ids`, where its K/V
    /// must be written. `block_size` is the scheduler's.
    pub fn slot_mapping(&self, block_size: usize) -> impl Iterator<Item = usize> + '_ {
        self.positions()
            .map(move |p| self.block_table[p / block_size] as usize * block_size + p % block_size)
    }

    /// Number of tokens whose KV the attention of this chunk reads (context length).
    pub fn context_len(&self) -> usize {
        self.start_pos + self.token_ids.len()
    }

    /// The known tokens of the chunk (without draft tokens).
    pub fn known_tokens(&self) -> &[u32] {
        &self.token_ids[..self.token_ids.len() - self.num_draft_tokens]
    }

    /// The draft tokens of the chunk (empty without speculation).
    pub fn draft_tokens(&self) -> &[u32] {
        &self.token_ids[self.token_ids.len() - self.num_draft_tokens..]
    }

    /// Logits rows a sampling seq needs: one per position from its last known token on
    /// (`1 + num_draft_tokens`); 0 when it does not sample.
    pub fn num_logits(&self) -> usize {
        if self.sample {
            1 + self.num_draft_tokens
        } else {
            0
        }
    }
}

/// The batch of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Running requests first (admission order), then newly admitted ones.
    pub seqs: Vec<ScheduledSeq>,
    /// Sum of `token_ids.len()` over `seqs`.
    pub num_batched_tokens: usize,
    /// Requests preempted this step (their KV blocks were released; they are waiting again).
    pub preempted: Vec<RequestId>,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The seqs the engine must sample for (and pass back to `update_from_output`).
    pub fn sampling_seqs(&self) -> impl Iterator<Item = &ScheduledSeq> {
        self.seqs.iter().filter(|s| s.sample)
    }

    /// Draft tokens scheduled for verification in this step.
    pub fn num_draft_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_draft_tokens).sum()
    }
}

/// What happened to one request during a step: new tokens and/or finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestUpdate {
    pub id: RequestId,
    /// Generated this step, in order. An EOS/stop token that finished the request is included
    /// (the engine decides whether to show it); tokens sampled after it are dropped.
    pub new_token_ids: Vec<u32>,
    pub finished: Option<FinishReason>,
    /// The EOS/stop token id that finished the request, when `finished == Some(Stop)`.
    pub stop_token: Option<u32>,
    pub num_prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    pub num_cached_tokens: usize,
}

impl RequestUpdate {
    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_mapping_follows_block_table() {
        let seq = ScheduledSeq {
            id: 1,
            token_ids: vec![10, 11, 12],
            start_pos: 3,
            block_table: vec![7, 2],
            sample: true,
            num_draft_tokens: 2,
        };
        assert_eq!(seq.slot_mapping(4).collect::<Vec<_>>(), vec![31, 8, 9]);
        assert_eq!(seq.positions(), 3..6);
        assert_eq!(seq.context_len(), 6);
        assert_eq!(
            (seq.known_tokens(), seq.draft_tokens()),
            (&[10][..], &[11, 12][..])
        );
        assert_eq!(seq.num_logits(), 3);
    }
}
