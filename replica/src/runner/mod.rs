//! The one door between the engine and a model: [`Runner`].
//!
//! The engine loop owns the scheduler and the sampler; a runner only turns a scheduled batch
//! (token chunks addressed into the paged KV cache through each sequence's block table) into
//! logits rows. Keeping the boundary this narrow lets the whole server run on a fake model in
//! tests ([`fake`]) and on the real GLM model (`model_runner`, written against the `model` crate)
//! in production.

pub mod fake;
pub mod model_runner;

pub use scheduler::{ScheduledSeq, SchedulerOutput};

pub use fake::{FakeRunner, ScriptError, ScriptedRunner};
pub use model_runner::ModelRunner;

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
}
