//! Step statistics for the replica's metrics (gauges and cumulative counters).

/// A snapshot taken by [`crate::Scheduler::stats`]. Counters are cumulative since creation.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SchedulerStats {
    /// Requests holding KV blocks.
    pub running: usize,
    /// Requests queued (new and preempted).
    pub waiting: usize,
    /// Fraction of blocks in use, 0..=1 (cached but unreferenced blocks count as free).
    pub kv_usage: f64,
    /// Blocks that can be allocated (including cached, evictable ones).
    pub free_blocks: usize,
    pub num_blocks: usize,
    /// Free blocks still holding a cached prefix (evictable on demand).
    pub cached_free_blocks: usize,
    /// Prompt tokens looked up in the prefix cache at first admission (cumulative).
    pub prefix_queries_tokens: u64,
    /// Of those, tokens found cached (cumulative).
    pub prefix_hits_tokens: u64,
    /// Preemptions (cumulative).
    pub preemptions: u64,
    /// Tokens in the last scheduled batch.
    pub last_step_tokens: usize,
    /// Seqs in the last scheduled batch.
    pub last_step_seqs: usize,
    /// Non-empty steps scheduled (cumulative).
    pub steps: u64,
    /// Speculative decoding: verifications of a request with at least one draft token
    /// (cumulative; vLLM's `spec_decode_num_drafts`).
    pub spec_num_drafts: u64,
    /// Draft tokens verified (cumulative).
    pub spec_num_draft_tokens: u64,
    /// Draft tokens accepted (cumulative).
    pub spec_num_accepted_tokens: u64,
    /// Accepted draft tokens by position in their draft (index 0 = first draft token),
    /// cumulative; as long as the longest draft verified so far.
    pub spec_accepted_per_pos: Vec<u64>,
}

impl SchedulerStats {
    /// Prefix-cache hit rate over tokens, 0 when nothing was queried.
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queries_tokens == 0 {
            0.0
        } else {
            self.prefix_hits_tokens as f64 / self.prefix_queries_tokens as f64
        }
    }

    /// Share of verified draft tokens that were accepted, 0 when none was verified.
    pub fn spec_acceptance_rate(&self) -> f64 {
        if self.spec_num_draft_tokens == 0 {
            0.0
        } else {
            self.spec_num_accepted_tokens as f64 / self.spec_num_draft_tokens as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate() {
        let mut s = SchedulerStats::default();
        assert_eq!(s.prefix_hit_rate(), 0.0);
        s.prefix_queries_tokens = 8;
        s.prefix_hits_tokens = 2;
        assert_eq!(s.prefix_hit_rate(), 0.25);
        assert_eq!(s.spec_acceptance_rate(), 0.0);
        s.spec_num_draft_tokens = 4;
        s.spec_num_accepted_tokens = 3;
        assert_eq!(s.spec_acceptance_rate(), 0.75);
    }
}
