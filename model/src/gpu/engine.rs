//! The model on the device and one engine step.
//!
//! A step is a fixed sequence of kernel launches on our stream: embedding, per layer (norm+quant,
//! fused QKV GEMM, QK-norm+RoPE+KV write, paged attention, quant, O GEMM added into the residual,
//! then the dense MLP or the MoE: f32 router, top-k, expert plan, grouped gate|up GEMM,
//! SiLU·up+quant, grouped down GEMM, shared expert, weighted combine), final norm of the sampled rows,
//! LM head, and sampling. Decode-size steps fuse more ([`crate::gpu::gemv`]): a one-row linear
//! layer is one GEMV launch with its norm and quantization, up to 32 tokens are routed in one
//! launch (`moe_route`: norm, router, top-k) and up to 8 run their experts (shared one and
//! combine included) as two launches without the plan, one token's routing needs no launch of
//! its own (the O GEMV adds the router's products up, the gate|up ranks the experts:
//! [`crate::gpu::Route`]), and the attention splits of one-row tiles are merged by the attention
//! kernel itself. The only host synchronisation is reading the sampled ids
//! (or the logits, when the host sampler needs them). Shapes depend only on (tokens, sampled
//! rows), so a decode step of a given batch-size bucket is captured once as a CUDA graph and
//! replayed after copying in that step's ids, positions, slots and block tables.
//!
//! Memory: weights first, then the workspace for `max_num_batched_tokens`, then the KV cache gets
//! what `gpu_memory_utilization` leaves (or a fixed size when given).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cudarc::driver::{sys, CudaGraph};

use crate::checkpoint::TensorStore;
use crate::config::{Glm4MoeConfig, Quantization};
use crate::error::{ModelError, Result};
use crate::gpu::blaslt::BlasLt;
use crate::gpu::device::{attn_smem, dev_err, gemm_smem, DevBuf, Gpu};
use crate::gpu::gemv::{
    gemv_launch, gemv_qkv_launch, gemv_route_launch, ActRows, MoeGemv, MoeGemvConfig, Route,
    GEMV_MAX_ROWS,
};
use crate::gpu::rope::{paired_rows, pairs_rotary_rows, rope_kv_launch, QkvOut};
use crate::gpu::weights::{fill_const, GpuLinear, WeightFormat, FMT_F32};
use crate::launch;
use crate::loader::{ParamSource, WeightLoader};
use crate::model::{DecoderLayer, Mlp, SeqInput};
use crate::sample::{min_p_log, DeviceSampling};
use crate::CpuBackend;

mod mtp;
pub use crate::step::{HiddenRow, KeepFrom, StepOutput};
use mtp::GpuMtp;

#[derive(Debug, Clone)]
pub struct GpuOptions {
    pub device: usize,
    /// Most tokens in one step (prefill chunks and decode tokens together).
    pub max_num_batched_tokens: usize,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Longest sequence (sizes the block tables).
    pub max_model_len: usize,
    pub block_size: usize,
    /// Fraction of the device's memory this process may use (weights + workspace + KV).
    pub gpu_memory_utilization: f64,
    /// Fixed KV size in blocks, or in bytes (else planned from `gpu_memory_utilization`).
    pub num_blocks: Option<usize>,
    pub kv_cache_bytes: Option<u64>,
    /// Replay decode steps from CUDA graphs (one per batch-size bucket).
    pub cuda_graphs: bool,
    /// KV cache in E4M3 with unit scales (`--kv-cache-dtype fp8`): half the bytes per token.
    pub kv_fp8: bool,
    /// Draft tokens per step of speculative decoding (`--speculative-config`); above 0 the MTP layer
    /// is loaded with its KV layer, and the workspace holds logits for every verified position.
    pub speculative_tokens: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            device: 0,
            max_num_batched_tokens: 8192,
            max_num_seqs: 256,
            max_model_len: 8192,
            block_size: 16,
            gpu_memory_utilization: 0.9,
            num_blocks: None,
            kv_cache_bytes: None,
            cuda_graphs: true,
            kv_fp8: false,
            speculative_tokens: 0,
        }
    }
}

// One per layer: the variants' size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum GpuMlp {
    Dense {
        gate_up: GpuLinear,
        down: GpuLinear,
        inter: usize,
    },
    Moe {
        /// `[E, H]` f32
        gate: DevBuf,
        /// `[E]` f32
        bias: DevBuf,
        experts_gu: GpuLinear,
        experts_down: GpuLinear,
        shared_gu: GpuLinear,
        shared_down: GpuLinear,
        inter: usize,
        shared_inter: usize,
    },
}

/// The weights [`GpuModel::assemble`] puts together (loaded or dummy).
struct Parts {
    embed: DevBuf,
    layers: Vec<GpuLayer>,
    norm: DevBuf,
    lm_head: GpuLinear,
    mtp: Option<GpuMtp>,
}

struct GpuLayer {
    in_norm: DevBuf,
    qkv: GpuLinear,
    /// Whether the rotary rows of `qkv`'s q and k heads are stored paired
    /// ([`crate::gpu::rope`]): RoPE can then run in the batch-1 QKV GEMV.
    qkv_paired: bool,
    q_norm: Option<DevBuf>,
    k_norm: Option<DevBuf>,
    o: GpuLinear,
    post_norm: DevBuf,
    mlp: GpuMlp,
}

/// Per-step buffers, sized once for the largest step.
struct Workspace {
    t_cap: usize,
    r_cap: usize,
    s_cap: usize,
    blocks_per_seq: usize,
    /// i32: tokens | pos | slots | row_seq | sample_rows | btab stride | attention tiles |
    /// tile count | btab
    meta: DevBuf,
    /// Key-split partial results of attention: `[tiles, kv heads, splits, 64, head_dim + 2]`.
    attn_part: DevBuf,
    /// i32 per (tile, kv head): split blocks of attention done (zero between launches).
    attn_done: DevBuf,
    temps: DevBuf,
    seeds: DevBuf,
    /// Truncation parameters per row: top-k (i32), top-p, min-p (f32), `r_cap` each.
    trunc: DevBuf,
    sampled: DevBuf,
    /// Per-slice (value, id) of the sampling kernels: [`sample_part_bytes`].
    sample_part: DevBuf,
    /// f32 `[tokens, hidden]`: the cuBLASLt path's result before it is added to the residual.
    lt_scratch: DevBuf,
    x: DevBuf,
    xn: DevBuf,
    act: DevBuf,
    act_scales: DevBuf,
    f1: DevBuf,
    q: DevBuf,
    o: DevBuf,
    y: DevBuf,
    router: DevBuf,
    ids: DevBuf,
    wts: DevBuf,
    offsets: DevBuf,
    perm: DevBuf,
    inv: DevBuf,
    tiles: DevBuf,
    ntiles: DevBuf,
    /// i32: `moe_route`'s count of finished blocks, or the routing gate|up's of blocks that read
    /// `route_acc` (zero between launches).
    route_done: DevBuf,
    /// u64 `[experts]`: the logits' sums of a token routed by its O GEMV and gate|up
    /// ([`crate::gpu::Route`]; zero between layers).
    route_acc: DevBuf,
    logits: DevBuf,
    /// f32 `[tokens, hidden]`: final-normed hidden states of the last verify step (MTP input).
    mtp_hidden: DevBuf,
    /// f32 `[2 · max seqs, hidden]`: hidden rows kept across steps for the MTP (slots chosen by the
    /// runner).
    mtp_kept: DevBuf,
    /// i32: the MTP pass's hidden sources, then row copies' destinations.
    mtp_idx: DevBuf,
}

impl Workspace {
    /// The top-k, top-p and min-p arrays of [`Workspace::trunc`].
    fn trunc_params(&self) -> [u64; 3] {
        let r = (self.r_cap * 4) as u64;
        [self.trunc.p(), self.trunc.p() + r, self.trunc.p() + 2 * r]
    }

    fn meta_at(&self, field: Meta) -> u64 {
        let (t, r) = (self.t_cap, self.r_cap);
        let off = match field {
            Meta::Tokens => 0,
            Meta::Pos => t,
            Meta::Slots => 2 * t,
            Meta::RowSeq => 3 * t,
            Meta::SampleRows => 4 * t,
            Meta::Stride => 4 * t + r,
            Meta::AttnTiles => 4 * t + r + 4,
            Meta::AttnTileCount => 6 * t + r + 4,
            Meta::BlockTables => 6 * t + r + 8,
        };
        self.meta.at(off * 4)
    }

    fn meta_ints(t_cap: usize, r_cap: usize, s_cap: usize, blocks_per_seq: usize) -> usize {
        6 * t_cap + r_cap + 8 + s_cap * blocks_per_seq
    }
}

/// Fields of the per-step metadata buffer.
#[derive(Clone, Copy)]
enum Meta {
    Tokens,
    Pos,
    Slots,
    RowSeq,
    SampleRows,
    Stride,
    AttnTiles,
    AttnTileCount,
    BlockTables,
}

/// Threads of a `prep_rows` block (one row) for `rows` rows: with few rows the launch is bound by
/// load latency, so a row of 4–12k values gets 1,024 threads and a few loads each; with many rows
/// (prefill, expert rows) smaller blocks keep the SMs busy with less synchronisation.
pub const fn prep_threads(rows: usize) -> u32 {
    if rows < 512 {
        1024
    } else {
        256
    }
}

/// Most (tile, KV head, split) work items whose partial attention results the workspace holds.
const ATTN_PART_ITEMS: usize = 4096;

/// Most key splits of one (tile, KV head) (`attn_merge` merges up to 16).
const ATTN_MAX_SPLITS: usize = 16;

/// Attention blocks an SM that key splits aim for by default ([`GpuModel::attn_blocks_per_sm`]
/// 0): two for steps of up to this many attention tiles (decode: sequences), one beyond. On the
/// H200 (context 1,024) one beat the former 8 at batch 4-64 (runs 52-54; batch 8: 19.4-20.0
/// against 20.7-22.1 ms, batch 64: 41.0-42.7 against 44.0-45.9), and two beat one at batch 2 and
/// 4 in all seven sweeps of runs 79-87 (-0.4 to -3.0%), at 8 in the three of runs 85-87 (-0.5 to
/// -1.1%; -1.5 to +0.3% in runs 79-83), and lost at 16 (+1.2 to +2.1%, runs 85-87). At batch 1
/// both give 16 splits. Decode steps whose splits merge in a thread-block cluster (BF16 cache)
/// aim for one at every size: batch 2 / 4 / 8 / 16 8.38 / 11.57 / 18.48 / 26.44 ms against
/// 8.43 / 11.69 / 18.61 / 26.70 without clusters (run 98).
const ATTN_TWO_BLOCKS_TILES: usize = 8;

/// Default of [`GpuModel::pdl_graph_batch`]: PDL in decode graphs up to batch 4.
const DEFAULT_PDL_GRAPH_BATCH: usize = 4;

/// Sets an engine switch that captured decode graphs bake in (a kernel choice, a bound, a launch
/// attribute): when it changes, the graphs are dropped and recaptured on their next use.
fn set_baked<T: PartialEq>(graphs: &mut HashMap<(usize, bool), Graph>, slot: &mut T, value: T) {
    if *slot != value {
        graphs.clear();
        *slot = value;
    }
}

impl Workspace {
    /// Key splits for `tiles` attention tiles: about `per_sm` blocks an SM in all, at most
    /// [`ATTN_MAX_SPLITS`].
    fn attn_splits(&self, tiles: usize, nkv: usize, sms: usize, per_sm: usize) -> usize {
        let items = tiles * nkv;
        let want = per_sm.max(1) * sms;
        if items >= want {
            return 1;
        }
        want.div_ceil(items)
            .min(ATTN_MAX_SPLITS)
            .min(ATTN_PART_ITEMS / items)
            .max(1)
    }
}

/// The host side of one step's metadata.
#[derive(Default)]
struct HostBatch {
    tokens: Vec<i32>,
    pos: Vec<i32>,
    slots: Vec<i32>,
    row_seq: Vec<i32>,
    sample_rows: Vec<i32>,
    stride: usize,
    /// (first row, rows) of each attention tile: consecutive rows of one sequence.
    attn_tiles: Vec<i32>,
    btab: Vec<i32>,
}

pub struct GpuModel {
    pub config: Glm4MoeConfig,
    g: Arc<Gpu>,
    opts: GpuOptions,
    embed: DevBuf,
    layers: Vec<GpuLayer>,
    norm: DevBuf,
    lm_head: GpuLinear,
    kv: Vec<(DevBuf, DevBuf)>,
    num_blocks: usize,
    ws: Workspace,
    /// Captured decode steps by (batch bucket, whether the sampling truncates).
    graphs: HashMap<(usize, bool), Graph>,
    valid_vocab: usize,
    /// Events recorded after each phase while [`GpuModel::profile_step`] runs.
    prof: Option<std::cell::RefCell<Vec<(&'static str, cudarc::driver::CudaEvent)>>>,
    weight_bytes: usize,
    workspace_bytes: usize,
    /// cuBLASLt for the dense GEMMs from `min_rows` rows (absent: our kernel).
    blaslt: Option<BlasLt>,
    /// A logits buffer handed back by the replica ([`GpuModel::recycle_host`]), reused for the
    /// next logits copy.
    spare_host: std::cell::Cell<Vec<f32>>,
    /// Attention over an FP8 cache widens it to f16 (`attn_f8h_*`) rather than bf16
    /// (`GLMFLEET_FP8_ATTN_F16=0` turns it off). On the H200 (run 26) it cut the FP8-cache decode
    /// step at batch 256 from 95.4 to 80.1 ms, and was closer to the BF16 cache (rel L2 3.50e-2
    /// against 3.56e-2).
    fp8_attn_f16: bool,
    /// Whether top-k / top-p / min-p rows are drawn here (`GLMFLEET_DEVICE_TRUNCATION=0` sends
    /// them to the host sampler). On the H200 (run 28) top-p 0.95 at concurrency 64 ran at 46.8 ms
    /// TPOT this way, 69.1 on the host, 46.6 greedy.
    truncation: bool,
    /// Linear layers over at most this many rows run as one GEMV launch each, norm and quant
    /// fused ([`crate::gpu::gemv`]; `GLMFLEET_GEMV_ROWS`, 0 off, at most [`GEMV_MAX_ROWS`]).
    /// Default 1: from two rows the GEMV's row-by-row staging made the step slower than
    /// `prep_rows` and the GEMM (run 38: 11.65 against 11.03 ms at batch 2).
    gemv_rows: usize,
    /// Steps of at most this many tokens run the MoE experts as two GEMV launches (no plan, no
    /// gathered copy, the combine fused; `GLMFLEET_MOE_GEMV_TOKENS`, 0 off). Default 8: run 38
    /// measured 4 (16.44 against 17.87 ms at batch 4), and with the copy ring 8 tokens ran faster
    /// this way too (runs 57/58: batch 8 18.48–18.64 against 19.37–19.71 ms; parity at 8 tokens
    /// in run 58). Beyond, each token's 9 slots reread experts that tokens share, which the
    /// grouped GEMM reads once.
    moe_gemv_tokens: usize,
    /// Whether one token's MoE gate|up runs with its units spread evenly over the SMs
    /// ([`crate::gpu::MoeGemvConfig::flat`]; `GLMFLEET_MOE_FLAT=0` turns it off).
    moe_flat: bool,
    /// Whether the FP8 MoE GEMV's gate|up applies SiLU·up itself
    /// ([`crate::gpu::MoeGemvConfig::paired`]; `GLMFLEET_MOE_PAIRED=0` leaves it to the down
    /// kernel).
    moe_paired: bool,
    /// Whether the batch-1 QKV GEMV applies RoPE and writes q and the KV cache itself, where the
    /// layer's rotary rows are paired ([`crate::gpu::rope`]; `GLMFLEET_QKV_ROPE=0` leaves it to
    /// `rope_kv`).
    qkv_rope: bool,
    /// Whether a MoE layer's one token is routed by its O GEMV (the router's products) and its
    /// flat gate|up (the ranking) instead of `moe_route` ([`crate::gpu::Route`];
    /// `GLMFLEET_O_ROUTE=0` leaves it to `moe_route`): one launch fewer on a batch-1 layer's
    /// critical path (batch 1 4.81 against 5.00 ms, run 122).
    o_route: bool,
    /// Whether a decode step's attention key splits (one-row tiles, BF16 cache) run as one
    /// thread-block cluster a (tile, KV head) that merges them in shared memory, where the device
    /// has clusters (`GLMFLEET_ATTN_CLUSTER=0`: the last split block merges them through L2).
    attn_cluster: bool,
    /// Attention blocks an SM that key splits aim for (`GLMFLEET_ATTN_BLOCKS_PER_SM`; 0, the
    /// default, by the step's tiles: [`ATTN_TWO_BLOCKS_TILES`]): fewer splits mean fewer partial
    /// results to merge, more mean shorter blocks.
    attn_blocks_per_sm: usize,
    /// Decode graphs of buckets up to this many sequences are captured with PDL (when
    /// [`Gpu::pdl`]; `GLMFLEET_PDL_GRAPH_BATCH`, 0 none). With the kernels triggering their
    /// dependents late (kernels.cu) it paid at batch 1-4 and cost 1.5-2% at 8-16 (runs 67, 69:
    /// batch 1 5.86 against 6.16 ms, batch 2 8.74 against 9.09, batch 8 19.72 against 19.43).
    /// With every kernel triggering at entry it had been slower at every size (runs 40-43, 53).
    pdl_graph_batch: usize,
    /// The MTP draft layer (speculative decoding), with the last KV layer.
    mtp: Option<GpuMtp>,
    /// Rows of the logits buffer that [`GpuModel::step`] left readable by
    /// [`GpuModel::last_logits`] (0 after any other pass: they reuse the buffer).
    logits_ready: usize,
}

/// A captured step. cudarc's graph holds raw driver handles and is not `Send`; ours is only ever
/// touched through `&mut GpuModel`, i.e. by one thread at a time, which is all the driver asks.
struct Graph(CudaGraph);
// SAFETY: see above — no concurrent access is possible without `&mut GpuModel`.
unsafe impl Send for Graph {}

/// Defaults of `GpuModel::gemv_rows` and `GpuModel::moe_gemv_tokens` (see their docs).
const DEFAULT_GEMV_ROWS: usize = 1;
const DEFAULT_MOE_GEMV_TOKENS: usize = 8;

/// A switch that is on unless the environment sets it to "0".
fn env_on(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v != "0")
}

/// A count from the environment (`default` when unset or unreadable).
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Decode batches up to this many sequences are replayed from graphs (buckets: powers of two).
const MAX_GRAPH_BATCH: usize = 256;

impl GpuModel {
    /// Loads a checkpoint folder layer by layer through the CPU loader (same names, shapes and FP8
    /// conventions, one layer on the host at a time), then plans the KV cache.
    pub fn load(dir: &Path, opts: &GpuOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFolder(dir.to_path_buf()));
        }
        let config = Glm4MoeConfig::from_dir(dir)?;
        let store = TensorStore::open(dir)?;
        let g = Gpu::new(opts.device)?;
        let c = config.clone();
        let mut w = WeightLoader::<CpuBackend>::new(&store, &c, Default::default(), true);
        let embed_t = w.mat("model.embed_tokens.weight", [c.vocab_size, c.hidden_size])?;
        let embed = bf16_buf(&g, &tensor_f32(&embed_t)?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let host = crate::model::load_layer(&mut w, &c, l)?;
            layers.push(upload_layer(&g, &c, &host)?);
        }
        let norm = f32_buf(
            &g,
            &tensor_f32(&w.vec("model.norm.weight", c.hidden_size)?)?,
        )?;
        let lm = if c.tie_word_embeddings && !w.has("lm_head.weight") {
            crate::linear::Linear {
                weight: crate::linear::LinearWeight::Dense(embed_t),
                bias: None,
            }
        } else {
            w.linear("lm_head", c.vocab_size, c.hidden_size, false)?
        };
        let lm_head = GpuLinear::upload(&g, &[vec![&lm]])?;
        let mtp = if opts.speculative_tokens > 0 {
            Some(GpuMtp::load(&g, &c, &mut w)?)
        } else {
            None
        };
        // an MTP layer that does not draft is skipped, as by a CPU load without MTP
        let allowed: Vec<String> = (0..c.num_nextn_predict_layers.max(1))
            .map(|i| format!("model.layers.{}.", c.num_hidden_layers + i))
            .collect();
        if let Some(extra) = w.unused(&allowed).into_iter().next() {
            return Err(ModelError::Unexpected(extra));
        }
        w.finish();
        let parts = Parts {
            embed,
            layers,
            norm,
            lm_head,
            mtp,
        };
        Self::assemble(config, g, opts, parts)
    }

    /// The architecture from a config alone with random weights generated on the device
    /// (`--load-format dummy`). Linear layers are FP8 per-channel unless the config says block FP8
    /// (or `bf16` is asked for); embeddings and the LM head are BF16, as in the published FP8
    /// checkpoints.
    pub fn dummy(config: Glm4MoeConfig, opts: &GpuOptions, seed: u64, bf16: bool) -> Result<Self> {
        config.validate()?;
        let g = Gpu::new(opts.device)?;
        let c = &config;
        let fmt = match (bf16, &c.quantization) {
            (true, _) => WeightFormat::Bf16,
            (false, Quantization::Fp8Block { block }) => WeightFormat::Fp8Block {
                bn: block[0],
                bk: block[1],
            },
            _ => WeightFormat::Fp8Channel,
        };
        let h = c.hidden_size;
        let mut s = seed;
        let mut next = || {
            s = crate::sample::splitmix(s);
            s
        };
        let embed = DevBuf::zeros(&g, c.vocab_size * h * 2)?;
        fill_bf16(&g, &embed, c.vocab_size * h, next(), 0.02)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            layers.push(dummy_layer(&g, c, fmt, l, &mut next)?);
        }
        let norm = ones(&g, h)?;
        let lm_head =
            GpuLinear::dummy(&g, WeightFormat::Bf16, &[c.vocab_size], h, 1, false, next())?;
        let mtp = if opts.speculative_tokens > 0 {
            Some(GpuMtp::dummy(&g, c, fmt, &mut next)?)
        } else {
            None
        };
        let parts = Parts {
            embed,
            layers,
            norm,
            lm_head,
            mtp,
        };
        Self::assemble(config, g, opts, parts)
    }

    fn assemble(
        config: Glm4MoeConfig,
        g: Arc<Gpu>,
        opts: &GpuOptions,
        parts: Parts,
    ) -> Result<Self> {
        let Parts {
            embed,
            layers,
            norm,
            lm_head,
            mtp,
        } = parts;
        let c = &config;
        if c.num_attention_heads / c.num_key_value_heads > 16 || c.head_dim > 128 {
            return Err(ModelError::Device(format!(
                "attention kernel supports up to 16 query heads per KV head and head_dim 128 (got {} and {})",
                c.num_attention_heads / c.num_key_value_heads,
                c.head_dim
            )));
        }
        if ![32, 64, 128].contains(&c.head_dim) {
            return Err(ModelError::Device(format!(
                "the attention kernel supports head_dim 32, 64 and 128 (got {})",
                c.head_dim
            )));
        }
        if !c.hidden_size.is_multiple_of(4) {
            return Err(ModelError::Device(format!(
                "hidden_size {} is not a multiple of 4 (the router reads 16-byte vectors)",
                c.hidden_size
            )));
        }
        if c.n_group > 32 || c.n_routed_experts > 4096 || c.num_experts_per_tok > 32 {
            return Err(ModelError::Device(
                "router kernel supports up to 32 expert groups, 4096 experts and 32 experts a token"
                    .into(),
            ));
        }
        let mut weight_bytes = embed.bytes() + norm.bytes() + lm_head.bytes();
        weight_bytes += mtp.as_ref().map_or(0, GpuMtp::extra_bytes);
        for l in layers.iter().chain(mtp.as_ref().map(|m| &m.layer)) {
            weight_bytes += l.in_norm.bytes() + l.post_norm.bytes() + l.qkv.bytes() + l.o.bytes();
            weight_bytes += match &l.mlp {
                GpuMlp::Dense { gate_up, down, .. } => gate_up.bytes() + down.bytes(),
                GpuMlp::Moe {
                    gate,
                    bias,
                    experts_gu,
                    experts_down,
                    shared_gu,
                    shared_down,
                    ..
                } => {
                    gate.bytes()
                        + bias.bytes()
                        + experts_gu.bytes()
                        + experts_down.bytes()
                        + shared_gu.bytes()
                        + shared_down.bytes()
                }
            };
        }
        let blaslt = BlasLt::new(&g);
        let ws = Workspace::new(
            &g,
            c,
            opts,
            &layers,
            &lm_head,
            mtp.as_ref(),
            blaslt.is_some(),
        )?;
        let workspace_bytes = ws.bytes();
        let valid_vocab = c.vocab_size;
        let mut m = Self {
            config,
            g,
            opts: opts.clone(),
            embed,
            layers,
            norm,
            lm_head,
            kv: Vec::new(),
            num_blocks: 0,
            ws,
            graphs: HashMap::new(),
            valid_vocab,
            prof: None,
            weight_bytes,
            workspace_bytes,
            blaslt,
            spare_host: std::cell::Cell::new(Vec::new()),
            logits_ready: 0,
            fp8_attn_f16: env_on("GLMFLEET_FP8_ATTN_F16"),
            truncation: env_on("GLMFLEET_DEVICE_TRUNCATION"),
            gemv_rows: env_usize("GLMFLEET_GEMV_ROWS", DEFAULT_GEMV_ROWS).min(GEMV_MAX_ROWS),
            moe_gemv_tokens: env_usize("GLMFLEET_MOE_GEMV_TOKENS", DEFAULT_MOE_GEMV_TOKENS),
            moe_flat: env_on("GLMFLEET_MOE_FLAT"),
            moe_paired: env_on("GLMFLEET_MOE_PAIRED"),
            qkv_rope: env_on("GLMFLEET_QKV_ROPE"),
            o_route: env_on("GLMFLEET_O_ROUTE"),
            attn_cluster: env_on("GLMFLEET_ATTN_CLUSTER"),
            attn_blocks_per_sm: env_usize("GLMFLEET_ATTN_BLOCKS_PER_SM", 0),
            pdl_graph_batch: env_usize("GLMFLEET_PDL_GRAPH_BATCH", DEFAULT_PDL_GRAPH_BATCH),
            mtp,
        };
        m.g.sync()?;
        m.alloc_kv()?;
        Ok(m)
    }

    fn kv_elem_bytes(&self) -> usize {
        if self.opts.kv_fp8 {
            1
        } else {
            2
        }
    }

    /// KV layers: the main stack, plus the MTP layer's when it drafts.
    fn kv_layers(&self) -> usize {
        self.config.num_hidden_layers + usize::from(self.mtp.is_some())
    }

    fn kv_block_bytes(&self) -> usize {
        let c = &self.config;
        2 * self.opts.block_size
            * c.num_key_value_heads
            * c.head_dim
            * self.kv_elem_bytes()
            * self.kv_layers()
    }

    fn alloc_kv(&mut self) -> Result<()> {
        let per_block = self.kv_block_bytes();
        let num_blocks = match (self.opts.num_blocks, self.opts.kv_cache_bytes) {
            (Some(n), _) => n,
            (None, Some(b)) => (b / per_block as u64) as usize,
            (None, None) => {
                let (free, total) = self.g.mem_info()?;
                let budget = self.opts.gpu_memory_utilization * total as f64;
                let used = (total - free) as f64;
                // room for graphs, NVRTC and allocator slack
                let reserve = 512.0 * 1024.0 * 1024.0;
                let left = budget - used - reserve;
                if left < per_block as f64 {
                    return Err(ModelError::Device(format!(
                        "no memory left for the KV cache: weights {:.1} GiB + workspace {:.1} GiB (+ {:.1} GiB in use before) exceed --gpu-memory-utilization {} of {:.1} GiB",
                        gib(self.weight_bytes),
                        gib(self.workspace_bytes),
                        gib((used as usize).saturating_sub(self.weight_bytes + self.workspace_bytes)),
                        self.opts.gpu_memory_utilization,
                        gib(total)
                    )));
                }
                (left / per_block as f64) as usize
            }
        };
        if num_blocks == 0 {
            return Err(ModelError::KvCache("the KV cache holds no block".into()));
        }
        let c = &self.config;
        let layer_bytes = num_blocks
            * self.opts.block_size
            * c.num_key_value_heads
            * c.head_dim
            * self.kv_elem_bytes();
        let mut kv = Vec::with_capacity(self.kv_layers());
        for _ in 0..self.kv_layers() {
            kv.push((
                DevBuf::zeros(&self.g, layer_bytes)?,
                DevBuf::zeros(&self.g, layer_bytes)?,
            ));
        }
        self.kv = kv;
        self.num_blocks = num_blocks;
        self.g.sync()
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn block_size(&self) -> usize {
        self.opts.block_size
    }

    /// Bytes of weights, workspace and KV cache on the device.
    pub fn memory(&self) -> (usize, usize, usize) {
        (
            self.weight_bytes,
            self.workspace_bytes,
            self.num_blocks * self.kv_block_bytes(),
        )
    }

    pub fn device_name(&self) -> &str {
        &self.g.name
    }

    /// Ids at or above `n` (a tokenizer smaller than the embedding) are never sampled.
    pub fn set_valid_vocab(&mut self, n: usize) {
        let n = n.clamp(1, self.config.vocab_size);
        set_baked(&mut self.graphs, &mut self.valid_vocab, n);
    }

    /// Whether [`GpuModel::step`] draws rows with top-k / top-p / min-p truncation (a
    /// [`DeviceSampling`] that [`DeviceSampling::truncates`]); the replica asks before it sends
    /// them.
    pub fn truncates_on_device(&self) -> bool {
        self.truncation
    }

    /// Sets [`GpuModel::truncates_on_device`].
    pub fn set_truncation(&mut self, on: bool) {
        self.truncation = on;
    }

    /// Whether attention over an FP8 KV cache widens it to f16 (`attn_f8h_*`) instead of bf16.
    pub fn set_fp8_attn_f16(&mut self, on: bool) {
        set_baked(&mut self.graphs, &mut self.fp8_attn_f16, on);
    }

    /// Routed rows from which a step's experts run as one cuBLASLt GEMM each (`None`: never);
    /// false when cuBLASLt is absent. The default comes from `GLMFLEET_CUBLASLT_EXPERTS`.
    pub fn set_cublaslt_experts(&mut self, min_rows: Option<usize>) -> bool {
        match &mut self.blaslt {
            Some(lt) => {
                lt.experts_min_rows = min_rows;
                true
            }
            None => false,
        }
    }

    /// Rows up to which linear layers run as GEMVs, and tokens up to which the MoE experts do.
    pub fn gemv(&self) -> (usize, usize) {
        (self.gemv_rows, self.moe_gemv_tokens)
    }

    /// Sets [`GpuModel::gemv`] (0: never); see the fields' docs.
    pub fn set_gemv(&mut self, rows: usize, moe_tokens: usize) {
        set_baked(
            &mut self.graphs,
            &mut self.gemv_rows,
            rows.min(GEMV_MAX_ROWS),
        );
        set_baked(&mut self.graphs, &mut self.moe_gemv_tokens, moe_tokens);
    }

    /// Whether one token's MoE gate|up spreads its units evenly ([`GpuModel::moe_flat`]).
    pub fn moe_flat(&self) -> bool {
        self.moe_flat
    }

    /// Sets [`GpuModel::moe_flat`] (captured graphs are dropped).
    pub fn set_moe_flat(&mut self, on: bool) {
        set_baked(&mut self.graphs, &mut self.moe_flat, on);
    }

    /// Whether the MoE GEMV's gate|up applies SiLU·up ([`GpuModel::moe_paired`]).
    pub fn moe_paired(&self) -> bool {
        self.moe_paired
    }

    /// Sets [`GpuModel::moe_paired`] (captured graphs are dropped).
    pub fn set_moe_paired(&mut self, on: bool) {
        set_baked(&mut self.graphs, &mut self.moe_paired, on);
    }

    /// Whether the batch-1 QKV GEMV applies RoPE itself ([`GpuModel::qkv_rope`]).
    pub fn qkv_rope(&self) -> bool {
        self.qkv_rope
    }

    /// Sets [`GpuModel::qkv_rope`] (captured graphs are dropped).
    pub fn set_qkv_rope(&mut self, on: bool) {
        set_baked(&mut self.graphs, &mut self.qkv_rope, on);
    }

    /// Whether the O GEMV routes a MoE layer's one token ([`GpuModel::o_route`]).
    pub fn o_route(&self) -> bool {
        self.o_route
    }

    /// Sets [`GpuModel::o_route`] (captured graphs are dropped).
    pub fn set_o_route(&mut self, on: bool) {
        set_baked(&mut self.graphs, &mut self.o_route, on);
    }

    /// Whether decode attention merges its splits in a cluster ([`GpuModel::attn_cluster`]).
    pub fn attn_cluster(&self) -> bool {
        self.attn_cluster
    }

    /// Sets [`GpuModel::attn_cluster`] (captured graphs are dropped).
    pub fn set_attn_cluster(&mut self, on: bool) {
        set_baked(&mut self.graphs, &mut self.attn_cluster, on);
    }

    /// The device the model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.g
    }

    /// Decode graphs of buckets up to this many sequences are captured with PDL.
    pub fn pdl_graph_batch(&self) -> usize {
        self.pdl_graph_batch
    }

    /// Sets [`GpuModel::pdl_graph_batch`] (captured graphs are dropped).
    pub fn set_pdl_graph_batch(&mut self, n: usize) {
        set_baked(&mut self.graphs, &mut self.pdl_graph_batch, n);
    }

    /// Attention blocks an SM that key splits aim for, 0 by the step's tiles (A/B runs; captured
    /// graphs are dropped).
    pub fn set_attn_blocks_per_sm(&mut self, n: usize) {
        set_baked(&mut self.graphs, &mut self.attn_blocks_per_sm, n);
    }

    pub fn attn_blocks_per_sm(&self) -> usize {
        self.attn_blocks_per_sm
    }

    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.opts.cuda_graphs = on;
    }

    /// Graphs captured so far (batch-size buckets).
    pub fn graph_buckets(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self.graphs.keys().map(|k| k.0).collect();
        b.sort_unstable();
        b.dedup();
        b
    }

    /// Records the end of a phase when profiling.
    fn mark(&self, label: &'static str) -> Result<()> {
        if let Some(p) = &self.prof {
            let ev = self
                .g
                .ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(dev_err("profiling event"))?;
            ev.record(&self.g.stream)
                .map_err(dev_err("profiling event"))?;
            p.borrow_mut().push((label, ev));
        }
        Ok(())
    }

    /// Runs one eager step with an event after every phase and returns the GPU milliseconds per
    /// phase (summed over layers), in order of first appearance.
    pub fn profile_step(
        &mut self,
        seqs: &[SeqInput<'_>],
        sampling: Option<&[DeviceSampling]>,
    ) -> Result<Vec<(&'static str, f64)>> {
        let graphs = self.opts.cuda_graphs;
        self.opts.cuda_graphs = false;
        self.prof = Some(Default::default());
        self.mark("start")?;
        let out = self.step(seqs, sampling);
        self.opts.cuda_graphs = graphs;
        let events = self.prof.take().map(|p| p.into_inner()).unwrap_or_default();
        out?;
        self.g.sync()?;
        let mut totals: Vec<(&'static str, f64)> = Vec::new();
        for w in events.windows(2) {
            let ms = w[0]
                .1
                .elapsed_ms(&w[1].1)
                .map_err(dev_err("event timing"))? as f64;
            match totals.iter_mut().find(|(l, _)| *l == w[1].0) {
                Some(t) => t.1 += ms,
                None => totals.push((w[1].0, ms)),
            }
        }
        Ok(totals)
    }

    /// Runs one step. With `sampling` (one entry per sampled sequence) the ids are drawn on the
    /// device; without, the sampled rows' logits come back.
    pub fn step(
        &mut self,
        seqs: &[SeqInput<'_>],
        sampling: Option<&[DeviceSampling]>,
    ) -> Result<StepOutput> {
        let r = seqs.iter().filter(|s| s.sample).count();
        self.logits_ready = 0;
        if let Some(sp) = sampling {
            if sp.len() != r {
                return Err(ModelError::Input(format!(
                    "{} sampling entries for {r} sampled sequences",
                    sp.len()
                )));
            }
        }
        let decode = seqs.iter().all(|s| s.tokens.len() == 1 && s.sample);
        let graph = self.opts.cuda_graphs && decode && sampling.is_some() && !seqs.is_empty();
        let bucket = seqs.len().next_power_of_two();
        if graph
            && bucket <= MAX_GRAPH_BATCH.min(self.ws.s_cap.next_power_of_two())
            && bucket <= self.ws.t_cap
        {
            let hb = self.host_batch(seqs, Some(bucket))?;
            self.upload_batch(&hb)?;
            let sp = sampling.unwrap_or_default();
            let trunc = self.upload_sampling(sp, bucket)?;
            let key = (bucket, trunc);
            if !self.graphs.contains_key(&key) {
                self.g
                    .stream
                    .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .map_err(dev_err("begin graph capture"))?;
                self.g.set_pdl_graphs(bucket <= self.pdl_graph_batch);
                self.g.set_capturing(true);
                let run = self
                    .forward(bucket, bucket, bucket)
                    .and_then(|_| self.sample(bucket, trunc));
                self.g.set_capturing(false);
                let graph = self
                    .g
                    .stream
                    .end_capture(sys::CUgraphInstantiate_flags(0))
                    .map_err(dev_err("end graph capture"))?;
                run?;
                let graph = graph.ok_or_else(|| ModelError::Device("empty graph".into()))?;
                self.graphs.insert(key, Graph(graph));
            }
            self.graphs[&key]
                .0
                .launch()
                .map_err(dev_err("graph launch"))?;
            let out = self.read_tokens(seqs.len())?;
            self.logits_ready = seqs.len();
            return Ok(out);
        }
        let hb = self.host_batch(seqs, None)?;
        let t = hb.tokens.len();
        self.upload_batch(&hb)?;
        self.forward(t, hb.attn_tiles.len() / 2, r)?;
        match sampling {
            Some(sp) if r > 0 => {
                let trunc = self.upload_sampling(sp, r)?;
                self.sample(r, trunc)?;
                self.mark("sampling")?;
                let out = self.read_tokens(r)?;
                self.logits_ready = r;
                Ok(out)
            }
            _ => self.read_logits(r),
        }
    }

    /// Waits for the step and reads `r` rows of logits.
    fn read_logits(&self, r: usize) -> Result<StepOutput> {
        if r == 0 {
            self.g.sync()?;
            return Ok(StepOutput::Nothing);
        }
        let mut data = self.host_rows(r * self.config.vocab_size);
        self.g.download_f32(self.ws.logits.p(), &mut data)?;
        Ok(StepOutput::Logits { data, rows: r })
    }

    /// Rows `rows` (indices among the sampled rows) of the logits of the last [`GpuModel::step`]
    /// that drew on the device, `[rows.len(), vocab]` f32: a batch whose other rows were drawn
    /// here brings only these to the host.
    pub fn last_logits(&self, rows: &[usize]) -> Result<Vec<f32>> {
        let v = self.config.vocab_size;
        if let Some(bad) = rows.iter().find(|&&r| r >= self.logits_ready) {
            return Err(ModelError::Input(format!(
                "logits row {bad} of the last step's {}",
                self.logits_ready
            )));
        }
        let mut data = self.host_rows(rows.len() * v);
        for (out, &r) in data.chunks_mut(v).zip(rows) {
            self.g.download_f32(self.ws.logits.at(r * v * 4), out)?;
        }
        Ok(data)
    }

    /// A host buffer of `n` floats for logits, the recycled one when it is large enough: its
    /// pages are already mapped, where fresh memory takes a page fault per 4 KiB on first write
    /// (the contents are overwritten by the copy).
    fn host_rows(&self, n: usize) -> Vec<f32> {
        let mut v = self.spare_host.take();
        if v.capacity() < n {
            return vec![0f32; n];
        }
        v.resize(n, 0.0);
        v
    }

    /// Takes back a logits buffer this engine handed out, for [`GpuModel::host_rows`] to reuse
    /// (the largest one is kept).
    pub fn recycle_host(&self, data: Vec<f32>) {
        let spare = self.spare_host.take();
        self.spare_host.set(if data.capacity() > spare.capacity() {
            data
        } else {
            spare
        });
    }

    fn read_tokens(&self, n: usize) -> Result<StepOutput> {
        let mut ids = vec![0i32; n];
        self.g.download(self.ws.sampled.p(), &mut ids)?;
        Ok(StepOutput::Tokens(
            ids.into_iter().map(|i| i as u32).collect(),
        ))
    }

    /// Validates the batch and lays out its metadata; `pad_to` pads a decode batch to a bucket
    /// (padding rows write no KV and attend to nothing).
    fn host_batch(&self, seqs: &[SeqInput<'_>], pad_to: Option<usize>) -> Result<HostBatch> {
        let c = &self.config;
        let bs = self.opts.block_size;
        if seqs.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        if seqs.len() > self.ws.s_cap {
            return Err(ModelError::Input(format!(
                "{} sequences in one step; at most {}",
                seqs.len(),
                self.ws.s_cap
            )));
        }
        let t: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if t > self.ws.t_cap {
            return Err(ModelError::Input(format!(
                "{t} tokens in one step; at most {}",
                self.ws.t_cap
            )));
        }
        let mut hb = HostBatch::default();
        let mut stride = 1;
        for s in seqs {
            let need = (s.start_pos + s.tokens.len()).div_ceil(bs);
            if need > s.block_table.len() {
                return Err(ModelError::KvCache(format!(
                    "position {} is beyond the block table ({} blocks of {bs})",
                    s.start_pos + s.tokens.len() - 1,
                    s.block_table.len()
                )));
            }
            stride = stride.max(need);
        }
        if stride > self.ws.blocks_per_seq {
            return Err(ModelError::Input(format!(
                "a sequence needs {stride} KV blocks; max_model_len allows {}",
                self.ws.blocks_per_seq
            )));
        }
        hb.stride = stride;
        for (si, s) in seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::Input(format!("sequence {si} has no tokens")));
            }
            for (i, &tok) in s.tokens.iter().enumerate() {
                if tok as usize >= c.vocab_size {
                    return Err(ModelError::Input(format!(
                        "token id {tok} is outside the vocabulary (size {})",
                        c.vocab_size
                    )));
                }
                let p = s.start_pos + i;
                let b = s.block_table[p / bs] as usize;
                if b >= self.num_blocks {
                    return Err(ModelError::KvCache(format!(
                        "block {b} is outside the cache ({} blocks)",
                        self.num_blocks
                    )));
                }
                hb.tokens.push(tok as i32);
                hb.pos.push(p as i32);
                hb.slots.push((b * bs + p % bs) as i32);
                hb.row_seq.push(si as i32);
            }
            if s.sample {
                hb.sample_rows.push(hb.tokens.len() as i32 - 1);
            }
            let end = hb.tokens.len();
            let mut r0 = end - s.tokens.len();
            while r0 < end {
                let n = (end - r0).min(self.attn_rows_per_tile());
                hb.attn_tiles.extend([r0 as i32, n as i32]);
                r0 += n;
            }
            let used = stride.min(s.block_table.len());
            for &b in &s.block_table[..used] {
                hb.btab.push(if (b as usize) < self.num_blocks {
                    b as i32
                } else {
                    0
                });
            }
            hb.btab.extend(std::iter::repeat_n(0, stride - used));
        }
        // a slot written twice in one step keeps the last write (as the CPU reference does)
        let mut seen = std::collections::HashSet::with_capacity(hb.slots.len());
        for sl in hb.slots.iter_mut().rev() {
            if !seen.insert(*sl) {
                *sl = -1;
            }
        }
        if let Some(n) = pad_to {
            while hb.tokens.len() < n {
                hb.attn_tiles.extend([hb.tokens.len() as i32, 1]);
                hb.tokens.push(0);
                hb.pos.push(0);
                hb.slots.push(-1);
                hb.row_seq.push(-1);
            }
            hb.sample_rows = (0..n as i32).collect();
        }
        Ok(hb)
    }

    fn upload_batch(&self, hb: &HostBatch) -> Result<()> {
        let (g, ws) = (&self.g, &self.ws);
        g.upload(ws.meta_at(Meta::Tokens), &hb.tokens)?;
        g.upload(ws.meta_at(Meta::Pos), &hb.pos)?;
        g.upload(ws.meta_at(Meta::Slots), &hb.slots)?;
        g.upload(ws.meta_at(Meta::RowSeq), &hb.row_seq)?;
        g.upload(ws.meta_at(Meta::SampleRows), &hb.sample_rows)?;
        g.upload(ws.meta_at(Meta::Stride), &[hb.stride as i32])?;
        g.upload(ws.meta_at(Meta::AttnTiles), &hb.attn_tiles)?;
        g.upload(
            ws.meta_at(Meta::AttnTileCount),
            &[(hb.attn_tiles.len() / 2) as i32],
        )?;
        g.upload(ws.meta_at(Meta::BlockTables), &hb.btab)
    }

    /// Query rows of one sequence that share an attention block: 64 (row, head) pairs.
    fn attn_rows_per_tile(&self) -> usize {
        (64 / (self.config.num_attention_heads / self.config.num_key_value_heads)).max(1)
    }

    /// Uploads `n` rows of sampling parameters (`sp`, then greedy rows); true when some row
    /// truncates (top-k / top-p / min-p), whose parameters then go up too.
    fn upload_sampling(&self, sp: &[DeviceSampling], n: usize) -> Result<bool> {
        let row = |i: usize| sp.get(i).copied().unwrap_or(DeviceSampling::GREEDY);
        let temps: Vec<f32> = (0..n).map(|i| row(i).temperature).collect();
        let seeds: Vec<u64> = (0..n).map(|i| row(i).seed).collect();
        self.g.upload(self.ws.temps.p(), &temps)?;
        self.g.upload(self.ws.seeds.p(), &seeds)?;
        if !sp.iter().any(DeviceSampling::truncates) {
            return Ok(false);
        }
        let top_k: Vec<i32> = (0..n)
            .map(|i| row(i).top_k.min(i32::MAX as u32) as i32)
            .collect();
        let top_p: Vec<f32> = (0..n).map(|i| row(i).top_p).collect();
        let min_p: Vec<f32> = (0..n).map(|i| min_p_log(row(i).min_p)).collect();
        let [k, p, m] = self.ws.trunc_params();
        self.g.upload(k, &top_k)?;
        self.g.upload(p, &top_p)?;
        self.g.upload(m, &min_p)?;
        Ok(true)
    }

    fn sample(&self, r: usize, trunc: bool) -> Result<()> {
        let ws = &self.ws;
        sample_launch(
            &self.g,
            (ws.logits.p(), self.config.vocab_size, self.valid_vocab),
            SampleSpecs {
                temps: ws.temps.p(),
                seeds: ws.seeds.p(),
                trunc: trunc.then(|| ws.trunc_params()),
            },
            ws.sample_part.p(),
            ws.sampled.p(),
            r,
        )
    }

    /// All kernels of a step for `t` rows of metadata, `tiles` attention tiles and `r` sampled rows.
    fn forward(&self, t: usize, tiles: usize, r: usize) -> Result<()> {
        let c = &self.config;
        let (g, ws) = (&*self.g, &self.ws);
        let h = c.hidden_size;
        launch!(g, embed_rows, (t as u32, 1, 1), (256, 1, 1), 0;
            self.embed.p(), ws.meta_at(Meta::Tokens), ws.x.p(), h as i32)?;
        self.mark("embedding")?;
        for (li, layer) in self.layers.iter().enumerate() {
            self.decoder_layer(li, layer, t, tiles)?;
        }
        if r > 0 {
            let a = ActRows::plain(ws.x.p(), h, r, h)
                .gathered(ws.meta_at(Meta::SampleRows))
                .normed(self.norm.p(), c.rms_norm_eps);
            self.linear(&self.lm_head, a, ws.logits.p(), c.vocab_size, 0, "LM head")?;
        }
        Ok(())
    }

    /// One decoder layer over the residual stream `ws.x`, with KV layer `li`.
    fn decoder_layer(&self, li: usize, layer: &GpuLayer, t: usize, tiles: usize) -> Result<()> {
        let routed = self.attention(li, layer, t, tiles)?;
        match &layer.mlp {
            GpuMlp::Dense {
                gate_up,
                down,
                inter,
            } => {
                let (h, eps) = (self.config.hidden_size, self.config.rms_norm_eps);
                let x = self.ws.x.p();
                self.swiglu(
                    gate_up,
                    down,
                    *inter,
                    ActRows::plain(x, h, t, h).normed(layer.post_norm.p(), eps),
                    None,
                    (x, 1),
                    "dense MLP GEMMs",
                )
            }
            GpuMlp::Moe { .. } => self.moe(layer, t, routed),
        }
    }

    /// The attention block: QKV, RoPE and the cache write, attention, and the O projection added
    /// to the residual stream. Returns the routing the O GEMV began for the MoE layer's token
    /// ([`GpuModel::o_route`]), for its gate|up to finish.
    fn attention(
        &self,
        li: usize,
        layer: &GpuLayer,
        t: usize,
        tiles: usize,
    ) -> Result<Option<Route>> {
        let c = &self.config;
        let (g, ws) = (&*self.g, &self.ws);
        let (h, nh, nkv, d) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        let qkv = &layer.qkv;
        let a = ActRows::plain(ws.x.p(), h, t, h).normed(layer.in_norm.p(), c.rms_norm_eps);
        let (kc, vc) = (&self.kv[li].0, &self.kv[li].1);
        let out = QkvOut {
            pos: ws.meta_at(Meta::Pos),
            slots: ws.meta_at(Meta::Slots),
            q: ws.q.p(),
            kc: kc.p(),
            vc: vc.p(),
            nh: nh as i32,
            nkv: nkv as i32,
            d: d as i32,
            rot: c.rotary_dim() as i32,
            kv_fp8: i32::from(self.opts.kv_fp8),
            theta: c.rope_theta,
        };
        let parts = (qkv.parts[1], qkv.parts[2]);
        if layer.qkv_paired
            && self.qkv_rope
            && t <= self.gemv_rows
            && gemv_qkv_launch(g, qkv, &a, &out, parts)?
        {
            self.mark("QKV GEMV + RoPE + KV write")?;
        } else {
            self.linear(qkv, a, ws.f1.p(), qkv.n, 0, "QKV GEMM")?;
            let norms = (
                layer.q_norm.as_ref().map_or(0, |b| b.p()),
                layer.k_norm.as_ref().map_or(0, |b| b.p()),
                c.rms_norm_eps,
            );
            let src = (ws.f1.p(), qkv.n, parts.0, parts.1);
            rope_kv_launch(g, t, src, &out, norms, layer.qkv_paired)?;
            self.mark("RoPE + KV write")?;
        }
        // tiles: at most one per row (exactly one per row for a padded decode bucket)
        let tiles = tiles.min(t);
        // decode steps whose splits can merge in a thread-block cluster (below) aim for one block
        // an SM: with clusters, one beat two at batch 2-16 (runs 96, 98)
        let cluster_ok = tiles == t && self.attn_cluster && g.clusters && !self.opts.kv_fp8;
        let per_sm = match self.attn_blocks_per_sm {
            0 if tiles <= ATTN_TWO_BLOCKS_TILES && !cluster_ok => 2,
            0 => 1,
            n => n,
        };
        let splits = ws.attn_splits(tiles, nkv, g.sm_count, per_sm);
        let part = if splits > 1 { ws.attn_part.p() } else { 0 };
        // one-row tiles (decode): the attention kernel's last split block merges the splits
        // (batch 1: 6.66 against 6.77 ms a step, runs 44/46); several rows: attn_combine
        let fused = splits > 1 && tiles == t;
        let done = if fused { ws.attn_done.p() } else { 0 };
        // fused splits as one thread-block cluster a (tile, kv head), merged in shared memory,
        // when the splits aim for one block an SM or every block has an SM of its own (batch 1:
        // 3.6% faster; batch 2-8 aiming for two blocks an SM: 3-4% slower, run 96) and the cache
        // is BF16 (the FP8 kernels spilled with it)
        let one_per_sm = per_sm == 1 || tiles * nkv * splits <= g.sm_count;
        let cluster = if fused && one_per_sm && cluster_ok {
            splits as u32
        } else {
            1
        };
        let grid = (tiles as u32, nkv as u32, splits as u32);
        macro_rules! attn {
            ($f:ident) => {
                launch!(g, $f, grid, (128, 1, 1), attn_smem(d), cluster cluster;
                    ws.q.p(), kc.p(), vc.p(), ws.meta_at(Meta::AttnTiles),
                    ws.meta_at(Meta::AttnTileCount), ws.meta_at(Meta::RowSeq), ws.meta_at(Meta::Pos),
                    ws.meta_at(Meta::BlockTables), ws.meta_at(Meta::Stride),
                    self.opts.block_size as i32, ws.o.p(), part, done, nh as i32, nkv as i32,
                    (d as f32).powf(-0.5), i32::from(cluster > 1))
            };
        }
        match (d, self.opts.kv_fp8, self.fp8_attn_f16) {
            (32, false, _) => attn!(attn_d32)?,
            (64, false, _) => attn!(attn_d64)?,
            (_, false, _) => attn!(attn_d128)?,
            (32, true, false) => attn!(attn_f8_d32)?,
            (64, true, false) => attn!(attn_f8_d64)?,
            (_, true, false) => attn!(attn_f8_d128)?,
            (32, true, true) => attn!(attn_f8h_d32)?,
            (64, true, true) => attn!(attn_f8h_d64)?,
            (_, true, true) => attn!(attn_f8h_d128)?,
        }
        if splits > 1 && !fused {
            // a tile holds at most 64 (row, head) pairs: 8 blocks of 8 warps
            launch!(g, attn_combine, (tiles as u32, nkv as u32, 8), (256, 1, 1), 0;
                part, ws.meta_at(Meta::AttnTiles), ws.meta_at(Meta::AttnTileCount),
                ws.meta_at(Meta::RowSeq), splits as i32, ws.o.p(), nh as i32, nkv as i32, d as i32)?;
        }
        self.mark("attention")?;
        let a = ActRows::plain(ws.o.p(), nh * d, t, nh * d);
        if let Some(route) = self.o_route_args(layer, t) {
            if gemv_route_launch(g, &layer.o, &a, ws.x.p(), &route)? {
                self.mark("O GEMV + router products")?;
                return Ok(Some(route));
            }
        }
        self.linear(&layer.o, a, ws.x.p(), h, 1, "O GEMM")?;
        Ok(None)
    }

    /// The routing's arguments for a MoE layer whose `t` tokens (one) run the MoE GEMVs with the
    /// shared expert as a slot and a flat gate|up that can finish it ([`GpuModel::o_route`];
    /// otherwise `moe_route` routes them).
    fn o_route_args(&self, layer: &GpuLayer, t: usize) -> Option<Route> {
        let GpuMlp::Moe { gate, bias, .. } = &layer.mlp else {
            return None;
        };
        let (c, ws) = (&self.config, &self.ws);
        // (expert groups: moe_route ranks them)
        if !self.o_route || t != 1 || c.n_group > 1 {
            return None;
        }
        let route = Route {
            gw: gate.p(),
            nw: layer.post_norm.p(),
            bias: bias.p(),
            acc: ws.route_acc.p(),
            ids: ws.ids.p(),
            wts: ws.wts.p(),
            done: ws.route_done.p(),
            eps: c.rms_norm_eps,
            rscale: c.routed_scaling_factor,
            e: c.n_routed_experts as i32,
            k: c.num_experts_per_tok as i32,
            norm: i32::from(c.norm_topk_prob),
        };
        self.moe_gemv(layer, t, Some(route))
            .is_some_and(|(_, cfg, fused)| fused && cfg.routed())
            .then_some(route)
    }

    /// The MoE GEMVs for `t` tokens of a MoE layer where they run them (few tokens, the kernels
    /// take the weights, the gate|up output fits the scratch), with their configuration and
    /// whether the shared expert runs as a slot beside the routed ones; `routed`: the routing
    /// the O GEMV began, for the gate|up to finish ([`MoeGemv::routed`]).
    fn moe_gemv<'a>(
        &self,
        layer: &'a GpuLayer,
        t: usize,
        routed: Option<Route>,
    ) -> Option<(MoeGemv<'a>, MoeGemvConfig, bool)> {
        let GpuMlp::Moe {
            experts_gu,
            experts_down,
            shared_gu,
            shared_down,
            inter,
            ..
        } = &layer.mlp
        else {
            return None;
        };
        if t > self.moe_gemv_tokens {
            return None;
        }
        let (g, ws) = (&*self.g, &self.ws);
        // the shared expert runs as one more slot when it is shaped as a routed one
        let fused = MoeGemv::same_shape(shared_gu, experts_gu)
            && MoeGemv::same_shape(shared_down, experts_down);
        let experts = MoeGemv {
            gate_up: experts_gu,
            down: experts_down,
            shared: fused.then_some((shared_gu, shared_down)),
            inter: *inter,
            k: self.config.num_experts_per_tok,
            ids: ws.ids.p(),
            wts: ws.wts.p(),
            flat: self.moe_flat,
            paired: self.moe_paired,
            routed,
        };
        let fits = experts.f1_rows(t) * experts_gu.n * 4 <= ws.f1.bytes();
        let cfg = experts
            .config(g, t, self.config.hidden_size)
            .filter(|_| fits)?;
        Some((experts, cfg, fused))
    }

    /// The MoE block for `t` tokens; `routed`: the routing the O GEMV began ([`Route`]).
    fn moe(&self, layer: &GpuLayer, t: usize, routed: Option<Route>) -> Result<()> {
        let GpuMlp::Moe {
            gate,
            bias,
            experts_gu,
            experts_down,
            shared_gu,
            shared_down,
            inter,
            shared_inter,
        } = &layer.mlp
        else {
            unreachable!("moe() is called for MoE layers")
        };
        let c = &self.config;
        let (g, ws) = (&*self.g, &self.ws);
        let (h, e, k) = (c.hidden_size, c.n_routed_experts, c.num_experts_per_tok);
        // f32 normed input for the router (and, quantized, for the experts), then top-k
        let post_norm_and_route = || -> Result<()> {
            launch!(g, prep_rows, (t as u32, 1, 1), (prep_threads(t), 1, 1), 0;
                ws.x.p(), h as i32, 0u64, h as i32, 1i32, layer.post_norm.p(), c.rms_norm_eps, 0i32,
                FMT_F32, ws.xn.p(), h as i32, 0u64, h as i32)?;
            self.mark("norm/quant")?;
            router_launch(g, ws.xn.p(), gate.p(), ws.router.p(), t, e, h)?;
            launch!(g, moe_topk, (t as u32, 1, 1), (128, 1, 1), topk_smem(e);
                ws.router.p(), bias.p(), t as i32, e as i32, k as i32, c.n_group as i32,
                c.topk_group as i32, i32::from(c.norm_topk_prob), c.routed_scaling_factor,
                ws.ids.p(), ws.wts.p())
        };
        if let Some((experts, cfg, fused)) = self.moe_gemv(layer, t, routed) {
            if !cfg.routed() {
                if fused && t <= MOE_ROUTE_MAX_TOKENS {
                    // one launch for the norm, the router and top-k
                    launch!(g, moe_route, (e as u32, 1, 1), (128, 1, 1), topk_smem(e);
                        ws.x.p(), h as i32, layer.post_norm.p(), c.rms_norm_eps, ws.xn.p(),
                        gate.p(), ws.router.p(), t as i32, e as i32, h as i32, bias.p(), k as i32,
                        c.n_group as i32, c.topk_group as i32, i32::from(c.norm_topk_prob),
                        c.routed_scaling_factor, ws.ids.p(), ws.wts.p(), ws.route_done.p())?;
                } else {
                    post_norm_and_route()?;
                }
                self.mark("MoE routing")?;
            }
            experts.launch(g, &cfg, t, (ws.xn.p(), h), ws.f1.p(), ws.x.p())?;
            self.mark("expert GEMMs")?;
            if !fused {
                let a = ActRows::plain(ws.xn.p(), h, t, h);
                let out = (ws.x.p(), 1);
                let (gu, dn) = (shared_gu, shared_down);
                self.swiglu(gu, dn, *shared_inter, a, None, out, "shared expert GEMMs")?;
            }
            return Ok(());
        }
        post_norm_and_route()?;
        let a = t * k;
        let bm = if a >= 32 * e { 64 } else { 16 };
        let max_tiles = a.div_ceil(bm) + e;
        launch!(g, moe_plan, (1, 1, 1), (1024, 1, 1), 3 * e * 4;
            ws.ids.p(), a as i32, e as i32, k as i32, bm as i32, ws.offsets.p(), ws.perm.p(),
            ws.inv.p(), ws.tiles.p(), ws.ntiles.p())?;
        self.mark("MoE routing")?;
        let offsets = self.expert_offsets(experts_gu, experts_down, a)?;
        let grouped = Some(Grouped {
            bm,
            max_tiles,
            offsets: offsets.as_deref(),
        });
        let xn = ws.xn.p();
        self.swiglu(
            experts_gu,
            experts_down,
            *inter,
            ActRows::plain(xn, h, a, h).gathered(ws.perm.p()),
            grouped,
            (ws.y.p(), 0),
            "expert GEMMs",
        )?;
        self.swiglu(
            shared_gu,
            shared_down,
            *shared_inter,
            ActRows::plain(xn, h, t, h),
            None,
            (ws.x.p(), 1),
            "shared expert GEMMs",
        )?;
        launch!(g, moe_combine, (t as u32, h.div_ceil(256) as u32, 1), (256, 1, 1), 0;
            ws.y.p(), h as i32, ws.inv.p(), ws.wts.p(), k as i32, ws.x.p(), h as i32)?;
        self.mark("MoE combine")
    }

    /// The MoE plan's row offsets per expert, read back to the host, when the routed experts of
    /// this step run as one cuBLASLt GEMM each: `a` routed rows reach
    /// `BlasLt::experts_min_rows`, and the step is not being captured (a graph cannot wait for
    /// the host).
    fn expert_offsets(
        &self,
        gate_up: &GpuLinear,
        down: &GpuLinear,
        a: usize,
    ) -> Result<Option<Vec<i32>>> {
        let on = !self.g.capturing()
            && self
                .blaslt
                .as_ref()
                .and_then(|lt| lt.experts_min_rows)
                .is_some_and(|n| a >= n)
            && BlasLt::handles(gate_up)
            && BlasLt::handles(down);
        if !on {
            return Ok(None);
        }
        let mut offsets = vec![0i32; gate_up.groups + 1];
        self.g.download(self.ws.offsets.p(), &mut offsets)?;
        Ok(Some(offsets))
    }

    /// gate|up GEMM, SiLU·up with quantization, down GEMM: the dense MLP, the routed experts
    /// (grouped, rows gathered in expert order) and the shared expert. `output` is (destination,
    /// 0 store / 1 add).
    #[allow(clippy::too_many_arguments)]
    fn swiglu(
        &self,
        gate_up: &GpuLinear,
        down: &GpuLinear,
        inter: usize,
        input: ActRows,
        grouped: Option<Grouped<'_>>,
        output: (u64, i32),
        label: &'static str,
    ) -> Result<()> {
        let (ws, h, n) = (&self.ws, self.config.hidden_size, input.n);
        let mid = ActRows::plain(ws.f1.p(), gate_up.n, n, inter).swiglu(gate_up.parts[1]);
        if grouped.is_none() {
            self.linear(gate_up, input, ws.f1.p(), gate_up.n, 0, label)?;
            return self.linear(down, mid, output.0, h, output.1, label);
        }
        self.prep_for(gate_up, &input)?;
        self.mark("norm/quant")?;
        self.gemm(gate_up, n, grouped, ws.f1.p(), gate_up.n, 0)?;
        self.mark(label)?;
        self.prep_for(down, &mid)?;
        self.mark("norm/quant")?;
        self.gemm(down, n, grouped, output.0, h, output.1)?;
        self.mark(label)
    }

    /// Prepares rows `a` as the activations of `lin` in the workspace (`prep_rows`).
    fn prep_for(&self, lin: &GpuLinear, a: &ActRows) -> Result<()> {
        let (fmt, group) = lin.act_format();
        launch!(self.g, prep_rows, (a.n as u32, 1, 1), (prep_threads(a.n), 1, 1), 0;
            a.x, a.ldx as i32, a.rows, a.k as i32, a.mode, a.w, a.eps, a.up_off as i32,
            fmt, self.ws.act.p(), lin.kp as i32, self.ws.act_scales.p(), group as i32)
    }

    /// `out (= or += by omode 0 / 1) a · linᵀ`: one GEMV launch for decode-size batches (norm
    /// and quant fused), otherwise `prep_rows` and a GEMM.
    fn linear(
        &self,
        lin: &GpuLinear,
        a: ActRows,
        out: u64,
        ldc: usize,
        omode: i32,
        label: &'static str,
    ) -> Result<()> {
        if a.n <= self.gemv_rows && gemv_launch(&self.g, lin, &a, out, ldc, omode)? {
            return self.mark(label);
        }
        self.prep_for(lin, &a)?;
        self.mark("norm/quant")?;
        self.gemm(lin, a.n, None, out, ldc, omode)?;
        self.mark(label)
    }

    /// `out = act · Wᵀ` over `rows` rows (`omode` 0 store f32, 1 add f32), dense or grouped by the
    /// MoE plan (`(bm, max_tiles)`).
    fn gemm(
        &self,
        w: &GpuLinear,
        rows: usize,
        grouped: Option<Grouped<'_>>,
        out: u64,
        ldc: usize,
        omode: i32,
    ) -> Result<()> {
        if let (
            Some(lt),
            Some(Grouped {
                offsets: Some(offsets),
                ..
            }),
        ) = (&self.blaslt, grouped)
        {
            if omode == 0 && ldc == w.n {
                let ws = &self.ws;
                match lt.gemm_groups(&self.g, w, ws.act.p(), ws.act_scales.p(), offsets, out) {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::warn!(
                        "cuBLASLt expert GEMMs failed, using the built-in grouped kernel: {e}"
                    ),
                }
            }
        }
        if let (Some(lt), None) = (&self.blaslt, grouped) {
            // in place, or through the scratch sized for hidden-wide results
            let fits = (omode == 0 && ldc == w.n) || w.n <= self.config.hidden_size;
            if rows >= lt.min_rows && BlasLt::handles(w) && fits {
                let ws = &self.ws;
                let (a, sa, scratch) = (ws.act.p(), ws.act_scales.p(), ws.lt_scratch.p());
                match lt.gemm(&self.g, w, a, sa, rows, out, ldc, omode, scratch) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!("cuBLASLt GEMM failed, using the built-in kernel: {e}")
                    }
                }
            }
        }
        gemm_launch(
            &self.g,
            w,
            self.ws.act.p(),
            self.ws.act_scales.p(),
            rows,
            grouped.map(|gr| {
                (
                    gr.bm,
                    gr.max_tiles,
                    self.ws.tiles.p(),
                    self.ws.ntiles.p(),
                    self.ws.offsets.p(),
                )
            }),
            out,
            ldc,
            omode,
        )
    }
}

/// How the rows of a grouped GEMM split over the groups of its weight (the routed experts).
#[derive(Clone, Copy)]
struct Grouped<'a> {
    /// Our grouped kernel: rows per tile of the MoE plan, and the most tiles it can have.
    bm: usize,
    max_tiles: usize,
    /// The plan's row offsets per expert on the host: one cuBLASLt GEMM per expert instead.
    offsets: Option<&'a [i32]>,
}

/// Tokens from which the router logits run as a tiled GEMM (`router_gemm`). `router_logits` (one
/// block per 8 tokens and expert) rereads every token row once per expert: 3.8 ms per layer at
/// 8,000 tokens on Air, against 0.52 ms for the GEMM. But the GEMM's few blocks walk all of `h`
/// in series, about 0.36 ms per layer whatever the size below a wave, where `router_logits` takes
/// 0.02 ms at 64 tokens and 0.06 ms at 256 (H200, ops/perf/2026-11-29-gpu-mtp.md): they cross near
/// 1,000 tokens.
pub const ROUTER_GEMM_MIN_TOKENS: usize = 1024;

/// Tokens `moe_route`'s last block ranks at once (`TOPK_TOKENS` in kernels.cu; `moe_topk` ranks
/// one token a block).
const TOPK_TOKENS: usize = 8;

/// Dynamic shared memory of `moe_topk` (grid: one block a token) and `moe_route` for `e` experts
/// (`topk_block`'s scratch: scores and biased scores of each token, 32 group scores and 32 picks).
pub fn topk_smem(e: usize) -> usize {
    TOPK_TOKENS * (2 * e + 64) * 4
}

/// Most tokens routed by `moe_route` (the norm, router and top-k of a decode-size step in one
/// launch; each of its blocks reads every token's row).
pub const MOE_ROUTE_MAX_TOKENS: usize = 32;

/// `out [t, e] = xn [t, h] · gate [e, h]ᵀ` in f32 (`h` a multiple of 4).
pub fn router_launch(
    g: &Gpu,
    xn: u64,
    gate: u64,
    out: u64,
    t: usize,
    e: usize,
    h: usize,
) -> Result<()> {
    if t >= ROUTER_GEMM_MIN_TOKENS {
        launch!(g, router_gemm, (t.div_ceil(64) as u32, e.div_ceil(64) as u32, 1), (256, 1, 1), 0;
            xn, gate, out, t as i32, e as i32, h as i32)
    } else {
        launch!(g, router_logits, (t.div_ceil(8) as u32, e as u32, 1), (128, 1, 1), 0;
            xn, gate, out, t as i32, e as i32, h as i32)
    }
}

/// Vocabulary slices per row of the sampling kernels (`SAMPLE_SPLITS` in kernels.cu).
pub const SAMPLE_SPLITS: usize = 64;

/// Bytes of the sampling kernels' per-slice results for `rows` rows, then their truncation
/// thresholds.
pub const fn sample_part_bytes(rows: usize) -> usize {
    rows * SAMPLE_SPLITS * 8 + rows * 4
}

/// Per-row sampling parameters on the device: temperatures (f32) and seeds (u64), and when some
/// row truncates, its top-k (i32), top-p and ln(min_p) (f32, [`min_p_log`]) arrays.
#[derive(Debug, Clone, Copy)]
pub struct SampleSpecs {
    pub temps: u64,
    pub seeds: u64,
    pub trunc: Option<[u64; 3]>,
}

/// Draws one id per row of `logits` (`(buffer, row length, valid ids)`) with `spec` into `out`:
/// with truncation each row's threshold first (`sample_thresh`), then each vocabulary slice's best,
/// then the row's (`part`: [`sample_part_bytes`]).
pub fn sample_launch(
    g: &Gpu,
    logits: (u64, usize, usize),
    spec: SampleSpecs,
    part: u64,
    out: u64,
    rows: usize,
) -> Result<()> {
    let (l, v, valid) = logits;
    let pi = part + (rows * SAMPLE_SPLITS * 4) as u64;
    let mut thr = 0u64;
    if let Some([k, p, m]) = spec.trunc {
        thr = part + (rows * SAMPLE_SPLITS * 8) as u64;
        launch!(g, sample_thresh, (rows as u32, 1, 1), (THRESH_THREADS, 1, 1), 0;
            l, v as i32, valid as i32, spec.temps, k, p, m, thr)?;
    }
    launch!(g, sample_part, (rows as u32, SAMPLE_SPLITS as u32, 1), (256, 1, 1), 0;
        l, v as i32, valid as i32, spec.temps, spec.seeds, thr, part, pi)?;
    launch!(g, sample_rows, (rows as u32, 1, 1), (32, 1, 1), 0;
        part, pi, valid as i32, out)
}

/// Threads of `sample_thresh` (`THR_THREADS` in kernels.cu).
const THRESH_THREADS: u32 = 512;

/// Launches the GEMM for `w` on activations `a` (+ scales `sa`). Grouped: `(bm, max_tiles, tiles,
/// ntiles, offsets)`. Dense launches with few tiles split K (f32 outputs only).
#[allow(clippy::too_many_arguments)]
pub fn gemm_launch(
    g: &Gpu,
    w: &GpuLinear,
    a: u64,
    sa: u64,
    rows: usize,
    grouped: Option<(usize, usize, u64, u64, u64)>,
    out: u64,
    ldc: usize,
    omode: i32,
) -> Result<()> {
    let (fp8, smode, bn, bk) = w.scale_mode();
    let bm = grouped.map_or(if rows <= 128 { 16 } else { 64 }, |g| g.0);
    let n_tiles = w.n.div_ceil(128);
    let m_tiles = grouped.map_or(rows.div_ceil(bm), |g| g.1);
    let kb = w.kp * w.elem_bytes();
    let nkt = kb.div_ceil(128);
    let mut split_tiles = nkt;
    if omode != 2 {
        // enough CTAs for four per SM: a CTA's two-stage pipeline cannot hide memory latency
        // alone, so long K loops are split rather than left to few CTAs. A grouped launch counts
        // the tiles it expects to be real: about one per row while rows are fewer than experts.
        let real_tiles = grouped.map_or(m_tiles, |_| rows.min(m_tiles - rows.div_ceil(bm)));
        let ctas = n_tiles * real_tiles.max(1);
        let want = 4 * g.sm_count;
        if ctas < want {
            let splits = want.div_ceil(ctas).min(nkt).max(1);
            split_tiles = nkt.div_ceil(splits);
        }
    }
    let splits = nkt.div_ceil(split_tiles);
    if splits > 1 && omode == 0 {
        g.memset0(out, rows * ldc * 4)?;
    }
    let (tiles, ntiles, offsets) = grouped.map_or((0, 0, 0), |g| (g.2, g.3, g.4));
    let (sw, bias) = (w.scales_ptr(), w.bias_ptr());
    let w_gstride = (w.n * kb) as i64;
    let sw_gstride = w.scales_per_group() as i64;
    let grid = if grouped.is_some() {
        (n_tiles as u32, m_tiles as u32, splits as u32)
    } else {
        (m_tiles as u32, n_tiles as u32, splits as u32)
    };
    let sa = if fp8 { sa } else { 0 };
    macro_rules! go {
        ($f:ident) => {
            launch!(g, $f, grid, (256, 1, 1), gemm_smem(bm);
                a, kb as i32, sa, w.act_groups() as i32, w.w.p(), w_gstride, kb as i32, sw,
                sw_gstride, smode, bn as i32, bk as i32, tiles, ntiles, offsets, rows as i32,
                w.n as i32, kb as i32, split_tiles as i32, bias, out, ldc as i32, omode)
        };
    }
    match (fp8, bm) {
        (true, 16) => go!(gemm_fp8_m16),
        (true, _) => go!(gemm_fp8_m64),
        (false, 16) => go!(gemm_bf16_m16),
        (false, _) => go!(gemm_bf16_m64),
    }
}

impl Workspace {
    fn new(
        g: &Gpu,
        c: &Glm4MoeConfig,
        opts: &GpuOptions,
        layers: &[GpuLayer],
        lm_head: &GpuLinear,
        mtp: Option<&GpuMtp>,
        blaslt: bool,
    ) -> Result<Self> {
        let s_cap = opts.max_num_seqs.max(1);
        let t_cap = opts
            .max_num_batched_tokens
            .max(s_cap)
            .max(MAX_GRAPH_BATCH.min(s_cap.next_power_of_two()));
        // a verify step has logits for every drafted position and the one after
        let spec = if mtp.is_some() {
            opts.speculative_tokens
        } else {
            0
        };
        let r_cap = t_cap.min(s_cap.next_power_of_two() * (1 + spec));
        let blocks_per_seq = opts.max_model_len.div_ceil(opts.block_size);
        let (h, e, k) = (c.hidden_size, c.n_routed_experts, c.num_experts_per_tok);
        let a_cap = t_cap * k;
        let qd = c.num_attention_heads * c.head_dim;
        let mut act = 0usize;
        let mut scales = 0usize;
        let mut f1 = 0usize;
        let mut use_act = |l: &GpuLinear, rows: usize| {
            act = act.max(rows * l.kp * l.elem_bytes());
            scales = scales.max(rows * l.act_groups().max(1));
        };
        for l in layers.iter().chain(mtp.map(|m| &m.layer)) {
            use_act(&l.qkv, t_cap);
            use_act(&l.o, t_cap);
            f1 = f1.max(t_cap * l.qkv.n);
            match &l.mlp {
                GpuMlp::Dense { gate_up, down, .. } => {
                    use_act(gate_up, t_cap);
                    use_act(down, t_cap);
                    f1 = f1.max(t_cap * gate_up.n);
                }
                GpuMlp::Moe {
                    experts_gu,
                    experts_down,
                    shared_gu,
                    shared_down,
                    ..
                } => {
                    use_act(experts_gu, a_cap);
                    use_act(experts_down, a_cap);
                    use_act(shared_gu, t_cap);
                    use_act(shared_down, t_cap);
                    f1 = f1.max(a_cap * experts_gu.n).max(t_cap * shared_gu.n);
                }
            }
        }
        use_act(lm_head, r_cap);
        if let Some(m) = mtp {
            use_act(&m.eh_proj, t_cap);
            use_act(&m.head, r_cap);
            // the eh_proj input [embedding | hidden] is built in f1
            f1 = f1.max(t_cap * 2 * h);
        }
        // the MTP's hidden inputs: the verified step's rows, rows kept across steps (a prefill
        // chunk's last position, draft chains), and the row indices of both
        let (mtp_rows, kept_rows) = if mtp.is_some() {
            (t_cap, 2 * s_cap)
        } else {
            (0, 0)
        };
        let meta_ints = Self::meta_ints(t_cap, r_cap, s_cap, blocks_per_seq);
        let z = |bytes: usize| DevBuf::zeros(g, bytes);
        Ok(Self {
            t_cap,
            r_cap,
            s_cap,
            blocks_per_seq,
            meta: z(meta_ints * 4)?,
            attn_part: z(ATTN_PART_ITEMS * 64 * (c.head_dim + 2) * 4)?,
            attn_done: z(ATTN_PART_ITEMS * 4)?,
            temps: z(r_cap * 4)?,
            seeds: z(r_cap * 8)?,
            trunc: z(r_cap * 12)?,
            sampled: z(r_cap * 4)?,
            sample_part: z(sample_part_bytes(r_cap))?,
            // the cuBLASLt path's f32 result before a residual add (N = hidden for those GEMMs)
            lt_scratch: z(if blaslt { t_cap * h * 4 } else { 0 })?,
            x: z(t_cap * h * 4)?,
            xn: z(t_cap * h * 4)?,
            act: z(act)?,
            act_scales: z(scales * 4)?,
            f1: z(f1 * 4)?,
            q: z(t_cap * qd * 4)?,
            o: z(t_cap * qd * 4)?,
            y: z(a_cap * h * 4)?,
            router: z(t_cap * e * 4)?,
            ids: z(a_cap * 4)?,
            wts: z(a_cap * 4)?,
            offsets: z((e + 1) * 4)?,
            perm: z(a_cap * 4)?,
            inv: z(a_cap * 4)?,
            tiles: z(2 * (a_cap.div_ceil(16) + e) * 4)?,
            ntiles: z(4)?,
            route_done: z(4)?,
            route_acc: z(e * 8)?,
            logits: z(r_cap * c.vocab_size * 4)?,
            mtp_hidden: z(mtp_rows * h * 4)?,
            mtp_kept: z(kept_rows * h * 4)?,
            mtp_idx: z(2 * mtp_rows * 4)?,
        })
    }

    fn bytes(&self) -> usize {
        [
            &self.meta,
            &self.attn_part,
            &self.attn_done,
            &self.temps,
            &self.seeds,
            &self.sampled,
            &self.sample_part,
            &self.lt_scratch,
            &self.x,
            &self.xn,
            &self.act,
            &self.act_scales,
            &self.f1,
            &self.q,
            &self.o,
            &self.y,
            &self.router,
            &self.ids,
            &self.wts,
            &self.offsets,
            &self.perm,
            &self.inv,
            &self.tiles,
            &self.ntiles,
            &self.route_done,
            &self.route_acc,
            &self.logits,
            &self.mtp_hidden,
            &self.mtp_kept,
            &self.mtp_idx,
        ]
        .iter()
        .map(|b| b.bytes())
        .sum()
    }
}

fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn tensor_f32<const D: usize>(t: &burn::tensor::Tensor<CpuBackend, D>) -> Result<Vec<f32>> {
    t.to_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| ModelError::Input(format!("tensor values: {e:?}")))
}

fn f32_buf(g: &Gpu, v: &[f32]) -> Result<DevBuf> {
    DevBuf::from_host(g, v)
}

fn bf16_buf(g: &Gpu, v: &[f32]) -> Result<DevBuf> {
    let b: Vec<u16> = v
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect();
    DevBuf::from_host(g, &b)
}

/// An f32 vector of `n` ones (a norm's weight in dummy models).
fn ones(g: &Gpu, n: usize) -> Result<DevBuf> {
    let b = DevBuf::zeros(g, n * 4)?;
    fill_const(g, b.p(), n, 1.0)?;
    Ok(b)
}

/// Decoder layer `l` with random weights (`fmt` for its linear layers; the MTP layer is built the
/// same way), seeded from `next`.
fn dummy_layer(
    g: &Gpu,
    c: &Glm4MoeConfig,
    fmt: WeightFormat,
    l: usize,
    next: &mut dyn FnMut() -> u64,
) -> Result<GpuLayer> {
    let (h, nh, nkv, d) = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    );
    let mlp = if c.is_moe_layer(l) {
        let (e, i) = (c.n_routed_experts, c.moe_intermediate_size);
        let si = i * c.n_shared_experts;
        let gate = DevBuf::zeros(g, e * h * 4)?;
        let n = (e * h) as u64;
        launch!(g, fill_f32_rand, (((n / 256).clamp(1, 65_535)) as u32, 1, 1), (256, 1, 1), 0;
            gate.p(), n, next(), 1.0 / (h as f32).sqrt())?;
        GpuMlp::Moe {
            gate,
            bias: DevBuf::zeros(g, e * 4)?,
            experts_gu: GpuLinear::dummy(g, fmt, &[i, i], h, e, false, next())?,
            experts_down: GpuLinear::dummy(g, fmt, &[h], i, e, false, next())?,
            shared_gu: GpuLinear::dummy(g, fmt, &[si, si], h, 1, false, next())?,
            shared_down: GpuLinear::dummy(g, fmt, &[h], si, 1, false, next())?,
            inter: i,
            shared_inter: si,
        }
    } else {
        let i = c.intermediate_size;
        GpuMlp::Dense {
            gate_up: GpuLinear::dummy(g, fmt, &[i, i], h, 1, false, next())?,
            down: GpuLinear::dummy(g, fmt, &[h], i, 1, false, next())?,
            inter: i,
        }
    };
    Ok(GpuLayer {
        in_norm: ones(g, h)?,
        qkv: GpuLinear::dummy(
            g,
            fmt,
            &[nh * d, nkv * d, nkv * d],
            h,
            1,
            c.attention_bias,
            next(),
        )?,
        // random rows: any order is theirs
        qkv_paired: pairs_rotary_rows(c),
        q_norm: c.use_qk_norm.then(|| ones(g, d)).transpose()?,
        k_norm: c.use_qk_norm.then(|| ones(g, d)).transpose()?,
        o: GpuLinear::dummy(g, fmt, &[h], nh * d, 1, false, next())?,
        post_norm: ones(g, h)?,
        mlp,
    })
}

fn fill_bf16(g: &Gpu, b: &DevBuf, n: usize, seed: u64, amp: f32) -> Result<()> {
    let n = n as u64;
    launch!(g, fill_bf16, (((n / 256).clamp(1, 65_535)) as u32, 1, 1), (256, 1, 1), 0;
        b.p(), n, seed, amp)
}

fn upload_layer(g: &Gpu, c: &Glm4MoeConfig, l: &DecoderLayer<CpuBackend>) -> Result<GpuLayer> {
    let a = &l.attn;
    let heads = (
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.rotary_dim(),
    );
    let order = move |parts: &[usize], n: usize| paired_rows(n, heads, parts[1]);
    let (qkv, qkv_paired) = GpuLinear::upload_ordered(
        g,
        &[vec![&a.q, &a.k, &a.v]],
        pairs_rotary_rows(c).then_some(&order),
    )?;
    let vec =
        |t: &burn::tensor::Tensor<CpuBackend, 1>| -> Result<DevBuf> { f32_buf(g, &tensor_f32(t)?) };
    let mlp = match &l.mlp {
        Mlp::Dense(m) => GpuMlp::Dense {
            gate_up: GpuLinear::upload(g, &[vec![&m.gate, &m.up]])?,
            down: GpuLinear::upload(g, &[vec![&m.down]])?,
            inter: c.intermediate_size,
        },
        Mlp::Moe(m) => GpuMlp::Moe {
            gate: f32_buf(g, &tensor_f32(&m.gate)?)?,
            bias: f32_buf(g, &m.correction_bias)?,
            experts_gu: GpuLinear::upload(
                g,
                &m.experts
                    .iter()
                    .map(|x| vec![&x.gate, &x.up])
                    .collect::<Vec<_>>(),
            )?,
            experts_down: GpuLinear::upload(
                g,
                &m.experts.iter().map(|x| vec![&x.down]).collect::<Vec<_>>(),
            )?,
            shared_gu: GpuLinear::upload(g, &[vec![&m.shared.gate, &m.shared.up]])?,
            shared_down: GpuLinear::upload(g, &[vec![&m.shared.down]])?,
            inter: c.moe_intermediate_size,
            shared_inter: c.moe_intermediate_size * c.n_shared_experts,
        },
    };
    Ok(GpuLayer {
        in_norm: vec(&l.input_norm)?,
        qkv,
        qkv_paired,
        q_norm: a.q_norm.as_ref().map(vec).transpose()?,
        k_norm: a.k_norm.as_ref().map(vec).transpose()?,
        o: GpuLinear::upload(g, &[vec![&a.o]])?,
        post_norm: vec(&l.post_norm)?,
        mlp,
    })
}
