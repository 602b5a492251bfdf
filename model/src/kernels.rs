//! The hot-path operations of the model, behind one trait so that device-specific kernels (CUDA:
//! fused RMSNorm/RoPE, paged attention, grouped MoE GEMMs, FP8 GEMMs) can replace them. [`Reference`]
//! is the plain-burn twin every fast kernel is tested against; it is also what runs on the CPU.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::kv_cache::LayerKv;
use crate::linear::{Fp8Activations, Linear};

/// Per-sequence attention metadata for one batch (built once per forward, shared by every layer).
pub struct SeqAttn<B: Backend> {
    /// Rows of this sequence's new tokens in the flattened batch.
    pub rows: std::ops::Range<usize>,
    /// Context length after this step (`start_pos + new tokens`).
    pub ctx_len: usize,
    /// KV slots of positions `0..ctx_len`.
    pub ctx_slots: Tensor<B, 1, Int>,
    /// `[new_tokens * group, ctx_len]`: true where a query may NOT attend (future positions).
    pub mask: Option<Tensor<B, 2, Bool>>,
}

pub struct AttnBatch<B: Backend> {
    pub seqs: Vec<SeqAttn<B>>,
    /// KV slots to write, one per written row.
    pub new_slots: Tensor<B, 1, Int>,
    /// Which rows of the batch's K/V to write (`None`: all, in order). Two sequences of one batch can
    /// compute the same slot (a prefix-cache hit always recomputes its last prompt token, possibly in a
    /// block a sibling is filling in the same step); the values are identical, and only the last is written.
    pub write_rows: Option<Tensor<B, 1, Int>>,
    /// `[T, rotary_dim / 2]` RoPE tables for the new tokens' positions.
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
}

/// The operations a device backend may accelerate. Shapes: `T` tokens in the batch, `H` hidden,
/// `h`/`kvh` query/KV heads, `d` head dim.
pub trait Kernels<B: Backend>: Send + Sync {
    /// `x [T, H]`, `w [H]` -> `[T, H]`: `w * x / sqrt(mean(x²) + eps)`.
    fn rms_norm(&self, x: Tensor<B, 2>, w: &Tensor<B, 1>, eps: f32) -> Tensor<B, 2>;
    /// Per-head RMSNorm over `d` for `x [T, heads, d]` (QK-norm).
    fn head_rms_norm(&self, x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f32) -> Tensor<B, 3>;
    /// NeoX (half-split) RoPE on the first `2 * cos.dims()[1]` dims of `x [T, heads, d]`.
    fn rope(&self, x: Tensor<B, 3>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 3>;
    /// `y = x Wᵀ + b`.
    fn linear(&self, x: Tensor<B, 2>, w: &Linear<B>, act: Fp8Activations) -> Tensor<B, 2>;
    /// `down(silu(gate(x)) * up(x))`.
    fn swiglu(
        &self,
        x: Tensor<B, 2>,
        gate: &Linear<B>,
        up: &Linear<B>,
        down: &Linear<B>,
        act: Fp8Activations,
    ) -> Tensor<B, 2> {
        let g = self.linear(x.clone(), gate, act);
        let u = self.linear(x, up, act);
        self.linear(silu(g) * u, down, act)
    }
    /// Writes `k, v [T, kvh, d]` into the cache slots `slots [T]`.
    fn write_kv(
        &self,
        cache: &mut LayerKv<B>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        slots: &Tensor<B, 1, Int>,
    );
    /// Causal GQA attention of `q [T, h, d]` over each sequence's cached context -> `[T, h, d]`.
    fn paged_attention(
        &self,
        q: Tensor<B, 3>,
        cache: &LayerKv<B>,
        batch: &AttnBatch<B>,
        scale: f32,
    ) -> Tensor<B, 3>;
}

/// Plain burn tensor ops.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reference;

impl<B: Backend> Kernels<B> for Reference {
    fn rms_norm(&self, x: Tensor<B, 2>, w: &Tensor<B, 1>, eps: f32) -> Tensor<B, 2> {
        let var = x.clone().powi_scalar(2).mean_dim(1);
        x * (var + eps).sqrt().recip() * w.clone().unsqueeze_dim(0)
    }

    fn head_rms_norm(&self, x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f32) -> Tensor<B, 3> {
        let var = x.clone().powi_scalar(2).mean_dim(2);
        x * (var + eps).sqrt().recip() * w.clone().unsqueeze_dims::<3>(&[0, 1])
    }

    fn rope(&self, x: Tensor<B, 3>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 3> {
        let [t, heads, d] = x.dims();
        let half = cos.dims()[1];
        let rot = 2 * half;
        let cos = cos.clone().unsqueeze_dim::<3>(1);
        let sin = sin.clone().unsqueeze_dim::<3>(1);
        let x1 = x.clone().slice([0..t, 0..heads, 0..half]);
        let x2 = x.clone().slice([0..t, 0..heads, half..rot]);
        let o1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let o2 = x2 * cos + x1 * sin;
        if rot == d {
            Tensor::cat(vec![o1, o2], 2)
        } else {
            let pass = x.slice([0..t, 0..heads, rot..d]);
            Tensor::cat(vec![o1, o2, pass], 2)
        }
    }

    fn linear(&self, x: Tensor<B, 2>, w: &Linear<B>, act: Fp8Activations) -> Tensor<B, 2> {
        w.forward(x, act)
    }

    fn write_kv(
        &self,
        cache: &mut LayerKv<B>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        slots: &Tensor<B, 1, Int>,
    ) {
        // burn's select_assign adds on some backends whatever op is asked for; writing the difference
        // to the old contents with `Add` is correct under either semantics.
        use burn::tensor::IndexingUpdateOp;
        for (cache_t, new) in [(&mut cache.k, k), (&mut cache.v, v)] {
            cache_t.inplace(|c| {
                let old = c.clone().select(0, slots.clone());
                c.select_assign(0, slots.clone(), new - old, IndexingUpdateOp::Add)
            });
        }
    }

    fn paged_attention(
        &self,
        q: Tensor<B, 3>,
        cache: &LayerKv<B>,
        batch: &AttnBatch<B>,
        scale: f32,
    ) -> Tensor<B, 3> {
        let [_, heads, d] = q.dims();
        let kvh = cache.k.dims()[1];
        let group = heads / kvh;
        let mut outs = Vec::with_capacity(batch.seqs.len());
        for s in &batch.seqs {
            let n = s.rows.len();
            // q: [n, h, d] -> [n, kvh, group, d] -> [kvh, group, n, d] -> [kvh, group*n, d]
            let qs = q
                .clone()
                .slice([s.rows.clone(), 0..heads, 0..d])
                .reshape([n, kvh, group, d])
                .permute([1, 2, 0, 3])
                .reshape([kvh, group * n, d]);
            let k = cache
                .k
                .clone()
                .select(0, s.ctx_slots.clone())
                .swap_dims(0, 1); // [kvh, ctx, d]
            let v = cache
                .v
                .clone()
                .select(0, s.ctx_slots.clone())
                .swap_dims(0, 1);
            let mut scores = qs.matmul(k.swap_dims(1, 2)) * scale; // [kvh, group*n, ctx]
            if let Some(mask) = &s.mask {
                scores = scores.mask_fill(
                    mask.clone()
                        .unsqueeze_dim::<3>(0)
                        .expand([kvh, group * n, s.ctx_len]),
                    f32::NEG_INFINITY,
                );
            }
            let p = softmax(scores, 2);
            let o = p.matmul(v); // [kvh, group*n, d]
            let o = o
                .reshape([kvh, group, n, d])
                .permute([2, 0, 1, 3])
                .reshape([n, heads, d]);
            outs.push(o);
        }
        Tensor::cat(outs, 0)
    }
}

/// Builds the per-batch attention metadata on the host.
pub(crate) fn causal_mask<B: Backend>(
    n: usize,
    group: usize,
    start: usize,
    ctx: usize,
    device: &B::Device,
) -> Option<Tensor<B, 2, Bool>> {
    if n == 1 {
        return None; // a single new token sees the whole context
    }
    let mut m = vec![false; group * n * ctx];
    for g in 0..group {
        for j in 0..n {
            let row = g * n + j;
            for p in (start + j + 1)..ctx {
                m[row * ctx + p] = true;
            }
        }
    }
    Some(Tensor::from_data(
        TensorData::new(m, [group * n, ctx]),
        device,
    ))
}
