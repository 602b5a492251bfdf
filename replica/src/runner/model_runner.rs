//! The real runner: the GLM model (`model` crate) on a burn backend with its paged KV cache. It turns
//! the scheduler's batch into [`model::SeqInput`]s, runs one forward over all of them (prefill chunks
//! and decode tokens mixed) and hands back the logits of the sampling sequences.
//!
//! With speculative decoding the checkpoint's MTP layer is the draft model (glm.md §3.2), with its
//! own KV layer after the main stack. After each verified step [`Runner::draft`] runs it over all
//! newly verified positions of the batch, as [`super::draft_plan`] lays out; the further draft
//! steps ([`Runner::draft_next`]) write one position past them, which the next step's pass
//! overwrites.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use model::{Glm4Moe, PagedKvCache, SeqInput};
use scheduler::SchedulerOutput;

use super::draft_plan::{plan_draft, HiddenRun};
use super::{exec_err, DraftSeq, Logits, Runner, RunnerError};

/// One sequence's draft chain between [`Runner::draft`] and [`Runner::draft_next`].
struct Chain<B: Backend> {
    block_table: Vec<u32>,
    /// MTP position of the last draft step.
    pos: usize,
    /// The MTP layer's output hidden state there `[1, H]` (the next step's input).
    hidden: Tensor<B, 2>,
}

pub struct ModelRunner<B: Backend> {
    model: Glm4Moe<B>,
    kv: PagedKvCache<B>,
    /// Final hidden states `[T, H]` of the last [`Runner::execute_verify`], for the first draft
    /// step.
    last_hidden: Option<Tensor<B, 2>>,
    /// Per sequence: the last position of a prefill chunk and its hidden state `[1, H]`, whose MTP
    /// entry awaits the next chunk's first token.
    pending: HashMap<u64, (usize, Tensor<B, 2>)>,
    chains: HashMap<u64, Chain<B>>,
}

impl<B: Backend> ModelRunner<B> {
    /// A runner with a KV cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new(
        model: Glm4Moe<B>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self, model::ModelError> {
        let kv = model.new_kv_cache(num_blocks, block_size)?;
        Ok(Self {
            model,
            kv,
            last_hidden: None,
            pending: HashMap::new(),
            chains: HashMap::new(),
        })
    }

    pub fn model(&self) -> &Glm4Moe<B> {
        &self.model
    }

    fn to_logits(&self, logits: Tensor<B, 2>) -> Result<Logits, RunnerError> {
        let vocab = self.model.config.vocab_size;
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

    fn run(&mut self, batch: &SchedulerOutput, verify: bool) -> Result<Logits, RunnerError> {
        let vocab = self.model.config.vocab_size;
        self.last_hidden = None;
        if batch.seqs.is_empty() {
            return Ok(Logits::zeros(0, vocab));
        }
        let seqs = super::seq_inputs(batch);
        let last_rows: Vec<usize> = if verify {
            batch.seqs.iter().map(|s| s.num_logits()).collect()
        } else {
            batch.seqs.iter().map(|s| usize::from(s.sample)).collect()
        };
        let out = self
            .model
            .forward_rows(&seqs, &last_rows, &mut self.kv)
            .map_err(exec_err)?;
        if verify && self.model.has_mtp() {
            self.last_hidden = Some(out.hidden);
        }
        match out.logits {
            Some(logits) => self.to_logits(logits),
            None => Ok(Logits::zeros(0, vocab)),
        }
    }
}

impl<B: Backend> Runner for ModelRunner<B>
where
    B::Device: Send,
    Glm4Moe<B>: Send,
    PagedKvCache<B>: Send,
{
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.run(batch, false)
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn release(&mut self, ids: &[u64]) {
        for id in ids {
            self.pending.remove(id);
            self.chains.remove(id);
        }
    }

    fn supports_drafting(&self) -> bool {
        self.model.has_mtp()
    }

    fn execute_verify(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.run(batch, true)
    }

    fn draft(&mut self, batch: &SchedulerOutput, seqs: &[DraftSeq]) -> Result<Logits, RunnerError> {
        let vocab = self.model.config.vocab_size;
        self.chains.clear();
        let Some(hidden) = self.last_hidden.take() else {
            return Err(RunnerError::Execution(
                "draft without a verified step before it".into(),
            ));
        };
        let mut plan = plan_draft(batch, seqs, &mut self.pending, hidden.dims()[0])?;
        for &(id, pos, row) in &plan.keep {
            self.pending
                .insert(id, (pos, hidden.clone().narrow(0, row, 1)));
        }
        if plan.segments.is_empty() {
            return Ok(Logits::zeros(0, vocab));
        }
        let rows: Vec<Tensor<B, 2>> = std::mem::take(&mut plan.hidden)
            .into_iter()
            .map(|h| match h {
                HiddenRun::Verified { start, len } => hidden.clone().narrow(0, start, len),
                HiddenRun::Pending(row) => row,
            })
            .collect();
        let inputs = plan.inputs(batch);
        let (logits, y) = self
            .model
            .mtp_forward_rows(
                &inputs,
                Tensor::cat(rows, 0),
                &plan.logit_rows,
                &mut self.kv,
            )
            .map_err(exec_err)?;
        for c in &plan.chains {
            self.chains.insert(
                c.id,
                Chain {
                    block_table: batch.seqs[c.seq].block_table.clone(),
                    pos: c.pos,
                    hidden: y.clone().narrow(0, c.row, 1),
                },
            );
        }
        self.to_logits(logits)
    }

    fn draft_next(&mut self, tokens: &[(u64, u32)]) -> Result<Logits, RunnerError> {
        let vocab = self.model.config.vocab_size;
        if tokens.is_empty() {
            return Ok(Logits::zeros(0, vocab));
        }
        let mut hidden = Vec::with_capacity(tokens.len());
        for (id, _) in tokens {
            let chain = self.chains.get(id).ok_or_else(|| {
                RunnerError::Execution(format!("draft_next: sequence {id} has no draft chain"))
            })?;
            hidden.push(chain.hidden.clone());
        }
        let toks: Vec<[u32; 1]> = tokens.iter().map(|&(_, t)| [t]).collect();
        let inputs: Vec<SeqInput<'_>> = tokens
            .iter()
            .zip(&toks)
            .map(|((id, _), t)| {
                let c = &self.chains[id];
                SeqInput {
                    tokens: t,
                    start_pos: c.pos + 1,
                    block_table: &c.block_table,
                    sample: true,
                }
            })
            .collect();
        let (logits, y) = self
            .model
            .mtp_forward(&inputs, Tensor::cat(hidden, 0), &mut self.kv)
            .map_err(exec_err)?;
        for (i, (id, _)) in tokens.iter().enumerate() {
            if let Some(c) = self.chains.get_mut(id) {
                c.pos += 1;
                c.hidden = y.clone().narrow(0, i, 1);
            }
        }
        self.to_logits(logits)
    }
}

#[cfg(test)]
mod tests {
    //! The MTP wiring against a direct computation: whatever the chunking, the draft rows the
    //! runner returns equal `mtp_forward` over the whole history on a fresh cache.

    use std::path::PathBuf;

    use burn::tensor::Tensor;
    use model::{CpuBackend, Glm4Moe, LoadOptions, SeqInput};
    use scheduler::{ScheduledSeq, SchedulerOutput};

    use super::*;

    type B = CpuBackend;
    const BS: usize = 16;

    fn model() -> Glm4Moe<B> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/demo");
        let opts = LoadOptions {
            progress: false,
            ..LoadOptions::default()
        };
        Glm4Moe::load(&dir, &Default::default(), &opts).unwrap()
    }

    fn batch(seq: ScheduledSeq) -> SchedulerOutput {
        SchedulerOutput {
            num_batched_tokens: seq.token_ids.len(),
            seqs: vec![seq],
            preempted: vec![],
        }
    }

    fn seq(tokens: &[u32], start: usize, sample: bool, drafts: usize) -> ScheduledSeq {
        ScheduledSeq {
            id: 1,
            token_ids: tokens.to_vec(),
            start_pos: start,
            block_table: (0..8).collect(),
            sample,
            num_draft_tokens: drafts,
        }
    }

    fn rows(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    /// MTP logits for the token after `history` (last row), and for one more draft step fed
    /// `then` when given, computed from scratch.
    fn direct(m: &Glm4Moe<B>, history: &[u32], then: Option<u32>) -> (Vec<f32>, Option<Vec<f32>>) {
        let table: Vec<u32> = (0..8).collect();
        let mut kv = m.new_kv_cache(8, BS).unwrap();
        let n = history.len();
        let out = m
            .forward(
                &[SeqInput {
                    tokens: &history[..n - 1],
                    start_pos: 0,
                    block_table: &table,
                    sample: true,
                }],
                &mut kv,
            )
            .unwrap();
        let (logits, y) = m
            .mtp_forward(
                &[SeqInput {
                    tokens: &history[1..],
                    start_pos: 0,
                    block_table: &table,
                    sample: true,
                }],
                out.hidden,
                &mut kv,
            )
            .unwrap();
        let last = rows(logits.narrow(0, n - 2, 1));
        let next = then.map(|t| {
            let (l, _) = m
                .mtp_forward(
                    &[SeqInput {
                        tokens: &[t],
                        start_pos: n - 1,
                        block_table: &table,
                        sample: true,
                    }],
                    y.narrow(0, n - 2, 1),
                    &mut kv,
                )
                .unwrap();
            rows(l)
        });
        (last, next)
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(err <= 1e-3 * scale.max(1.0), "max error {err}");
    }

    #[test]
    fn mtp_drafts_match_a_direct_computation() {
        let m = model();
        let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 600).collect();
        let mut r = ModelRunner::new(model(), 8, BS).unwrap();
        assert!(r.supports_drafting());
        // Chunked prefill: 16 + 16 (their last positions wait for the next chunk) + 8.
        for (start, end) in [(0, 16), (16, 32)] {
            let b = batch(seq(&prompt[start..end], start, false, 0));
            assert_eq!(r.execute_verify(&b).unwrap().rows, 0);
            assert_eq!(r.draft(&b, &[]).unwrap().rows, 0);
        }
        let b = batch(seq(&prompt[32..], 32, true, 0));
        let target = r.execute_verify(&b).unwrap();
        let t0 = crate::sampler::argmax(target.row(0));
        let d = DraftSeq {
            id: 1,
            num_verified: 8,
            next_token: t0,
        };
        let draft = r.draft(&b, &[d]).unwrap();
        let mut history = prompt.clone();
        history.push(t0);
        let d1 = crate::sampler::argmax(draft.row(0));
        let (want, want_next) = direct(&m, &history, Some(d1));
        close(draft.row(0), &want);
        // A second draft step continues the chain with the MTP's own hidden state.
        let next = r.draft_next(&[(1, d1)]).unwrap();
        close(next.row(0), &want_next.unwrap());
        let d2 = crate::sampler::argmax(next.row(0));

        // Verify [t0, d1, d2]: rows for the three positions; accept d1 only (whatever the
        // model says, the runner must draft from the verified prefix and the correction).
        let b = batch(seq(&[t0, d1, d2], 40, true, 2));
        let target = r.execute_verify(&b).unwrap();
        assert_eq!(target.rows, 3);
        let correction = (crate::sampler::argmax(target.row(1)) + 1) % 600;
        let d = DraftSeq {
            id: 1,
            num_verified: 2,
            next_token: correction,
        };
        let draft = r.draft(&b, &[d]).unwrap();
        history.extend([d1, correction]);
        let (want, _) = direct(&m, &history, None);
        close(draft.row(0), &want);
        // The target's rows are the plain forward's for the same tokens.
        let (plain, _) = {
            let mut fresh = ModelRunner::new(model(), 8, BS).unwrap();
            let b = batch(seq(&history[..42], 0, true, 0));
            (fresh.execute(&b).unwrap(), ())
        };
        close(target.row(1), plain.row(0));
    }

    #[test]
    fn drafting_errors_are_reported() {
        let mut r = ModelRunner::new(model(), 8, BS).unwrap();
        let b = batch(seq(&[1, 2, 3], 0, true, 0));
        // No verified step yet.
        assert!(r.draft(&b, &[]).is_err());
        r.execute_verify(&b).unwrap();
        let stranger = DraftSeq {
            id: 9,
            num_verified: 3,
            next_token: 4,
        };
        assert!(r.draft(&b, &[stranger]).is_err());
        assert!(r.draft_next(&[(9, 1)]).is_err());
    }
}
