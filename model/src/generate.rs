//! A single-sequence generation loop over the paged forward: prefill in chunks, then one token per
//! step. The serving engine batches many sequences; this is the simple path for the CLI and tests.

use burn::tensor::backend::Backend;

use crate::error::{ModelError, Result};
use crate::model::{Glm4Moe, SeqInput};

/// Picks the next token from a logits row.
pub trait TokenPicker {
    fn pick(&mut self, logits: &[f32]) -> u32;
}

/// Argmax (first maximum on ties, as torch.argmax).
pub struct Greedy;

impl TokenPicker for Greedy {
    fn pick(&mut self, logits: &[f32]) -> u32 {
        argmax(logits)
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Stop (without emitting) when one of these is generated.
    pub stop_token_ids: Vec<u32>,
    pub block_size: usize,
    /// Prefill chunk length (tokens per forward).
    pub chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 16,
            stop_token_ids: vec![],
            block_size: 16,
            chunk: 512,
        }
    }
}

/// Generates after `prompt`; returns the new token ids (a stop token ends generation and is not included).
pub fn generate<B: Backend>(
    model: &Glm4Moe<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    picker: &mut dyn TokenPicker,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(ModelError::Input("the prompt is empty".into()));
    }
    let total = prompt.len() + opts.max_new_tokens;
    if total > model.config.max_position_embeddings {
        return Err(ModelError::Input(format!(
            "prompt ({}) + max new tokens ({}) exceed max_position_embeddings {}",
            prompt.len(),
            opts.max_new_tokens,
            model.config.max_position_embeddings
        )));
    }
    let blocks = total.div_ceil(opts.block_size).max(1);
    let mut kv = model.new_kv_cache(blocks, opts.block_size)?;
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut out = Vec::with_capacity(opts.max_new_tokens);
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut pos = 0;
    let mut logits = Vec::new();
    while pos < prompt.len() {
        let end = (pos + opts.chunk.max(1)).min(prompt.len());
        let r = model.forward(
            &[SeqInput {
                tokens: &prompt[pos..end],
                start_pos: pos,
                block_table: &table,
                sample: end == prompt.len(),
            }],
            &mut kv,
        )?;
        if let Some(l) = r.logits {
            logits = l.into_data().convert::<f32>().to_vec().expect("f32 logits");
        }
        pos = end;
    }
    loop {
        let next = picker.pick(&logits);
        if opts.stop_token_ids.contains(&next) {
            break;
        }
        out.push(next);
        if out.len() == opts.max_new_tokens {
            break;
        }
        let r = model.forward(
            &[SeqInput {
                tokens: &[next],
                start_pos: pos,
                block_table: &table,
                sample: true,
            }],
            &mut kv,
        )?;
        logits = r
            .logits
            .ok_or_else(|| ModelError::Input("decode step returned no logits".into()))?
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits");
        pos += 1;
    }
    Ok(out)
}
