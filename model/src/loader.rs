//! Turns a [`TensorStore`] into model parameters: one place that knows the checkpoint's names, shapes,
//! dtypes and FP8 conventions. Decides per tensor whether a Linear is FP8 (E4M3 dtype plus a sibling
//! `weight_scale` / `weight_scale_inv`), never by name lists, and records every tensor it used so that
//! leftovers are reported as unexpected.

use std::collections::BTreeSet;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::Dtype;

use crate::checkpoint::{expect_shape, to_f32, TensorStore};
use crate::config::{Glm4MoeConfig, Quantization};
use crate::error::{ModelError, Result};
use crate::linear::{Fp8Scales, Fp8Weight, Linear, LinearWeight};

/// Where parameters come from: a checkpoint ([`WeightLoader`]) or random values ([`crate::dummy::DummySource`],
/// `--load-format dummy`). The model is built against this trait only.
pub trait ParamSource<B: Backend> {
    fn has(&self, name: &str) -> bool;
    /// A 1-D parameter of `len` elements.
    fn vec(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>>;
    /// A high-precision 2-D parameter.
    fn mat(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>>;
    /// `prefix.weight [out, in]` (+ `prefix.bias [out]` when `bias`), high precision or FP8.
    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<B>>;
}

pub struct WeightLoader<'a, B: Backend> {
    pub store: &'a TensorStore,
    pub cfg: &'a Glm4MoeConfig,
    pub device: B::Device,
    used: BTreeSet<String>,
    progress: Option<indicatif::ProgressBar>,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    pub fn new(
        store: &'a TensorStore,
        cfg: &'a Glm4MoeConfig,
        device: B::Device,
        show_progress: bool,
    ) -> Self {
        let progress = (show_progress && store.total_bytes() > 256 << 20).then(|| {
            let pb = indicatif::ProgressBar::new(store.total_bytes());
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "loading weights {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                )
                .expect("static template"),
            );
            pb
        });
        Self {
            store,
            cfg,
            device,
            used: BTreeSet::new(),
            progress,
        }
    }

    fn take(&mut self, name: &str) -> Result<crate::checkpoint::RawTensor<'a>> {
        let t = self.store.get(name)?;
        self.used.insert(name.to_string());
        if let Some(pb) = &self.progress {
            pb.inc(t.bytes.len() as u64);
        }
        Ok(t)
    }

    fn fp8_scales(&mut self, prefix: &str, out: usize, inp: usize) -> Result<Fp8Scales> {
        let ch = format!("{prefix}.weight_scale");
        let blk = format!("{prefix}.weight_scale_inv");
        if self.has(&ch) {
            let t = self.take(&ch)?;
            let s = to_f32(&t)?;
            if s.len() == 1 {
                return Ok(Fp8Scales::Channel(vec![s[0]; out])); // per-tensor
            }
            if s.len() != out {
                return Err(ModelError::Shape {
                    name: ch,
                    got: t.shape.clone(),
                    expected: vec![out, 1],
                });
            }
            return Ok(Fp8Scales::Channel(s));
        }
        if self.has(&blk) {
            let block = match self.cfg.quantization {
                Quantization::Fp8Block { block } => block,
                _ => [128, 128],
            };
            let t = self.take(&blk)?;
            let expected = [out.div_ceil(block[0]), inp.div_ceil(block[1])];
            expect_shape(&t, &expected)?;
            return Ok(Fp8Scales::Block {
                block,
                scales: to_f32(&t)?,
            });
        }
        Err(ModelError::MissingTensor(format!(
            "{prefix}.weight_scale (or .weight_scale_inv) for the FP8 weight {prefix}.weight"
        )))
    }

    /// Every stored tensor that was not used, except those under `allowed_prefixes`.
    pub fn unused(&self, allowed_prefixes: &[String]) -> Vec<String> {
        self.store
            .names()
            .filter(|n| !self.used.contains(*n))
            .filter(|n| !allowed_prefixes.iter().any(|p| n.starts_with(p.as_str())))
            .map(String::from)
            .collect()
    }

    pub fn finish(self) {
        if let Some(pb) = self.progress {
            pb.finish_and_clear();
        }
    }
}

impl<B: Backend> ParamSource<B> for WeightLoader<'_, B> {
    fn has(&self, name: &str) -> bool {
        self.store.contains(name)
    }

    fn vec(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        let t = self.take(name)?;
        // some loaders flatten or keep [n, 1]
        if t.shape.iter().product::<usize>() != len || t.shape.len() > 2 {
            return Err(ModelError::Shape {
                name: name.into(),
                got: t.shape.clone(),
                expected: vec![len],
            });
        }
        Ok(Tensor::from_data(
            TensorData::new(to_f32(&t)?, [len]),
            &self.device,
        ))
    }

    fn mat(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
        let t = self.take(name)?;
        expect_shape(&t, &shape)?;
        if t.dtype == Dtype::F8_E4M3 {
            return Err(ModelError::Dtype {
                name: name.into(),
                dtype: "F8_E4M3 where a high-precision tensor is required".into(),
            });
        }
        Ok(Tensor::from_data(
            TensorData::new(to_f32(&t)?, shape),
            &self.device,
        ))
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<B>> {
        let wname = format!("{prefix}.weight");
        let raw = self.store.get(&wname)?;
        let weight = if raw.dtype == Dtype::F8_E4M3 {
            expect_shape(&raw, &[out, inp])?;
            let bytes: Arc<[u8]> = Arc::from(raw.bytes);
            self.take(&wname)?;
            let scales = self.fp8_scales(prefix, out, inp)?;
            LinearWeight::Fp8(Fp8Weight {
                out_features: out,
                in_features: inp,
                bytes,
                scales,
            })
        } else {
            LinearWeight::Dense(self.mat(&wname, [out, inp])?)
        };
        let bias = if bias {
            Some(self.vec(&format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}
