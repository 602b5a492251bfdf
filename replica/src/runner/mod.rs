//! The one door between the engine and a model: [`Runner`].
//!
//! The engine loop owns the scheduler and the sampler; a runner only turns a scheduled batch
//! (token chunks addressed into the paged KV cache through each sequence's block table) into
//! logits rows. Keeping the boundary this narrow lets the whole server run on a fake model in
//! tests ([`fake`]) and on the real GLM model (`model_runner`, written against the `model` crate)
//! in production.
//!
//! Speculative decoding adds three optional methods: [`Runner::execute_verify`] (logits for
//! every position of a seq carrying draft tokens), then [`Runner::draft`] and
//! [`Runner::draft_next`] (the draft model, GLM's MTP layer, proposing the next step's drafts).

pub mod device_runner;
pub mod device_twin;
mod draft_plan;
pub mod fake;
#[cfg(feature = "gpu")]
pub mod gpu_runner;
pub mod model_runner;

pub use model::sample::DeviceSampling;
pub use scheduler::{ScheduledSeq, SchedulerOutput};

pub use device_runner::{DeviceEngine, DeviceRunner};
pub use fake::{FakeRunner, ScriptError, ScriptedRunner};
#[cfg(feature = "gpu")]
pub use gpu_runner::GpuRunner;
pub use model_runner::ModelRunner;

/// The model crate's view of a scheduled batch: each sequence's new tokens, first position, block
/// table and whether it samples.
pub(crate) fn seq_inputs(batch: &SchedulerOutput) -> Vec<model::SeqInput<'_>> {
    batch
        .seqs
        .iter()
        .map(|s| model::SeqInput {
            tokens: &s.token_ids,
            start_pos: s.start_pos,
            block_table: &s.block_table,
            sample: s.sample,
        })
        .collect()
}

/// Logits for the sampled sequences of one step, row-major `[rows, vocab]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    /// `rows * vocab` values.
    pub data: Vec<f32>,
    /// Number of rows: one per scheduled sequence with `sample == true`, in batch order.
    pub rows: usize,
    /// Row width (the model's padded vocabulary size).
    pub vocab: usize,
}

impl Logits {
    /// An all-zero block of `rows` rows.
    pub fn zeros(rows: usize, vocab: usize) -> Self {
        Self {
            data: vec![0.0; rows * vocab],
            rows,
            vocab,
        }
    }

    /// Row `i` (panics if out of range, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// Mutable row `i`.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// Checks the shape invariants (`data.len() == rows * vocab`).
    pub fn check_shape(&self) -> Result<(), RunnerError> {
        if self.data.len() != self.rows * self.vocab {
            return Err(RunnerError::Shape(format!(
                "logits hold {} values, expected rows {} x vocab {}",
                self.data.len(),
                self.rows,
                self.vocab
            )));
        }
        Ok(())
    }
}

/// Why a step failed. The engine fails the requests of that batch and keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The runner returned logits of the wrong shape.
    #[error("runner returned malformed logits: {0}")]
    Shape(String),
    /// The model forward pass failed (device error, out of memory, ...).
    #[error("model execution failed: {0}")]
    Execution(String),
}

/// What the draft model needs about one sampling seq once its step is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftSeq {
    /// Scheduler id of a sampling seq of the batch just executed.
    pub id: u64,
    /// Tokens of its scheduled chunk whose KV is now valid: its known tokens plus the accepted
    /// draft tokens (at least 1).
    pub num_verified: usize,
    /// The token that follows them: the last token the step produced.
    pub next_token: u32,
}

/// The error of the drafting methods on a runner without a draft model.
fn no_drafting() -> RunnerError {
    RunnerError::Execution("this runner has no draft model (speculative decoding)".into())
}

/// Computes scheduled tokens and returns logits rows; see the module docs.
pub trait Runner: Send + 'static {
    /// Computes the scheduled tokens (paged KV addressed by each seq's block_table) and returns
    /// logits rows (f32, len = vocab) for the seqs with `sample == true`, in the order they appear
    /// in `batch.seqs`.
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError>;

    /// Width of a logits row (may exceed the tokenizer's size: padded rows are masked by the
    /// sampler).
    fn vocab_size(&self) -> usize;

    /// Tells the runner that these sequences finished or were aborted, so it can drop any
    /// per-sequence state it keeps. The default keeps none.
    fn release(&mut self, _ids: &[u64]) {}

    /// Takes back a logits buffer the engine is done with. A runner that copies logits from a
    /// device reuses its pages for the next copy: fresh host memory takes a page fault per 4 KiB
    /// on first write, which can cost more than the copy itself. The default drops it.
    fn recycle(&mut self, _logits: Logits) {}

    /// Whether [`Runner::execute_sampled`] draws on the device; the engine then uses it for every
    /// step whose rows all allow it (greedy or plain temperature sampling).
    fn samples_on_device(&self) -> bool {
        false
    }

    /// Whether [`Runner::execute_sampled`] also draws rows truncated by top-k / top-p / min-p
    /// (else the engine samples those on the host).
    fn truncates_on_device(&self) -> bool {
        false
    }

    /// Runs the step and draws one token per sampled sequence (`specs` in batch order), never
    /// an id at or above `valid_vocab`. The default is the host twin of the device kernel.
    fn execute_sampled(
        &mut self,
        batch: &SchedulerOutput,
        specs: &[DeviceSampling],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        let all: Vec<Option<DeviceSampling>> = specs.iter().copied().map(Some).collect();
        Ok(self.execute_mixed(batch, &all, valid_vocab)?.0)
    }

    /// A step whose sampled rows are only partly drawable on the device: `specs[i]` is `Some`
    /// for rows drawn there (as [`Runner::execute_sampled`]) and `None` for rows the host samples.
    /// Returns one id per sampled row (meaningless at host rows) and the host rows' logits, in
    /// order; only those cross to the host. The default computes every row on the host.
    fn execute_mixed(
        &mut self,
        batch: &SchedulerOutput,
        specs: &[Option<DeviceSampling>],
        valid_vocab: usize,
    ) -> Result<(Vec<u32>, Logits), RunnerError> {
        let logits = self.execute(batch)?;
        logits.check_shape()?;
        if logits.rows != specs.len() {
            return Err(RunnerError::Shape(format!(
                "{} logits rows for {} sampled sequences",
                logits.rows,
                specs.len()
            )));
        }
        let valid = valid_vocab.min(logits.vocab);
        let ids = specs
            .iter()
            .enumerate()
            .map(|(i, s)| s.map_or(0, |sp| model::sample::sample_host(logits.row(i), valid, sp)))
            .collect();
        let mut host = Logits::zeros(0, logits.vocab);
        for (i, _) in specs.iter().enumerate().filter(|(_, s)| s.is_none()) {
            host.data.extend_from_slice(logits.row(i));
            host.rows += 1;
        }
        Ok((ids, host))
    }

    /// Whether this runner has a draft model for speculative decoding (GLM's MTP layer). The
    /// engine then runs every step through [`Runner::execute_verify`], followed by
    /// [`Runner::draft`] (and [`Runner::draft_next`] for further draft tokens).
    fn supports_drafting(&self) -> bool {
        false
    }

    /// Runs the batch like [`Runner::execute`] but returns
    /// [`ScheduledSeq::num_logits`] rows per sampling seq: one for each position from its last
    /// known token on (`1 + num_draft_tokens`), seqs in batch order, positions in order. A
    /// drafting runner also keeps what [`Runner::draft`] needs from this step. The default
    /// serves batches without draft tokens.
    fn execute_verify(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        if batch.num_draft_tokens() > 0 {
            return Err(no_drafting());
        }
        self.execute(batch)
    }

    /// First draft step, right after [`Runner::execute_verify`] of `batch`: runs the draft model
    /// over the verified positions of every seq of the batch (so that its own KV stays complete)
    /// and returns one logits row per entry of `seqs`, in that order: the draft model's scores
    /// for the token after `next_token`. Sampling seqs of the batch missing from `seqs` (they
    /// finished) are skipped.
    fn draft(
        &mut self,
        _batch: &SchedulerOutput,
        _seqs: &[DraftSeq],
    ) -> Result<Logits, RunnerError> {
        Err(no_drafting())
    }

    /// Further draft step: feeds each `(id, token)` (the draft token just chosen for that seq
    /// from its previous row) to the draft model one position further and returns one row per
    /// entry, in that order. The KV the draft model writes there must fit the seq's block table
    /// (the scheduler's `num_lookahead_tokens`).
    fn draft_next(&mut self, _tokens: &[(u64, u32)]) -> Result<Logits, RunnerError> {
        Err(no_drafting())
    }

    /// [`Runner::execute_verify`] for an all-greedy batch: each logits row reduced to its greedy
    /// token (below `valid_vocab`), on the device when [`Runner::samples_on_device`], so only ids
    /// cross to the host. The default takes the argmax of the host rows.
    fn execute_verify_greedy(
        &mut self,
        batch: &SchedulerOutput,
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        let logits = self.execute_verify(batch)?;
        greedy_ids(&logits, valid_vocab)
    }

    /// [`Runner::draft`] with each row reduced to its greedy token, as
    /// [`Runner::execute_verify_greedy`].
    fn draft_greedy(
        &mut self,
        batch: &SchedulerOutput,
        seqs: &[DraftSeq],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        let logits = self.draft(batch, seqs)?;
        greedy_ids(&logits, valid_vocab)
    }

    /// [`Runner::draft_next`] with each row reduced to its greedy token.
    fn draft_next_greedy(
        &mut self,
        tokens: &[(u64, u32)],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        let logits = self.draft_next(tokens)?;
        greedy_ids(&logits, valid_vocab)
    }
}

/// The greedy token of every row (ids below `valid_vocab`; ties to the lower id, as the device
/// kernel draws).
fn greedy_ids(logits: &Logits, valid_vocab: usize) -> Result<Vec<u32>, RunnerError> {
    logits.check_shape()?;
    Ok(host_draws(logits, valid_vocab, |_| DeviceSampling::GREEDY))
}

/// The host twin of the device draw: one id per row of `logits` (checked shape), row `i` drawn
/// with `spec(i)`, never an id at or above `valid_vocab`.
pub(crate) fn host_draws(
    logits: &Logits,
    valid_vocab: usize,
    spec: impl Fn(usize) -> DeviceSampling,
) -> Vec<u32> {
    let valid = valid_vocab.min(logits.vocab);
    (0..logits.rows)
        .map(|i| model::sample::sample_host(logits.row(i), valid, spec(i)))
        .collect()
}

/// A model error as the runner's execution error.
fn exec_err(e: model::ModelError) -> RunnerError {
    RunnerError::Execution(e.to_string())
}

impl<R: Runner + ?Sized> Runner for Box<R> {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        (**self).execute(batch)
    }
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn release(&mut self, ids: &[u64]) {
        (**self).release(ids)
    }
    fn recycle(&mut self, logits: Logits) {
        (**self).recycle(logits)
    }
    fn samples_on_device(&self) -> bool {
        (**self).samples_on_device()
    }
    fn truncates_on_device(&self) -> bool {
        (**self).truncates_on_device()
    }
    fn execute_sampled(
        &mut self,
        batch: &SchedulerOutput,
        specs: &[DeviceSampling],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        (**self).execute_sampled(batch, specs, valid_vocab)
    }
    fn execute_mixed(
        &mut self,
        batch: &SchedulerOutput,
        specs: &[Option<DeviceSampling>],
        valid_vocab: usize,
    ) -> Result<(Vec<u32>, Logits), RunnerError> {
        (**self).execute_mixed(batch, specs, valid_vocab)
    }
    fn supports_drafting(&self) -> bool {
        (**self).supports_drafting()
    }
    fn execute_verify(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        (**self).execute_verify(batch)
    }
    fn draft(&mut self, batch: &SchedulerOutput, seqs: &[DraftSeq]) -> Result<Logits, RunnerError> {
        (**self).draft(batch, seqs)
    }
    fn draft_next(&mut self, tokens: &[(u64, u32)]) -> Result<Logits, RunnerError> {
        (**self).draft_next(tokens)
    }
    fn execute_verify_greedy(
        &mut self,
        batch: &SchedulerOutput,
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        (**self).execute_verify_greedy(batch, valid_vocab)
    }
    fn draft_greedy(
        &mut self,
        batch: &SchedulerOutput,
        seqs: &[DraftSeq],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        (**self).draft_greedy(batch, seqs, valid_vocab)
    }
    fn draft_next_greedy(
        &mut self,
        tokens: &[(u64, u32)],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        (**self).draft_next_greedy(tokens, valid_vocab)
    }
}
