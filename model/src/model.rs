//! Glm4MoeForCausalLM: embedding → decoder layers (GQA attention with partial NeoX RoPE, dense SwiGLU
//! for the first `first_k_dense_replace` layers, sigmoid-routed MoE with a shared expert after) → final
//! RMSNorm → `lm_head`; plus the MTP layer as a draft function. One forward takes a mixed batch of
//! sequences (prefill chunks and decode tokens) over a paged KV cache.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::checkpoint::TensorStore;
use crate::config::Glm4MoeConfig;
use crate::error::{ModelError, Result};
use crate::kernels::{causal_mask, AttnBatch, Kernels, Reference, SeqAttn};
use crate::kv_cache::{int_tensor, PagedKvCache};
use crate::linear::{Fp8Activations, Linear};
use crate::loader::{ParamSource, WeightLoader};
use crate::moe::Moe;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Load the MTP layer when the checkpoint has one.
    pub load_mtp: bool,
    pub fp8_activations: Fp8Activations,
    /// Show a progress bar for large checkpoints.
    pub progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            load_mtp: true,
            fp8_activations: Fp8Activations::WeightOnly,
            progress: true,
        }
    }
}

/// One sequence of a batch: the tokens to compute now at positions `start_pos..`, its block table, and
/// whether the model must return logits for its last token.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    pub block_table: &'a [u32],
    pub sample: bool,
}

pub struct ForwardOutput<B: Backend> {
    /// `[S, vocab]` for the S sequences with `sample`, in batch order; `None` when no sequence samples
    /// (a prefill chunk that does not reach the end of its prompt).
    pub logits: Option<Tensor<B, 2>>,
    /// `[T, H]` final-normed hidden states of every computed token (the MTP draft input).
    pub hidden: Tensor<B, 2>,
    /// Row of each sampled sequence's last token in `hidden`.
    pub sample_rows: Vec<usize>,
}

/// See [`Glm4Moe::parameter_memory`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParamMemory {
    pub fp8_bytes: usize,
    pub float_elements: usize,
}

impl ParamMemory {
    pub(crate) fn add_tensor(&mut self, elems: usize) {
        self.float_elements += elems;
    }
    pub(crate) fn add_linear<B: Backend>(&mut self, l: &Linear<B>) {
        match &l.weight {
            crate::linear::LinearWeight::Dense(w) => {
                self.float_elements += w.dims().iter().product::<usize>()
            }
            crate::linear::LinearWeight::Fp8(w) => self.fp8_bytes += w.bytes.len(),
        }
        if let Some(b) = &l.bias {
            self.float_elements += b.dims()[0];
        }
    }
}

impl<B: Backend> DenseMlp<B> {
    pub(crate) fn add_to(&self, m: &mut ParamMemory) {
        for l in [&self.gate, &self.up, &self.down] {
            m.add_linear(l);
        }
    }
}

pub(crate) struct Attention<B: Backend> {
    pub(crate) q: Linear<B>,
    pub(crate) k: Linear<B>,
    pub(crate) v: Linear<B>,
    pub(crate) o: Linear<B>,
    pub(crate) q_norm: Option<Tensor<B, 1>>,
    pub(crate) k_norm: Option<Tensor<B, 1>>,
}

pub(crate) struct DenseMlp<B: Backend> {
    pub gate: Linear<B>,
    pub up: Linear<B>,
    pub down: Linear<B>,
}

pub(crate) enum Mlp<B: Backend> {
    Dense(DenseMlp<B>),
    Moe(Moe<B>),
}

pub(crate) struct DecoderLayer<B: Backend> {
    pub(crate) input_norm: Tensor<B, 1>,
    pub(crate) attn: Attention<B>,
    pub(crate) post_norm: Tensor<B, 1>,
    pub(crate) mlp: Mlp<B>,
}

pub(crate) struct MtpLayer<B: Backend> {
    pub(crate) embed: Tensor<B, 2>,
    pub(crate) enorm: Tensor<B, 1>,
    pub(crate) hnorm: Tensor<B, 1>,
    pub(crate) eh_proj: Linear<B>,
    pub(crate) layer: DecoderLayer<B>,
    pub(crate) head_norm: Tensor<B, 1>,
    pub(crate) head: Linear<B>,
}

pub struct Glm4Moe<B: Backend> {
    pub config: Glm4MoeConfig,
    pub device: B::Device,
    embed: Tensor<B, 2>,
    layers: Vec<DecoderLayer<B>>,
    norm: Tensor<B, 1>,
    lm_head: Linear<B>,
    mtp: Option<MtpLayer<B>>,
    kernels: Arc<dyn Kernels<B>>,
    act: Fp8Activations,
}

impl<B: Backend> Glm4Moe<B> {
    /// Loads a checkpoint folder (config.json + safetensors).
    pub fn load(dir: &Path, device: &B::Device, opts: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFolder(dir.to_path_buf()));
        }
        let config = Glm4MoeConfig::from_dir(dir)?;
        let store = TensorStore::open(dir)?;
        Self::from_store(config, &store, device, opts)
    }

    pub fn from_store(
        config: Glm4MoeConfig,
        store: &TensorStore,
        device: &B::Device,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let c = config.clone();
        let mut w = WeightLoader::<B>::new(store, &c, device.clone(), opts.progress);
        let mtp_prefix = format!("model.layers.{}.", c.num_hidden_layers);
        let has_mtp =
            c.num_nextn_predict_layers > 0 && w.has(&format!("{mtp_prefix}eh_proj.weight"));
        let model = Self::build(
            config,
            &mut w,
            device,
            has_mtp && opts.load_mtp,
            opts.fp8_activations,
        )?;
        let mut allowed = vec![];
        if !opts.load_mtp || !has_mtp {
            // an MTP layer we do not run is not an error (transformers ignores it too)
            for i in 0..c.num_nextn_predict_layers.max(1) {
                allowed.push(format!("model.layers.{}.", c.num_hidden_layers + i));
            }
        }
        if let Some(extra) = w.unused(&allowed).into_iter().next() {
            return Err(ModelError::Unexpected(extra));
        }
        w.finish();
        Ok(model)
    }

    /// Random weights of the right shapes from a config alone (`--load-format dummy`), for benchmarks
    /// and tests of everything around the model. FP8 configs get FP8 weights.
    pub fn dummy(
        config: Glm4MoeConfig,
        device: &B::Device,
        seed: u64,
        opts: &LoadOptions,
    ) -> Result<Self> {
        config.validate()?;
        let mut src = crate::dummy::DummySource::<B>::new(&config, device.clone(), seed);
        let mtp = config.num_nextn_predict_layers > 0 && opts.load_mtp;
        Self::build(config, &mut src, device, mtp, opts.fp8_activations)
    }

    fn build(
        config: Glm4MoeConfig,
        w: &mut dyn ParamSource<B>,
        device: &B::Device,
        with_mtp: bool,
        act: Fp8Activations,
    ) -> Result<Self> {
        let c = config.clone();
        let embed = w.mat("model.embed_tokens.weight", [c.vocab_size, c.hidden_size])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            layers.push(load_layer(w, &c, l)?);
        }
        let norm = w.vec("model.norm.weight", c.hidden_size)?;
        let lm_head = if c.tie_word_embeddings && !w.has("lm_head.weight") {
            Linear {
                weight: crate::linear::LinearWeight::Dense(embed.clone()),
                bias: None,
            }
        } else {
            w.linear("lm_head", c.vocab_size, c.hidden_size, false)?
        };
        let mtp = if with_mtp {
            Some(load_mtp(w, &c)?)
        } else {
            None
        };
        Ok(Self {
            config,
            device: device.clone(),
            embed,
            layers,
            norm,
            lm_head,
            mtp,
            kernels: Arc::new(Reference),
            act,
        })
    }

    /// Replaces the hot-path kernels (e.g. CUDA kernels on a GPU backend).
    pub fn with_kernels(mut self, kernels: Arc<dyn Kernels<B>>) -> Self {
        self.kernels = kernels;
        self
    }

    pub fn set_fp8_activations(&mut self, act: Fp8Activations) {
        self.act = act;
    }

    /// What the parameters occupy: bytes of FP8 weights kept as FP8, and elements held in the backend's
    /// float type (embeddings, norms, biases, router, high-precision linears).
    pub fn parameter_memory(&self) -> ParamMemory {
        let mut m = ParamMemory::default();
        m.add_tensor(self.embed.dims().iter().product());
        m.add_tensor(self.norm.dims()[0]);
        m.add_linear(&self.lm_head);
        let layers = self
            .layers
            .iter()
            .chain(self.mtp.as_ref().map(|t| &t.layer));
        for l in layers {
            m.add_tensor(l.input_norm.dims()[0] + l.post_norm.dims()[0]);
            for lin in [&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.o] {
                m.add_linear(lin);
            }
            match &l.mlp {
                Mlp::Dense(d) => d.add_to(&mut m),
                Mlp::Moe(moe) => moe.add_to(&mut m),
            }
        }
        if let Some(t) = &self.mtp {
            m.add_tensor(t.embed.dims().iter().product());
            m.add_linear(&t.eh_proj);
            m.add_linear(&t.head);
        }
        m
    }

    pub fn has_mtp(&self) -> bool {
        self.mtp.is_some()
    }

    /// Attention layers the KV cache needs: the main stack, plus the MTP layer when loaded.
    pub fn num_kv_layers(&self) -> usize {
        self.config.num_hidden_layers + usize::from(self.mtp.is_some())
    }

    /// A KV cache sized for this model.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<PagedKvCache<B>> {
        PagedKvCache::new(
            &self.config,
            self.num_kv_layers(),
            num_blocks,
            block_size,
            &self.device,
        )
    }

    fn check_batch(&self, seqs: &[SeqInput<'_>], kv: &PagedKvCache<B>) -> Result<()> {
        if seqs.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::Input(format!("sequence {i} has no tokens")));
            }
            if let Some(&bad) = s
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::Input(format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    self.config.vocab_size
                )));
            }
            let end = s.start_pos + s.tokens.len();
            if end > self.config.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "position {end} exceeds max_position_embeddings {}",
                    self.config.max_position_embeddings
                )));
            }
            kv.slot(s.block_table, end - 1)?;
        }
        if kv.layers.len() < self.config.num_hidden_layers {
            return Err(ModelError::KvCache(
                "cache has fewer layers than the model".into(),
            ));
        }
        Ok(())
    }

    /// RoPE tables `[T, rot/2]` for the given positions, in f32 as transformers computes them.
    fn rope_tables(&self, positions: &[usize]) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let half = self.config.rotary_dim() / 2;
        let rot = self.config.rotary_dim() as f32;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / self.config.rope_theta.powf((2 * i) as f32 / rot))
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let t = positions.len();
        (
            Tensor::from_data(TensorData::new(cos, [t, half]), &self.device),
            Tensor::from_data(TensorData::new(sin, [t, half]), &self.device),
        )
    }

    fn attn_batch(
        &self,
        seqs: &[SeqInput<'_>],
        kv: &PagedKvCache<B>,
    ) -> Result<(AttnBatch<B>, Vec<usize>)> {
        let group = self.config.num_attention_heads / self.config.num_key_value_heads;
        let mut positions = Vec::new();
        let mut new_slots = Vec::new();
        let mut metas = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for s in seqs {
            let n = s.tokens.len();
            let ctx = s.start_pos + n;
            let mut ctx_slots = Vec::with_capacity(ctx);
            for p in 0..ctx {
                ctx_slots.push(kv.slot(s.block_table, p)? as i64);
            }
            positions.extend(s.start_pos..ctx);
            new_slots.extend_from_slice(&ctx_slots[s.start_pos..ctx]);
            metas.push(SeqAttn {
                rows: row..row + n,
                ctx_len: ctx,
                ctx_slots: int_tensor::<B>(ctx_slots, &self.device),
                mask: causal_mask::<B>(n, group, s.start_pos, ctx, &self.device),
            });
            row += n;
        }
        let (cos, sin) = self.rope_tables(&positions);
        let mut seen = std::collections::HashSet::with_capacity(new_slots.len());
        let keep_last: Vec<bool> = new_slots
            .iter()
            .rev()
            .map(|s| seen.insert(*s))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let write_rows = if keep_last.iter().all(|&k| k) {
            None
        } else {
            let rows: Vec<i64> = (0..new_slots.len() as i64)
                .filter(|&r| keep_last[r as usize])
                .collect();
            new_slots.retain({
                let mut i = 0;
                move |_| {
                    i += 1;
                    keep_last[i - 1]
                }
            });
            Some(int_tensor::<B>(rows, &self.device))
        };
        Ok((
            AttnBatch {
                seqs: metas,
                new_slots: int_tensor::<B>(new_slots, &self.device),
                write_rows,
                cos,
                sin,
            },
            positions,
        ))
    }

    fn embed_tokens(&self, table: &Tensor<B, 2>, tokens: &[u32]) -> Tensor<B, 2> {
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        table.clone().select(0, int_tensor::<B>(ids, &self.device))
    }

    /// Runs the batch: writes the new tokens' K/V into `kv` and returns logits of the sampled sequences.
    ///
    /// Shapes: with `T = Σ tokens`, hidden states are `[T, H]`; the result's logits `[S, vocab]`.
    pub fn forward(
        &self,
        seqs: &[SeqInput<'_>],
        kv: &mut PagedKvCache<B>,
    ) -> Result<ForwardOutput<B>> {
        let last_rows: Vec<usize> = seqs.iter().map(|s| usize::from(s.sample)).collect();
        self.forward_rows(seqs, &last_rows, kv)
    }

    /// As [`Self::forward`], but returns logits for the last `last_rows[i]` tokens of sequence `i`
    /// (0: none), whatever its `sample` flag: speculative decoding verifies a draft with the logits
    /// of every position from the last known token on. Logits rows follow the batch order, each
    /// sequence's rows in position order; `sample_rows` lists their rows in `hidden`.
    pub fn forward_rows(
        &self,
        seqs: &[SeqInput<'_>],
        last_rows: &[usize],
        kv: &mut PagedKvCache<B>,
    ) -> Result<ForwardOutput<B>> {
        self.check_batch(seqs, kv)?;
        if last_rows.len() != seqs.len() {
            return Err(ModelError::Input(format!(
                "{} logits counts for {} sequences",
                last_rows.len(),
                seqs.len()
            )));
        }
        if let Some(i) = (0..seqs.len()).find(|&i| last_rows[i] > seqs[i].tokens.len()) {
            return Err(ModelError::Input(format!(
                "sequence {i}: {} logits rows asked for {} tokens",
                last_rows[i],
                seqs[i].tokens.len()
            )));
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let (batch, _) = self.attn_batch(seqs, kv)?;
        let mut h = self.embed_tokens(&self.embed, &tokens);
        for (l, layer) in self.layers.iter().enumerate() {
            h = self.layer_forward(layer, h, &mut kv.layers[l], &batch);
        }
        let hidden = self
            .kernels
            .rms_norm(h, &self.norm, self.config.rms_norm_eps);
        let mut sample_rows = Vec::new();
        let mut row = 0;
        for (s, &n) in seqs.iter().zip(last_rows) {
            row += s.tokens.len();
            sample_rows.extend(row - n..row);
        }
        let logits = (!sample_rows.is_empty()).then(|| {
            let rows = int_tensor::<B>(
                sample_rows.iter().map(|&r| r as i64).collect(),
                &self.device,
            );
            self.kernels
                .linear(hidden.clone().select(0, rows), &self.lm_head, self.act)
        });
        Ok(ForwardOutput {
            logits,
            hidden,
            sample_rows,
        })
    }

    fn layer_forward(
        &self,
        layer: &DecoderLayer<B>,
        h: Tensor<B, 2>,
        kv: &mut crate::kv_cache::LayerKv<B>,
        batch: &AttnBatch<B>,
    ) -> Tensor<B, 2> {
        let c = &self.config;
        let k = &self.kernels;
        let x = k.rms_norm(h.clone(), &layer.input_norm, c.rms_norm_eps);
        let t = x.dims()[0];
        let (nh, nkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let a = &layer.attn;
        let mut q = k.linear(x.clone(), &a.q, self.act).reshape([t, nh, d]);
        let mut kk = k.linear(x.clone(), &a.k, self.act).reshape([t, nkv, d]);
        let v = k.linear(x, &a.v, self.act).reshape([t, nkv, d]);
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            q = k.head_rms_norm(q, qn, c.rms_norm_eps);
            kk = k.head_rms_norm(kk, kn, c.rms_norm_eps);
        }
        let q = k.rope(q, &batch.cos, &batch.sin);
        let kk = k.rope(kk, &batch.cos, &batch.sin);
        let (kw, vw) = match &batch.write_rows {
            Some(rows) => (kk.select(0, rows.clone()), v.select(0, rows.clone())),
            None => (kk, v),
        };
        k.write_kv(kv, kw, vw, &batch.new_slots);
        let o = k
            .paged_attention(q, kv, batch, (d as f32).powf(-0.5))
            .reshape([t, nh * d]);
        let h = h + k.linear(o, &a.o, self.act);
        let x = k.rms_norm(h.clone(), &layer.post_norm, c.rms_norm_eps);
        let y = match &layer.mlp {
            Mlp::Dense(m) => k.swiglu(x, &m.gate, &m.up, &m.down, self.act),
            Mlp::Moe(m) => m.forward(x, c, k.as_ref(), self.act),
        };
        h + y
    }

    /// The MTP layer as a draft function (glm.md §3.2): for each sequence, `tokens[i]` is the token at
    /// position `start_pos + i + 1` and `hidden` row i the target model's final-normed hidden state at
    /// position `start_pos + i`; positions for RoPE and KV are `start_pos + i`. Uses the cache layer after
    /// the main stack. Returns logits `[T, vocab]` for every row and the MTP's own hidden states `[T, H]`
    /// (input for a further draft step).
    pub fn mtp_forward(
        &self,
        seqs: &[SeqInput<'_>],
        hidden: Tensor<B, 2>,
        kv: &mut PagedKvCache<B>,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
        let rows: Vec<usize> = (0..hidden.dims()[0]).collect();
        self.mtp_forward_rows(seqs, hidden, &rows, kv)
    }

    /// As [`Self::mtp_forward`], with logits only for the given rows (`[rows.len(), vocab]`, in that
    /// order): a draft needs the last row of each sequence, while the MTP layer's KV must be written for
    /// every position.
    pub fn mtp_forward_rows(
        &self,
        seqs: &[SeqInput<'_>],
        hidden: Tensor<B, 2>,
        rows: &[usize],
        kv: &mut PagedKvCache<B>,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
        let mtp = self
            .mtp
            .as_ref()
            .ok_or_else(|| ModelError::Input("this checkpoint has no MTP layer".into()))?;
        self.check_batch(seqs, kv)?;
        let lid = self.config.num_hidden_layers;
        if kv.layers.len() <= lid {
            return Err(ModelError::KvCache(
                "cache has no layer for the MTP layer".into(),
            ));
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        if hidden.dims()[0] != tokens.len() {
            return Err(ModelError::Input(format!(
                "MTP: {} hidden rows for {} tokens",
                hidden.dims()[0],
                tokens.len()
            )));
        }
        if let Some(bad) = rows.iter().find(|&&r| r >= tokens.len()) {
            return Err(ModelError::Input(format!(
                "MTP: logits row {bad} of {} rows",
                tokens.len()
            )));
        }
        let (batch, _) = self.attn_batch(seqs, kv)?;
        let eps = self.config.rms_norm_eps;
        let k = &self.kernels;
        let e = k.rms_norm(self.embed_tokens(&mtp.embed, &tokens), &mtp.enorm, eps);
        let hn = k.rms_norm(hidden, &mtp.hnorm, eps);
        let u = k.linear(Tensor::cat(vec![e, hn], 1), &mtp.eh_proj, self.act);
        let y = self.layer_forward(&mtp.layer, u, &mut kv.layers[lid], &batch);
        if rows.is_empty() {
            // Only the KV was wanted (and a matmul over no rows is not defined on every backend).
            let logits = Tensor::zeros([0, self.config.vocab_size], &self.device);
            return Ok((logits, y));
        }
        let picked = if rows.len() == tokens.len() && rows.iter().enumerate().all(|(i, &r)| i == r)
        {
            y.clone()
        } else {
            let idx = int_tensor::<B>(rows.iter().map(|&r| r as i64).collect(), &self.device);
            y.clone().select(0, idx)
        };
        let logits = k.linear(k.rms_norm(picked, &mtp.head_norm, eps), &mtp.head, self.act);
        Ok((logits, y))
    }
}

fn load_attention<B: Backend>(
    w: &mut dyn ParamSource<B>,
    c: &Glm4MoeConfig,
    p: &str,
) -> Result<Attention<B>> {
    let (h, nh, nkv, d) = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    );
    let bias = c.attention_bias;
    let (q_norm, k_norm) = if c.use_qk_norm {
        (
            Some(w.vec(&format!("{p}.self_attn.q_norm.weight"), d)?),
            Some(w.vec(&format!("{p}.self_attn.k_norm.weight"), d)?),
        )
    } else {
        (None, None)
    };
    Ok(Attention {
        q: w.linear(&format!("{p}.self_attn.q_proj"), nh * d, h, bias)?,
        k: w.linear(&format!("{p}.self_attn.k_proj"), nkv * d, h, bias)?,
        v: w.linear(&format!("{p}.self_attn.v_proj"), nkv * d, h, bias)?,
        o: w.linear(&format!("{p}.self_attn.o_proj"), h, nh * d, false)?,
        q_norm,
        k_norm,
    })
}

pub(crate) fn load_swiglu<B: Backend>(
    w: &mut dyn ParamSource<B>,
    p: &str,
    h: usize,
    i: usize,
) -> Result<DenseMlp<B>> {
    Ok(DenseMlp {
        gate: w.linear(&format!("{p}.gate_proj"), i, h, false)?,
        up: w.linear(&format!("{p}.up_proj"), i, h, false)?,
        down: w.linear(&format!("{p}.down_proj"), h, i, false)?,
    })
}

pub(crate) fn load_layer<B: Backend>(
    w: &mut dyn ParamSource<B>,
    c: &Glm4MoeConfig,
    l: usize,
) -> Result<DecoderLayer<B>> {
    let p = format!("model.layers.{l}");
    let h = c.hidden_size;
    let mlp = if c.is_moe_layer(l) {
        Mlp::Moe(Moe::load(w, c, &format!("{p}.mlp"))?)
    } else {
        Mlp::Dense(load_swiglu(w, &format!("{p}.mlp"), h, c.intermediate_size)?)
    };
    Ok(DecoderLayer {
        input_norm: w.vec(&format!("{p}.input_layernorm.weight"), h)?,
        attn: load_attention(w, c, &p)?,
        post_norm: w.vec(&format!("{p}.post_attention_layernorm.weight"), h)?,
        mlp,
    })
}

pub(crate) fn load_mtp<B: Backend>(
    w: &mut dyn ParamSource<B>,
    c: &Glm4MoeConfig,
) -> Result<MtpLayer<B>> {
    let l = c.num_hidden_layers;
    let p = format!("model.layers.{l}");
    let h = c.hidden_size;
    Ok(MtpLayer {
        embed: w.mat(&format!("{p}.embed_tokens.weight"), [c.vocab_size, h])?,
        enorm: w.vec(&format!("{p}.enorm.weight"), h)?,
        hnorm: w.vec(&format!("{p}.hnorm.weight"), h)?,
        eh_proj: w.linear(&format!("{p}.eh_proj"), h, 2 * h, false)?,
        layer: load_layer(w, c, l)?,
        head_norm: w.vec(&format!("{p}.shared_head.norm.weight"), h)?,
        head: w.linear(&format!("{p}.shared_head.head"), c.vocab_size, h, false)?,
    })
}

/// Token ids as a burn Int tensor (helper for runners).
pub fn token_tensor<B: Backend>(tokens: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    int_tensor::<B>(tokens.iter().map(|&t| t as i64).collect(), device)
}
