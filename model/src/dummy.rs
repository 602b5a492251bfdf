//! Random parameters from a config alone (`--load-format dummy`, like vLLM's): every tensor the real
//! checkpoint would hold, with values scaled so activations stay O(1) through the layers. FP8 configs get
//! FP8 weights with plausible scales, so memory and kernels behave as with the real checkpoint.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use rand::{Rng, SeedableRng};

use crate::config::{Glm4MoeConfig, Quantization};
use crate::error::Result;
use crate::fp8;
use crate::linear::{Fp8Scales, Fp8Weight, Linear, LinearWeight};
use crate::loader::ParamSource;

pub struct DummySource<B: Backend> {
    device: B::Device,
    quant: Quantization,
    use_qk_norm: bool,
    rng: rand::rngs::StdRng,
}

impl<B: Backend> DummySource<B> {
    pub fn new(cfg: &Glm4MoeConfig, device: B::Device, seed: u64) -> Self {
        B::seed(&device, seed);
        Self {
            device,
            quant: cfg.quantization.clone(),
            use_qk_norm: cfg.use_qk_norm,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    fn is_fp8_target(&self, prefix: &str) -> bool {
        // the FP8 checkpoints quantize attention and MLP/expert projections only (glm.md §4.3)
        !matches!(self.quant, Quantization::None)
            && !prefix.contains("lm_head")
            && !prefix.contains("eh_proj")
            && !prefix.contains("shared_head")
    }
}

impl<B: Backend> ParamSource<B> for DummySource<B> {
    fn has(&self, name: &str) -> bool {
        !(name.contains("q_norm") || name.contains("k_norm")) || self.use_qk_norm
    }

    fn vec(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        let (mean, std) = if name.ends_with("bias") {
            (0.0, 0.02)
        } else {
            (1.0, 0.02)
        };
        Ok(Tensor::random(
            [len],
            Distribution::Normal(mean, std),
            &self.device,
        ))
    }

    fn mat(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
        let std = if name.contains("embed_tokens") {
            1.0
        } else {
            1.0 / (shape[1] as f64).sqrt()
        };
        Ok(Tensor::random(
            shape,
            Distribution::Normal(0.0, std),
            &self.device,
        ))
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<B>> {
        let weight = if self.is_fp8_target(prefix) {
            // uniform codes in ±[0, 448) with a per-row scale so that values have std ≈ 1/sqrt(in)
            let bytes: Vec<u8> = (0..out * inp)
                .map(|_| {
                    let v: f32 = self.rng.gen_range(-448.0..448.0);
                    fp8::f32_to_e4m3(v)
                })
                .collect();
            let s = 1.0 / (inp as f32).sqrt() / 260.0;
            let scales = match self.quant {
                Quantization::Fp8Block { block } => Fp8Scales::Block {
                    block,
                    scales: vec![s; out.div_ceil(block[0]) * inp.div_ceil(block[1])],
                },
                _ => Fp8Scales::Channel(vec![s; out]),
            };
            LinearWeight::Fp8(Fp8Weight {
                out_features: out,
                in_features: inp,
                bytes: Arc::from(bytes),
                scales,
            })
        } else {
            LinearWeight::Dense(self.mat(prefix, [out, inp])?)
        };
        let bias = if bias {
            Some(self.vec(&format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}
