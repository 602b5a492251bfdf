//! Linear layers as checkpoints store them: `[out, in]` weights in high precision, or FP8-E4M3 with
//! per-channel (`weight_scale`) or block (`weight_scale_inv`) scales. FP8 weights stay FP8 in memory;
//! the reference path dequantizes on the fly (weight-only) or also quantizes activations per token
//! (W8A8, the checkpoints' own semantics). GPU kernels replace `forward` behind [`crate::kernels::Kernels`].

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::fp8;

/// How FP8 weights meet activations on the reference path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fp8Activations {
    /// Dequantize the weight, keep activations in full precision (W8A16).
    #[default]
    WeightOnly,
    /// Quantize activations dynamically per token (per token and `block[1]` channels for block FP8) and
    /// multiply quantized values, as the FP8 tensor-core GEMMs do (W8A8).
    Dynamic,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fp8Scales {
    /// One multiplier per output row.
    Channel(Vec<f32>),
    /// `[ceil(out/b0), ceil(in/b1)]` multipliers, row-major.
    Block { block: [usize; 2], scales: Vec<f32> },
}

/// An FP8-E4M3 weight `[out, in]`, kept as bytes.
#[derive(Debug, Clone)]
pub struct Fp8Weight {
    pub out_features: usize,
    pub in_features: usize,
    pub bytes: Arc<[u8]>,
    pub scales: Fp8Scales,
}

impl Fp8Weight {
    /// Dequantized weight `[out, in]` as row-major f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let (o, i) = (self.out_features, self.in_features);
        let mut w = vec![0f32; o * i];
        for r in 0..o {
            for c in 0..i {
                w[r * i + c] = fp8::e4m3_to_f32(self.bytes[r * i + c]) * self.scale_at(r, c);
            }
        }
        w
    }

    fn scale_at(&self, r: usize, c: usize) -> f32 {
        match &self.scales {
            Fp8Scales::Channel(s) => s[r],
            Fp8Scales::Block { block, scales } => {
                let nbi = self.in_features.div_ceil(block[1]);
                scales[(r / block[0]) * nbi + c / block[1]]
            }
        }
    }

    /// The raw E4M3 values (unscaled) as f32 `[out, in]`.
    fn values(&self) -> Vec<f32> {
        self.bytes.iter().map(|&b| fp8::e4m3_to_f32(b)).collect()
    }
}

#[derive(Debug, Clone)]
pub enum LinearWeight<B: Backend> {
    /// `[out, in]`.
    Dense(Tensor<B, 2>),
    Fp8(Fp8Weight),
}

#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    pub weight: LinearWeight<B>,
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    pub fn out_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[0],
            LinearWeight::Fp8(w) => w.out_features,
        }
    }

    pub fn in_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[1],
            LinearWeight::Fp8(w) => w.in_features,
        }
    }

    pub fn is_fp8(&self) -> bool {
        matches!(self.weight, LinearWeight::Fp8(_))
    }

    /// Reference forward: `x [T, in] -> [T, out]`.
    pub fn forward(&self, x: Tensor<B, 2>, act: Fp8Activations) -> Tensor<B, 2> {
        let device = x.device();
        let y = match &self.weight {
            LinearWeight::Dense(w) => x.matmul(w.clone().transpose()),
            LinearWeight::Fp8(w) => match act {
                Fp8Activations::WeightOnly => {
                    let deq = Tensor::<B, 2>::from_data(
                        TensorData::new(w.dequantize(), [w.out_features, w.in_features]),
                        &device,
                    );
                    x.matmul(deq.transpose())
                }
                Fp8Activations::Dynamic => w8a8(x, w),
            },
        };
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim(0),
            None => y,
        }
    }
}

/// W8A8 emulation: activations rounded to E4M3 after a per-token (per-group for block FP8) scale;
/// products of E4M3 values are exact in f32, so this matches FP8 tensor cores up to accumulation order.
fn w8a8<B: Backend>(x: Tensor<B, 2>, w: &Fp8Weight) -> Tensor<B, 2> {
    let device = x.device();
    let [t, k] = x.dims();
    let xs: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 activations");
    let (o, wv) = (w.out_features, w.values());
    match &w.scales {
        Fp8Scales::Channel(ws) => {
            let mut xq = vec![0f32; t * k];
            let mut st = vec![0f32; t];
            for r in 0..t {
                st[r] = fp8::quantize_row(&xs[r * k..(r + 1) * k], &mut xq[r * k..(r + 1) * k]);
            }
            let xq = Tensor::<B, 2>::from_data(TensorData::new(xq, [t, k]), &device);
            let wq = Tensor::<B, 2>::from_data(TensorData::new(wv, [o, k]), &device);
            let s_t = Tensor::<B, 2>::from_data(TensorData::new(st, [t, 1]), &device);
            let s_w = Tensor::<B, 2>::from_data(TensorData::new(ws.clone(), [1, o]), &device);
            xq.matmul(wq.transpose()) * s_t * s_w
        }
        Fp8Scales::Block { block, scales } => {
            let (bo, bi) = (block[0], block[1]);
            let nbi = k.div_ceil(bi);
            let mut acc = Tensor::<B, 2>::zeros([t, o], &device);
            for g in 0..nbi {
                let (c0, c1) = (g * bi, ((g + 1) * bi).min(k));
                let kw = c1 - c0;
                let mut xq = vec![0f32; t * kw];
                let mut st = vec![0f32; t];
                for r in 0..t {
                    st[r] = fp8::quantize_row(
                        &xs[r * k + c0..r * k + c1],
                        &mut xq[r * kw..(r + 1) * kw],
                    );
                }
                let mut wg = vec![0f32; o * kw];
                for r in 0..o {
                    wg[r * kw..(r + 1) * kw].copy_from_slice(&wv[r * k + c0..r * k + c1]);
                }
                let sw: Vec<f32> = (0..o).map(|r| scales[(r / bo) * nbi + g]).collect();
                let xq = Tensor::<B, 2>::from_data(TensorData::new(xq, [t, kw]), &device);
                let wg = Tensor::<B, 2>::from_data(TensorData::new(wg, [o, kw]), &device);
                let s_t = Tensor::<B, 2>::from_data(TensorData::new(st, [t, 1]), &device);
                let s_w = Tensor::<B, 2>::from_data(TensorData::new(sw, [1, o]), &device);
                acc = acc + xq.matmul(wg.transpose()) * s_t * s_w;
            }
            acc
        }
    }
}
