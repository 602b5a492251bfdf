//! GEMVs for decode-size batches (`gemv_*` and `moe_gemv_*` in `kernels.cu`).
//!
//! At a few rows the tensor-core GEMM idles most of its tile and needs a `prep_rows` launch before
//! it (norm, SiLU·up, quantization), and the MoE experts need a plan, a gathered copy and a
//! combine. These kernels stream each weight once (FP8: through a cp.async ring per warp whose
//! copies read whole 128-byte lines of rows; BF16: into registers) and prepare their input rows
//! themselves: a linear layer is one launch, and a MoE layer's experts (routed and shared, combine
//! included) are two. The activations are rounded as the GEMM's operands are (e4m3 per
//! token and K group, or bf16), so the numerics are the tensor-core path's up to the order of f32
//! sums; `model/tests/gpu.rs` checks both against the same f64 reference. On the H200 they took the
//! batch-1 decode step from 8.98 to 7.35 ms (`ops/perf/2026-11-29-gpu-batch1-gemv.md`: the engine's
//! thresholds come from there), and the copy ring reading whole lines of rows took it to 6.8 ms,
//! the in-model FP8 GEMVs from 1.7–2.0 to 2.0–2.7 TB/s (`ops/perf/2026-11-29-gpu-batch1-ring.md`).
//! One token's MoE routing runs inside two of them ([`Route`]: the O GEMV adds the router's
//! products up, the flat gate|up ranks the experts), with no launch of its own
//! (`ops/perf/2026-12-01-gpu-routing-in-gemvs.md`).

use crate::error::Result;
use crate::gpu::device::Gpu;
use crate::gpu::rope::QkvOut;
use crate::gpu::weights::{GpuLinear, WeightFormat};
use crate::launch;

/// Most rows the dense GEMV takes (FP8 weights; BF16: [`gemv_max_rows`]).
pub const GEMV_MAX_ROWS: usize = 8;

/// Shared memory of one warp's FP8 weight ring in `gemv_fp8` and `moe_gemv_fp8_*` (`FP8V_RING` in
/// `kernels.cu`: `FP8V_D` slots of 16 rows × `FP8V_W` bytes).
const FP8V_RING_BYTES: usize = 4 * 16 * 128;

/// Static shared memory of `gemv_fp8` (its reduction scratch), counted for residency.
const GEMV_FP8_STATIC_SMEM: usize = 4096 + 128;

/// Input rows of a linear layer: `n` rows of `x` (row stride `ldx` floats), gathered through the
/// row indices at `rows` when non-zero, prepared over `k` columns by `mode`: 0 as they are, 1
/// RMSNorm with weight `w` and `eps`, 2 SiLU(x)·x[.. + up_off] (gate|up to the down projection).
#[derive(Clone, Copy, Debug)]
pub struct ActRows {
    pub x: u64,
    pub ldx: usize,
    pub rows: u64,
    pub n: usize,
    pub k: usize,
    pub mode: i32,
    pub w: u64,
    pub eps: f32,
    pub up_off: usize,
}

impl ActRows {
    /// `n` rows of `k` columns, used as they are.
    pub fn plain(x: u64, ldx: usize, n: usize, k: usize) -> Self {
        Self {
            x,
            ldx,
            rows: 0,
            n,
            k,
            mode: 0,
            w: 0,
            eps: 0.0,
            up_off: 0,
        }
    }

    /// RMSNorm with weight `w` first.
    pub fn normed(self, w: u64, eps: f32) -> Self {
        Self {
            mode: 1,
            w,
            eps,
            ..self
        }
    }

    /// SiLU of the first `k` columns times the `k` from `up_off` (gate|up rows).
    pub fn swiglu(self, up_off: usize) -> Self {
        Self {
            mode: 2,
            up_off,
            ..self
        }
    }

    /// Whether the kernels' 16-byte loads can read these rows: row stride, width and the up
    /// offset in whole groups of 4 floats.
    fn aligned(&self) -> bool {
        self.ldx.is_multiple_of(4) && self.k.is_multiple_of(4) && self.up_off.is_multiple_of(4)
    }

    /// The rows at the indices in device buffer `rows`.
    pub fn gathered(self, rows: u64) -> Self {
        Self { rows, ..self }
    }
}

/// (FP8, scale mode, N block, K block, activation group): [`format_args`].
type FormatArgs = (bool, i32, i32, i32, usize);

/// Which instantiation of an FP8 GEMV kernel takes scale mode `smode` (`kernels.cu` builds them
/// per scale format, so each holds only its own path's code): 0 per-channel, 1 block scales.
fn fp8_variant(smode: i32) -> usize {
    usize::from(smode == 2)
}

/// Kernel arguments that describe a weight's format: [`GpuLinear::scale_mode`] and the activation
/// group (e4m3 scales per that many columns; 0 for BF16). None when the kernels do not take it:
/// block scales whose K blocks are not whole 64-byte steps of the FP8 kernel.
fn format_args(w: &GpuLinear) -> Option<FormatArgs> {
    let (fp8, smode, bn, bk) = w.scale_mode();
    if smode == 2 && !bk.is_multiple_of(64) {
        return None;
    }
    let group = if fp8 { w.act_format().1 } else { 0 };
    Some((fp8, smode, bn as i32, bk as i32, group))
}

/// Bytes of `rows` staged FP8 rows of `kp` columns (e4m3 values as f16) and their scales (per
/// `group` of `k`), as the kernels lay them out.
fn fp8_rows_bytes(rows: usize, kp: usize, k: usize, group: usize) -> usize {
    (2 * rows * kp).div_ceil(16) * 16 + (rows * k.div_ceil(group)).div_ceil(4) * 16
}

/// Most rows [`gemv_launch`] takes for `w`: 8 for FP8 weights (the tensor-core kernel's N), 4 for
/// BF16 (its kernels are instantiated for 1..=4 rows).
pub fn gemv_max_rows(w: &GpuLinear) -> usize {
    match w.format {
        WeightFormat::Bf16 => 4,
        _ => GEMV_MAX_ROWS,
    }
}

/// The FP8 GEMV's grid and K split S for `w` at `smem` bytes of dynamic shared memory. A block
/// is 8 warps: 8 / S groups of 16 channels (a chunk), each group's K split over S warps. No more
/// blocks than are resident at once: a block takes every grid-th chunk, its rings streaming on
/// from one to the next. S evens out the chunks over the resident blocks (the largest share of
/// chunks by the fewest; ties to the smaller S). (Picking S by the SMs' loads instead, block b on
/// SM b mod SMs, took GLM-4.5-Air's QKV projection from 224 blocks of one chunk, two on 92 SMs
/// and one on 40, to 264 blocks of 3-4 chunks and S 8: its tail went 2.3 -> 5.1 µs and batch 1
/// 4.89 -> 5.02-5.03 ms, run 119.)
fn fp8_grid(g: &Gpu, w: &GpuLinear, smem: usize) -> ((u32, u32, u32), usize) {
    let groups = w.n.div_ceil(16);
    let resident = (g.blocks_per_sm(smem + GEMV_FP8_STATIC_SMEM, 2) * g.sm_count).max(1);
    let share = |s: usize| {
        let chunks = groups.div_ceil(8 / s);
        chunks as f64 / (chunks.div_ceil(resident) * resident) as f64
    };
    let s = [1usize, 2, 4, 8].into_iter().fold(1, |best, s| {
        if share(s) > share(best) + 1e-9 {
            s
        } else {
            best
        }
    });
    ((groups.div_ceil(8 / s).min(resident) as u32, 1, 1), s)
}

/// Dynamic shared memory of the FP8 GEMV for rows `a` of `w` (activation `group`): the 8 warps'
/// weight rings, the staged rows, then the staging scratch (the row, and the norm weight for
/// mode 1). BF16: the rows as f32, and the norm weight.
fn gemv_smem(w: &GpuLinear, a: &ActRows, fp8: bool, group: usize) -> usize {
    let norm = if a.mode == 1 { a.k * 4 } else { 0 };
    if fp8 {
        8 * FP8V_RING_BYTES + fp8_rows_bytes(a.n, w.kp, w.k, group) + a.k * 4 + norm
    } else {
        a.n * w.kp * 4 + norm
    }
}

/// The format's kernel arguments ([`format_args`]) and the dynamic shared memory of a GEMV over
/// rows `a` of `w`; None where the GEMV kernels do not take them: more rows than
/// [`gemv_max_rows`], grouped weights, a block format they do not take, unaligned rows, or rows
/// too long for shared memory.
fn gemv_fit(g: &Gpu, w: &GpuLinear, a: &ActRows) -> Option<(FormatArgs, usize)> {
    let args = format_args(w)?;
    let fits = a.n > 0
        && a.n <= gemv_max_rows(w)
        && (0..=2).contains(&a.mode)
        && w.groups == 1
        && a.k == w.k
        && a.aligned();
    let smem = gemv_smem(w, a, args.0, args.4);
    (fits && smem <= g.gemv_smem).then_some((args, smem))
}

/// The QKV projection of the `a.n` tokens with RoPE and the KV-cache write as its epilogue
/// (`gemv_fp8_qkv`; `crate::gpu::rope`): `w` FP8 with q at row 0, k at `k_off` and v at `v_off`,
/// the rotary rows of q and k paired ([`crate::gpu::rope::paired_rows`]), over RMSNorm'd rows
/// ([`ActRows::normed`], as the layers run it: the one input mode it is instantiated for).
/// Ok(false), launching nothing, where it does not apply: other rows, or where the FP8 GEMV does
/// not (BF16 weights included).
pub fn gemv_qkv_launch(
    g: &Gpu,
    w: &GpuLinear,
    a: &ActRows,
    out: &QkvOut,
    (k_off, v_off): (usize, usize),
) -> Result<bool> {
    let Some(((true, smode, bn, bk, group), smem)) = gemv_fit(g, w, a) else {
        return Ok(false);
    };
    if a.mode != 1 {
        return Ok(false);
    }
    let (grid, s) = fp8_grid(g, w, smem);
    launch!(g, gemv_fp8_qkv[fp8_variant(smode)], grid, (256, 1, 1), smem;
        a.x, a.ldx as i32, a.rows, a.n as i32, a.k as i32, w.kp as i32, a.mode, a.w, a.eps,
        a.up_off as i32, group as i32, w.w.p(), (w.kp * w.elem_bytes()) as i32, w.scales_ptr(),
        smode, bn, bk, w.bias_ptr(), w.n as i32, s as i32, 0u64, 0i32, 0i32, *out, k_off as i32,
        v_off as i32)?;
    Ok(true)
}

/// A MoE layer's routing of one token, split between its O GEMV ([`gemv_route_launch`]) and its
/// flat gate|up GEMV ([`MoeGemv::routed`]), with no launch of its own (`RouteArgs` in
/// `kernels.cu`, passed by value to both): router weights `gw [e, h]`, the post-attention norm
/// weight `nw [h]` and `eps`, the score correction `bias [e]`; `acc [e]` (u64) the logits' sums,
/// which the O GEMV's blocks add to and the gate|up's rank from, and `done` (i32) the gate|up
/// blocks' count, both at zero between layers; outputs the top-k `ids`, `wts [k]` (without expert
/// groups: models with `n_group` above 1 route with `moe_route`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub gw: u64,
    pub nw: u64,
    pub bias: u64,
    pub acc: u64,
    pub ids: u64,
    pub wts: u64,
    pub done: u64,
    pub eps: f32,
    pub rscale: f32,
    pub e: i32,
    pub k: i32,
    pub norm: i32,
}

/// Shared scratch bytes of the O GEMV's part of the routing (`route_prefetch` in `kernels.cu`)
/// for `cb` channels a block and `e` experts: the router's and the norm weight's columns of those
/// channels, and the new row's ([e + 2] × [cb + 4] floats).
fn route_smem(cb: usize, e: usize) -> usize {
    4 * (e + 2) * (cb + 4)
}

/// Shared scratch bytes the flat gate|up adds for its part of the routing (`route_topk`) over
/// rows of `k` columns and `e` experts (a multiple of 4): the norm weight's `k` floats, the
/// logits and `topk_one`'s scratch (3 e + 32 floats), 32 ids, 32 weights and the score bias.
fn route_topk_smem(k: usize, e: usize) -> usize {
    4 * (k + 4 * e + 96)
}

/// `x[0] += a[0] · Wᵀ` for one plain row, adding the router's products over the block's channels
/// to `route.acc` (`gemv_fp8_route_*`): the O projection of a MoE layer's one token, whose flat
/// gate|up then ranks the experts ([`Route`]). Ok(false), launching nothing, where it does not
/// apply: not one plain row, BF16 weights or a bias, experts not a multiple of 4, blocks taking
/// more than one chunk each, or where [`gemv_launch`] would not take it.
pub fn gemv_route_launch(
    g: &Gpu,
    w: &GpuLinear,
    a: &ActRows,
    x: u64,
    route: &Route,
) -> Result<bool> {
    let Some(((true, smode, bn, bk, group), base)) = gemv_fit(g, w, a) else {
        return Ok(false);
    };
    let e = route.e as usize;
    if a.n != 1 || a.mode != 0 || a.rows != 0 || w.bias.is_some() || e == 0 || !e.is_multiple_of(4)
    {
        return Ok(false);
    }
    // S (and so the channels a block) from the grid the routing's scratch leaves, checked to
    // come out the same with the scratch for those channels
    let (_, s) = fp8_grid(g, w, base + route_smem(32, e));
    let cb = 16 * (8 / s);
    let smem = base + route_smem(cb, e);
    let (grid, s2) = fp8_grid(g, w, smem);
    if s2 != s || grid.0 as usize != w.n.div_ceil(cb) || smem > g.gemv_smem {
        return Ok(false);
    }
    launch!(g, gemv_fp8_route[fp8_variant(smode)], grid, (256, 1, 1), smem;
        a.x, a.ldx as i32, 0u64, 1i32, a.k as i32, w.kp as i32, 0i32, 0u64, 0f32, 0i32,
        group as i32, w.w.p(), (w.kp * w.elem_bytes()) as i32, w.scales_ptr(), smode, bn, bk,
        0u64, w.n as i32, s as i32, x, w.n as i32, 1i32, *route)?;
    Ok(true)
}

/// `out[r] (= or += by omode 0 / 1) a[r] · Wᵀ (+ bias)` for the `a.n` rows as one GEMV launch.
/// Ok(false), launching nothing, when it does not apply: more rows than [`gemv_max_rows`], grouped
/// weights, a block format it does not take, or rows too long for shared memory.
pub fn gemv_launch(
    g: &Gpu,
    w: &GpuLinear,
    a: &ActRows,
    out: u64,
    ldc: usize,
    omode: i32,
) -> Result<bool> {
    let m = a.n;
    let Some(((fp8, smode, bn, bk, group), smem)) = gemv_fit(g, w, a) else {
        return Ok(false);
    };
    let (sw, bias) = (w.scales_ptr(), w.bias_ptr());
    let ldw = (w.kp * w.elem_bytes()) as i32;
    if fp8 {
        let (grid, s) = fp8_grid(g, w, smem);
        // instantiations by scale format, then input mode
        let variant = 3 * fp8_variant(smode) + a.mode as usize;
        launch!(g, gemv_fp8[variant], grid, (256, 1, 1), smem;
            a.x, a.ldx as i32, a.rows, m as i32, a.k as i32, w.kp as i32, a.mode, a.w, a.eps,
            a.up_off as i32, group as i32, w.w.p(), ldw, sw, smode, bn, bk, bias, w.n as i32,
            s as i32, out, ldc as i32, omode)?;
        return Ok(true);
    }
    // blocks for two per SM (about 100 registers a thread), whole rounds of 8 warps x 4 channels
    let cpb = w.n.div_ceil(2 * g.sm_count).div_ceil(32).max(1) * 32;
    let grid = (w.n.div_ceil(cpb) as u32, 1, 1);
    macro_rules! go {
        ($f:ident) => {
            launch!(g, $f, grid, (256, 1, 1), smem;
                a.x, a.ldx as i32, a.rows, a.k as i32, w.kp as i32, a.mode, a.w, a.eps,
                a.up_off as i32, w.w.p(), ldw, bias, w.n as i32, cpb as i32, out, ldc as i32,
                omode)
        };
    }
    match m {
        1 => go!(gemv_bf16_1)?,
        2 => go!(gemv_bf16_2)?,
        3 => go!(gemv_bf16_3)?,
        _ => go!(gemv_bf16_4)?,
    }
    Ok(true)
}

/// Static shared memory of `moe_gemv_*` (reduction scratch), counted for residency.
const MOE_GEMV_STATIC_SMEM: usize = 128;

/// Most warps (expert slots) of a `moe_gemv_*` block: `MOE_GEMV_THREADS` / 32 in `kernels.cu`,
/// whose launch bounds fit two such blocks in an SM; GLM-4.x routes 8 experts, plus 1 shared.
pub const MOE_MAX_SLOTS: usize = 9;

/// The routed experts of a MoE layer (and its shared expert) for `t` tokens, as two launches.
pub struct MoeGemv<'a> {
    pub gate_up: &'a GpuLinear,
    pub down: &'a GpuLinear,
    /// The shared expert's gate|up and down, run as one more slot of each token; it must have the
    /// routed experts' shapes and format (checked: otherwise the launch does not apply).
    pub shared: Option<(&'a GpuLinear, &'a GpuLinear)>,
    /// Intermediate width of an expert (the SiLU input's columns).
    pub inter: usize,
    /// Experts per token, and the top-k output: `ids`, `wts` [t, k] (device).
    pub k: usize,
    pub ids: u64,
    pub wts: u64,
    /// Whether one token's gate|up may run as `moe_gemv_fp8_flat` (FP8): units of (slot, 16
    /// channels) spread evenly over the SMs ([`MoeGemvConfig::flat`]).
    pub flat: bool,
    /// Whether the FP8 gate|up also applies SiLU·up itself ([`MoeGemvConfig::paired`]).
    pub paired: bool,
    /// One token's routing, begun by its O GEMV ([`gemv_route_launch`]): the flat gate|up ranks
    /// the experts itself, from the residual row (not the normed one), and writes `ids` and `wts`
    /// ([`MoeGemvConfig::routed`]).
    pub routed: Option<Route>,
}

impl MoeGemv<'_> {
    /// Whether the kernels take these weights: the same format for every part, and a shared
    /// expert shaped as a routed one; `k` slots (plus the shared one) of warps in a block, at most
    /// [`MOE_MAX_SLOTS`].
    fn applies(&self) -> bool {
        let same = Self::same_shape;
        self.slots() <= MOE_MAX_SLOTS
            && self.gate_up.format == self.down.format
            && self.gate_up.bias.is_none()
            && self.down.bias.is_none()
            && self.gate_up.parts.len() == 2
            && self
                .shared
                .is_none_or(|(gu, dn)| same(gu, self.gate_up) && same(dn, self.down))
    }

    /// Whether a shared expert's linear `a` can run as a slot beside the routed experts' `b`.
    pub fn same_shape(a: &GpuLinear, b: &GpuLinear) -> bool {
        a.format == b.format && a.n == b.n && a.k == b.k && a.kp == b.kp && a.parts == b.parts
    }

    /// Slots of a token (a warp each): the `k` routed experts, plus the shared one when it runs
    /// beside them.
    fn slots(&self) -> usize {
        self.k + usize::from(self.shared.is_some())
    }

    /// Rows of the gate|up output buffer the launch writes: `t * k` routed (+ `t` shared).
    pub fn f1_rows(&self, t: usize) -> usize {
        t * self.slots()
    }

    /// The launch configuration for `t` tokens whose rows have stride `ldx`: None when the
    /// kernels do not apply ([`MoeGemv::applies`], alignment, shared memory).
    pub fn config(&self, g: &Gpu, t: usize, ldx: usize) -> Option<MoeGemvConfig> {
        let (gu, dn) = (self.gate_up, self.down);
        let ((fp8, smode, bn, bk, gu_group), (.., dn_group)) = (format_args(gu)?, format_args(dn)?);
        let aligned = [ldx, gu.k, gu.n, gu.parts[1]]
            .iter()
            .all(|v| v.is_multiple_of(4));
        if t == 0 || !self.applies() || !aligned || dn.k != self.inter {
            return None;
        }
        let slots = self.slots();
        let unit = if fp8 { 16 } else { 4 };
        let rows_bytes = |rows: usize, l: &GpuLinear, group: usize| {
            if fp8 {
                fp8_rows_bytes(rows, l.kp, l.k, group)
            } else {
                rows * l.kp * 4
            }
        };
        // (FP8) the warps' weight rings, the staged rows, the warps' results, then (FP8) K floats
        // of staging scratch per staged row
        let smem = |warps: usize, rows: usize, l: &GpuLinear, group: usize, cpb: usize| {
            let (ring, scratch) = if fp8 {
                (warps * FP8V_RING_BYTES, rows * l.k * 4)
            } else {
                (0, 0)
            };
            ring + rows_bytes(rows, l, group) + warps * cpb * 4 + scratch
        };
        // paired: a gate|up chunk is 8 channels' gate and up rows, whose SiLU·up it writes
        let paired = fp8 && self.paired && gu.parts[1] * 2 == gu.n;
        let (gu_cols, gu_unit) = if paired {
            (gu.parts[1], 8)
        } else {
            (gu.n, unit)
        };
        // output channels per block so the blocks of all tokens are resident at once: two blocks
        // per SM (the kernels' launch bounds) where shared memory allows, else one (whole chunks
        // for FP8)
        let fit = |rows: usize, l: &GpuLinear, group: usize, cols: usize, unit: usize| {
            [2usize, 1].into_iter().find_map(|bps| {
                let cpb = (cols * t).div_ceil(bps * g.sm_count).div_ceil(unit).max(1) * unit;
                let bytes = smem(slots, rows, l, group, cpb);
                let fits =
                    bytes <= g.gemv_smem && g.blocks_per_sm(bytes + MOE_GEMV_STATIC_SMEM, 2) >= bps;
                fits.then_some((group, cpb, bytes))
            })
        };
        let mut parts = [
            fit(1, gu, gu_group, gu_cols, gu_unit)?,
            fit(slots, dn, dn_group, dn.n, unit)?,
        ];
        // one token's gate|up: the fewest warps a block (at most 16) that cover the slots x chunks
        // units with one block an SM, but no fewer than the slots (the other kernel's block, which
        // also keeps small models' blocks several warps wide), when its rings and staging fit
        let mut flat = None;
        let mut routed = false;
        if fp8 && self.flat && t == 1 {
            let units = slots * gu.n.div_ceil(16);
            let warps = units.div_ceil(g.sm_count).max(slots);
            let bytes = smem(warps, 1, gu, gu_group, 0);
            if warps <= 16 && bytes <= g.gemv_smem {
                flat = Some((warps, units.div_ceil(warps)));
                parts[0] = (gu_group, 0, bytes);
                // the routing's part: a thread an expert, with its scratch
                if let Some(r) = &self.routed {
                    let e = r.e as usize;
                    let with = bytes + route_topk_smem(gu.k, e);
                    if e.is_multiple_of(4) && 32 * warps >= e && with <= g.gemv_smem {
                        routed = true;
                        parts[0].2 = with;
                    }
                }
            }
        }
        Some(MoeGemvConfig {
            fp8,
            smode,
            bn,
            bk,
            paired,
            flat,
            routed,
            parts,
        })
    }

    /// `x[tok] += Σ_j wts[tok, j] · expert_j(xn[tok]) (+ shared(xn[tok]))` for `t` tokens with
    /// `cfg` from [`MoeGemv::config`]: `xn` and `x` (the residual stream) [t, ldx] f32, `f1` the
    /// gate|up scratch ([`MoeGemv::f1_rows`] rows of `gate_up.n`).
    pub fn launch(
        &self,
        g: &Gpu,
        cfg: &MoeGemvConfig,
        t: usize,
        (xn, ldx): (u64, usize),
        f1: u64,
        x: u64,
    ) -> Result<()> {
        let (gu, dn) = (self.gate_up, self.down);
        let slots = self.slots();
        let (sh_gu, sh_dn) = self.shared.map_or(((0, 0), (0, 0)), |(a, b)| {
            ((a.w.p(), a.scales_ptr()), (b.w.p(), b.scales_ptr()))
        });
        let block = (32 * slots as u32, 1, 1);
        let stride = |l: &GpuLinear| {
            (
                (l.n * l.kp * l.elem_bytes()) as i64,
                l.scales_per_group() as i64,
            )
        };
        let (smode, bn, bk) = (cfg.smode, cfg.bn, cfg.bk);
        // routed: the gate|up reads the residual row x, which it norms itself (xn is not written)
        let routed = self.routed.filter(|_| cfg.routed);
        for (down, l, (group, cpb, smem), (wsh, swsh)) in [
            (0i32, gu, cfg.parts[0], sh_gu),
            (1i32, dn, cfg.parts[1], sh_dn),
        ] {
            // up_off: where a gate|up row's up half starts, for the kernel that applies SiLU·up
            let (input, ld_in, k_in) = if down == 0 {
                (if routed.is_some() { x } else { xn }, ldx, gu.k)
            } else {
                (f1, gu.n, self.inter)
            };
            let up_off = if (down == 0) == cfg.paired {
                gu.parts[1]
            } else {
                0
            };
            let (output, ldo) = if down == 0 { (f1, gu.n) } else { (x, ldx) };
            let (w_gstride, sw_gstride) = stride(l);
            let flat = cfg.flat.filter(|_| down == 0);
            let cols = if down == 0 && cfg.paired {
                gu.parts[1]
            } else {
                l.n
            };
            let (grid, block) = match flat {
                Some((warps, blocks)) => ((blocks as u32, 1, 1), (32 * warps as u32, 1, 1)),
                None => ((cols.div_ceil(cpb) as u32, t as u32, 1), block),
            };
            let ldw = (l.kp * l.elem_bytes()) as i32;
            macro_rules! go {
                ($f:ident $([$i:expr])? $(, $extra:expr)*) => {
                    launch!(g, $f $([$i])?, grid, block, smem;
                        input, ld_in as i32, t as i32, self.k as i32, self.ids, self.wts,
                        k_in as i32, l.kp as i32, up_off as i32, group as i32, l.w.p(), w_gstride,
                        ldw, l.scales_ptr(), sw_gstride, wsh, swsh, smode, bn, bk, l.n as i32,
                        cpb as i32, output, ldo as i32, down $(, $extra)*)
                };
            }
            let variant = fp8_variant(smode);
            if let (Some(route), 0) = (routed, down) {
                // (it writes ids and wts, and reads neither)
                go!(moe_gemv_fp8_flat_route[variant], route)?;
            } else if flat.is_some() {
                go!(moe_gemv_fp8_flat[variant])?;
            } else if cfg.fp8 && down == 0 {
                go!(moe_gemv_fp8_gu[variant])?;
            } else if cfg.fp8 {
                // the _silu instantiations apply SiLU·up to unpaired gate|up rows
                go!(moe_gemv_fp8_dn[variant + 2 * usize::from(up_off > 0)])?;
            } else {
                go!(moe_gemv_bf16)?;
            }
        }
        Ok(())
    }
}

/// How [`MoeGemv::launch`] runs: the format's kernel arguments, and per kernel (gate|up, down) the
/// activation group, channels per block and dynamic shared memory.
pub struct MoeGemvConfig {
    fp8: bool,
    smode: i32,
    bn: i32,
    bk: i32,
    /// One token's gate|up as `moe_gemv_fp8_flat`: (warps a block, blocks).
    flat: Option<(usize, usize)>,
    /// Whether the FP8 gate|up writes SiLU(gate)·up (its chunks 8 channels' gate and up rows),
    /// so the down kernel loads half a row and applies no SiLU (`moe_gemv_impl`).
    paired: bool,
    /// Whether the flat gate|up ranks the experts itself ([`MoeGemv::routed`]; where its blocks
    /// have a thread an expert and its scratch fits).
    routed: bool,
    parts: [(usize, usize, usize); 2],
}

impl MoeGemvConfig {
    /// Whether gate|up runs as `moe_gemv_fp8_flat`, and with how many warps a block.
    pub fn flat(&self) -> Option<usize> {
        self.flat.map(|(warps, _)| warps)
    }

    /// Whether the gate|up applies SiLU·up ([`MoeGemv::paired`]).
    pub fn paired(&self) -> bool {
        self.paired
    }

    /// Whether the flat gate|up ranks the experts itself ([`MoeGemv::routed`]).
    pub fn routed(&self) -> bool {
        self.routed
    }
}
