//! [`ServeArgs`]: the `glmfleet serve` flags, and the figment that layers defaults, the TOML
//! file, the environment and the flags.

use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::Serialize;

use super::types::{
    ByteSize, KvCacheDtype, LoadFormat, ReasoningParserName, SchedulingPolicy, SpeculativeConfig,
    ToolParserName,
};
use super::{ConfigError, ServeConfig, ENV_PREFIX};

/// `glmfleet serve` flags (vLLM's names). Every flag is optional so that it only overrides
/// the lower configuration layers when given.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ServeArgs {
    /// Model folder or Hugging Face repo id.
    #[arg(value_name = "MODEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// TOML configuration file (lower precedence than environment and flags).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Listen port [default: 8000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Names the model answers to (the first is reported).
    #[arg(long, num_args = 1..)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_model_name: Option<Vec<String>>,
    /// Tool-call parser.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_parser: Option<ToolParserName>,
    /// Reasoning parser.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_parser: Option<ReasoningParserName>,
    /// Allow `tool_choice: "auto"`.
    #[arg(long)]
    #[serde(skip)]
    pub enable_auto_tool_choice: bool,
    /// Launch GPU steps eagerly, without CUDA graphs.
    #[arg(long)]
    #[serde(skip)]
    pub enforce_eager: bool,
    /// Context window in tokens [default: the model's max_position_embeddings].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// Token budget per engine step [default: 8192].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_num_batched_tokens: Option<usize>,
    /// Maximum running sequences [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_num_seqs: Option<usize>,
    /// Requests allowed to wait before 503 [default: 4096].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_waiting_requests: Option<usize>,
    /// Waiting-queue order [default: fcfs].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling_policy: Option<SchedulingPolicy>,
    /// Fraction of GPU memory to use [default: 0.9].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_utilization: Option<f64>,
    /// Enable prefix caching (the default).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    #[serde(skip)]
    pub enable_prefix_caching: bool,
    /// Disable prefix caching.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    #[serde(skip)]
    pub no_enable_prefix_caching: bool,
    /// Tokens per KV block [default: 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// API key clients must send as `Authorization: Bearer <key>`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Seconds to drain in-flight requests on shutdown [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<u64>,
    /// auto, dummy, fake[:STEP[+PER_TOKEN]] (e.g. fake:25ms+20us: a simulated step time) or
    /// scripted:PATH [default: auto].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_format: Option<LoadFormat>,
    /// KV-cache dtype [default: auto].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache_dtype: Option<KvCacheDtype>,
    /// Must be 1.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor_parallel_size: Option<usize>,
    /// Engine RNG seed [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// KV-cache size (bytes, or with a unit such as 40GiB).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache_memory: Option<ByteSize>,
    /// Number of KV blocks to allocate (skips memory profiling).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_gpu_blocks_override: Option<usize>,
    /// Chat template file (or template text).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Speculative decoding with the checkpoint's MTP layer, as JSON:
    /// '{"method": "mtp", "num_speculative_tokens": 1}'; "disable_by_batch_size": N stops
    /// drafting after steps of more than N sequences.
    #[arg(long, value_name = "JSON")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative_config: Option<SpeculativeConfig>,
}

impl ServeArgs {
    /// The figment of all layers (defaults, file, environment, flags), not yet extracted.
    pub fn figment(&self) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(ServeConfig::default()));
        if let Some(path) = &self.config {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.clone()));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__"));
        fig = fig.merge(Serialized::defaults(self));
        if self.enforce_eager {
            fig = fig.merge(("enforce_eager", true));
        }
        if self.enable_auto_tool_choice {
            fig = fig.merge(("enable_auto_tool_choice", true));
        }
        if self.enable_prefix_caching {
            fig = fig.merge(("enable_prefix_caching", true));
        }
        if self.no_enable_prefix_caching {
            fig = fig.merge(("enable_prefix_caching", false));
        }
        Ok(fig)
    }
}

/// Builds and validates the configuration from all layers.
pub fn load_config(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
    let cfg: ServeConfig = args.figment()?.extract().map_err(Box::new)?;
    cfg.validate()?;
    Ok(cfg)
}
