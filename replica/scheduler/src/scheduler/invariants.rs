//! Whole-state consistency check (O(requests + blocks)), for tests and debug builds of the
//! engine. Checked: the block pool's own structure; every block's reference count equals the
//! number of block tables holding it (so no block is both free and in use); no table holds a
//! block twice; cached blocks sit where their hash says; queue, running list and request map
//! agree; per-request counters and draft tokens are in range.

use crate::error::InvariantError;
use crate::request::{Request, RequestStatus};
use crate::scheduler::Scheduler;

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), InvariantError> {
    InvariantError::check(ok, msg)
}

impl Scheduler {
    /// Verifies every internal invariant; an error is a bug in this crate.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let pool = self.kv.pool();
        pool.check_invariants()?;
        self.check_queues()?;
        let mut refs = vec![0u32; pool.num_blocks()];
        // Per-block stamp of the last request that held it, to find duplicates in one table.
        let mut stamp = vec![usize::MAX; pool.num_blocks()];
        for (n, req) in self.requests.values().enumerate() {
            self.check_request(req)?;
            for (i, &b) in req.blocks.ids().iter().enumerate() {
                let slot = b as usize;
                check(slot < refs.len(), || {
                    format!("request {} holds unknown block {b}", req.id)
                })?;
                check(stamp[slot] != n, || {
                    format!("request {} holds block {b} twice", req.id)
                })?;
                stamp[slot] = n;
                refs[slot] += 1;
                if let Some(h) = pool.block_hash(b) {
                    check(req.block_hashes.get(i) == Some(&h), || {
                        format!(
                            "request {} has cached block {b} at index {i} with another hash",
                            req.id
                        )
                    })?;
                }
            }
        }
        for (b, &count) in refs.iter().enumerate() {
            let actual = pool.ref_count(b as u32).unwrap_or(0);
            check(actual == count, || {
                format!("block {b} has ref count {actual} but {count} holders")
            })?;
        }
        Ok(())
    }

    fn check_queues(&self) -> Result<(), InvariantError> {
        check(self.running.len() <= self.cfg.max_num_seqs, || {
            "more running than max_num_seqs".into()
        })?;
        check(
            self.running.len() + self.waiting.len() == self.requests.len(),
            || {
                format!(
                    "{} running + {} waiting but {} requests",
                    self.running.len(),
                    self.waiting.len(),
                    self.requests.len()
                )
            },
        )?;
        for &id in &self.running {
            let status = self.requests.get(&id).map(|r| r.status);
            check(status == Some(RequestStatus::Running), || {
                format!("running request {id} has status {status:?}")
            })?;
        }
        for (key, id) in self.waiting.iter() {
            let req = self.requests.get(&id);
            check(req.is_some_and(|r| r.queue_key == Some(key)), || {
                format!("waiting entry {id} is stale")
            })?;
        }
        Ok(())
    }

    fn check_request(&self, req: &Request) -> Result<(), InvariantError> {
        let id = req.id;
        let bs = self.cfg.block_size;
        check(req.num_computed_tokens <= req.num_tokens(), || {
            format!("request {id} computed past its tokens")
        })?;
        check(req.num_output_tokens() <= req.max_tokens, || {
            format!("request {id} exceeded max_tokens")
        })?;
        let drafts = req.draft_token_ids.len();
        check(
            drafts <= self.cfg.num_speculative_tokens
                && (drafts == 0 || req.num_output_tokens() + drafts < req.max_tokens),
            || format!("request {id} holds {drafts} draft tokens, more than it may use"),
        )?;
        check(req.num_tokens() <= self.cfg.max_model_len, || {
            format!("request {id} exceeded max_model_len")
        })?;
        let expected_hashes = if self.cfg.enable_prefix_caching {
            req.num_tokens() / bs
        } else {
            0
        };
        check(req.block_hashes.len() == expected_hashes, || {
            format!("request {id} block hashes out of date")
        })?;
        match req.status {
            RequestStatus::Running => {
                check(req.queue_key.is_none(), || {
                    format!("running request {id} is queued")
                })?;
                check(req.blocks.len() * bs >= req.num_computed_tokens, || {
                    format!("request {id} has fewer blocks than computed tokens")
                })?;
            }
            RequestStatus::Waiting | RequestStatus::Preempted => {
                check(req.queue_key.is_some(), || {
                    format!("waiting request {id} is not queued")
                })?;
                check(
                    req.blocks.is_empty() && req.num_computed_tokens == 0,
                    || format!("waiting request {id} holds KV"),
                )?;
                check(req.draft_token_ids.is_empty(), || {
                    format!("waiting request {id} holds draft tokens")
                })?;
            }
        }
        Ok(())
    }
}
