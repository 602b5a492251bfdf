//! The device engine's CPU twin: the CPU model behind [`DeviceEngine`], with the kept pool as host
//! tensors and the device draws done by their host twins (`model::sample::sample_host`). A
//! [`super::DeviceRunner`] over it runs here exactly the bookkeeping it runs over the GPU engine
//! (draft plans, kept slots, draft chains, greedy draws), so the tests check that against the CPU
//! runner without a GPU.

use burn::tensor::Tensor;
use model::sample::DeviceSampling;
use model::step::{HiddenRow, KeepFrom, StepOutput};
use model::{CpuBackend, Glm4Moe, ModelError, PagedKvCache, SeqInput};

use super::device_runner::DeviceEngine;
use super::{host_draws, Logits};

type B = CpuBackend;

pub struct CpuDeviceEngine {
    model: Glm4Moe<B>,
    kv: PagedKvCache<B>,
    valid_vocab: usize,
    /// Final-normed hidden states of the last verify step.
    verified: Option<Tensor<B, 2>>,
    /// Output hidden states of the last MTP pass.
    mtp_out: Option<Tensor<B, 2>>,
    /// The kept pool: `[1, H]` rows.
    kept: Vec<Option<Tensor<B, 2>>>,
    /// Logits rows of the last step that drew on the device (for `last_logits`).
    last_logits: Vec<f32>,
    /// Whether it draws truncated rows (off, as the GPU engine's default).
    truncation: bool,
}

impl CpuDeviceEngine {
    /// The model with a KV cache of `num_blocks` blocks of `block_size` tokens, for steps of at
    /// most `max_num_seqs` sequences (which sizes the kept pool, as on the GPU).
    pub fn new(
        model: Glm4Moe<B>,
        num_blocks: usize,
        block_size: usize,
        max_num_seqs: usize,
    ) -> Result<Self, ModelError> {
        let kv = model.new_kv_cache(num_blocks, block_size)?;
        let slots = if model.has_mtp() { 2 * max_num_seqs } else { 0 };
        Ok(Self {
            valid_vocab: model.config.vocab_size,
            model,
            kv,
            verified: None,
            mtp_out: None,
            kept: vec![None; slots],
            last_logits: Vec::new(),
            truncation: false,
        })
    }

    /// Draws rows truncated by top-k / top-p / min-p too (the GPU engine's
    /// default, `GLMFLEET_DEVICE_TRUNCATION` not `0`).
    pub fn set_truncation(&mut self, on: bool) {
        self.truncation = on;
    }

    /// Logits rows as the engine hands them back: logits, or with `draw` one id per row, row
    /// `i` drawn with `draw(i)` by the host twin of the device draw. With `keep`, drawn rows stay
    /// readable through `last_logits`.
    fn rows_out(
        &mut self,
        logits: Option<Tensor<B, 2>>,
        draw: Option<&dyn Fn(usize) -> DeviceSampling>,
        keep: bool,
    ) -> model::Result<StepOutput> {
        let Some(logits) = logits.filter(|l| l.dims()[0] > 0) else {
            return Ok(StepOutput::Nothing);
        };
        let rows = logits.dims()[0];
        let data = floats(logits)?;
        let Some(draw) = draw else {
            return Ok(StepOutput::Logits { data, rows });
        };
        let vocab = self.model.config.vocab_size;
        let logits = Logits { data, rows, vocab };
        let ids = host_draws(&logits, self.valid_vocab, draw);
        if keep {
            self.last_logits = logits.data;
        }
        Ok(StepOutput::Tokens(ids))
    }
}

/// The draw of a greedy step: every row's argmax.
fn greedy(_: usize) -> DeviceSampling {
    DeviceSampling::GREEDY
}

/// `rows_out`'s draw for a step that is `greedy` or returns logits.
fn greedy_draw(greedy_step: bool) -> Option<&'static dyn Fn(usize) -> DeviceSampling> {
    greedy_step.then_some(&greedy)
}

fn floats(t: Tensor<B, 2>) -> model::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ModelError::Device(format!("reading a tensor: {e:?}")))
}

impl DeviceEngine for CpuDeviceEngine {
    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn set_valid_vocab(&mut self, n: usize) {
        self.valid_vocab = n.clamp(1, self.model.config.vocab_size);
    }

    fn step(
        &mut self,
        seqs: &[SeqInput<'_>],
        sampling: Option<&[DeviceSampling]>,
    ) -> model::Result<StepOutput> {
        let rows: Vec<usize> = seqs.iter().map(|s| usize::from(s.sample)).collect();
        let sampled: usize = rows.iter().sum();
        if let Some(sp) = sampling.filter(|sp| sp.len() != sampled) {
            return Err(ModelError::Input(format!(
                "{} sampling entries for {sampled} sampled rows",
                sp.len()
            )));
        }
        self.last_logits.clear();
        let out = self.model.forward_rows(seqs, &rows, &mut self.kv)?;
        match sampling {
            Some(sp) => self.rows_out(out.logits, Some(&|i| sp[i]), true),
            None => self.rows_out(out.logits, None, false),
        }
    }

    fn last_logits(&mut self, rows: &[usize]) -> model::Result<Vec<f32>> {
        let v = self.model.config.vocab_size;
        let ready = self.last_logits.len() / v;
        let mut data = Vec::with_capacity(rows.len() * v);
        for &r in rows {
            if r >= ready {
                return Err(ModelError::Input(format!(
                    "logits row {r} of the last step's {ready}"
                )));
            }
            data.extend_from_slice(&self.last_logits[r * v..(r + 1) * v]);
        }
        Ok(data)
    }

    fn truncates_on_device(&self) -> bool {
        self.truncation
    }

    fn has_mtp(&self) -> bool {
        self.model.has_mtp()
    }

    fn mtp_slots(&self) -> usize {
        self.kept.len()
    }

    fn verify_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        logit_rows: &[usize],
        greedy: bool,
    ) -> model::Result<StepOutput> {
        self.last_logits.clear();
        let out = self.model.forward_rows(seqs, logit_rows, &mut self.kv)?;
        self.verified = Some(out.hidden);
        self.rows_out(out.logits, greedy_draw(greedy), false)
    }

    fn mtp_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        hidden: &[HiddenRow],
        logit_rows: &[usize],
        greedy: bool,
    ) -> model::Result<StepOutput> {
        self.last_logits.clear();
        let rows = hidden
            .iter()
            .map(|h| {
                match *h {
                    HiddenRow::Verified(r) => self
                        .verified
                        .as_ref()
                        .filter(|v| r < v.dims()[0])
                        .map(|v| v.clone().narrow(0, r, 1)),
                    HiddenRow::Kept(s) => self.kept.get(s).cloned().flatten(),
                }
                .ok_or_else(|| ModelError::Input(format!("MTP hidden input {h:?} holds no row")))
            })
            .collect::<model::Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Err(ModelError::Input("an MTP pass over no rows".into()));
        }
        let (logits, y) =
            self.model
                .mtp_forward_rows(seqs, Tensor::cat(rows, 0), logit_rows, &mut self.kv)?;
        self.mtp_out = Some(y);
        self.rows_out(Some(logits), greedy_draw(greedy), false)
    }

    fn keep_rows(&mut self, from: KeepFrom, rows: &[(usize, usize)]) -> model::Result<()> {
        let src = match from {
            KeepFrom::Verified => self.verified.as_ref(),
            KeepFrom::MtpOutput => self.mtp_out.as_ref(),
        };
        let slots = self.kept.len();
        for &(r, s) in rows {
            let row = src
                .filter(|t| r < t.dims()[0])
                .map(|t| t.clone().narrow(0, r, 1))
                .ok_or_else(|| ModelError::Input(format!("no {from:?} row {r} to keep")))?;
            let slot = self
                .kept
                .get_mut(s)
                .ok_or_else(|| ModelError::Input(format!("kept slot {s} of {slots}")))?;
            *slot = Some(row);
        }
        Ok(())
    }
}
