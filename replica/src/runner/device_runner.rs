//! A runner over an engine that keeps its state on a device ([`DeviceEngine`]): the GPU engine in
//! production (`gpu_runner`), its CPU twin in tests. Steps whose rows allow it are sampled on the
//! device, so only the sampled ids cross to the host; the rest get logits rows for the host
//! sampler.
//!
//! With speculative decoding it drafts with the engine's MTP layer as the CPU runner does
//! ([`super::draft_plan`]). The hidden rows that outlive a step stay on the device, in the
//! engine's kept pool: slots below `max_num_seqs` hold prefill chunks' last rows (one per
//! sequence, from a free list), the slots above them the draft chains of the current step.

use std::collections::HashMap;

use model::step::{HiddenRow, KeepFrom, StepOutput};
use model::SeqInput;
use scheduler::SchedulerOutput;

use super::draft_plan::{plan_draft, HiddenRun};
use super::{exec_err, DeviceSampling, DraftSeq, Logits, Runner, RunnerError};

/// What [`DeviceRunner`] needs of an engine that keeps its weights, KV cache and hidden rows on
/// a device: the GPU engine (`model::gpu::GpuModel`), or its CPU twin in tests
/// ([`super::device_twin`]).
pub trait DeviceEngine: Send + 'static {
    fn vocab_size(&self) -> usize;
    /// Ids at or above `n` are never drawn.
    fn set_valid_vocab(&mut self, n: usize);
    /// A step: with `sampling` (one entry per sampled sequence) ids drawn on the device, else the
    /// sampled rows' logits.
    fn step(
        &mut self,
        seqs: &[SeqInput<'_>],
        sampling: Option<&[DeviceSampling]>,
    ) -> model::Result<StepOutput>;
    /// Rows `rows` (indices among the sampled rows) of the logits of the last [`Self::step`]
    /// that drew on the device, `[rows.len(), vocab]`: the host-sampled rows of a mixed batch.
    fn last_logits(&mut self, rows: &[usize]) -> model::Result<Vec<f32>>;
    /// Takes back a logits buffer that came from this engine ([`Runner::recycle`]); the default
    /// drops it.
    fn recycle(&mut self, _data: Vec<f32>) {}
    /// Whether sampled steps draw rows truncated by top-k / top-p / min-p.
    fn truncates_on_device(&self) -> bool;
    /// Whether the MTP layer is loaded.
    fn has_mtp(&self) -> bool;
    /// Slots of the kept pool of hidden rows.
    fn mtp_slots(&self) -> usize;
    /// A verify step: the last `logit_rows[i]` rows of sequence `i` (logits, or greedy ids),
    /// keeping every row's hidden state for the MTP pass.
    fn verify_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        logit_rows: &[usize],
        greedy: bool,
    ) -> model::Result<StepOutput>;
    /// An MTP pass over `seqs` with the given hidden inputs; the given rows' logits (or greedy
    /// ids).
    fn mtp_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        hidden: &[HiddenRow],
        logit_rows: &[usize],
        greedy: bool,
    ) -> model::Result<StepOutput>;
    /// Copies `(row, slot)` rows of the last verify step or MTP pass into the kept pool.
    fn keep_rows(&mut self, from: KeepFrom, rows: &[(usize, usize)]) -> model::Result<()>;
}

pub struct DeviceRunner<E: DeviceEngine> {
    model: E,
    /// Rows of the last verify step, while its hidden states await [`Runner::draft`].
    verified_rows: Option<usize>,
    /// Per sequence: a prefill chunk's last position and the kept slot of its hidden row.
    pending: HashMap<u64, (usize, usize)>,
    /// Pending slots not in use.
    free_slots: Vec<usize>,
    /// Per drafting sequence: block table, MTP position of the last draft step, kept slot.
    chains: HashMap<u64, (Vec<u32>, usize, usize)>,
}

impl<E: DeviceEngine> DeviceRunner<E> {
    pub fn new(model: E) -> Self {
        let half = model.mtp_slots() / 2;
        Self {
            model,
            verified_rows: None,
            pending: HashMap::new(),
            free_slots: (0..half).rev().collect(),
            chains: HashMap::new(),
        }
    }

    fn logits(&self, out: StepOutput) -> Result<Logits, RunnerError> {
        let vocab = self.model.vocab_size();
        match out {
            StepOutput::Logits { data, rows } => Ok(Logits { data, rows, vocab }),
            StepOutput::Nothing => Ok(Logits::zeros(0, vocab)),
            StepOutput::Tokens(_) => Err(RunnerError::Execution(
                "the engine returned tokens where logits were asked for".into(),
            )),
        }
    }

    fn free_pending(&mut self, id: u64) {
        if let Some((_, slot)) = self.pending.remove(&id) {
            self.free_slots.push(slot);
        }
    }

    pub fn model(&self) -> &E {
        &self.model
    }
}

impl<E: DeviceEngine> Runner for DeviceRunner<E> {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        if batch.seqs.is_empty() {
            return Ok(Logits::zeros(0, self.model.vocab_size()));
        }
        let out = self
            .model
            .step(&super::seq_inputs(batch), None)
            .map_err(exec_err)?;
        self.logits(out)
    }

    fn release(&mut self, ids: &[u64]) {
        for &id in ids {
            self.free_pending(id);
            self.chains.remove(&id);
        }
    }

    fn recycle(&mut self, logits: Logits) {
        self.model.recycle(logits.data);
    }

    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn truncates_on_device(&self) -> bool {
        self.model.truncates_on_device()
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
        let out = self
            .model
            .step(&super::seq_inputs(batch), Some(specs))
            .map_err(exec_err)?;
        ids(out)
    }

    fn execute_mixed(
        &mut self,
        batch: &SchedulerOutput,
        specs: &[Option<DeviceSampling>],
        valid_vocab: usize,
    ) -> Result<(Vec<u32>, Logits), RunnerError> {
        let vocab = self.model.vocab_size();
        if batch.seqs.is_empty() {
            return Ok((Vec::new(), Logits::zeros(0, vocab)));
        }
        // Host rows are drawn greedily too (cheap, and the graph's batch stays whole); their
        // ids are dropped and their logits read back.
        let draws: Vec<DeviceSampling> = specs
            .iter()
            .map(|s| s.unwrap_or(DeviceSampling::GREEDY))
            .collect();
        let host: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].is_none()).collect();
        let ids = self.execute_sampled(batch, &draws, valid_vocab)?;
        let data = self.model.last_logits(&host).map_err(exec_err)?;
        let rows = host.len();
        Ok((ids, Logits { data, rows, vocab }))
    }

    fn supports_drafting(&self) -> bool {
        self.model.has_mtp()
    }

    fn execute_verify(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        let out = self.verify(batch, false)?;
        self.logits(out)
    }

    fn draft(&mut self, batch: &SchedulerOutput, seqs: &[DraftSeq]) -> Result<Logits, RunnerError> {
        let out = self.draft_pass(batch, seqs, false)?;
        self.logits(out)
    }

    fn draft_next(&mut self, tokens: &[(u64, u32)]) -> Result<Logits, RunnerError> {
        let out = self.draft_step(tokens, false)?;
        self.logits(out)
    }

    fn execute_verify_greedy(
        &mut self,
        batch: &SchedulerOutput,
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        self.model.set_valid_vocab(valid_vocab);
        let out = self.verify(batch, true)?;
        ids(out)
    }

    fn draft_greedy(
        &mut self,
        batch: &SchedulerOutput,
        seqs: &[DraftSeq],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        self.model.set_valid_vocab(valid_vocab);
        let out = self.draft_pass(batch, seqs, true)?;
        ids(out)
    }

    fn draft_next_greedy(
        &mut self,
        tokens: &[(u64, u32)],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        self.model.set_valid_vocab(valid_vocab);
        let out = self.draft_step(tokens, true)?;
        ids(out)
    }
}

/// Greedy ids of a step (none when it had no rows).
fn ids(out: StepOutput) -> Result<Vec<u32>, RunnerError> {
    match out {
        StepOutput::Tokens(t) => Ok(t),
        StepOutput::Nothing => Ok(Vec::new()),
        StepOutput::Logits { .. } => Err(RunnerError::Execution(
            "the engine returned logits where tokens were asked for".into(),
        )),
    }
}

impl<E: DeviceEngine> DeviceRunner<E> {
    /// The verify step (logits or, `greedy`, ids), keeping its hidden states for the draft.
    fn verify(&mut self, batch: &SchedulerOutput, greedy: bool) -> Result<StepOutput, RunnerError> {
        self.verified_rows = None;
        if batch.seqs.is_empty() {
            return Ok(StepOutput::Nothing);
        }
        let rows: Vec<usize> = batch.seqs.iter().map(|s| s.num_logits()).collect();
        let out = self
            .model
            .verify_step(&super::seq_inputs(batch), &rows, greedy)
            .map_err(exec_err)?;
        if self.model.has_mtp() {
            self.verified_rows = Some(batch.seqs.iter().map(|s| s.token_ids.len()).sum());
        }
        Ok(out)
    }

    /// The first MTP pass after a verify step ([`super::draft_plan`]), then the kept rows: each
    /// draft chain's output row, and each prefill chunk's last verified row.
    fn draft_pass(
        &mut self,
        batch: &SchedulerOutput,
        seqs: &[DraftSeq],
        greedy: bool,
    ) -> Result<StepOutput, RunnerError> {
        self.chains.clear();
        let Some(verified) = self.verified_rows.take() else {
            return Err(RunnerError::Execution(
                "draft without a verified step before it".into(),
            ));
        };
        let plan = plan_draft(batch, seqs, &mut self.pending, verified)?;
        let mut hidden = Vec::new();
        let mut consumed = Vec::new();
        for h in &plan.hidden {
            match *h {
                HiddenRun::Verified { start, len } => {
                    hidden.extend((start..start + len).map(HiddenRow::Verified))
                }
                HiddenRun::Pending(slot) => {
                    hidden.push(HiddenRow::Kept(slot));
                    consumed.push(slot);
                }
            }
        }
        let mut out = StepOutput::Nothing;
        if !plan.segments.is_empty() {
            let inputs = plan.inputs(batch);
            out = self
                .model
                .mtp_step(&inputs, &hidden, &plan.logit_rows, greedy)
                .map_err(exec_err)?;
        }
        // The pass has read the consumed slots (stream order): they can take new rows now, as can
        // the ones it did not need.
        self.free_slots.extend(consumed);
        self.free_slots.extend(plan.released);
        let half = self.model.mtp_slots() / 2;
        let mut chain_rows = Vec::with_capacity(plan.chains.len());
        for (i, c) in plan.chains.iter().enumerate() {
            let slot = half + i;
            chain_rows.push((c.row, slot));
            let table = batch.seqs[c.seq].block_table.clone();
            self.chains.insert(c.id, (table, c.pos, slot));
        }
        self.model
            .keep_rows(KeepFrom::MtpOutput, &chain_rows)
            .map_err(exec_err)?;
        let mut keep = Vec::with_capacity(plan.keep.len());
        for &(id, pos, row) in &plan.keep {
            // Out of slots (more sequences mid-prefill than a step holds, after preemptions):
            // the MTP's KV entry at that position stays unwritten, which costs only draft quality.
            let Some(slot) = self.free_slots.pop() else {
                tracing::debug!("no kept slot for sequence {id}'s prefill chunk end");
                continue;
            };
            self.pending.insert(id, (pos, slot));
            keep.push((row, slot));
        }
        self.model
            .keep_rows(KeepFrom::Verified, &keep)
            .map_err(exec_err)?;
        Ok(out)
    }

    /// A further draft step for each `(id, token)`: one position past its chain, from the chain's
    /// kept row, whose slot then takes the new output row.
    fn draft_step(
        &mut self,
        tokens: &[(u64, u32)],
        greedy: bool,
    ) -> Result<StepOutput, RunnerError> {
        if tokens.is_empty() {
            return Ok(StepOutput::Nothing);
        }
        let mut links = Vec::with_capacity(tokens.len());
        for &(id, t) in tokens {
            let (table, pos, slot) = self.chains.get(&id).ok_or_else(|| {
                RunnerError::Execution(format!("draft_next: sequence {id} has no draft chain"))
            })?;
            links.push(([t], table, *pos + 1, *slot));
        }
        let inputs: Vec<SeqInput<'_>> = links
            .iter()
            .map(|(t, table, pos, _)| SeqInput {
                tokens: t,
                start_pos: *pos,
                block_table: table,
                sample: true,
            })
            .collect();
        let hidden: Vec<HiddenRow> = links.iter().map(|l| HiddenRow::Kept(l.3)).collect();
        let rows: Vec<usize> = (0..tokens.len()).collect();
        let out = self
            .model
            .mtp_step(&inputs, &hidden, &rows, greedy)
            .map_err(exec_err)?;
        let keep: Vec<(usize, usize)> = links.iter().enumerate().map(|(i, l)| (i, l.3)).collect();
        self.model
            .keep_rows(KeepFrom::MtpOutput, &keep)
            .map_err(exec_err)?;
        for &(id, _) in tokens {
            if let Some(c) = self.chains.get_mut(&id) {
                c.1 += 1;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The kept pool's slot accounting, over the CPU twin of the device engine.

    use std::path::PathBuf;

    use model::{Glm4Moe, LoadOptions};
    use scheduler::ScheduledSeq;

    use super::super::device_twin::CpuDeviceEngine;
    use super::*;

    const SEQS: usize = 4;

    fn runner() -> DeviceRunner<CpuDeviceEngine> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/demo");
        let opts = LoadOptions {
            progress: false,
            ..LoadOptions::default()
        };
        let model = Glm4Moe::load(&dir, &Default::default(), &opts).unwrap();
        DeviceRunner::new(CpuDeviceEngine::new(model, 32, 16, SEQS).unwrap())
    }

    fn batch(seqs: Vec<ScheduledSeq>) -> SchedulerOutput {
        SchedulerOutput {
            num_batched_tokens: seqs.iter().map(|s| s.token_ids.len()).sum(),
            seqs,
            preempted: vec![],
        }
    }

    fn chunk(id: u64, start: usize, len: usize, sample: bool) -> ScheduledSeq {
        ScheduledSeq {
            id,
            token_ids: (start..start + len).map(|t| (t % 500) as u32 + 1).collect(),
            start_pos: start,
            block_table: (0..4).map(|b| b + 4 * id as u32).collect(),
            sample,
            num_draft_tokens: 0,
        }
    }

    /// Verify and draft one step; the free pending slots after it.
    fn step(r: &mut DeviceRunner<CpuDeviceEngine>, b: &SchedulerOutput, drafting: &[u64]) -> usize {
        r.execute_verify(b).unwrap();
        let seqs: Vec<DraftSeq> = drafting
            .iter()
            .map(|&id| {
                let s = b.seqs.iter().find(|s| s.id == id).unwrap();
                DraftSeq {
                    id,
                    num_verified: s.token_ids.len(),
                    next_token: 7,
                }
            })
            .collect();
        let rows = r.draft(b, &seqs).unwrap().rows;
        assert_eq!(rows, drafting.len());
        r.free_slots.len()
    }

    #[test]
    fn kept_slots_return_to_the_pool() {
        let mut r = runner();
        assert_eq!(r.free_slots.len(), SEQS);
        // Two prefill chunks that stop short of their prompts' ends keep a row each.
        assert_eq!(
            step(
                &mut r,
                &batch(vec![chunk(1, 0, 16, false), chunk(2, 0, 16, false)]),
                &[]
            ),
            SEQS - 2
        );
        // Seq 1's next chunk uses its row and samples (it drafts now); seq 2 finished instead.
        assert_eq!(
            step(
                &mut r,
                &batch(vec![chunk(1, 16, 8, true), chunk(2, 16, 4, true)]),
                &[1]
            ),
            SEQS
        );
        // A chunk kept by seq 3, which is then preempted and recomputed from the start: the stale
        // row comes back, the new chunk end takes one.
        assert_eq!(
            step(&mut r, &batch(vec![chunk(3, 0, 16, false)]), &[]),
            SEQS - 1
        );
        assert_eq!(
            step(&mut r, &batch(vec![chunk(3, 0, 8, false)]), &[]),
            SEQS - 1
        );
        // Released sequences give theirs back.
        r.release(&[3]);
        assert_eq!(r.free_slots.len(), SEQS);
        // More chunk ends than slots: the extra ones are not kept, nothing fails.
        let many: Vec<ScheduledSeq> = (10..10 + SEQS as u64 + 2)
            .map(|id| chunk(id % 8, 0, 16, false))
            .collect();
        assert_eq!(step(&mut r, &batch(many), &[]), 0);
    }
}
