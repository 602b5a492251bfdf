//! Choosing one step's batch under the token budget.
//!
//! 1. Running requests, in admission order: each gets `min(remaining known tokens, budget)`
//!    tokens (a decode token, or the next prefill chunk), plus its draft tokens (speculative
//!    decoding) when that reaches the end of its known tokens and the budget allows. If its
//!    blocks cannot grow (even without drafts), a victim is preempted, possibly the request
//!    itself, until the allocation fits: under FCFS the newest running request (never one
//!    already scheduled this step); under the priority policy the lowest-priority one, newest
//!    on ties, taking back its chunk if it was already scheduled this step.
//! 2. If nobody was preempted (so memory is not under pressure), waiting requests are admitted
//!    in queue order while the budget, `max_num_seqs` and free blocks allow; each first takes
//!    over its cached prefix. The first one that does not fit stops admission (no overtaking).
//!
//! Cost: O(running + admitted) map lookups and block-table copies, plus O(running) per
//! preemption under the priority policy.

use crate::config::QueuePolicy;
use crate::kv_cache::{PrefixHit, SlotRequest};
use crate::output::{ScheduledSeq, SchedulerOutput};
use crate::request::{Request, RequestId, RequestStatus};
use crate::scheduler::Scheduler;

/// The KV cache cannot hold this request's next chunk.
struct NoSpace;

impl Scheduler {
    /// Builds the next batch. Must be followed by exactly one `update_from_output` with this
    /// output before the next call. An empty output means there is nothing to run now.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput {
            seqs: Vec::with_capacity(self.running.len() + 4),
            num_batched_tokens: 0,
            preempted: Vec::new(),
        };
        let mut budget = self.cfg.max_num_batched_tokens;
        self.schedule_running(&mut out, &mut budget);
        if out.preempted.is_empty() {
            self.schedule_waiting(&mut out, &mut budget);
        }
        out.num_batched_tokens = self.cfg.max_num_batched_tokens - budget;
        self.counters.last_step_tokens = out.num_batched_tokens;
        self.counters.last_step_seqs = out.seqs.len();
        if !out.seqs.is_empty() {
            self.counters.steps += 1;
        }
        out
    }

    fn schedule_running(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let id = self.running[i];
            match self.try_schedule_running(id, *budget) {
                Ok(Some(seq)) => {
                    *budget -= seq.token_ids.len();
                    out.seqs.push(seq);
                    i += 1;
                }
                Ok(None) => i += 1,
                Err(NoSpace) => {
                    // Retry the same index: either another request made room, or the current
                    // one was preempted and running[i] is now the next request.
                    let v = self.pick_victim();
                    let victim = self.running.remove(v);
                    if v < i {
                        // Scheduled earlier in this step (priority policy): take its chunk back.
                        if let Some(pos) = out.seqs.iter().rposition(|s| s.id == victim) {
                            *budget += out.seqs.remove(pos).token_ids.len();
                        }
                        i -= 1;
                    }
                    self.preempt(victim);
                    out.preempted.push(victim);
                }
            }
        }
    }

    /// Schedules a running request's next chunk; `Ok(None)` if it has nothing to compute (it
    /// awaits a sampled token the engine did not provide). A chunk that reaches the end of the
    /// known tokens carries the request's draft tokens as far as the budget allows; if the
    /// blocks for the drafts do not fit, the chunk goes without them before anyone is
    /// preempted.
    fn try_schedule_running(
        &mut self,
        id: RequestId,
        budget: usize,
    ) -> Result<Option<ScheduledSeq>, NoSpace> {
        let Some(req) = self.requests.get_mut(&id) else {
            return Ok(None);
        };
        let remaining = req.num_tokens() - req.num_computed_tokens;
        let num_new = remaining.min(budget);
        if num_new == 0 {
            return Ok(None);
        }
        let sample = num_new == remaining;
        let num_drafts = if sample {
            req.draft_token_ids.len().min(budget - num_new)
        } else {
            0
        };
        let attempts = [num_drafts, 0];
        for &drafts in &attempts[..if num_drafts > 0 { 2 } else { 1 }] {
            let slots = SlotRequest {
                hashes: &req.block_hashes,
                hit: PrefixHit::default(),
                num_computed: req.num_computed_tokens,
                num_new: num_new + drafts,
                num_lookahead: if sample {
                    self.cfg.num_lookahead_tokens
                } else {
                    0
                },
                num_known: req.num_tokens(),
            };
            if self.kv.allocate_slots(&mut req.blocks, slots) {
                let seq = scheduled_seq(req, req.num_computed_tokens, num_new, sample, drafts);
                if sample {
                    req.draft_token_ids.clear();
                }
                return Ok(Some(seq));
            }
        }
        Err(NoSpace)
    }

    /// Index in `running` of the request to preempt: the newest (FCFS; never one already
    /// scheduled this step), or the lowest priority, newest on ties, wherever it is (priority;
    /// it may have been scheduled earlier in this step, as in vLLM).
    fn pick_victim(&self) -> usize {
        let last = self.running.len() - 1;
        match self.cfg.policy {
            QueuePolicy::Fcfs => last,
            QueuePolicy::Priority => (0..=last)
                .max_by_key(|&j| {
                    self.requests
                        .get(&self.running[j])
                        .map(|r| (r.priority, r.arrival))
                })
                .unwrap_or(last),
        }
    }

    /// Releases a running request's blocks and queues it again for recompute; its output so
    /// far is kept. Blocks it was about to compute this step lose their cached hash (see
    /// `KvCacheManager::free`): only committed tokens count.
    fn preempt(&mut self, id: RequestId) {
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        self.kv.free(&mut req.blocks, req.num_computed_tokens);
        req.num_computed_tokens = 0;
        req.draft_token_ids.clear();
        req.status = RequestStatus::Preempted;
        req.num_preemptions += 1;
        req.queue_key = Some(self.waiting.push_preempted(id, req.priority, req.arrival));
        self.counters.preemptions += 1;
    }

    fn schedule_waiting(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(id) = self.waiting.peek() else { break };
            let Some(seq) = self.try_admit(id, *budget) else {
                break;
            };
            self.waiting.pop();
            self.running.push(id);
            *budget -= seq.token_ids.len();
            out.seqs.push(seq);
        }
    }

    /// Admits the head of the waiting queue with its cached prefix and first chunk; `None`
    /// (nothing changed) if its blocks do not fit.
    fn try_admit(&mut self, id: RequestId, budget: usize) -> Option<ScheduledSeq> {
        let Some(req) = self.requests.get_mut(&id) else {
            // Unreachable (the queue and the map change together); drop the stale entry.
            self.waiting.pop();
            return None;
        };
        let num_tokens = req.num_tokens();
        let hit = self.kv.lookup(&req.block_hashes, num_tokens);
        let num_new = (num_tokens - hit.num_tokens).min(budget);
        let sample = hit.num_tokens + num_new == num_tokens;
        let slots = SlotRequest {
            hashes: &req.block_hashes,
            hit,
            num_computed: hit.num_tokens,
            num_new,
            num_lookahead: if sample {
                self.cfg.num_lookahead_tokens
            } else {
                0
            },
            num_known: num_tokens,
        };
        if !self.kv.allocate_slots(&mut req.blocks, slots) {
            return None;
        }
        req.num_computed_tokens = hit.num_tokens;
        req.status = RequestStatus::Running;
        req.queue_key = None;
        if req.num_cached_tokens.is_none() {
            req.num_cached_tokens = Some(hit.num_tokens);
            if self.cfg.enable_prefix_caching {
                self.counters.prefix_queries_tokens += num_tokens as u64;
                self.counters.prefix_hits_tokens += hit.num_tokens as u64;
            }
        }
        Some(scheduled_seq(req, hit.num_tokens, num_new, sample, 0))
    }
}

/// The seq of `num_new` known tokens from `start`, then the first `num_drafts` draft tokens.
fn scheduled_seq(
    req: &Request,
    start: usize,
    num_new: usize,
    sample: bool,
    num_drafts: usize,
) -> ScheduledSeq {
    let mut token_ids = Vec::with_capacity(num_new + num_drafts);
    token_ids.extend_from_slice(&req.tokens[start..start + num_new]);
    token_ids.extend_from_slice(&req.draft_token_ids[..num_drafts]);
    ScheduledSeq {
        id: req.id,
        token_ids,
        start_pos: start,
        block_table: req.blocks.ids().to_vec(),
        sample,
        num_draft_tokens: num_drafts,
    }
}
