//! The GPU runner (feature `gpu`): the model crate's CUDA engine ([`model::gpu::GpuModel`]) behind
//! the [`Runner`] door. Steps whose rows allow it are sampled on the device, so only the sampled
//! ids cross to the host; the rest get logits rows for the host sampler.

use model::gpu::{GpuModel, StepOutput};
use scheduler::SchedulerOutput;

use super::{DeviceSampling, Logits, Runner, RunnerError};

pub struct GpuRunner {
    model: GpuModel,
}

impl GpuRunner {
    pub fn new(model: GpuModel) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &GpuModel {
        &self.model
    }
}

fn exec_err(e: model::ModelError) -> RunnerError {
    RunnerError::Execution(e.to_string())
}

impl Runner for GpuRunner {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        let vocab = self.model.config.vocab_size;
        if batch.seqs.is_empty() {
            return Ok(Logits::zeros(0, vocab));
        }
        match self
            .model
            .step(&super::seq_inputs(batch), None)
            .map_err(exec_err)?
        {
            StepOutput::Logits { data, rows } => Ok(Logits { data, rows, vocab }),
            StepOutput::Nothing => Ok(Logits::zeros(0, vocab)),
            StepOutput::Tokens(_) => Err(RunnerError::Execution(
                "the engine returned tokens where logits were asked for".into(),
            )),
        }
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn execute_sampled(
        &mut self,
        batch: &SchedulerOutput,
        specs: &[DeviceSampling],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        if batch.seqs.is_empty() {
            return Ok(Vec::new());
        }
        self.model.set_valid_vocab(valid_vocab);
        match self
            .model
            .step(&super::seq_inputs(batch), Some(specs))
            .map_err(exec_err)?
        {
            StepOutput::Tokens(t) => Ok(t),
            StepOutput::Nothing => Ok(Vec::new()),
            StepOutput::Logits { .. } => Err(RunnerError::Execution(
                "the engine returned logits where tokens were asked for".into(),
            )),
        }
    }
}
