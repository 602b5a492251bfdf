//! The engine loop, on its own OS thread (vLLM's `EngineCore` busy loop, without the busy):
//!
//! ```text
//! loop {
//!     drain the inbox (add / abort / shutdown); block on it while nothing is unfinished
//!     out     = scheduler.schedule()
//!     logits  = runner.execute(&out)
//!     sampled = sampler over the logits rows (one per seq with `sample`)
//!     updates = scheduler.update_from_output(&out, &sampled)
//!     publish: detokenize, stop strings (→ scheduler.finish), events, metrics
//! }
//! ```
//!
//! The loop owns all mutable state (scheduler, runner, per-sequence sampler and text state), so
//! none of it needs a lock; the async side sees it only through events and a stats snapshot.
//!
//! With speculative decoding (`num_speculative_tokens > 0`, GLM's MTP layer as the draft model)
//! a step becomes: schedule (decode tokens carry the drafts proposed last step) → runner
//! `execute_verify` (logits for every position of a seq with drafts) → verify each seq's drafts
//! with its sampler (`SeqSampler::verify`: exact greedy or speculative sampling) → update →
//! publish → runner `draft` / `draft_next` and `SeqSampler::propose` choose the next drafts,
//! handed to `scheduler.set_draft_tokens`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scheduler::{
    FinishReason, NewRequest, RequestUpdate, Scheduler, SchedulerOutput, SchedulerStats,
};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use super::handle::{Command, Shared};
use super::{ChoiceDelta, EngineEvent, EngineRequest, Finish, StopReason};
use crate::metrics::{Metrics, RequestTimings};
use crate::output::{TextDelta, TextOutput};
use crate::runner::{DraftSeq, Logits, Runner};
use crate::sampler::{sample_batch, DraftToken, SampleLogprobs, SamplingParams, SeqSampler};

/// The new tokens of each sampling sequence of a step (what `update_from_output` takes).
type StepTokens = Vec<(u64, Vec<u32>)>;

/// One draft step's output: logits rows for the host sampler, or greedy ids drawn on the device.
enum DraftRows {
    Logits(Logits),
    Greedy(Vec<u32>),
}

impl DraftRows {
    /// Rows, or `None` for logits of the wrong shape.
    fn len(&self) -> Option<usize> {
        match self {
            Self::Logits(l) => l.check_shape().is_ok().then_some(l.rows),
            Self::Greedy(ids) => Some(ids.len()),
        }
    }
}

/// The tokens a greedy sequence emits from a verify step: `ids[i]` is the target's greedy choice
/// after draft `i - 1`; drafts are kept while they equal it, then its choice ends the run (all
/// drafts accepted: the choice after the last one).
fn accept_greedy(ids: &[u32], drafts: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    for (i, &t) in ids.iter().enumerate() {
        out.push(t);
        if drafts.get(i) != Some(&t) {
            break;
        }
    }
    out
}

/// How long an engine with unfinished but unschedulable work waits for commands before
/// trying again (no busy spin).
const STALL_WAIT: Duration = Duration::from_millis(5);

/// On a runner that samples on the device, a speculative step whose sequences are not all plain
/// greedy brings every verified position's logits to the host (rows × vocabulary floats). On the
/// H200 (GLM-4.5-Air, one draft token; ops/perf/2026-11-29-gpu-fleet-x2.md, run 33) that breaks
/// even at 32% acceptance for 16 sequences and 77% for 64 (196% before logits copies ran on
/// several threads into reused buffers), so such steps draft only up to here, where MTP's
/// acceptance (near 90% greedy, per the vLLM recipe) still pays.
const HOST_VERIFY_MAX_SEQS: usize = 32;

/// Everything the engine thread needs besides its channels.
pub(crate) struct EngineParts {
    pub scheduler: Scheduler,
    pub runner: Box<dyn Runner>,
    pub tokenizer: Arc<Tokenizer>,
    pub eos_token_ids: Vec<u32>,
    pub metrics: Metrics,
    /// Seeds the RNG that seeds requests without a `seed`.
    pub seed: u64,
    /// Draft tokens per step (speculative decoding with the runner's draft model); 0 = off.
    pub num_speculative_tokens: usize,
    /// No drafts after a step of more sequences than this (`disable_by_batch_size`).
    pub spec_disable_by_batch_size: Option<usize>,
}

/// One scheduler request (one choice) in flight.
struct SeqState {
    index: u32,
    events: UnboundedSender<EngineEvent>,
    sampler: SeqSampler,
    text: TextOutput,
    include_stop: bool,
    min_tokens: usize,
    /// Logprobs of the tokens sampled in the current step, until the update arrives.
    pending_logprobs: Vec<SampleLogprobs>,
    max_tokens: usize,
    /// Distributions of the draft tokens proposed for the next step (sampling requests).
    draft_probs: Vec<Vec<f32>>,
    num_prompt_tokens: usize,
    num_cached_tokens: usize,
    arrival: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl SeqState {
    fn generated(&self) -> usize {
        self.sampler.num_generated()
    }
}

pub(crate) struct EngineCore {
    scheduler: Scheduler,
    runner: Box<dyn Runner>,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    metrics: Metrics,
    seed_rng: StdRng,
    valid_vocab: usize,
    seqs: HashMap<u64, SeqState>,
    inbox: Receiver<Command>,
    shared: Arc<Shared>,
    prev_stats: SchedulerStats,
    num_speculative_tokens: usize,
    spec_disable_by_batch_size: Option<usize>,
    /// Requests that ended this loop turn; reported to the handle after the stats snapshot so
    /// that whoever sees `in_flight` drop also sees the scheduler state that goes with it.
    ended_this_turn: usize,
}

/// Marks the engine dead when the thread ends, normally or by panic, and wakes drain waiters.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        self.0.idle.notify_waiters();
    }
}

impl EngineCore {
    pub(crate) fn new(parts: EngineParts, inbox: Receiver<Command>, shared: Arc<Shared>) -> Self {
        let valid_vocab =
            crate::output::tokenizer_size(&parts.tokenizer).min(parts.runner.vocab_size());
        let prev_stats = parts.scheduler.stats();
        Self {
            scheduler: parts.scheduler,
            runner: parts.runner,
            tokenizer: parts.tokenizer,
            eos_token_ids: parts.eos_token_ids,
            metrics: parts.metrics,
            seed_rng: StdRng::seed_from_u64(parts.seed),
            valid_vocab,
            seqs: HashMap::new(),
            inbox,
            shared,
            prev_stats,
            num_speculative_tokens: parts.num_speculative_tokens,
            spec_disable_by_batch_size: parts.spec_disable_by_batch_size,
            ended_this_turn: 0,
        }
    }

    /// Runs until shutdown or until every handle is dropped.
    pub(crate) fn run(mut self) {
        let _alive = AliveGuard(self.shared.clone());
        loop {
            if !self.drain_inbox() {
                break;
            }
            if self.scheduler.has_unfinished() && !self.step() {
                // Nothing could be scheduled: wait briefly for commands instead of spinning.
                match self.inbox.recv_timeout(STALL_WAIT) {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            self.publish_stats();
        }
        self.abort_all();
        self.publish_stats();
    }

    /// Applies queued commands; blocks for the next one while there is no work. False means
    /// stop.
    fn drain_inbox(&mut self) -> bool {
        if !self.scheduler.has_unfinished() {
            match self.inbox.recv() {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        loop {
            match self.inbox.try_recv() {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return false;
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Add {
                request,
                ids,
                events,
            } => self.add(*request, ids, events),
            Command::Abort(ids) => {
                for id in ids {
                    self.abort(id, false);
                }
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn add(&mut self, req: EngineRequest, ids: Vec<u64>, events: UnboundedSender<EngineEvent>) {
        let base_seed = req.sampling.seed;
        let mut min_tokens_mask: Vec<u32> = req.stop_token_ids.clone();
        if !req.ignore_eos {
            min_tokens_mask.extend(&self.eos_token_ids);
        }
        for (i, id) in ids.into_iter().enumerate() {
            let index = req.choice_base + i as u32;
            let seed = match base_seed {
                Some(s) => s.wrapping_add(i as u64),
                None => self.seed_rng.gen(),
            };
            let new = NewRequest {
                id,
                prompt_token_ids: req.prompt_token_ids.clone(),
                max_tokens: req.max_tokens,
                min_tokens: req.sampling.min_tokens,
                priority: req.priority,
                cache_salt: req.cache_salt.clone(),
                eos_token_ids: self.eos_token_ids.clone(),
                stop_token_ids: req.stop_token_ids.clone(),
                ignore_eos: req.ignore_eos,
            };
            if let Err(e) = self.scheduler.add_request(new) {
                self.count_ended();
                let _ = events.send(EngineEvent::Error {
                    index,
                    message: e.to_string(),
                });
                continue;
            }
            let sampler = SeqSampler::new(
                req.sampling.clone(),
                seed,
                &req.prompt_token_ids,
                min_tokens_mask.clone(),
            );
            let text = TextOutput::new(
                self.tokenizer.clone(),
                &req.prompt_token_ids,
                req.skip_special_tokens,
                req.stop.clone(),
                req.include_stop_str_in_output,
            );
            self.seqs.insert(
                id,
                SeqState {
                    index,
                    events: events.clone(),
                    sampler,
                    text,
                    include_stop: req.include_stop_str_in_output,
                    min_tokens: req.sampling.min_tokens,
                    pending_logprobs: Vec::new(),
                    max_tokens: req.max_tokens,
                    draft_probs: Vec::new(),
                    num_prompt_tokens: req.prompt_token_ids.len(),
                    num_cached_tokens: 0,
                    arrival: req.arrival,
                    first_scheduled: None,
                    first_token: None,
                    last_token: None,
                },
            );
        }
    }

    /// Removes a request. `notify` sends a final abort delta (engine-initiated aborts); a
    /// client-initiated abort has nobody left to tell.
    fn abort(&mut self, id: u64, notify: bool) {
        self.scheduler.abort(id);
        if let Some(seq) = self.seqs.remove(&id) {
            self.finished(id, &seq, FinishReason::Abort);
            if notify {
                let delta = Self::delta(&seq, String::new(), Vec::new(), Vec::new());
                let _ = seq.events.send(EngineEvent::Delta(ChoiceDelta {
                    finish: Some(Finish {
                        reason: FinishReason::Abort,
                        stop_reason: None,
                    }),
                    ..delta
                }));
            }
        }
    }

    fn abort_all(&mut self) {
        let ids: Vec<u64> = self.seqs.keys().copied().collect();
        for id in ids {
            self.abort(id, true);
        }
    }

    /// One request ended: out of `/load` now, out of `in_flight` at this turn's stats snapshot
    /// (`publish_stats`). The two counts move together only here.
    fn count_ended(&mut self) {
        self.shared.ending();
        self.ended_this_turn += 1;
    }

    /// Counts a request as ended. Call it before the request's last event is sent, so that
    /// `/load` and `/metrics` never count a request whose client has its answer.
    fn finished(&mut self, id: u64, seq: &SeqState, reason: FinishReason) {
        self.runner.release(&[id]);
        self.count_ended();
        let now = Instant::now();
        let first_scheduled = seq.first_scheduled.unwrap_or(now);
        let first_token = seq.first_token.unwrap_or(now);
        let last_token = seq.last_token.unwrap_or(first_token);
        self.metrics.record_finished(
            reason,
            &RequestTimings {
                queue: first_scheduled.saturating_duration_since(seq.arrival),
                prefill: first_token.saturating_duration_since(first_scheduled),
                decode: last_token.saturating_duration_since(first_token),
                e2e: now.saturating_duration_since(seq.arrival),
                prompt_tokens: seq.num_prompt_tokens,
                generation_tokens: seq.generated(),
            },
        );
    }

    /// One scheduler step. False when nothing was scheduled.
    fn step(&mut self) -> bool {
        let out = self.scheduler.schedule();
        if out.is_empty() {
            return false;
        }
        let now = Instant::now();
        for s in &out.seqs {
            if let Some(seq) = self.seqs.get_mut(&s.id) {
                seq.first_scheduled.get_or_insert(now);
            }
        }
        self.metrics.record_iteration(out.num_batched_tokens);
        let result = if self.num_speculative_tokens > 0 {
            self.execute_and_verify(&out)
        } else {
            self.execute_and_sample(&out)
        };
        let sampled = match result {
            Ok(sampled) => sampled,
            Err(message) => {
                self.fail_batch(&out, &message);
                return true;
            }
        };
        let updates = self.scheduler.update_from_output(&out, &sampled);
        let now = Instant::now();
        for update in updates {
            self.publish(update, now);
        }
        if self.num_speculative_tokens > 0 {
            self.propose_drafts(&out, &sampled);
        }
        true
    }

    /// The speculative step: logits for every position of the seqs carrying drafts, verified
    /// with each sequence's sampler (exact for greedy and sampled requests).
    fn execute_and_verify(&mut self, out: &SchedulerOutput) -> Result<StepTokens, String> {
        if self.greedy_on_device(out.sampling_seqs().map(|s| s.id)) {
            return self.verify_greedy_on_device(out);
        }
        let mut logits = self.runner.execute_verify(out).map_err(|e| e.to_string())?;
        logits.check_shape().map_err(|e| e.to_string())?;
        let expected: usize = out.seqs.iter().map(|s| s.num_logits()).sum();
        if logits.rows != expected {
            return Err(format!(
                "runner returned {} logits rows for {expected} verified positions",
                logits.rows
            ));
        }
        let vocab = logits.vocab;
        let mut result = Vec::with_capacity(out.seqs.len());
        let mut offset = 0;
        for s in out.sampling_seqs() {
            let n = s.num_logits();
            let rows = &mut logits.data[offset * vocab..(offset + n) * vocab];
            offset += n;
            // A seq without state cannot happen (aborts are applied between steps); it would
            // be decoded greedily with throwaway state.
            let mut orphan;
            let (sampler, probs) = match self.seqs.get_mut(&s.id) {
                Some(seq) => (&mut seq.sampler, std::mem::take(&mut seq.draft_probs)),
                None => {
                    let greedy = SamplingParams {
                        temperature: 0.0,
                        ..SamplingParams::default()
                    };
                    orphan = SeqSampler::new(greedy, 0, &[], Vec::new());
                    (&mut orphan, Vec::new())
                }
            };
            let sampled = sampler.verify(rows, vocab, self.valid_vocab, s.draft_tokens(), &probs);
            let tokens: Vec<u32> = sampled.iter().map(|x| x.token).collect();
            if let Some(seq) = self.seqs.get_mut(&s.id) {
                seq.pending_logprobs = sampled.into_iter().filter_map(|x| x.logprobs).collect();
            }
            result.push((s.id, tokens));
        }
        self.runner.recycle(logits);
        Ok(result)
    }

    /// Whether verification and drafting for these sequences can run as greedy draws on the
    /// device: the runner samples there, and each sequence is greedy with nothing the device draw
    /// lacks (no logprobs, penalties, bias or pending `min_tokens`), which is when the host
    /// sampler's greedy rule is a plain argmax.
    fn greedy_on_device(&self, mut ids: impl Iterator<Item = u64>) -> bool {
        self.runner.samples_on_device()
            && ids.all(|id| {
                self.seqs.get(&id).is_some_and(|s| {
                    s.sampler.device_eligible(false) && s.sampler.params().is_greedy()
                })
            })
    }

    /// The speculative step of an all-greedy batch with the argmax on the device: only one id per
    /// verified position comes back, and each sequence keeps its drafts up to the first one that
    /// differs from the target's choice, then that choice (or, all accepted, the bonus token).
    fn verify_greedy_on_device(&mut self, out: &SchedulerOutput) -> Result<StepTokens, String> {
        let ids = self
            .runner
            .execute_verify_greedy(out, self.valid_vocab)
            .map_err(|e| e.to_string())?;
        let expected: usize = out.seqs.iter().map(|s| s.num_logits()).sum();
        if ids.len() != expected {
            return Err(format!(
                "runner returned {} greedy tokens for {expected} verified positions",
                ids.len()
            ));
        }
        let mut result = Vec::with_capacity(out.seqs.len());
        let mut offset = 0;
        for s in out.sampling_seqs() {
            let n = s.num_logits();
            let tokens = accept_greedy(&ids[offset..offset + n], s.draft_tokens());
            offset += n;
            if let Some(seq) = self.seqs.get_mut(&s.id) {
                seq.pending_logprobs.clear();
                seq.draft_probs.clear();
            }
            result.push((s.id, tokens));
        }
        Ok(result)
    }

    /// Runs the draft model after a verified step (over every seq of the batch, so that its KV
    /// covers every computed position) and hands each live sampling sequence its drafts for the
    /// next step. A failure only costs this step's drafts. After a step of more sequences than
    /// `disable_by_batch_size`, or than [`HOST_VERIFY_MAX_SEQS`] when its verification would need
    /// host logits from a device runner, the draft model runs (its KV stays whole) but nobody
    /// drafts.
    fn propose_drafts(&mut self, out: &SchedulerOutput, sampled: &[(u64, Vec<u32>)]) {
        let k = self.num_speculative_tokens;
        let block_size = self.scheduler.config().block_size;
        let last: HashMap<u64, u32> = sampled
            .iter()
            .filter_map(|(id, t)| t.last().map(|&t| (*id, t)))
            .collect();
        let mut seqs = Vec::new();
        // Per entry of `seqs`: draft steps allowed (the request's remaining room, and the KV
        // slots of its block table for the draft model's writes one position per step).
        let mut steps = Vec::new();
        for s in out.sampling_seqs() {
            let (Some(computed), Some(&next_token), Some(state)) = (
                self.scheduler.num_computed_tokens(s.id),
                last.get(&s.id),
                self.seqs.get(&s.id),
            ) else {
                continue;
            };
            let num_verified = computed.saturating_sub(s.start_pos);
            if num_verified == 0 || num_verified > s.token_ids.len() {
                continue;
            }
            let room = state.max_tokens.saturating_sub(state.generated() + 1);
            // Draft step j (1-based) writes the draft model's KV at position computed + j - 2.
            let slots = (s.block_table.len() * block_size + 1).saturating_sub(computed);
            seqs.push(DraftSeq {
                id: s.id,
                num_verified,
                next_token,
            });
            steps.push(k.min(room).min(slots));
        }
        // The live sequences verify next step: on the device when all are greedy, else through
        // host logits.
        let greedy = self.greedy_on_device(seqs.iter().map(|d| d.id));
        let n = out.seqs.len();
        let host_verify = self.runner.samples_on_device() && !greedy;
        if self
            .spec_disable_by_batch_size
            .is_some_and(|limit| n > limit)
            || (host_verify && n > HOST_VERIFY_MAX_SEQS)
        {
            steps.fill(0);
        }
        // Run the draft model even when nobody drafts: prefill chunks fill its KV.
        let mut drafts: Vec<Vec<u32>> = vec![Vec::new(); seqs.len()];
        let mut probs: Vec<Vec<Vec<f32>>> = vec![Vec::new(); seqs.len()];
        let valid = self.valid_vocab;
        let first = if greedy {
            self.runner
                .draft_greedy(out, &seqs, valid)
                .map(DraftRows::Greedy)
        } else {
            self.runner.draft(out, &seqs).map(DraftRows::Logits)
        };
        let mut rows = match first {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("draft model failed, no speculation this step: {e}");
                return;
            }
        };
        // Entries of `seqs` the rows belong to.
        let mut active: Vec<usize> = (0..seqs.len()).collect();
        for j in 0..k {
            if rows.len() != Some(active.len()) {
                tracing::warn!(
                    "draft model returned {:?} rows for {} sequences",
                    rows.len(),
                    active.len()
                );
                break;
            }
            let mut next = Vec::new();
            let mut next_active = Vec::new();
            for (r, &i) in active.iter().enumerate() {
                if steps[i] <= j {
                    continue;
                }
                let Some(state) = self.seqs.get_mut(&seqs[i].id) else {
                    continue;
                };
                let d = match &mut rows {
                    DraftRows::Logits(l) => state.sampler.propose(l.row_mut(r), valid, &drafts[i]),
                    DraftRows::Greedy(ids) => DraftToken {
                        token: ids[r],
                        probs: None,
                    },
                };
                drafts[i].push(d.token);
                probs[i].extend(d.probs);
                if steps[i] > j + 1 {
                    next.push((seqs[i].id, d.token));
                    next_active.push(i);
                }
            }
            if next.is_empty() {
                break;
            }
            let further = if greedy {
                self.runner
                    .draft_next_greedy(&next, valid)
                    .map(DraftRows::Greedy)
            } else {
                self.runner.draft_next(&next).map(DraftRows::Logits)
            };
            let used = match further {
                Ok(r) => std::mem::replace(&mut rows, r),
                Err(e) => {
                    tracing::warn!("draft model failed after {} draft tokens: {e}", j + 1);
                    break;
                }
            };
            if let DraftRows::Logits(l) = used {
                self.runner.recycle(l);
            }
            active = next_active;
        }
        if let DraftRows::Logits(l) = rows {
            self.runner.recycle(l);
        }
        for ((d, mut p), tokens) in seqs.iter().zip(probs).zip(drafts) {
            let kept = self.scheduler.set_draft_tokens(d.id, &tokens);
            if let Some(state) = self.seqs.get_mut(&d.id) {
                p.truncate(kept);
                state.draft_probs = p;
            }
        }
    }

    /// Runs the step and samples each sampled row: on the device where the runner can and the
    /// row allows it, on the host otherwise. A batch that mixes the two brings only the host
    /// rows' logits back ([`Runner::execute_mixed`]), so one request with logprobs or top-p does
    /// not move a whole batch's logits across the bus.
    fn execute_and_sample(&mut self, out: &SchedulerOutput) -> Result<StepTokens, String> {
        let ids: Vec<u64> = out.sampling_seqs().map(|s| s.id).collect();
        let device = self.runner.samples_on_device();
        let truncates = self.runner.truncates_on_device();
        let mut specs = Vec::with_capacity(ids.len());
        for id in &ids {
            let spec = match self.seqs.get_mut(id) {
                Some(s) if device && s.sampler.device_eligible(truncates) => {
                    s.pending_logprobs.clear();
                    Some(s.sampler.device_sampling())
                }
                _ => None,
            };
            specs.push(spec);
        }
        let vocab = self.runner.vocab_size();
        let valid = self.valid_vocab;
        let host_rows = specs.iter().filter(|s| s.is_none()).count();
        let step = if host_rows == 0 {
            let all: Vec<_> = specs.iter().flatten().copied().collect();
            self.runner
                .execute_sampled(out, &all, valid)
                .map(|drawn| (drawn, Logits::zeros(0, vocab)))
        } else if host_rows < ids.len() {
            self.runner.execute_mixed(out, &specs, valid)
        } else {
            self.runner
                .execute(out)
                .map(|logits| (vec![0; ids.len()], logits))
        };
        let (drawn, mut logits) = step.map_err(|e| e.to_string())?;
        if drawn.len() != ids.len() {
            return Err(format!(
                "runner sampled {} tokens for {} sequences",
                drawn.len(),
                ids.len()
            ));
        }
        logits.check_shape().map_err(|e| e.to_string())?;
        if logits.rows != host_rows {
            return Err(format!(
                "runner returned {} logits rows for {host_rows} sequences sampled on the host",
                logits.rows
            ));
        }
        let on_host: Vec<u64> = ids
            .iter()
            .zip(&specs)
            .filter(|(_, s)| s.is_none())
            .map(|(&id, _)| id)
            .collect();
        let mut host = self.sample_on_host(&on_host, &mut logits).into_iter();
        self.runner.recycle(logits);
        Ok(ids
            .into_iter()
            .zip(specs.iter().zip(drawn))
            .map(|(id, (spec, token))| match spec {
                Some(_) => (id, vec![token]),
                None => (id, vec![host.next().unwrap_or(token)]),
            })
            .collect())
    }

    /// Samples row `i` of `logits` with the sampler of sequence `ids[i]`, keeping its logprobs
    /// for the next delta.
    fn sample_on_host(&mut self, ids: &[u64], logits: &mut Logits) -> Vec<u32> {
        // Take the sequences out of the map for the batch and put them back after. A row
        // without state cannot happen (aborts are applied between steps); it would be sampled
        // greedily with throwaway state so the rows stay aligned.
        let mut taken: Vec<Option<SeqState>> = ids.iter().map(|id| self.seqs.remove(id)).collect();
        let greedy = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let mut orphans: Vec<SeqSampler> = taken
            .iter()
            .filter(|t| t.is_none())
            .map(|_| SeqSampler::new(greedy.clone(), 0, &[], Vec::new()))
            .collect();
        let samples = {
            let mut orphan_iter = orphans.iter_mut();
            let mut states: Vec<&mut SeqSampler> = Vec::with_capacity(taken.len());
            for t in taken.iter_mut() {
                match t {
                    Some(seq) => states.push(&mut seq.sampler),
                    None => states.extend(orphan_iter.next()),
                }
            }
            sample_batch(logits, &mut states, self.valid_vocab)
        };
        let mut tokens = Vec::with_capacity(samples.len());
        for ((&id, state), sample) in ids.iter().zip(taken).zip(samples) {
            if let Some(mut seq) = state {
                seq.pending_logprobs = sample.logprobs.into_iter().collect();
                self.seqs.insert(id, seq);
            }
            tokens.push(sample.token);
        }
        tokens
    }

    /// The model step failed: every request in the batch fails (the replica keeps serving).
    fn fail_batch(&mut self, out: &SchedulerOutput, message: &str) {
        tracing::error!("engine step failed: {message}");
        let ids: Vec<u64> = out.seqs.iter().map(|s| s.id).collect();
        for id in &ids {
            self.scheduler.abort(*id);
        }
        let _ = self.scheduler.update_from_output(out, &[]);
        for id in ids {
            if let Some(seq) = self.seqs.remove(&id) {
                self.finished(id, &seq, FinishReason::Abort);
                let _ = seq.events.send(EngineEvent::Error {
                    index: seq.index,
                    message: message.to_owned(),
                });
            }
        }
    }

    fn delta(
        seq: &SeqState,
        text: String,
        token_ids: Vec<u32>,
        logprobs: Vec<SampleLogprobs>,
    ) -> ChoiceDelta {
        ChoiceDelta {
            index: seq.index,
            text,
            token_ids,
            logprobs,
            finish: None,
            num_prompt_tokens: seq.num_prompt_tokens,
            num_cached_tokens: seq.num_cached_tokens,
            num_generated: seq.generated(),
        }
    }

    /// Turns one scheduler update into an event: text, stop strings, finish, metrics.
    fn publish(&mut self, update: RequestUpdate, now: Instant) {
        let Some(seq) = self.seqs.get_mut(&update.id) else {
            return;
        };
        seq.num_cached_tokens = update.num_cached_tokens;
        seq.num_prompt_tokens = update.num_prompt_tokens;
        let mut tokens = update.new_token_ids;
        // A finishing stop token is not part of the text (unless asked for).
        let visible = match update.stop_token {
            Some(_) if !seq.include_stop => tokens.len().saturating_sub(1),
            _ => tokens.len(),
        };
        let before = seq.generated();
        let mut text = if tokens.len() <= 1 {
            seq.text
                .push(&tokens[..visible], before + tokens.len() >= seq.min_tokens)
        } else {
            // Several tokens (accepted draft tokens): a stop string ends the choice at the
            // token that completes it, as it would without speculation.
            let mut acc = TextDelta::default();
            for i in 0..visible {
                let d = seq
                    .text
                    .push(&tokens[i..=i], before + i + 1 >= seq.min_tokens);
                acc.text.push_str(&d.text);
                if d.stop.is_some() {
                    acc.stop = d.stop;
                    tokens.truncate(i + 1);
                    break;
                }
            }
            acc
        };
        let n_new = tokens.len();
        if n_new > 0 {
            match seq.last_token {
                None => self.metrics.record_first_token(
                    now.saturating_duration_since(seq.arrival),
                    seq.num_prompt_tokens,
                ),
                Some(prev) => self
                    .metrics
                    .record_inter_token(now.saturating_duration_since(prev)),
            }
            seq.first_token.get_or_insert(now);
            seq.last_token = Some(now);
            self.metrics.record_generated(n_new);
        }
        seq.sampler.observe(&tokens);
        let logprobs: Vec<SampleLogprobs> = std::mem::take(&mut seq.pending_logprobs)
            .into_iter()
            .take(n_new)
            .collect();
        let finish = if let Some(stop) = text.stop.take() {
            Some(Finish {
                reason: FinishReason::Stop,
                stop_reason: Some(StopReason::Text(stop)),
            })
        } else {
            // As vLLM: the primary EOS is not reported as a stop reason, other stop ids are.
            let primary_eos = self.eos_token_ids.first().copied();
            update.finished.map(|reason| {
                text.text.push_str(&seq.text.finish());
                Finish {
                    reason,
                    stop_reason: update
                        .stop_token
                        .filter(|t| Some(*t) != primary_eos)
                        .map(StopReason::Token),
                }
            })
        };
        let mut delta = Self::delta(seq, text.text, tokens, logprobs);
        delta.finish = finish.clone();
        let Some(finish) = finish else {
            let _ = seq.events.send(EngineEvent::Delta(delta));
            return;
        };
        if update.finished.is_none() {
            // Stop string: the scheduler still holds the request.
            self.scheduler.finish(update.id, FinishReason::Stop);
        }
        if let Some(seq) = self.seqs.remove(&update.id) {
            // Counters first, then the final event: a client that has its answer sees it counted
            // in /metrics and /load.
            self.finished(update.id, &seq, finish.reason);
            let _ = seq.events.send(EngineEvent::Delta(delta));
        }
    }

    fn publish_stats(&mut self) {
        let stats = self.scheduler.stats();
        self.metrics.record_scheduler(&stats, &self.prev_stats);
        self.shared.set_stats(stats.clone());
        self.prev_stats = stats;
        if self.ended_this_turn > 0 {
            self.shared
                .finished(std::mem::take(&mut self.ended_this_turn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::accept_greedy;

    #[test]
    fn greedy_acceptance_keeps_drafts_up_to_the_first_difference() {
        // All accepted: every draft, then the bonus token.
        assert_eq!(accept_greedy(&[5, 6, 7], &[5, 6]), vec![5, 6, 7]);
        // The second draft differs: the first draft, then the target's choice there.
        assert_eq!(accept_greedy(&[5, 9, 7], &[5, 6]), vec![5, 9]);
        // The first differs: only the target's choice.
        assert_eq!(accept_greedy(&[4, 6, 7], &[5, 6]), vec![4]);
        // No drafts (a plain decode row).
        assert_eq!(accept_greedy(&[3], &[]), vec![3]);
    }
}
