//! `config.json` of a Glm4MoeForCausalLM checkpoint, read the way transformers reads it.
//!
//! Accepts both RoPE layouts (top-level `rope_theta` / `partial_rotary_factor`, and transformers-5
//! `rope_parameters`), `torch_dtype` or `dtype`, `eos_token_id` as an int or a list, and the two FP8
//! `quantization_config` formats (compressed-tensors per-channel, and `fp8` with 128×128 blocks).
//! `validate` refuses any config the model cannot run, naming the key.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// How the checkpoint's Linear weights are quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Quantization {
    /// BF16/F16/F32 weights.
    None,
    /// compressed-tensors "float-quantized": FP8-E4M3 weight, F32 `weight_scale` `[out, 1]` (a multiplier),
    /// dynamic per-token activation scales. `ignore` lists modules kept in high precision.
    Fp8Channel { ignore: Vec<String> },
    /// DeepSeek-style `quant_method: fp8`: FP8-E4M3 weight, F32 `weight_scale_inv` `[ceil(out/bo), ceil(in/bi)]`
    /// (a multiplier despite the name); activations quantized per token per `bi` channels.
    Fp8Block { block: [usize; 2] },
}

/// Largest parameter count a config may describe (GLM-4.5 has 3.6e11): 2^50, about 1.1e15.
pub const MAX_PARAMETERS: u64 = 1 << 50;

#[derive(Debug, Clone)]
pub struct Glm4MoeConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub first_k_dense_replace: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f32,
    pub norm_topk_prob: bool,
    pub partial_rotary_factor: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub use_qk_norm: bool,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub num_nextn_predict_layers: usize,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written (e.g. "bfloat16").
    pub dtype: String,
    pub quantization: Quantization,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    moe_intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    n_routed_experts: Option<usize>,
    n_shared_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    first_k_dense_replace: Option<usize>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    routed_scaling_factor: Option<f32>,
    norm_topk_prob: Option<bool>,
    partial_rotary_factor: Option<f32>,
    rope_theta: Option<f32>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f32>,
    use_qk_norm: Option<bool>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    num_nextn_predict_layers: Option<usize>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
    quantization_config: Option<Value>,
}

fn need<T>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| ModelError::key(key, "missing"))
}

fn token_ids(v: &Value, key: &str) -> Result<Vec<u32>> {
    let one = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ModelError::key(key, format!("expected a token id, got {x}")))
    };
    match v {
        Value::Null => Ok(vec![]),
        Value::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

impl Glm4MoeConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        if let Some(archs) = &raw.architectures {
            if !archs.iter().any(|a| a == "Glm4MoeForCausalLM") {
                return Err(ModelError::key(
                    "architectures",
                    format!("{archs:?} is not Glm4MoeForCausalLM"),
                ));
            }
        }
        if let Some(mt) = &raw.model_type {
            if mt != "glm4_moe" {
                return Err(ModelError::key(
                    "model_type",
                    format!("`{mt}` is not glm4_moe"),
                ));
            }
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(ModelError::key(
                    "hidden_act",
                    format!("`{act}` is not supported (silu only)"),
                ));
            }
        }
        // RoPE: transformers-5 `rope_parameters` wins over the legacy top-level keys.
        let mut rope_theta = raw.rope_theta;
        let mut partial = raw.partial_rotary_factor;
        if let Some(rp) = &raw.rope_parameters {
            if let Some(t) = rp.get("rope_theta").and_then(Value::as_f64) {
                rope_theta = Some(t as f32);
            }
            if let Some(p) = rp.get("partial_rotary_factor").and_then(Value::as_f64) {
                partial = Some(p as f32);
            }
            if let Some(kind) = rp.get("rope_type").and_then(Value::as_str) {
                if kind != "default" {
                    return Err(ModelError::key(
                        "rope_parameters.rope_type",
                        format!("`{kind}` is not supported (default only)"),
                    ));
                }
            }
        }
        if let Some(rs) = &raw.rope_scaling {
            if !rs.is_null() {
                let kind = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(Value::as_str);
                if kind != Some("default") {
                    return Err(ModelError::key(
                        "rope_scaling",
                        "RoPE scaling is not supported",
                    ));
                }
            }
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let quantization = match &raw.quantization_config {
            None | Some(Value::Null) => Quantization::None,
            Some(q) => parse_quantization(q)?,
        };
        let n_routed_experts = need(raw.n_routed_experts, "n_routed_experts")?;
        let cfg = Self {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            moe_intermediate_size: need(raw.moe_intermediate_size, "moe_intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim: raw
                .head_dim
                .unwrap_or(hidden_size.checked_div(heads).unwrap_or(0)),
            n_routed_experts,
            n_shared_experts: raw.n_shared_experts.unwrap_or(1),
            num_experts_per_tok: need(raw.num_experts_per_tok, "num_experts_per_tok")?,
            first_k_dense_replace: raw.first_k_dense_replace.unwrap_or(1),
            n_group: raw.n_group.unwrap_or(1),
            topk_group: raw.topk_group.unwrap_or(1),
            routed_scaling_factor: raw.routed_scaling_factor.unwrap_or(1.0),
            norm_topk_prob: raw.norm_topk_prob.unwrap_or(true),
            partial_rotary_factor: partial.unwrap_or(0.5),
            rope_theta: rope_theta.unwrap_or(10000.0),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(131072),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            use_qk_norm: raw.use_qk_norm.unwrap_or(false),
            attention_bias: raw.attention_bias.unwrap_or(false),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            num_nextn_predict_layers: raw.num_nextn_predict_layers.unwrap_or(0),
            eos_token_ids: match &raw.eos_token_id {
                Some(v) => token_ids(v, "eos_token_id")?,
                None => vec![],
            },
            pad_token_id: match &raw.pad_token_id {
                Some(v) => token_ids(v, "pad_token_id")?.first().copied(),
                None => None,
            },
            dtype: raw
                .dtype
                .or(raw.torch_dtype)
                .unwrap_or_else(|| "bfloat16".into()),
            quantization,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses configs the model cannot run.
    pub fn validate(&self) -> Result<()> {
        let pos = |k: &str, v: usize| {
            if v == 0 {
                Err(ModelError::key(k, "must be > 0"))
            } else {
                Ok(())
            }
        };
        pos("vocab_size", self.vocab_size)?;
        pos("hidden_size", self.hidden_size)?;
        pos("num_hidden_layers", self.num_hidden_layers)?;
        pos("num_attention_heads", self.num_attention_heads)?;
        pos("num_key_value_heads", self.num_key_value_heads)?;
        pos("head_dim", self.head_dim)?;
        pos("n_routed_experts", self.n_routed_experts)?;
        pos("num_experts_per_tok", self.num_experts_per_tok)?;
        pos("n_group", self.n_group)?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ModelError::key(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        let rot = self.rotary_dim();
        if rot == 0 || !rot.is_multiple_of(2) || rot > self.head_dim {
            return Err(ModelError::key(
                "partial_rotary_factor",
                format!("gives rotary dim {rot}, which must be even and in 2..=head_dim"),
            ));
        }
        if !self.n_routed_experts.is_multiple_of(self.n_group) {
            return Err(ModelError::key("n_group", "must divide n_routed_experts"));
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return Err(ModelError::key("topk_group", "must be in 1..=n_group"));
        }
        let per_group = self.n_routed_experts / self.n_group;
        if self.n_group > 1 && per_group < 2 {
            return Err(ModelError::key(
                "n_group",
                "groups need at least 2 experts each",
            ));
        }
        if self.num_experts_per_tok > per_group * self.topk_group {
            return Err(ModelError::key(
                "num_experts_per_tok",
                "exceeds the experts available in topk_group groups",
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(ModelError::key("rms_norm_eps", "must be > 0"));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(ModelError::key("rope_theta", "must be > 0"));
        }
        if self.num_nextn_predict_layers > 1 {
            return Err(ModelError::key(
                "num_nextn_predict_layers",
                "at most 1 MTP layer is supported",
            ));
        }
        self.check_sizes()
    }

    /// The parameter count the dimensions describe must be computable and at most
    /// [`MAX_PARAMETERS`]: every size the loader and the KV cache derive from the config is a
    /// factor of it, so none of their products can overflow (a corrupt or hostile `config.json`
    /// with `head_dim: 2^40` is an error here, not a panic or a wrapped size later).
    fn check_sizes(&self) -> Result<()> {
        let n = |v: usize| Some(v as u64);
        let mul = |a: Option<u64>, b: Option<u64>| a?.checked_mul(b?);
        let add = |a: Option<u64>, b: Option<u64>| a?.checked_add(b?);
        let h = n(self.hidden_size);
        let q = mul(mul(n(self.num_attention_heads), n(self.head_dim)), h);
        let kv = mul(mul(n(self.num_key_value_heads), n(self.head_dim)), h);
        let attention = add(mul(q, Some(2)), mul(kv, Some(2)));
        let dense = mul(mul(n(self.intermediate_size), h), Some(3));
        let experts = add(n(self.n_routed_experts), n(self.n_shared_experts));
        let moe = mul(mul(mul(experts, n(self.moe_intermediate_size)), h), Some(3));
        let per_layer = add(attention, dense.max(moe));
        let layers = add(n(self.num_hidden_layers), n(self.num_nextn_predict_layers));
        let embeddings = mul(mul(n(self.vocab_size), h), Some(2));
        let total = add(mul(per_layer, layers), embeddings);
        match total {
            Some(t) if t <= MAX_PARAMETERS => Ok(()),
            _ => Err(ModelError::key(
                "hidden_size",
                format!(
                    "the dimensions describe {} parameters, more than the {MAX_PARAMETERS} \
                     supported: the config is corrupt",
                    total.map_or_else(|| "over 2^64".to_string(), |t| t.to_string())
                ),
            )),
        }
    }

    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f32 * self.partial_rotary_factor).round() as usize
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer >= self.first_k_dense_replace
    }

    /// Bytes of K+V per token per layer for `elem_bytes`-sized elements.
    pub fn kv_bytes_per_token_per_layer(&self, elem_bytes: usize) -> usize {
        2 * self.num_key_value_heads * self.head_dim * elem_bytes
    }
}

fn parse_quantization(q: &Value) -> Result<Quantization> {
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
    match method {
        "compressed-tensors" => {
            let fmt = q.get("format").and_then(Value::as_str).unwrap_or("");
            if fmt != "float-quantized" && fmt != "naive-quantized" {
                return Err(ModelError::key(
                    "quantization_config.format",
                    format!("`{fmt}` is not supported (float-quantized FP8 only)"),
                ));
            }
            if let Some(groups) = q.get("config_groups").and_then(Value::as_object) {
                for (name, g) in groups {
                    let w = g.get("weights");
                    let bits = w.and_then(|w| w.get("num_bits")).and_then(Value::as_u64);
                    let kind = w.and_then(|w| w.get("type")).and_then(Value::as_str);
                    let strategy = w.and_then(|w| w.get("strategy")).and_then(Value::as_str);
                    if bits != Some(8) || kind != Some("float") {
                        return Err(ModelError::key(
                            &format!("quantization_config.config_groups.{name}.weights"),
                            "only 8-bit float weights are supported",
                        ));
                    }
                    if strategy != Some("channel") && strategy != Some("tensor") {
                        return Err(ModelError::key(
                            &format!("quantization_config.config_groups.{name}.weights.strategy"),
                            format!("{strategy:?} is not supported (channel or tensor)"),
                        ));
                    }
                }
            }
            let ignore = q
                .get("ignore")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Quantization::Fp8Channel { ignore })
        }
        "fp8" => {
            let block = match q.get("weight_block_size") {
                Some(Value::Array(a)) if a.len() == 2 => {
                    let b0 = a[0].as_u64().unwrap_or(0) as usize;
                    let b1 = a[1].as_u64().unwrap_or(0) as usize;
                    if b0 == 0 || b1 == 0 {
                        return Err(ModelError::key(
                            "quantization_config.weight_block_size",
                            "must be positive",
                        ));
                    }
                    [b0, b1]
                }
                _ => {
                    return Err(ModelError::key(
                        "quantization_config.weight_block_size",
                        "required for quant_method fp8 (e.g. [128, 128])",
                    ))
                }
            };
            Ok(Quantization::Fp8Block { block })
        }
        other => Err(ModelError::key(
            "quantization_config.quant_method",
            format!("`{other}` is not supported (compressed-tensors or fp8)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AIR: &str = r#"{"architectures":["Glm4MoeForCausalLM"],"model_type":"glm4_moe","vocab_size":151552,
      "hidden_size":4096,"intermediate_size":10944,"moe_intermediate_size":1408,"num_hidden_layers":46,
      "num_attention_heads":96,"num_key_value_heads":8,"head_dim":128,"n_routed_experts":128,"n_shared_experts":1,
      "num_experts_per_tok":8,"first_k_dense_replace":1,"n_group":1,"topk_group":1,"routed_scaling_factor":1.0,
      "norm_topk_prob":true,"partial_rotary_factor":0.5,"rope_theta":1000000,"max_position_embeddings":131072,
      "rms_norm_eps":1e-5,"use_qk_norm":false,"attention_bias":true,"tie_word_embeddings":false,
      "num_nextn_predict_layers":1,"eos_token_id":[151329,151336,151338],"pad_token_id":151329,
      "torch_dtype":"bfloat16","hidden_act":"silu"}"#;

    #[test]
    fn reads_glm45_air() {
        let c = Glm4MoeConfig::from_json(AIR).unwrap();
        assert_eq!(c.rotary_dim(), 64);
        assert_eq!(c.eos_token_ids, vec![151329, 151336, 151338]);
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.kv_bytes_per_token_per_layer(2), 4096);
        assert_eq!(c.quantization, Quantization::None);
    }

    #[test]
    fn absurd_dimensions_are_an_error_not_an_overflow() {
        // Regression: `head_dim`/heads of 2^40 passed `validate`, and `glmfleet serve` then
        // panicked with "attempt to multiply with overflow" while sizing the attention weights.
        let huge = AIR
            .replace(
                "\"num_attention_heads\":96",
                "\"num_attention_heads\":1099511627776",
            )
            .replace(
                "\"num_key_value_heads\":8",
                "\"num_key_value_heads\":1099511627776",
            )
            .replace("\"head_dim\":128", "\"head_dim\":1099511627776");
        let e = Glm4MoeConfig::from_json(&huge).unwrap_err().to_string();
        assert!(e.contains("parameters"), "{e}");
        let wide = AIR.replace(
            "\"vocab_size\":151552",
            "\"vocab_size\":18446744073709551615",
        );
        assert!(Glm4MoeConfig::from_json(&wide).is_err());
        // the largest real configs stay well inside the bound
        assert!(Glm4MoeConfig::from_json(AIR).is_ok());
    }

    #[test]
    fn rope_parameters_layout_wins() {
        let j = AIR.replace(
            "\"rope_theta\":1000000",
            "\"rope_parameters\":{\"rope_theta\":5000.0,\"partial_rotary_factor\":0.25,\"rope_type\":\"default\"}",
        );
        let c = Glm4MoeConfig::from_json(&j).unwrap();
        assert_eq!(c.rope_theta, 5000.0);
        assert_eq!(c.rotary_dim(), 32); // rope_parameters' 0.25 overrides the top-level 0.5
        let j2 = j.replace("\"partial_rotary_factor\":0.25,", "");
        assert_eq!(Glm4MoeConfig::from_json(&j2).unwrap().rotary_dim(), 64);
    }

    #[test]
    fn eos_as_int_and_dtype_key() {
        let j = AIR
            .replace("[151329,151336,151338]", "151329")
            .replace("\"torch_dtype\"", "\"dtype\"");
        let c = Glm4MoeConfig::from_json(&j).unwrap();
        assert_eq!(c.eos_token_ids, vec![151329]);
        assert_eq!(c.dtype, "bfloat16");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Glm4MoeConfig::from_json(&AIR.replace("\"hidden_size\":4096,", "")).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let e =
            Glm4MoeConfig::from_json(&AIR.replace("\"n_group\":1", "\"n_group\":3")).unwrap_err();
        assert!(e.to_string().contains("n_group"), "{e}");
        let e = Glm4MoeConfig::from_json(&AIR.replace("Glm4MoeForCausalLM", "LlamaForCausalLM"))
            .unwrap_err();
        assert!(e.to_string().contains("architectures"), "{e}");
        let e = Glm4MoeConfig::from_json("{not json").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn quantization_formats() {
        let ct = AIR.replace(
            "\"hidden_act\":\"silu\"",
            r#""hidden_act":"silu","quantization_config":{"quant_method":"compressed-tensors","format":"float-quantized",
              "config_groups":{"g":{"weights":{"num_bits":8,"type":"float","strategy":"channel"}}},"ignore":["lm_head"]}"#,
        );
        assert_eq!(
            Glm4MoeConfig::from_json(&ct).unwrap().quantization,
            Quantization::Fp8Channel {
                ignore: vec!["lm_head".into()]
            }
        );
        let blk = AIR.replace(
            "\"hidden_act\":\"silu\"",
            r#""hidden_act":"silu","quantization_config":{"quant_method":"fp8","weight_block_size":[128,128]}"#,
        );
        assert_eq!(
            Glm4MoeConfig::from_json(&blk).unwrap().quantization,
            Quantization::Fp8Block { block: [128, 128] }
        );
        let bad = AIR.replace(
            "\"hidden_act\":\"silu\"",
            r#""hidden_act":"silu","quantization_config":{"quant_method":"gptq"}"#,
        );
        assert!(Glm4MoeConfig::from_json(&bad)
            .unwrap_err()
            .to_string()
            .contains("gptq"));
    }
}
