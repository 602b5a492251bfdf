//! The real runner: the GLM model (`model` crate) on a burn backend with its paged KV cache. It turns
//! the scheduler's batch into [`model::SeqInput`]s, runs one forward over all of them (prefill chunks
//! and decode tokens mixed) and hands back the logits of the sampling sequences.

use burn::tensor::backend::Backend;
use model::{Glm4Moe, PagedKvCache, SeqInput};
use scheduler::SchedulerOutput;

use super::{Logits, Runner, RunnerError};

pub struct ModelRunner<B: Backend> {
    model: Glm4Moe<B>,
    kv: PagedKvCache<B>,
}

impl<B: Backend> ModelRunner<B> {
    /// A runner with a KV cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new(
        model: Glm4Moe<B>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self, model::ModelError> {
        let kv = model.new_kv_cache(num_blocks, block_size)?;
        Ok(Self { model, kv })
    }

    pub fn model(&self) -> &Glm4Moe<B> {
        &self.model
    }
}

impl<B: Backend> Runner for ModelRunner<B>
where
    B::Device: Send,
    Glm4Moe<B>: Send,
    PagedKvCache<B>: Send,
{
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        let vocab = self.model.config.vocab_size;
        if batch.seqs.is_empty() {
            return Ok(Logits::zeros(0, vocab));
        }
        let seqs: Vec<SeqInput<'_>> = batch
            .seqs
            .iter()
            .map(|s| SeqInput {
                tokens: &s.token_ids,
                start_pos: s.start_pos,
                block_table: &s.block_table,
                sample: s.sample,
            })
            .collect();
        let out = self
            .model
            .forward(&seqs, &mut self.kv)
            .map_err(|e| RunnerError::Execution(e.to_string()))?;
        let Some(logits) = out.logits else {
            return Ok(Logits::zeros(0, vocab));
        };
        let rows = logits.dims()[0];
        let data = logits
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| RunnerError::Execution(format!("reading logits: {e:?}")))?;
        let l = Logits { data, rows, vocab };
        l.check_shape()?;
        Ok(l)
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }
}
