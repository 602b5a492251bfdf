//! The MoE block (glm.md §2.5): FP32 sigmoid router, `e_score_correction_bias` for selection only,
//! group-limited top-k (`n_group`, `topk_group`), `norm_topk_prob`, `routed_scaling_factor`, and a shared
//! expert added unscaled. Routing runs on the host here (the reference); the GPU path does it with
//! fixed-shape kernels.

use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Tensor, TensorData};

use crate::config::Glm4MoeConfig;
use crate::error::Result;
use crate::kernels::Kernels;
use crate::kv_cache::int_tensor;
use crate::linear::Fp8Activations;
use crate::loader::ParamSource;
use crate::model::{load_swiglu, DenseMlp};

pub(crate) struct Moe<B: Backend> {
    /// `[E, H]` router weight (kept in f32).
    pub(crate) gate: Tensor<B, 2>,
    /// `[E]`
    pub(crate) correction_bias: Vec<f32>,
    pub(crate) experts: Vec<DenseMlp<B>>,
    pub(crate) shared: DenseMlp<B>,
}

/// Selected experts and their weights for each token.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    /// `[T * top_k]`
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

/// Routing for router logits `[T, E]` (row-major).
pub fn route(logits: &[f32], bias: &[f32], cfg: &Glm4MoeConfig) -> Routing {
    let e = cfg.n_routed_experts;
    let t = logits.len() / e;
    let k = cfg.num_experts_per_tok;
    let (ng, tg) = (cfg.n_group, cfg.topk_group);
    let per = e / ng;
    let mut experts = Vec::with_capacity(t * k);
    let mut weights = Vec::with_capacity(t * k);
    let mut choice = vec![0f32; e];
    let mut scores = vec![0f32; e];
    for r in 0..t {
        for j in 0..e {
            scores[j] = 1.0 / (1.0 + (-logits[r * e + j]).exp());
            choice[j] = scores[j] + bias[j];
        }
        if ng > 1 {
            // group score = sum of the top-2 biased scores in the group; keep the best `tg` groups
            let mut gs: Vec<(f32, usize)> = (0..ng)
                .map(|g| {
                    let s = &choice[g * per..(g + 1) * per];
                    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                    for &x in s {
                        if x > a {
                            b = a;
                            a = x;
                        } else if x > b {
                            b = x;
                        }
                    }
                    (a + b, g)
                })
                .collect();
            gs.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            let mut keep = vec![false; ng];
            for &(_, g) in gs.iter().take(tg) {
                keep[g] = true;
            }
            for (j, c) in choice.iter_mut().enumerate() {
                if !keep[j / per] {
                    *c = f32::NEG_INFINITY;
                }
            }
        }
        let mut idx: Vec<usize> = (0..e).collect();
        idx.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]).then(a.cmp(&b)));
        let sel = &idx[..k];
        let mut w: Vec<f32> = sel.iter().map(|&j| scores[j]).collect();
        if cfg.norm_topk_prob {
            let s: f32 = w.iter().sum::<f32>() + 1e-20;
            w.iter_mut().for_each(|x| *x /= s);
        }
        w.iter_mut().for_each(|x| *x *= cfg.routed_scaling_factor);
        experts.extend_from_slice(sel);
        weights.extend(w);
    }
    Routing {
        top_k: k,
        experts,
        weights,
    }
}

impl<B: Backend> Moe<B> {
    pub(crate) fn load(w: &mut dyn ParamSource<B>, c: &Glm4MoeConfig, p: &str) -> Result<Self> {
        let h = c.hidden_size;
        let gate = w.mat(&format!("{p}.gate.weight"), [c.n_routed_experts, h])?;
        let bias_name = format!("{p}.gate.e_score_correction_bias");
        let correction_bias = if w.has(&bias_name) {
            w.vec(&bias_name, c.n_routed_experts)?
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 bias")
        } else {
            vec![0.0; c.n_routed_experts]
        };
        let experts = (0..c.n_routed_experts)
            .map(|e| load_swiglu(w, &format!("{p}.experts.{e}"), h, c.moe_intermediate_size))
            .collect::<Result<_>>()?;
        let shared = load_swiglu(
            w,
            &format!("{p}.shared_experts"),
            h,
            c.moe_intermediate_size * c.n_shared_experts,
        )?;
        Ok(Self {
            gate,
            correction_bias,
            experts,
            shared,
        })
    }

    pub(crate) fn add_to(&self, m: &mut crate::model::ParamMemory) {
        m.add_tensor(self.gate.dims().iter().product());
        for e in self.experts.iter().chain(std::iter::once(&self.shared)) {
            e.add_to(m);
        }
    }

    /// `x [T, H]` -> `[T, H]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 2>,
        c: &Glm4MoeConfig,
        k: &dyn Kernels<B>,
        act: Fp8Activations,
    ) -> Tensor<B, 2> {
        let device = x.device();
        let [t, h] = x.dims();
        let logits: Vec<f32> = x
            .clone()
            .matmul(self.gate.clone().transpose())
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 router logits");
        let r = route(&logits, &self.correction_bias, c);
        // group tokens by expert
        let mut per_expert: Vec<(Vec<i64>, Vec<f32>)> = vec![(vec![], vec![]); c.n_routed_experts];
        for tok in 0..t {
            for j in 0..r.top_k {
                let (e, wgt) = (r.experts[tok * r.top_k + j], r.weights[tok * r.top_k + j]);
                per_expert[e].0.push(tok as i64);
                per_expert[e].1.push(wgt);
            }
        }
        let mut out = k.swiglu(
            x.clone(),
            &self.shared.gate,
            &self.shared.up,
            &self.shared.down,
            act,
        );
        for (e, (toks, wts)) in per_expert.into_iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            let n = toks.len();
            let idx = int_tensor::<B>(toks, &device);
            let xe = x.clone().select(0, idx.clone());
            let m = &self.experts[e];
            let ye = k.swiglu(xe, &m.gate, &m.up, &m.down, act);
            let wt = Tensor::<B, 2>::from_data(TensorData::new(wts, [n, 1]), &device);
            out = out.select_assign(0, idx, ye * wt, IndexingUpdateOp::Add);
        }
        debug_assert_eq!(out.dims(), [t, h]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ng: usize, tg: usize, k: usize, scale: f32) -> Glm4MoeConfig {
        let j = format!(
            r#"{{"vocab_size":8,"hidden_size":4,"intermediate_size":4,"moe_intermediate_size":4,"num_hidden_layers":1,
            "num_attention_heads":1,"head_dim":4,"n_routed_experts":8,"num_experts_per_tok":{k},"n_group":{ng},
            "topk_group":{tg},"routed_scaling_factor":{scale}}}"#
        );
        Glm4MoeConfig::from_json(&j).unwrap()
    }

    #[test]
    fn bias_selects_but_does_not_weight() {
        let c = cfg(1, 1, 2, 1.0);
        let logits = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 2.0];
        let mut bias = [0.0; 8];
        bias[0] = 10.0; // forces expert 0 into the choice
        let r = route(&logits, &bias, &c);
        assert_eq!(r.experts, vec![0, 6]);
        let s0 = 0.5f32;
        let s6 = 1.0 / (1.0 + (-3.0f32).exp());
        assert!((r.weights[0] - s0 / (s0 + s6)).abs() < 1e-6);
        assert!((r.weights[1] - s6 / (s0 + s6)).abs() < 1e-6);
    }

    #[test]
    fn groups_limit_choice_and_scaling_applies() {
        // 4 groups of 2; only the best topk_group=1 group may be chosen
        let c = cfg(4, 1, 2, 2.5);
        let logits = [5.0, -5.0, 1.0, 1.0, 0.0, 0.0, -1.0, -1.0];
        let r = route(&logits, &[0.0; 8], &c);
        // group sums: g0 = s(5)+s(-5) ≈ 1.0, g1 = 2*s(1) ≈ 1.46 -> group 1 wins
        assert_eq!(r.experts, vec![2, 3]);
        assert!((r.weights.iter().sum::<f32>() - 2.5).abs() < 1e-5);
    }
}
