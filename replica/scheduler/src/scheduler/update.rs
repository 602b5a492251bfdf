//! Applying a step's results: commit computed tokens (rolling back rejected draft tokens),
//! append sampled ones, check stop conditions, release finished requests; and taking the
//! engine's draft tokens for the next step.

use crate::fast_map::FastMap;
use crate::output::{RequestUpdate, ScheduledSeq, SchedulerOutput};
use crate::request::{RequestId, RequestStatus};
use crate::scheduler::Scheduler;
use crate::stop::check_stop;

/// Finds each sampling seq's tokens in the engine's list: in order in the common case, through
/// a map built on first mismatch otherwise.
struct SampledLookup<'a> {
    sampled: &'a [(RequestId, Vec<u32>)],
    cursor: usize,
    index: Option<FastMap<RequestId, usize>>,
}

impl<'a> SampledLookup<'a> {
    fn new(sampled: &'a [(RequestId, Vec<u32>)]) -> Self {
        Self {
            sampled,
            cursor: 0,
            index: None,
        }
    }

    fn get(&mut self, id: RequestId) -> Option<&'a [u32]> {
        let sampled = self.sampled;
        if let Some((sid, tokens)) = sampled.get(self.cursor) {
            if *sid == id {
                self.cursor += 1;
                return Some(tokens);
            }
        }
        let index = self.index.get_or_insert_with(|| {
            sampled
                .iter()
                .enumerate()
                .map(|(i, (sid, _))| (*sid, i))
                .collect()
        });
        index.get(&id).map(|&i| sampled[i].1.as_slice())
    }
}

impl Scheduler {
    /// Applies the results of executing `out`. `sampled` holds the new tokens of the seqs with
    /// `sample == true` (normally one each, in output order). Returns one update per request
    /// that got tokens or finished. Seqs of requests aborted since `schedule()` are skipped.
    pub fn update_from_output(
        &mut self,
        out: &SchedulerOutput,
        sampled: &[(RequestId, Vec<u32>)],
    ) -> Vec<RequestUpdate> {
        let mut updates = Vec::with_capacity(sampled.len());
        let mut lookup = SampledLookup::new(sampled);
        let mut any_finished = false;
        for seq in &out.seqs {
            let tokens = if seq.sample { lookup.get(seq.id) } else { None };
            if let Some(update) = self.apply_seq(seq, tokens) {
                any_finished |= update.finished.is_some();
                updates.push(update);
            }
        }
        if any_finished {
            let requests = &self.requests;
            self.running.retain(|id| requests.contains_key(id));
        }
        updates
    }

    /// Commits one seq; returns its update if it produced tokens or finished. A finished
    /// request is removed from the map here (and from `running` by the caller).
    ///
    /// With draft tokens, the KV of the drafts the sampled tokens confirm (the longest common
    /// prefix, never the last sampled token) stays computed; the rest is rolled back, and
    /// those slots are simply written again later.
    fn apply_seq(&mut self, seq: &ScheduledSeq, sampled: Option<&[u32]>) -> Option<RequestUpdate> {
        let req = self.requests.get_mut(&seq.id)?;
        let num_drafts = if seq.sample {
            seq.num_draft_tokens
                .min(seq.token_ids.len().saturating_sub(1))
        } else {
            0
        };
        let end = seq.start_pos + seq.token_ids.len() - num_drafts;
        // Stale seq: the request was aborted and re-added, or this output was already applied.
        if req.status != RequestStatus::Running
            || req.num_computed_tokens != seq.start_pos
            || end > req.num_tokens()
        {
            return None;
        }
        req.num_computed_tokens = end;
        if !seq.sample {
            return None;
        }
        let sampled = sampled.unwrap_or(&[]);
        if sampled.is_empty() {
            // No token for a seq that needed one: recompute the last token next step rather
            // than stall.
            req.num_computed_tokens -= 1;
            return None;
        }
        let drafts = &seq.token_ids[seq.token_ids.len() - num_drafts..];
        let accepted = sampled
            .iter()
            .zip(drafts)
            .take_while(|(s, d)| s == d)
            .count()
            .min(sampled.len() - 1);
        if num_drafts > 0 {
            let c = &mut self.counters;
            c.spec_drafts += 1;
            c.spec_draft_tokens += num_drafts as u64;
            c.spec_accepted_tokens += accepted as u64;
            if c.spec_accepted_per_pos.len() < num_drafts {
                c.spec_accepted_per_pos.resize(num_drafts, 0);
            }
            for n in &mut c.spec_accepted_per_pos[..accepted] {
                *n += 1;
            }
        }
        req.draft_token_ids.clear();
        let start = req.tokens.len();
        let mut finished = None;
        let mut stop_token = None;
        for &token in sampled {
            req.tokens.push(token);
            if let Some((reason, stop)) = check_stop(req, token) {
                finished = Some(reason);
                stop_token = stop;
                break;
            }
        }
        req.num_computed_tokens = (end + accepted).min(req.num_tokens() - 1);
        if self.cfg.enable_prefix_caching {
            req.update_block_hashes(&mut self.hasher);
        }
        let update = RequestUpdate {
            id: req.id,
            new_token_ids: req.tokens[start..].to_vec(),
            finished,
            stop_token,
            num_prompt_tokens: req.num_prompt_tokens,
            num_cached_tokens: req.num_cached_tokens.unwrap_or(0),
        };
        if finished.is_some() {
            self.release_finished(seq.id);
        }
        Some(update)
    }

    /// Speculative decoding: proposes `drafts` to follow request `id`'s last token, replacing
    /// any earlier proposal; they are scheduled (and their KV computed) with its next decode
    /// step, and verified by the engine. Capped at `num_speculative_tokens` and at what the
    /// request may still generate (`max_tokens` - generated - 1: the verifying step adds one
    /// token of its own). Returns how many were kept: 0 for unknown, waiting or preempted
    /// requests.
    pub fn set_draft_tokens(&mut self, id: RequestId, drafts: &[u32]) -> usize {
        let Some(req) = self.requests.get_mut(&id) else {
            return 0;
        };
        req.draft_token_ids.clear();
        if req.status != RequestStatus::Running {
            return 0;
        }
        let room = req.max_tokens.saturating_sub(req.num_output_tokens() + 1);
        let n = drafts.len().min(self.cfg.num_speculative_tokens).min(room);
        req.draft_token_ids.extend_from_slice(&drafts[..n]);
        n
    }

    fn release_finished(&mut self, id: RequestId) {
        if let Some(mut req) = self.requests.remove(&id) {
            self.kv.free(&mut req.blocks, req.num_computed_tokens);
        }
    }
}
