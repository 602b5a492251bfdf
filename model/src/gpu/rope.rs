//! RoPE and the KV-cache write: what `rope_kv` does after the QKV projection, and what the batch-1
//! QKV GEMV does in its epilogue instead (`gemv_fp8_qkv`, [`crate::gpu::gemv_qkv_launch`]).
//!
//! Why a second path: at batch 1 every decode layer's `rope_kv` is one more launch on the critical
//! path (its wait, its loads of q, k and v, its writes). The GEMV's mma fragment gives a lane two
//! rows of a 16-row chunk, 8 apart; storing each q and k head's rotary rows "paired" (dim `i` at row
//! `r`, its NeoX partner `i + rot / 2` at row `r + 8` of the same chunk, [`paired_rows`]) puts both
//! dims of a rotary pair in one lane, which turns them and writes q and the cache itself. The rows
//! are reordered once at load, with their scales and bias; `rope_kv` reads the paired order for the
//! steps the GEMV does not take. Models with QK-norm keep the checkpoint's order: the norm needs
//! the whole head.

use crate::config::Glm4MoeConfig;
use crate::error::Result;
use crate::gpu::device::Gpu;
use crate::launch;

/// Where q, k and v of a step go (`QkvOut` in `kernels.cu`, passed by value): q `[T, nh · d]` f32,
/// k and v to the caches `[slots, nkv, d]` at `slots[t]` (skipped when negative), BF16, or E4M3 with
/// unit scale when `kv_fp8`; RoPE by `pos[t]` over the first `rot` dims of q and k heads.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QkvOut {
    pub pos: u64,
    pub slots: u64,
    pub q: u64,
    pub kc: u64,
    pub vc: u64,
    pub nh: i32,
    pub nkv: i32,
    pub d: i32,
    pub rot: i32,
    pub kv_fp8: i32,
    pub theta: f32,
}

/// Whether a model's QKV rows can be stored paired: no QK-norm, and heads and rotary dims in whole
/// 16-row chunks.
pub fn pairs_rotary_rows(c: &Glm4MoeConfig) -> bool {
    let rot = c.rotary_dim();
    !c.use_qk_norm && rot > 0 && rot.is_multiple_of(16) && c.head_dim.is_multiple_of(16)
}

/// The paired row order of a fused QKV weight of `n` rows whose q heads start at row 0 and k
/// heads at `k_off`: entry `r` is the checkpoint row stored at row `r` (`rope_row` in
/// `kernels.cu` is its inverse within a head).
pub fn paired_rows(
    n: usize,
    (nh, nkv, d, rot): (usize, usize, usize, usize),
    k_off: usize,
) -> Vec<usize> {
    let half = rot / 2;
    let mut order: Vec<usize> = (0..n).collect();
    let heads = (0..nh)
        .map(|h| h * d)
        .chain((0..nkv).map(|h| k_off + h * d));
    for base in heads {
        for r in 0..rot {
            let (chunk, row) = (r / 16, r % 16);
            order[base + r] = base + chunk * 8 + (row % 8) + if row >= 8 { half } else { 0 };
        }
    }
    order
}

/// `rope_kv` over `t` tokens of the QKV output `qkv` `[t, ldq]` (q at column 0, k at `k_off`, v
/// at `v_off`; rotary rows paired when `paired`), with QK-norm weights `qk_norm` (0: none).
pub fn rope_kv_launch(
    g: &Gpu,
    t: usize,
    (qkv, ldq, k_off, v_off): (u64, usize, usize, usize),
    out: &QkvOut,
    (q_norm, k_norm, eps): (u64, u64, f32),
    paired: bool,
) -> Result<()> {
    let heads = (out.nh + 2 * out.nkv) as u32;
    launch!(g, rope_kv, (t as u32, heads.div_ceil(8), 1), (256, 1, 1), 8 * out.d * 4;
        qkv, ldq as i32, k_off as i32, v_off as i32, *out, q_norm, k_norm, eps, i32::from(paired))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_rows_put_rotary_partners_eight_rows_apart() {
        // 2 q heads and 1 k head of 128 dims, 64 rotary, k heads from row 256, v after
        let order = paired_rows(512, (2, 1, 128, 64), 256);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..512).collect::<Vec<_>>(), "a permutation");
        for base in [0, 128, 256] {
            for chunk in 0..4 {
                for r in 0..8 {
                    let row = base + chunk * 16 + r;
                    assert_eq!(order[row], base + chunk * 8 + r);
                    assert_eq!(order[row + 8], order[row] + 32, "the NeoX partner");
                }
            }
            // the head's other dims, and v, stay put
            assert!((base + 64..base + 128).all(|r| order[r] == r));
        }
        assert!((384..512).all(|r| order[r] == r));
    }
}
