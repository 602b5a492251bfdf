//! Linear layers on the device. A [`GpuLinear`] is one GEMM's weight: several checkpoint tensors fused
//! along the output (q|k|v, gate|up) and, for MoE experts, stacked into groups (one per expert), so a
//! whole layer's experts are one grouped GEMM. Rows are `[N, Kp]` with K padded to 16 elements (the
//! GEMM's 16-byte copies); block-scaled FP8 parts are padded to whole scale blocks so the fused
//! tensor keeps the checkpoint's block grid.

use crate::error::{ModelError, Result};
use crate::gpu::device::{DevBuf, Gpu};
use crate::linear::{Fp8Scales, Linear, LinearWeight};
use crate::CpuBackend;

/// Activation format codes shared with `kernels.cu`.
pub const FMT_F32: i32 = 0;
pub const FMT_BF16: i32 = 1;
pub const FMT_FP8: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Bf16,
    /// E4M3 with one scale per output row; activations quantized per token.
    Fp8Channel,
    /// E4M3 with one scale per `[bn, bk]` block; activations quantized per token and `bk` columns.
    Fp8Block {
        bn: usize,
        bk: usize,
    },
}

pub struct GpuLinear {
    pub format: WeightFormat,
    /// Output rows per group, padding included.
    pub n: usize,
    /// Input columns (real) and the padded row length in elements.
    pub k: usize,
    pub kp: usize,
    pub groups: usize,
    /// First row of each fused part.
    pub parts: Vec<usize>,
    pub w: DevBuf,
    pub scales: Option<DevBuf>,
    pub bias: Option<DevBuf>,
}

pub fn pad16(k: usize) -> usize {
    k.div_ceil(16) * 16
}

impl GpuLinear {
    pub fn elem_bytes(&self) -> usize {
        match self.format {
            WeightFormat::Bf16 => 2,
            _ => 1,
        }
    }

    /// How the GEMM and GEMV kernels take this weight: (e4m3 bytes, scale mode: 0 none, 1 one per
    /// output row, 2 one per `[bn, bk]` block; bn, bk).
    pub fn scale_mode(&self) -> (bool, i32, usize, usize) {
        match self.format {
            WeightFormat::Bf16 => (false, 0, 0, 0),
            WeightFormat::Fp8Channel => (true, 1, 0, 0),
            WeightFormat::Fp8Block { bn, bk } => (true, 2, bn, bk),
        }
    }

    /// Device addresses of the weight scales and of the bias, 0 for none (as kernels take them).
    pub fn scales_ptr(&self) -> u64 {
        self.scales.as_ref().map_or(0, |s| s.p())
    }

    pub fn bias_ptr(&self) -> u64 {
        self.bias.as_ref().map_or(0, |s| s.p())
    }

    /// `(format code, group)` of the activations this weight multiplies.
    pub fn act_format(&self) -> (i32, usize) {
        match self.format {
            WeightFormat::Bf16 => (FMT_BF16, self.k),
            WeightFormat::Fp8Channel => (FMT_FP8, self.k),
            WeightFormat::Fp8Block { bk, .. } => (FMT_FP8, bk),
        }
    }

    /// Activation scales per row.
    pub fn act_groups(&self) -> usize {
        match self.format {
            WeightFormat::Bf16 => 0,
            WeightFormat::Fp8Channel => 1,
            WeightFormat::Fp8Block { bk, .. } => self.k.div_ceil(bk),
        }
    }

    /// Weight scales per group.
    pub fn scales_per_group(&self) -> usize {
        match self.format {
            WeightFormat::Bf16 => 0,
            WeightFormat::Fp8Channel => self.n,
            WeightFormat::Fp8Block { bn, bk } => self.n.div_ceil(bn) * self.k.div_ceil(bk),
        }
    }

    pub fn bytes(&self) -> usize {
        self.w.bytes()
            + self.scales.as_ref().map_or(0, |s| s.bytes())
            + self.bias.as_ref().map_or(0, |s| s.bytes())
    }

    /// Random weights made on the device (`--load-format dummy`): values uniform in ±1/√k.
    pub fn dummy(
        g: &Gpu,
        format: WeightFormat,
        part_rows: &[usize],
        k: usize,
        groups: usize,
        bias: bool,
        seed: u64,
    ) -> Result<Self> {
        let align = match format {
            WeightFormat::Fp8Block { bn, .. } => bn,
            _ => 1,
        };
        let (parts, n) = layout(part_rows, align);
        let kp = pad16(k);
        let mut l = Self {
            format,
            n,
            k,
            kp,
            groups,
            parts,
            w: DevBuf::zeros(
                g,
                groups * n * kp * if format == WeightFormat::Bf16 { 2 } else { 1 },
            )?,
            scales: None,
            bias: None,
        };
        let amp = 1.0 / (k as f32).sqrt();
        let elems = (groups * n * kp) as u64;
        let grid = ((elems / 256).clamp(1, 65_535) as u32, 1, 1);
        match format {
            WeightFormat::Bf16 => {
                crate::launch!(g, fill_bf16, grid, (256, 1, 1), 0; l.w.p(), elems, seed, amp)?
            }
            _ => {
                crate::launch!(g, fill_fp8, grid, (256, 1, 1), 0; l.w.p(), elems, seed)?;
                let ns = groups * l.scales_per_group();
                let s = DevBuf::zeros(g, ns * 4)?;
                fill_const(g, s.p(), ns, amp / 448.0)?;
                l.scales = Some(s);
            }
        }
        if bias {
            l.bias = Some(DevBuf::zeros(g, n * 4)?);
        }
        Ok(l)
    }

    /// Uploads checkpoint linears: `groups[g]` are the parts fused in group g (same parts and input
    /// width in every group). FP8 parts keep their bytes and scales when every part agrees on the
    /// scheme (and block sizes suit the kernel); anything else goes to the device as BF16.
    pub fn upload(g: &Gpu, groups: &[Vec<&Linear<CpuBackend>>]) -> Result<Self> {
        Ok(Self::upload_ordered(g, groups, None)?.0)
    }

    /// [`GpuLinear::upload`] with the fused rows stored in the order `order` gives for the parts'
    /// row offsets and the fused rows `n` (entry `r`: the fused row stored at row `r`, a
    /// permutation of all `n`), their scales and bias with them; and whether they are. Block
    /// scales stay where they are: an order that moves a row out of its block of rows is not
    /// applied.
    pub fn upload_ordered(
        g: &Gpu,
        groups: &[Vec<&Linear<CpuBackend>>],
        order: Option<&RowOrder>,
    ) -> Result<(Self, bool)> {
        let first = &groups[0];
        let k = in_features(first[0]);
        let part_rows: Vec<usize> = first.iter().map(|l| out_features(l)).collect();
        let format = common_format(groups.iter().flatten().copied());
        let align = match format {
            WeightFormat::Fp8Block { bn, .. } => bn,
            _ => 1,
        };
        let (parts, n) = layout(&part_rows, align);
        let kp = pad16(k);
        let elem = if format == WeightFormat::Bf16 { 2 } else { 1 };
        let mut w = vec![0u8; groups.len() * n * kp * elem];
        let mut scales: Vec<f32> = Vec::new();
        let mut bias: Option<Vec<f32>> = None;
        for (gi, group) in groups.iter().enumerate() {
            if group.len() != parts.len() {
                return Err(ModelError::Input("fused groups differ in parts".into()));
            }
            let base = gi * n * kp * elem;
            let mut gscales = vec![0f32; scales_len(format, n, k)];
            for (pi, l) in group.iter().enumerate() {
                let (rows, r0) = (out_features(l), parts[pi]);
                if in_features(l) != k || rows != part_rows[pi] {
                    return Err(ModelError::Input("fused parts differ in shape".into()));
                }
                match (&l.weight, format) {
                    (LinearWeight::Fp8(fw), WeightFormat::Fp8Channel) => {
                        let Fp8Scales::Channel(s) = &fw.scales else {
                            unreachable!("common_format checked the scheme")
                        };
                        for r in 0..rows {
                            let dst = base + (r0 + r) * kp;
                            w[dst..dst + k].copy_from_slice(&fw.bytes[r * k..(r + 1) * k]);
                        }
                        gscales[r0..r0 + rows].copy_from_slice(s);
                    }
                    (LinearWeight::Fp8(fw), WeightFormat::Fp8Block { bn, bk }) => {
                        let Fp8Scales::Block { scales: s, .. } = &fw.scales else {
                            unreachable!("common_format checked the scheme")
                        };
                        for r in 0..rows {
                            let dst = base + (r0 + r) * kp;
                            w[dst..dst + k].copy_from_slice(&fw.bytes[r * k..(r + 1) * k]);
                        }
                        let (nkb, rb) = (k.div_ceil(bk), rows.div_ceil(bn));
                        let b0 = r0 / bn;
                        gscales[b0 * nkb..(b0 + rb) * nkb].copy_from_slice(&s[..rb * nkb]);
                    }
                    (_, WeightFormat::Bf16) => {
                        let vals = dense_values(l);
                        for r in 0..rows {
                            for c in 0..k {
                                let b = half::bf16::from_f32(vals[r * k + c])
                                    .to_bits()
                                    .to_le_bytes();
                                let dst = base + ((r0 + r) * kp + c) * 2;
                                w[dst..dst + 2].copy_from_slice(&b);
                            }
                        }
                    }
                    _ => unreachable!("common_format picked a format every part has"),
                }
                if let Some(b) = &l.bias {
                    let bv: Vec<f32> = b
                        .to_data()
                        .convert::<f32>()
                        .to_vec()
                        .map_err(|e| ModelError::Input(format!("bias values: {e:?}")))?;
                    let all = bias.get_or_insert_with(|| vec![0f32; n]);
                    all[r0..r0 + rows].copy_from_slice(&bv);
                }
            }
            scales.extend(gscales);
        }
        let order = order.map(|f| f(&parts, n)).filter(|order| match format {
            WeightFormat::Fp8Block { bn, .. } => {
                order.iter().enumerate().all(|(r, &o)| r / bn == o / bn)
            }
            _ => true,
        });
        if let Some(order) = &order {
            reorder_rows(
                &mut w,
                &mut scales,
                bias.as_mut(),
                (n, kp * elem),
                format,
                order,
            )?;
        }
        let linear = Self {
            format,
            n,
            k,
            kp,
            groups: groups.len(),
            parts,
            w: DevBuf::from_host(g, &w)?,
            scales: (!scales.is_empty())
                .then(|| DevBuf::from_host(g, &scales))
                .transpose()?,
            bias: bias.map(|b| DevBuf::from_host(g, &b)).transpose()?,
        };
        Ok((linear, order.is_some()))
    }
}

/// A stored row order from a fused weight's part offsets and rows ([`GpuLinear::upload_ordered`]).
pub type RowOrder = dyn Fn(&[usize], usize) -> Vec<usize>;

/// Stores row `order[r]` of each group of `n` rows (`row_bytes` each) at row `r`, with its
/// per-channel scale and bias (block scales stay where they are: the caller keeps each row in its
/// block).
fn reorder_rows(
    w: &mut [u8],
    scales: &mut [f32],
    bias: Option<&mut Vec<f32>>,
    (n, row_bytes): (usize, usize),
    format: WeightFormat,
    order: &[usize],
) -> Result<()> {
    let mut seen = vec![false; n];
    for &o in order {
        if o >= n || std::mem::replace(&mut seen[o], true) {
            return Err(ModelError::Input(
                "a row order that is not a permutation".into(),
            ));
        }
    }
    if order.len() != n {
        return Err(ModelError::Input("a row order of the wrong length".into()));
    }
    for group in w.chunks_mut(n * row_bytes) {
        let moved: Vec<u8> = order
            .iter()
            .flat_map(|&o| group[o * row_bytes..(o + 1) * row_bytes].iter().copied())
            .collect();
        group.copy_from_slice(&moved);
    }
    if format == WeightFormat::Fp8Channel {
        for group in scales.chunks_mut(n) {
            let moved: Vec<f32> = order.iter().map(|&o| group[o]).collect();
            group.copy_from_slice(&moved);
        }
    }
    if let Some(b) = bias {
        *b = order.iter().map(|&o| b[o]).collect();
    }
    Ok(())
}

fn scales_len(f: WeightFormat, n: usize, k: usize) -> usize {
    match f {
        WeightFormat::Bf16 => 0,
        WeightFormat::Fp8Channel => n,
        WeightFormat::Fp8Block { bn, bk } => n.div_ceil(bn) * k.div_ceil(bk),
    }
}

/// Row offsets of parts padded to `align` rows, and the total.
fn layout(rows: &[usize], align: usize) -> (Vec<usize>, usize) {
    let mut parts = Vec::with_capacity(rows.len());
    let mut n = 0;
    for &r in rows {
        parts.push(n);
        n += r.div_ceil(align) * align;
    }
    (parts, n)
}

fn out_features(l: &Linear<CpuBackend>) -> usize {
    match &l.weight {
        LinearWeight::Dense(t) => t.dims()[0],
        LinearWeight::Fp8(w) => w.out_features,
    }
}

fn in_features(l: &Linear<CpuBackend>) -> usize {
    match &l.weight {
        LinearWeight::Dense(t) => t.dims()[1],
        LinearWeight::Fp8(w) => w.in_features,
    }
}

fn dense_values(l: &Linear<CpuBackend>) -> Vec<f32> {
    match &l.weight {
        LinearWeight::Dense(t) => t
            .to_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 tensor data"),
        LinearWeight::Fp8(w) => w.dequantize(),
    }
}

/// The format every part can be uploaded in without dequantizing, else BF16.
fn common_format<'a>(mut ls: impl Iterator<Item = &'a Linear<CpuBackend>>) -> WeightFormat {
    let Some(first) = ls.next() else {
        return WeightFormat::Bf16;
    };
    let f = |l: &Linear<CpuBackend>| match &l.weight {
        LinearWeight::Dense(_) => WeightFormat::Bf16,
        LinearWeight::Fp8(w) => match &w.scales {
            Fp8Scales::Channel(_) => WeightFormat::Fp8Channel,
            // the GEMM folds scales per 32-column mma step inside 128-byte tiles, and one N block
            // per scale row
            Fp8Scales::Block { block, .. }
                if block[1] % 32 == 0 && 128 % block[1] == 0 && block[0] > 0 =>
            {
                WeightFormat::Fp8Block {
                    bn: block[0],
                    bk: block[1],
                }
            }
            Fp8Scales::Block { .. } => WeightFormat::Bf16,
        },
    };
    let want = f(first);
    if ls.all(|l| f(l) == want) {
        want
    } else {
        WeightFormat::Bf16
    }
}

/// Fills `n` f32 at `ptr` with `v`.
pub fn fill_const(g: &Gpu, ptr: u64, n: usize, v: f32) -> Result<()> {
    let grid = ((n as u64 / 256).clamp(1, 65_535) as u32, 1, 1);
    crate::launch!(g, fill_f32, grid, (256, 1, 1), 0; ptr, n as u64, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorder_rows_moves_bytes_scales_and_bias_together() {
        // two groups of 3 rows of 2 bytes; stored row r is row order[r]
        let mut w: Vec<u8> = (0..12).collect();
        let mut scales = vec![0.1, 0.2, 0.3, 1.1, 1.2, 1.3];
        let mut bias = vec![10.0, 20.0, 30.0];
        let order = [2, 0, 1];
        let f = WeightFormat::Fp8Channel;
        reorder_rows(&mut w, &mut scales, Some(&mut bias), (3, 2), f, &order).unwrap();
        assert_eq!(w, [4, 5, 0, 1, 2, 3, 10, 11, 6, 7, 8, 9]);
        assert_eq!(scales, [0.3, 0.1, 0.2, 1.3, 1.1, 1.2]);
        assert_eq!(bias, [30.0, 10.0, 20.0]);
        // block scales stay where they are
        let mut blocks = vec![0.5, 0.7];
        let f = WeightFormat::Fp8Block { bn: 128, bk: 128 };
        reorder_rows(&mut w, &mut blocks, None, (3, 2), f, &order).unwrap();
        assert_eq!(blocks, [0.5, 0.7]);
        // not a permutation, or the wrong length
        for bad in [&[0, 0, 1][..], &[0, 1][..], &[0, 1, 3][..]] {
            let f = WeightFormat::Bf16;
            assert!(reorder_rows(&mut w, &mut [], None, (3, 2), f, bad).is_err());
        }
    }
}
