//! A fake paged-KV "model" and a harness that drives the scheduler with it.
//!
//! The model keeps a KV store indexed by slot (`block * block_size + offset`). The "KV" of
//! position `p` is a chained hash of the token history up to `p`, computed from the KV read back
//! from the cache at `p - 1`; the sampled token is a function of the last position's KV. So:
//! * the sampler depends only on the request's token history (when the cache is right), and
//! * any block-table mistake (a wrong block, a shared block overwritten, a cached block with
//!   stale content) is caught: every step asserts that all positions the attention would read
//!   hold the true content, and a wrong cache would change the generated tokens anyway.
//!
//! Beyond what seqs read, the harness checks after every operation that every block the
//! prefix cache indexes (in use or free) holds exactly the KV its hash stands for, so a cached
//! block whose content was never written is caught even if no request hits it.
//!
//! Seqs are executed in batch order, each writing its chunk before attending, which is the
//! weakest form of the "writes of earlier seqs are visible to later seqs" contract.
//!
//! Speculative decoding ([`Harness::with_drafts`]): after each step the harness proposes draft
//! tokens for every running request (the true continuation, each token corrupted with some
//! probability); the model writes the drafts' KV like any other token and verifies them
//! greedily against its own samples, so rejected drafts leave wrong KV behind that the
//! scheduler must never let anyone read.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use scheduler::kv_cache::{BlockHash, BlockHasher};
use scheduler::{
    AddError, FinishReason, NewRequest, RequestId, RequestUpdate, Scheduler, SchedulerConfig,
    SchedulerOutput,
};

/// KV content of a position given the previous position's content.
pub fn mix(prev: u64, token: u32, pos: usize) -> u64 {
    let mut x = prev ^ (u64::from(token) << 32) ^ (pos as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Content before position 0.
pub const KV_ROOT: u64 = 0x1234_5678;

/// The sampler: a token in `0..vocab` from the last position's KV.
pub fn sample(kv: u64, vocab: u32) -> u32 {
    ((kv >> 17) % u64::from(vocab)) as u32
}

/// Generates without any scheduler: the ground truth for a request.
pub fn reference_generate(r: &NewRequest, vocab: u32) -> (Vec<u32>, FinishReason) {
    let mut kv = KV_ROOT;
    for (p, &t) in r.prompt_token_ids.iter().enumerate() {
        kv = mix(kv, t, p);
    }
    let mut out = Vec::new();
    loop {
        let t = sample(kv, vocab);
        out.push(t);
        if out.len() >= r.min_tokens {
            let eos = !r.ignore_eos && r.eos_token_ids.contains(&t);
            if eos || r.stop_token_ids.contains(&t) {
                return (out, FinishReason::Stop);
            }
        }
        if out.len() >= r.max_tokens {
            return (out, FinishReason::Length);
        }
        kv = mix(kv, t, r.prompt_token_ids.len() + out.len() - 1);
    }
}

pub struct FakeModel {
    block_size: usize,
    vocab: u32,
    kv: Vec<Option<u64>>,
}

impl FakeModel {
    pub fn new(cfg: &SchedulerConfig, vocab: u32) -> Self {
        Self {
            block_size: cfg.block_size,
            vocab,
            kv: vec![None; cfg.block_size * cfg.num_blocks],
        }
    }

    fn slot(&self, table: &[u32], pos: usize) -> usize {
        table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }

    /// Runs one batch. `histories` holds each live request's known tokens (prompt + output).
    pub fn execute(
        &mut self,
        out: &SchedulerOutput,
        histories: &HashMap<RequestId, Vec<u32>>,
    ) -> Vec<(RequestId, Vec<u32>)> {
        let mut sampled = Vec::new();
        for seq in &out.seqs {
            let Some(hist) = histories.get(&seq.id) else {
                continue;
            };
            let end = seq.start_pos + seq.known_tokens().len();
            assert!(!seq.token_ids.is_empty(), "empty chunk for {}", seq.id);
            assert!(
                seq.sample || seq.num_draft_tokens == 0,
                "drafts on a chunk that does not sample"
            );
            assert_eq!(
                &hist[seq.start_pos..end],
                seq.known_tokens(),
                "chunk tokens of {}",
                seq.id
            );
            assert_eq!(seq.sample, end == hist.len(), "sample flag of {}", seq.id);
            assert!(
                seq.block_table.len() * self.block_size >= seq.context_len(),
                "block table too short"
            );
            // Write the chunk, each position from the previous one's cached content.
            for (p, &token) in seq.positions().zip(&seq.token_ids) {
                let prev = if p == 0 {
                    KV_ROOT
                } else {
                    self.read(seq.id, &seq.block_table, p - 1)
                };
                let slot = self.slot(&seq.block_table, p);
                self.kv[slot] = Some(mix(prev, token, p));
            }
            // "Attention": every position up to `end` must hold the true history.
            let mut truth = KV_ROOT;
            for (p, &t) in hist[..end].iter().enumerate() {
                truth = mix(truth, t, p);
                assert_eq!(
                    self.kv[self.slot(&seq.block_table, p)],
                    Some(truth),
                    "request {} reads wrong KV at position {p}",
                    seq.id
                );
            }
            if seq.sample {
                // Greedy verification: keep drafts while they equal the model's own token.
                let mut tokens = Vec::new();
                for i in 0..=seq.num_draft_tokens {
                    let kv = self.read(seq.id, &seq.block_table, end - 1 + i);
                    let t = sample(kv, self.vocab);
                    tokens.push(t);
                    if seq.draft_tokens().get(i) != Some(&t) {
                        break;
                    }
                }
                sampled.push((seq.id, tokens));
            }
        }
        sampled
    }

    fn read(&self, id: RequestId, table: &[u32], pos: usize) -> u64 {
        match self.kv[self.slot(table, pos)] {
            Some(v) => v,
            None => panic!("request {id} reads unwritten KV at position {pos}"),
        }
    }
}

/// Scheduler + fake model + the engine-side bookkeeping of a test.
pub struct Harness {
    pub sched: Scheduler,
    pub model: FakeModel,
    pub vocab: u32,
    /// Known tokens of live requests (prompt + output).
    pub histories: HashMap<RequestId, Vec<u32>>,
    pub requests: HashMap<RequestId, NewRequest>,
    pub outputs: HashMap<RequestId, Vec<u32>>,
    pub finished: HashMap<RequestId, FinishReason>,
    /// Requests ended by the engine (`abort`, `finish`): their output is cut short.
    pub cut_short: HashSet<RequestId>,
    pub steps: usize,
    hasher: BlockHasher,
    /// KV content of each slot of every full block any request ever had, by block hash.
    block_truth: HashMap<BlockHash, Vec<u64>>,
    /// Speculative decoding: (draft tokens per step, probability of a wrong draft token, rng).
    drafter: Option<(usize, f64, StdRng)>,
    /// Tokens produced per request (outputs) and steps that produced them, summed.
    pub tokens_produced: usize,
    pub token_steps: usize,
}

impl Harness {
    pub fn new(cfg: SchedulerConfig, vocab: u32) -> Self {
        let model = FakeModel::new(&cfg, vocab);
        let cfg_block_size = cfg.block_size;
        Self {
            sched: Scheduler::new(cfg).expect("valid config"),
            model,
            vocab,
            histories: HashMap::new(),
            requests: HashMap::new(),
            outputs: HashMap::new(),
            finished: HashMap::new(),
            cut_short: HashSet::new(),
            steps: 0,
            hasher: BlockHasher::new(cfg_block_size).expect("block size"),
            block_truth: HashMap::new(),
            drafter: None,
            tokens_produced: 0,
            token_steps: 0,
        }
    }

    /// Proposes `k` draft tokens per running request after every step, each one wrong with
    /// probability `p_wrong`.
    pub fn with_drafts(mut self, k: usize, p_wrong: f64, seed: u64) -> Self {
        self.drafter = Some((k, p_wrong, StdRng::seed_from_u64(seed)));
        self
    }

    fn propose_drafts(&mut self) {
        let Some((k, p_wrong, rng)) = self.drafter.as_mut() else {
            return;
        };
        let mut ids: Vec<RequestId> = self.histories.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let hist = &self.histories[&id];
            let mut kv = KV_ROOT;
            for (p, &t) in hist.iter().enumerate() {
                kv = mix(kv, t, p);
            }
            let mut drafts = Vec::with_capacity(*k);
            for i in 0..*k {
                let mut t = sample(kv, self.vocab);
                if rng.gen_bool(*p_wrong) {
                    t = (t + 1 + rng.gen_range(0..self.vocab - 1)) % self.vocab;
                }
                drafts.push(t);
                kv = mix(kv, t, hist.len() + i);
            }
            let kept = self.sched.set_draft_tokens(id, &drafts);
            assert!(kept <= *k);
        }
    }

    pub fn add(&mut self, r: NewRequest) -> Result<(), AddError> {
        self.sched.add_request(r.clone())?;
        self.histories.insert(r.id, r.prompt_token_ids.clone());
        self.outputs.insert(r.id, Vec::new());
        self.requests.insert(r.id, r.clone());
        self.record_truth(&r, &r.prompt_token_ids);
        self.check();
        Ok(())
    }

    pub fn abort(&mut self, id: RequestId) -> bool {
        let existed = self.sched.abort(id);
        self.ended_by_engine(id, existed, FinishReason::Abort)
    }

    /// Engine-side finish (a stop string, say).
    pub fn finish(&mut self, id: RequestId, reason: FinishReason) -> bool {
        let existed = self.sched.finish(id, reason);
        self.ended_by_engine(id, existed, reason)
    }

    fn ended_by_engine(&mut self, id: RequestId, existed: bool, reason: FinishReason) -> bool {
        if existed {
            self.histories.remove(&id);
            self.finished.insert(id, reason);
            self.cut_short.insert(id);
        }
        self.check();
        existed
    }

    /// One engine step; returns the batch and the updates.
    pub fn step(&mut self) -> (SchedulerOutput, Vec<RequestUpdate>) {
        let out = self.sched.schedule();
        assert!(out.num_batched_tokens <= self.sched.config().max_num_batched_tokens);
        assert_eq!(
            out.num_batched_tokens,
            out.seqs.iter().map(|s| s.token_ids.len()).sum::<usize>()
        );
        let sampled = self.model.execute(&out, &self.histories);
        let updates = self.sched.update_from_output(&out, &sampled);
        for u in &updates {
            self.histories
                .get_mut(&u.id)
                .expect("live")
                .extend_from_slice(&u.new_token_ids);
            self.outputs
                .get_mut(&u.id)
                .expect("known")
                .extend_from_slice(&u.new_token_ids);
            self.tokens_produced += u.new_token_ids.len();
            self.token_steps += usize::from(!u.new_token_ids.is_empty());
            let history = self.histories[&u.id].clone();
            self.record_truth(&self.requests[&u.id].clone(), &history);
            if let Some(reason) = u.finished {
                self.histories.remove(&u.id);
                self.finished.insert(u.id, reason);
            }
        }
        self.steps += 1;
        self.propose_drafts();
        self.check();
        (out, updates)
    }

    /// Steps until nothing is left (panics after `max_steps`: a livelock).
    pub fn run_to_completion(&mut self, max_steps: usize) {
        let mut n = 0;
        while self.sched.has_unfinished() {
            self.step();
            n += 1;
            assert!(n <= max_steps, "no completion after {max_steps} steps");
        }
    }

    /// Records the true KV of every full block of `history`, under the block's hash.
    fn record_truth(&mut self, r: &NewRequest, history: &[u32]) {
        let bs = self.hasher.block_size();
        let hashes = self.hasher.hash_prefix(history, r.cache_salt.as_deref());
        let mut kv = KV_ROOT;
        let contents: Vec<u64> = history
            .iter()
            .enumerate()
            .map(|(p, &t)| {
                kv = mix(kv, t, p);
                kv
            })
            .collect();
        for (i, h) in hashes.into_iter().enumerate() {
            self.block_truth
                .entry(h)
                .or_insert_with(|| contents[i * bs..(i + 1) * bs].to_vec());
        }
    }

    pub fn check(&self) {
        if let Err(e) = self.sched.check_invariants() {
            panic!("after step {}: {e}", self.steps);
        }
        let pool = self.sched.block_pool();
        let bs = self.hasher.block_size();
        for b in 0..pool.num_blocks() as u32 {
            let Some(h) = pool.block_hash(b) else {
                continue;
            };
            let truth = &self.block_truth[&h];
            let start = b as usize * bs;
            for (off, want) in truth.iter().enumerate() {
                assert_eq!(
                    self.model.kv[start + off],
                    Some(*want),
                    "after step {}: cached block {b} does not hold its content (slot {off})",
                    self.steps
                );
            }
        }
    }

    /// Asserts every request that finished on its own generated exactly the reference tokens.
    pub fn assert_matches_reference(&self) {
        for (id, reason) in &self.finished {
            if self.cut_short.contains(id) {
                continue;
            }
            let (tokens, expected_reason) = reference_generate(&self.requests[id], self.vocab);
            assert_eq!(&self.outputs[id], &tokens, "tokens of request {id}");
            assert_eq!(*reason, expected_reason, "finish reason of request {id}");
        }
    }

    /// Asserts that every block is free and unreferenced.
    pub fn assert_all_free(&self) {
        let pool = self.sched.block_pool();
        assert_eq!(pool.num_free(), pool.num_blocks());
        for b in 0..pool.num_blocks() as u32 {
            assert_eq!(pool.ref_count(b), Some(0), "block {b}");
        }
        assert_eq!(self.sched.stats().kv_usage, 0.0);
    }
}

/// A plain request for tests.
pub fn request(id: RequestId, prompt: Vec<u32>, max_tokens: usize) -> NewRequest {
    NewRequest {
        id,
        prompt_token_ids: prompt,
        max_tokens,
        ..Default::default()
    }
}
