//! The [`Scheduler`]: request lifecycle (add, abort, finish), statistics and queries. The step
//! itself is split over `schedule.rs` (choosing the batch) and `update.rs` (applying the sampled
//! tokens); `invariants.rs` checks the whole state for tests and debugging.

mod invariants;
mod schedule;
mod update;

use crate::config::SchedulerConfig;
use crate::error::{AddError, ConfigError};
use crate::fast_map::FastMap;
use crate::kv_cache::{BlockHasher, BlockPool, KvCacheManager};
use crate::queue::WaitingQueue;
use crate::request::{FinishReason, NewRequest, Request, RequestId, RequestInfo, RequestStatus};
use crate::stats::SchedulerStats;

/// Cumulative and last-step counters behind [`SchedulerStats`].
#[derive(Debug, Clone, Default)]
struct Counters {
    prefix_queries_tokens: u64,
    prefix_hits_tokens: u64,
    preemptions: u64,
    last_step_tokens: usize,
    last_step_seqs: usize,
    steps: u64,
    spec_drafts: u64,
    spec_draft_tokens: u64,
    spec_accepted_tokens: u64,
    spec_accepted_per_pos: Vec<u64>,
}

/// Continuous-batching scheduler with paged KV bookkeeping and prefix caching. See the crate
/// docs for the step protocol and the contract with the model runner.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    requests: FastMap<RequestId, Request>,
    waiting: WaitingQueue,
    /// Admitted requests in admission order (the newest last).
    running: Vec<RequestId>,
    kv: KvCacheManager,
    hasher: BlockHasher,
    next_arrival: u64,
    counters: Counters,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            requests: FastMap::default(),
            waiting: WaitingQueue::new(cfg.policy),
            running: Vec::with_capacity(cfg.max_num_seqs),
            kv: KvCacheManager::new(&cfg)?,
            hasher: BlockHasher::new(cfg.block_size)?,
            next_arrival: 0,
            counters: Counters::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Queues a request. Rejected up front (nothing queued) if it could never be served:
    /// `prompt + max_tokens > max_model_len`, or its KV could not fit even in an empty cache.
    pub fn add_request(&mut self, r: NewRequest) -> Result<(), AddError> {
        if self.requests.contains_key(&r.id) {
            return Err(AddError::DuplicateId(r.id));
        }
        if r.prompt_token_ids.is_empty() {
            return Err(AddError::EmptyPrompt);
        }
        if r.max_tokens == 0 {
            return Err(AddError::ZeroMaxTokens);
        }
        let prompt = r.prompt_token_ids.len();
        let total = prompt.saturating_add(r.max_tokens);
        if total > self.cfg.max_model_len {
            return Err(AddError::TooLong {
                prompt,
                max_tokens: r.max_tokens,
                max_model_len: self.cfg.max_model_len,
            });
        }
        // The last generated token is never computed; lookahead slots follow the last computed one.
        let kv_tokens = (total - 1).saturating_add(self.cfg.num_lookahead_tokens);
        let blocks_needed = self.cfg.blocks_for(kv_tokens);
        if blocks_needed > self.cfg.num_blocks {
            return Err(AddError::TooLargeForCache {
                kv_tokens,
                blocks_needed,
                num_blocks: self.cfg.num_blocks,
            });
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let mut req = Request::new(r, arrival);
        if self.cfg.enable_prefix_caching {
            req.update_block_hashes(&mut self.hasher);
        }
        req.queue_key = Some(self.waiting.push_new(req.id, req.priority, arrival));
        self.requests.insert(req.id, req);
        Ok(())
    }

    /// Removes a request wherever it is and frees its blocks at once (client disconnect).
    /// True if it existed. If it is in the output of the current step, `update_from_output`
    /// skips it.
    pub fn abort(&mut self, id: RequestId) -> bool {
        self.remove(id)
    }

    /// Engine-side finish (e.g. a stop string matched): same effect as [`Self::abort`]; the
    /// reason is the engine's to report. True if the request existed.
    pub fn finish(&mut self, id: RequestId, reason: FinishReason) -> bool {
        let _ = reason;
        self.remove(id)
    }

    fn remove(&mut self, id: RequestId) -> bool {
        let Some(mut req) = self.requests.remove(&id) else {
            return false;
        };
        match req.status {
            RequestStatus::Waiting | RequestStatus::Preempted => {
                if let Some(key) = req.queue_key {
                    self.waiting.remove(key);
                }
            }
            RequestStatus::Running => {
                if let Some(pos) = self.running.iter().position(|&r| r == id) {
                    self.running.remove(pos);
                }
            }
        }
        self.kv.free(&mut req.blocks, req.num_computed_tokens);
        true
    }

    /// True while any request is waiting or running.
    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether a request with this id is live (waiting or running).
    pub fn contains(&self, id: RequestId) -> bool {
        self.requests.contains_key(&id)
    }

    /// Tokens of a live request whose KV is computed (cheaper than [`Self::request_info`]).
    pub fn num_computed_tokens(&self, id: RequestId) -> Option<usize> {
        self.requests.get(&id).map(|r| r.num_computed_tokens)
    }

    /// Snapshot of one live request, `None` if unknown or finished.
    pub fn request_info(&self, id: RequestId) -> Option<RequestInfo> {
        self.requests.get(&id).map(Request::info)
    }

    /// The KV block pool (read-only: capacity, usage, cached blocks).
    pub fn block_pool(&self) -> &BlockPool {
        self.kv.pool()
    }

    /// Forgets every cached prefix (e.g. after a failed step, when cached content is in doubt).
    /// Running requests keep their blocks. Returns the number of hashes dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.kv.reset_prefix_cache()
    }

    pub fn stats(&self) -> SchedulerStats {
        let pool = self.kv.pool();
        let c = &self.counters;
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_usage: pool.usage(),
            free_blocks: pool.num_free(),
            num_blocks: pool.num_blocks(),
            cached_free_blocks: pool.num_cached_free(),
            prefix_queries_tokens: c.prefix_queries_tokens,
            prefix_hits_tokens: c.prefix_hits_tokens,
            preemptions: c.preemptions,
            last_step_tokens: c.last_step_tokens,
            last_step_seqs: c.last_step_seqs,
            steps: c.steps,
            spec_num_drafts: c.spec_drafts,
            spec_num_draft_tokens: c.spec_draft_tokens,
            spec_num_accepted_tokens: c.spec_accepted_tokens,
            spec_accepted_per_pos: c.spec_accepted_per_pos.clone(),
        }
    }
}

#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod tests;
