//! Speculative decoding on the device: the verify step and GLM's MTP draft layer (glm.md §3.2).
//!
//! A verify step is a plain forward with logits for every drafted position of a sequence (not only
//! its last), and it keeps the final-normed hidden state of every row for the MTP. The MTP pass then
//! reads, per row, a token, a position and a hidden input: the verified step's row, or a row kept
//! from an earlier step in a pool whose slots the runner manages (a prefill chunk's last position
//! waiting for the next chunk's first token; a draft chain's MTP output for the next draft token).
//! Its layer is an ordinary decoder layer on the KV layer after the main stack, so it reuses the
//! step's kernels; only the input ([`mtp_input`]: both RMSNorms and the concatenation) and the row
//! copies are its own. These steps run eagerly (not from CUDA graphs).

use super::{
    dummy_layer, ones, tensor_f32, upload_layer, GpuLayer, GpuModel, HiddenRow, KeepFrom, Meta,
    StepOutput, FMT_F32,
};
use crate::config::Glm4MoeConfig;
use crate::error::{ModelError, Result};
use crate::gpu::device::{DevBuf, Gpu};
use crate::gpu::gemv::ActRows;
use crate::gpu::weights::{GpuLinear, WeightFormat};
use crate::launch;
use crate::loader::{ParamSource, WeightLoader};
use crate::model::SeqInput;
use crate::CpuBackend;

/// The MTP block: its own embedding, the two input norms, the `[embedding | hidden] → hidden`
/// projection, one decoder layer and its own head.
pub(super) struct GpuMtp {
    /// bf16 `[vocab, hidden]`
    embed: DevBuf,
    enorm: DevBuf,
    hnorm: DevBuf,
    pub(super) eh_proj: GpuLinear,
    pub(super) layer: GpuLayer,
    head_norm: DevBuf,
    pub(super) head: GpuLinear,
}

impl GpuMtp {
    /// Loads `model.layers.{num_hidden_layers}.*` through the CPU loader.
    pub(super) fn load(
        g: &Gpu,
        c: &Glm4MoeConfig,
        w: &mut WeightLoader<'_, CpuBackend>,
    ) -> Result<Self> {
        if c.num_nextn_predict_layers == 0
            || !w.has(&format!(
                "model.layers.{}.eh_proj.weight",
                c.num_hidden_layers
            ))
        {
            return Err(no_mtp_layer(c));
        }
        let m = crate::model::load_mtp(w, c)?;
        let vec = |t: &burn::tensor::Tensor<CpuBackend, 1>| -> Result<DevBuf> {
            super::f32_buf(g, &tensor_f32(t)?)
        };
        Ok(Self {
            embed: super::bf16_buf(g, &tensor_f32(&m.embed)?)?,
            enorm: vec(&m.enorm)?,
            hnorm: vec(&m.hnorm)?,
            eh_proj: GpuLinear::upload(g, &[vec![&m.eh_proj]])?,
            layer: upload_layer(g, c, &m.layer)?,
            head_norm: vec(&m.head_norm)?,
            head: GpuLinear::upload(g, &[vec![&m.head]])?,
        })
    }

    /// Random weights in the checkpoint's layout (`--load-format dummy`): the projection and the
    /// layer in `fmt`, embedding and head in BF16.
    pub(super) fn dummy(
        g: &Gpu,
        c: &Glm4MoeConfig,
        fmt: WeightFormat,
        next: &mut dyn FnMut() -> u64,
    ) -> Result<Self> {
        if c.num_nextn_predict_layers == 0 {
            return Err(no_mtp_layer(c));
        }
        let (h, v) = (c.hidden_size, c.vocab_size);
        let embed = DevBuf::zeros(g, v * h * 2)?;
        super::fill_bf16(g, &embed, v * h, next(), 0.02)?;
        Ok(Self {
            embed,
            enorm: ones(g, h)?,
            hnorm: ones(g, h)?,
            eh_proj: GpuLinear::dummy(g, fmt, &[h], 2 * h, 1, false, next())?,
            layer: dummy_layer(g, c, fmt, c.num_hidden_layers, next)?,
            head_norm: ones(g, h)?,
            head: GpuLinear::dummy(g, WeightFormat::Bf16, &[v], h, 1, false, next())?,
        })
    }

    /// Bytes outside the decoder layer (which the caller counts with the others).
    pub(super) fn extra_bytes(&self) -> usize {
        [&self.embed, &self.enorm, &self.hnorm, &self.head_norm]
            .iter()
            .map(|b| b.bytes())
            .sum::<usize>()
            + self.eh_proj.bytes()
            + self.head.bytes()
    }
}

fn no_mtp_layer(c: &Glm4MoeConfig) -> ModelError {
    ModelError::Input(format!(
        "speculative decoding needs the checkpoint's MTP layer (model.layers.{}.*), and this one \
         has none (num_nextn_predict_layers = {})",
        c.num_hidden_layers, c.num_nextn_predict_layers
    ))
}

impl GpuModel {
    /// Whether the MTP layer is loaded (the engine can draft).
    pub fn has_mtp(&self) -> bool {
        self.mtp.is_some()
    }

    /// Slots of the pool of kept hidden rows ([`HiddenRow::Kept`]): two per sequence of a step.
    pub fn mtp_slots(&self) -> usize {
        if self.mtp.is_some() {
            2 * self.ws.s_cap
        } else {
            0
        }
    }

    /// A verify step: logits (f32 `[Σ logit_rows, vocab]`, sequences in order) for the last
    /// `logit_rows[i]` positions of sequence `i`, or with `greedy` those rows' argmaxes drawn on
    /// the device (below [`GpuModel::set_valid_vocab`]'s bound). With the MTP layer loaded it
    /// also keeps every row's final-normed hidden state for [`GpuModel::mtp_step`].
    pub fn verify_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        logit_rows: &[usize],
        greedy: bool,
    ) -> Result<StepOutput> {
        self.logits_ready = 0;
        if logit_rows.len() != seqs.len() {
            return Err(ModelError::Input(format!(
                "{} logit row counts for {} sequences",
                logit_rows.len(),
                seqs.len()
            )));
        }
        let mut hb = self.host_batch(seqs, None)?;
        let mut rows = Vec::new();
        let mut end = 0;
        for (s, &n) in seqs.iter().zip(logit_rows) {
            end += s.tokens.len();
            if n > s.tokens.len() {
                return Err(ModelError::Input(format!(
                    "{n} logit rows for a sequence of {} tokens",
                    s.tokens.len()
                )));
            }
            rows.extend((end - n..end).map(|r| r as i32));
        }
        self.check_rows(rows.len())?;
        hb.sample_rows = rows;
        let (t, r) = (hb.tokens.len(), hb.sample_rows.len());
        self.upload_batch(&hb)?;
        self.forward(t, hb.attn_tiles.len() / 2, r)?;
        if self.mtp.is_some() {
            let h = self.config.hidden_size;
            let ws = &self.ws;
            launch!(self.g, prep_rows, (t as u32, 1, 1), (super::prep_threads(t), 1, 1), 0;
                ws.x.p(), h as i32, 0u64, h as i32, 1i32, self.norm.p(), self.config.rms_norm_eps,
                0i32, FMT_F32, ws.mtp_hidden.p(), h as i32, 0u64, h as i32)?;
        }
        self.rows_out(r, greedy)
    }

    /// One MTP pass: `seqs[i].tokens[j]` is the token at position `start_pos + j + 1` of a
    /// sequence and `hidden` the matching rows' hidden inputs (the target's state at position
    /// `start_pos + j`); RoPE and the KV entry use `start_pos + j`. Returns the logits of the
    /// given rows (f32 `[logit_rows.len(), vocab]`, in that order), or with `greedy` their argmaxes;
    /// the output hidden states stay
    /// on the device for [`GpuModel::keep_rows`] with [`KeepFrom::MtpOutput`].
    pub fn mtp_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        hidden: &[HiddenRow],
        logit_rows: &[usize],
        greedy: bool,
    ) -> Result<StepOutput> {
        self.logits_ready = 0;
        let mtp = self
            .mtp
            .as_ref()
            .ok_or_else(|| ModelError::Input("the MTP layer is not loaded".into()))?;
        let mut hb = self.host_batch(seqs, None)?;
        let t = hb.tokens.len();
        if hidden.len() != t {
            return Err(ModelError::Input(format!(
                "MTP: {} hidden rows for {t} tokens",
                hidden.len()
            )));
        }
        if let Some(bad) = logit_rows.iter().find(|&&r| r >= t) {
            return Err(ModelError::Input(format!(
                "MTP: logits row {bad} of {t} rows"
            )));
        }
        self.check_rows(logit_rows.len())?;
        let src = self.hidden_sources(hidden)?;
        hb.sample_rows = logit_rows.iter().map(|&r| r as i32).collect();
        self.upload_batch(&hb)?;
        let (g, ws, c) = (&*self.g, &self.ws, &self.config);
        let h = c.hidden_size;
        g.upload(ws.mtp_idx.p(), &src)?;
        launch!(g, mtp_input, (t as u32, 1, 1), (256, 1, 1), 0;
            mtp.embed.p(), ws.meta_at(Meta::Tokens), ws.mtp_hidden.p(), ws.mtp_kept.p(),
            ws.mtp_idx.p(), mtp.enorm.p(), mtp.hnorm.p(), c.rms_norm_eps, ws.f1.p(), h as i32)?;
        let ep = &mtp.eh_proj;
        let a = ActRows::plain(ws.f1.p(), 2 * h, t, 2 * h);
        self.linear(ep, a, ws.x.p(), h, 0, "MTP projection")?;
        self.decoder_layer(c.num_hidden_layers, &mtp.layer, t, hb.attn_tiles.len() / 2)?;
        let r = logit_rows.len();
        if r > 0 {
            let head = &mtp.head;
            let rows = ws.meta_at(Meta::SampleRows);
            let a = ActRows::plain(ws.x.p(), h, r, h)
                .gathered(rows)
                .normed(mtp.head_norm.p(), c.rms_norm_eps);
            self.linear(head, a, ws.logits.p(), c.vocab_size, 0, "LM head")?;
        }
        self.rows_out(r, greedy)
    }

    /// Copies rows (`(row, slot)`) of the last verify step's or MTP pass's hidden states into
    /// slots of the kept pool.
    pub fn keep_rows(&mut self, from: KeepFrom, rows: &[(usize, usize)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let slots = self.mtp_slots();
        let t = self.ws.t_cap;
        if rows.len() > t {
            return Err(ModelError::Input(format!(
                "{} rows to keep; at most {t}",
                rows.len()
            )));
        }
        if let Some(&(r, s)) = rows.iter().find(|&&(r, s)| r >= t || s >= slots) {
            return Err(ModelError::Input(format!(
                "keeping row {r} in slot {s}: rows below {t} and slots below {slots}"
            )));
        }
        let ws = &self.ws;
        let src = match from {
            KeepFrom::Verified => ws.mtp_hidden.p(),
            KeepFrom::MtpOutput => ws.x.p(),
        };
        let idx: Vec<i32> = rows
            .iter()
            .map(|&(r, _)| r as i32)
            .chain(rows.iter().map(|&(_, s)| s as i32))
            .collect();
        self.g.upload(ws.mtp_idx.p(), &idx)?;
        let n = rows.len();
        launch!(self.g, copy_rows, (n as u32, 1, 1), (256, 1, 1), 0;
            src, 0u64, ws.mtp_idx.p(), ws.mtp_kept.p(), ws.mtp_idx.at(n * 4),
            self.config.hidden_size as i32)
    }

    /// The i32 encoding of `mtp_input`'s sources: a verified row as itself, a kept slot `s` as
    /// `-s - 1`.
    fn hidden_sources(&self, hidden: &[HiddenRow]) -> Result<Vec<i32>> {
        let slots = self.mtp_slots();
        hidden
            .iter()
            .map(|h| match *h {
                HiddenRow::Verified(r) if r < self.ws.t_cap => Ok(r as i32),
                HiddenRow::Kept(s) if s < slots => Ok(-(s as i32) - 1),
                other => Err(ModelError::Input(format!(
                    "MTP hidden input {other:?} is outside the workspace"
                ))),
            })
            .collect()
    }

    /// The step's `r` rows: logits, or greedy ids drawn on the device.
    fn rows_out(&self, r: usize, greedy: bool) -> Result<StepOutput> {
        if !greedy || r == 0 {
            return self.read_logits(r);
        }
        self.upload_sampling(&[], r)?;
        self.sample(r, false)?;
        self.read_tokens(r)
    }

    fn check_rows(&self, r: usize) -> Result<()> {
        if r > self.ws.r_cap {
            return Err(ModelError::Input(format!(
                "{r} logits rows in one step; at most {}",
                self.ws.r_cap
            )));
        }
        Ok(())
    }
}
