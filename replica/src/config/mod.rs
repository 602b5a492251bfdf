//! `glmfleet serve` configuration: one [`ServeConfig`], parsed once at the edge.
//!
//! Layers, lowest to highest precedence (figment):
//! 1. built-in defaults ([`ServeConfig::default`], vLLM's where vLLM has one);
//! 2. a TOML file given with `--config FILE` (keys are the field names, snake_case);
//! 3. environment variables `GLMFLEET_SERVE_<FIELD>` (e.g. `GLMFLEET_SERVE_MAX_NUM_SEQS=64`,
//!    `GLMFLEET_SERVE_SERVED_MODEL_NAME='["glm","glm-4.5"]'`; values are parsed TOML-like);
//! 4. command-line flags ([`ServeArgs`]; flags not given leave lower layers alone).
//!
//! [`ServeConfig::validate`] then checks everything that can be checked without the model and
//! fails with a message naming the flag.

mod args;
mod types;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use args::{load_config, ServeArgs};
pub use types::{
    ByteSize, KvCacheDtype, LoadFormat, ReasoningParserName, SchedulingPolicy, SpeculativeConfig,
    ToolParserName,
};

/// Environment-variable prefix of the serve configuration.
pub const ENV_PREFIX: &str = "GLMFLEET_SERVE_";

/// The complete serve configuration (see the module docs for the layering).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Model folder or Hugging Face repo id (resolved and loaded by the CLI).
    pub model: Option<String>,
    /// Listen address. Default 127.0.0.1.
    pub host: String,
    /// Listen port. Default 8000.
    pub port: u16,
    /// Names the model answers to in `model` fields; the first is reported. Default: the
    /// name derived from the model by the CLI.
    pub served_model_name: Vec<String>,
    /// Tool-call parser for chat completions with tools.
    pub tool_call_parser: Option<ToolParserName>,
    /// Reasoning parser: splits `<think>` blocks into `reasoning_content` / `reasoning`.
    pub reasoning_parser: Option<ReasoningParserName>,
    /// Allow `tool_choice: "auto"` (the model decides when to call tools).
    pub enable_auto_tool_choice: bool,
    /// Context window (prompt + generated tokens). Default: the model's
    /// `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Token budget of one engine step. Default 8192.
    pub max_num_batched_tokens: usize,
    /// Maximum concurrently running sequences. Default 256.
    pub max_num_seqs: usize,
    /// Requests allowed to wait beyond `max_num_seqs` before new ones get 503. Default 4096.
    pub max_waiting_requests: usize,
    /// Waiting-queue order. Default fcfs.
    pub scheduling_policy: SchedulingPolicy,
    /// Fraction of GPU memory the model and KV cache may use. Default 0.9.
    pub gpu_memory_utilization: f64,
    /// Reuse KV blocks across requests with a common prefix. Default true.
    pub enable_prefix_caching: bool,
    /// Tokens per KV block. Default 16.
    pub block_size: usize,
    /// Required `Authorization: Bearer <key>` on the API (not on /health, /metrics, /version,
    /// /load).
    pub api_key: Option<String>,
    /// Seconds to finish in-flight requests after a shutdown signal. Default 0 (abort at once).
    pub shutdown_timeout: u64,
    /// `auto`, `dummy`, `fake` or `scripted:<path>`. Default auto.
    pub load_format: LoadFormat,
    /// KV-cache element type. Default auto.
    pub kv_cache_dtype: KvCacheDtype,
    /// Must be 1 (one replica per GPU).
    pub tensor_parallel_size: usize,
    /// Seed of the engine RNG that seeds requests without their own `seed`. Default 0.
    pub seed: u64,
    /// KV-cache size in bytes (overrides `gpu_memory_utilization` for the cache).
    pub kv_cache_memory: Option<ByteSize>,
    /// Use exactly this many KV blocks instead of profiling memory.
    pub num_gpu_blocks_override: Option<usize>,
    /// Chat template: a file path or the template text itself. Default: the checkpoint's, else
    /// the built-in GLM template.
    pub chat_template: Option<String>,
    /// Largest accepted request body in bytes (413 beyond). Default 32 MiB.
    pub max_request_body_bytes: usize,
    /// Milliseconds allowed to receive a request body once its head has arrived; a body still
    /// incomplete then gets 408 and the connection is closed. Default 30000 (as the header-read
    /// timeout).
    pub request_body_timeout_ms: u64,
    /// Largest `top_logprobs` / completions `logprobs` a request may ask for. Default 20.
    pub max_logprobs: usize,
    /// Speculative decoding with the checkpoint's MTP layer (`--speculative-config`). Default
    /// off.
    pub speculative_config: Option<SpeculativeConfig>,
    /// Launch every GPU step eagerly instead of replaying captured CUDA graphs (vLLM's
    /// `--enforce-eager`). Default false.
    pub enforce_eager: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: None,
            host: "127.0.0.1".into(),
            port: 8000,
            served_model_name: Vec::new(),
            tool_call_parser: None,
            reasoning_parser: None,
            enable_auto_tool_choice: false,
            max_model_len: None,
            max_num_batched_tokens: 8192,
            max_num_seqs: 256,
            max_waiting_requests: 4096,
            scheduling_policy: SchedulingPolicy::Fcfs,
            gpu_memory_utilization: 0.9,
            enable_prefix_caching: true,
            block_size: 16,
            api_key: None,
            shutdown_timeout: 0,
            load_format: LoadFormat::Auto,
            kv_cache_dtype: KvCacheDtype::Auto,
            tensor_parallel_size: 1,
            seed: 0,
            kv_cache_memory: None,
            num_gpu_blocks_override: None,
            chat_template: None,
            max_request_body_bytes: 32 << 20,
            request_body_timeout_ms: 30_000,
            max_logprobs: 20,
            speculative_config: None,
            enforce_eager: false,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or has a value of the wrong type.
    #[error("invalid serve configuration: {}", figment_one_line(.0))]
    Load(Box<figment::Error>),
    /// The configuration file does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value is out of range or contradicts another one.
    #[error("invalid serve configuration: {0}")]
    Invalid(String),
}

// Not `#[from]`: that would also make figment's error the `source`, and callers that print an
// error with its causes would print the message twice.
impl From<Box<figment::Error>> for ConfigError {
    fn from(e: Box<figment::Error>) -> Self {
        ConfigError::Load(e)
    }
}

/// figment's message as one line: a TOML syntax error carries a multi-line excerpt of the file
/// (`  |`, `1 | ...`, a caret line), which is dropped; the remaining lines are joined.
fn figment_one_line(e: &figment::Error) -> String {
    let text = e.to_string();
    let is_excerpt = |l: &str| {
        let rest = l
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        rest.starts_with('|')
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_excerpt(l))
        .collect::<Vec<_>>()
        .join("; ")
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

impl ServeConfig {
    /// Checks every value that can be checked before the model is loaded.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.model.as_deref() {
            None | Some("") => {
                return Err(invalid(
                    "no model given: pass MODEL (a folder, a Hugging Face repo id, or `demo` for the embedded model)",
                ))
            }
            Some(_) => {}
        }
        if self.tensor_parallel_size != 1 {
            return Err(invalid(format!(
                "--tensor-parallel-size {} is not supported: glmfleet runs one replica per GPU \
                 (use 1 and put `glmfleet router` in front of several replicas)",
                self.tensor_parallel_size
            )));
        }
        if self.max_num_seqs == 0 {
            return Err(invalid("--max-num-seqs must be at least 1"));
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return Err(invalid(format!(
                "--max-num-batched-tokens ({}) must be at least --max-num-seqs ({})",
                self.max_num_batched_tokens, self.max_num_seqs
            )));
        }
        if !(1..=256).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return Err(invalid(format!(
                "--block-size {} must be a power of two between 1 and 256",
                self.block_size
            )));
        }
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            return Err(invalid(format!(
                "--gpu-memory-utilization {} must be in (0, 1]",
                self.gpu_memory_utilization
            )));
        }
        if self.max_model_len == Some(0) {
            return Err(invalid("--max-model-len must be at least 1"));
        }
        if self.num_gpu_blocks_override == Some(0) {
            return Err(invalid("--num-gpu-blocks-override must be at least 1"));
        }
        if self.kv_cache_memory == Some(ByteSize(0)) {
            return Err(invalid("--kv-cache-memory must be positive"));
        }
        if self.enable_auto_tool_choice && self.tool_call_parser.is_none() {
            return Err(invalid(
                "--enable-auto-tool-choice requires --tool-call-parser (glm45 or glm47)",
            ));
        }
        if self.api_key.as_deref() == Some("") {
            return Err(invalid("--api-key must not be empty"));
        }
        if self.served_model_name.iter().any(|n| n.trim().is_empty()) {
            return Err(invalid("--served-model-name entries must not be empty"));
        }
        if self.max_request_body_bytes < 1024 {
            return Err(invalid("max_request_body_bytes must be at least 1024"));
        }
        if self.request_body_timeout_ms == 0 {
            return Err(invalid("request_body_timeout_ms must be at least 1"));
        }
        if self.host.is_empty() {
            return Err(invalid("--host must not be empty"));
        }
        if let Some(spec) = &self.speculative_config {
            spec.validate()
                .map_err(|e| invalid(format!("--speculative-config: {e}")))?;
            if spec.num_speculative_tokens >= self.max_num_batched_tokens {
                return Err(invalid(format!(
                    "--speculative-config: num_speculative_tokens ({}) must be below \
                     --max-num-batched-tokens ({})",
                    spec.num_speculative_tokens, self.max_num_batched_tokens
                )));
            }
        }
        Ok(())
    }

    /// Draft tokens per step: `num_speculative_tokens`, 0 without speculative decoding.
    pub fn num_speculative_tokens(&self) -> usize {
        self.speculative_config
            .as_ref()
            .map_or(0, |s| s.num_speculative_tokens)
    }

    /// Sequences in a step above which no drafts are proposed (`disable_by_batch_size`); `None`
    /// drafts at every batch size.
    pub fn speculative_disable_by_batch_size(&self) -> Option<usize> {
        self.speculative_config
            .as_ref()
            .and_then(|s| s.disable_by_batch_size)
    }

    /// The `host:port` to bind.
    pub fn bind_addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Reads `chat_template` (a path, or the template text itself when it is not a file and
    /// looks like Jinja). `None` when no template was configured.
    pub fn read_chat_template(&self) -> Result<Option<String>, ConfigError> {
        let Some(t) = self.chat_template.as_deref() else {
            return Ok(None);
        };
        let path = Path::new(t);
        if path.is_file() {
            return std::fs::read_to_string(path).map(Some).map_err(|e| {
                invalid(format!(
                    "--chat-template {}: cannot read: {e}",
                    path.display()
                ))
            });
        }
        if t.contains("{{") || t.contains("{%") {
            return Ok(Some(t.to_owned()));
        }
        Err(invalid(format!(
            "--chat-template {t:?} is neither a readable file nor a Jinja template"
        )))
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail closures must return figment's own (large) error type"
)]
mod tests {
    use super::*;
    use clap::Parser;
    use figment::Jail;

    #[test]
    fn figment_errors_are_one_line_and_not_repeated() {
        // Regression: a TOML syntax error printed a multi-line excerpt of the file, and the
        // CLI's "error and its causes" line printed figment's message twice.
        use figment::providers::{Format, Toml};
        for text in ["max_num_seqs = [unclosed", "max_num_seqs = \"many\""] {
            let err = figment::Figment::from(Toml::string(text))
                .extract::<ServeConfig>()
                .map_err(Box::new)
                .map_err(ConfigError::from)
                .unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("invalid serve configuration: "), "{msg}");
            assert!(!msg.contains('\n'), "not one line: {msg}");
            assert!(!msg.contains(" | "), "file excerpt kept: {msg}");
            assert!(std::error::Error::source(&err).is_none());
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        let mut v = vec!["serve"];
        v.extend_from_slice(args);
        Cli::parse_from(v).serve
    }

    #[test]
    fn defaults_follow_vllm() {
        let c = ServeConfig::default();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8000));
        assert_eq!(
            (c.max_num_batched_tokens, c.max_num_seqs, c.block_size),
            (8192, 256, 16)
        );
        assert!(c.enable_prefix_caching);
        assert_eq!(c.shutdown_timeout, 0);
        assert_eq!(c.request_body_timeout_ms, 30_000);
        // No model → invalid.
        assert!(matches!(c.validate(), Err(ConfigError::Invalid(m)) if m.contains("no model")));
    }

    #[test]
    fn layers_file_env_flags_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "serve.toml",
                "model = \"from-file\"\nport = 9000\nmax_num_seqs = 8\nblock_size = 32\n\
                 enable_prefix_caching = false\n",
            )?;
            jail.set_env("GLMFLEET_SERVE_MAX_NUM_SEQS", "16");
            jail.set_env("GLMFLEET_SERVE_SERVED_MODEL_NAME", r#"["a","b"]"#);
            jail.set_env("GLMFLEET_SERVE_KV_CACHE_MEMORY", "2GiB");
            let args = parse(&["/models/glm", "--config", "serve.toml", "--port", "9100"]);
            let c = load_config(&args).map_err(|e| e.to_string())?;
            assert_eq!(c.model.as_deref(), Some("/models/glm"));
            assert_eq!(c.port, 9100);
            assert_eq!(c.max_num_seqs, 16);
            assert_eq!(c.block_size, 32);
            assert!(!c.enable_prefix_caching);
            assert_eq!(c.served_model_name, vec!["a", "b"]);
            assert_eq!(c.kv_cache_memory, Some(ByteSize(2 << 30)));
            // An explicit flag re-enables what the file disabled.
            let args = parse(&["m", "--config", "serve.toml", "--enable-prefix-caching"]);
            assert!(
                load_config(&args)
                    .map_err(|e| e.to_string())?
                    .enable_prefix_caching
            );
            Ok(())
        });
    }

    #[test]
    fn speculative_config_as_vllm_spells_it() {
        let flag = r#"{"method": "mtp", "num_speculative_tokens": 2}"#;
        Jail::expect_with(|jail| {
            let c = load_config(&parse(&["m", "--speculative-config", flag]))
                .map_err(|e| e.to_string())?;
            let want = SpeculativeConfig {
                method: "mtp".into(),
                num_speculative_tokens: 2,
                disable_by_batch_size: None,
            };
            assert_eq!(c.speculative_config.as_ref(), Some(&want));
            assert_eq!(c.num_speculative_tokens(), 2);
            assert_eq!(c.speculative_disable_by_batch_size(), None);
            // vLLM's switch-off by batch size, also through a TOML table below.
            let c = load_config(&parse(&[
                "m",
                "--speculative-config",
                r#"{"method": "mtp", "disable_by_batch_size": 64}"#,
            ]))
            .map_err(|e| e.to_string())?;
            assert_eq!(c.speculative_disable_by_batch_size(), Some(64));
            // The token count defaults to 1; vLLM's method aliases are accepted.
            let c = load_config(&parse(&[
                "m",
                "--speculative-config",
                r#"{"method": "glm4_moe_mtp"}"#,
            ]))
            .map_err(|e| e.to_string())?;
            assert_eq!(c.num_speculative_tokens(), 1);
            // A TOML table, and the environment as a table or as JSON.
            jail.create_file(
                "serve.toml",
                "[speculative_config]\nmethod = \"mtp\"\nnum_speculative_tokens = 3\n\
                 disable_by_batch_size = 128\n",
            )?;
            let c =
                load_config(&parse(&["m", "--config", "serve.toml"])).map_err(|e| e.to_string())?;
            assert_eq!(c.num_speculative_tokens(), 3);
            assert_eq!(c.speculative_disable_by_batch_size(), Some(128));
            jail.set_env(
                "GLMFLEET_SERVE_SPECULATIVE_CONFIG",
                "{method=\"mtp\",num_speculative_tokens=4}",
            );
            let c = load_config(&parse(&["m"])).map_err(|e| e.to_string())?;
            assert_eq!(c.num_speculative_tokens(), 4);
            jail.set_env("GLMFLEET_SERVE_SPECULATIVE_CONFIG", flag);
            let c = load_config(&parse(&["m"])).map_err(|e| e.to_string())?;
            assert_eq!(c.num_speculative_tokens(), 2);
            assert_eq!(ServeConfig::default().num_speculative_tokens(), 0);
            Ok(())
        });
        // Bad values are clear errors.
        let cli = Cli::try_parse_from(["serve", "m", "--speculative-config", "{method: mtp}"]);
        let err = cli.err().unwrap().to_string();
        assert!(err.contains("expected JSON such as"), "{err}");
        let cli = Cli::try_parse_from([
            "serve",
            "m",
            "--speculative-config",
            r#"{"method": "mtp", "draft_model": "x"}"#,
        ]);
        assert!(cli.err().unwrap().to_string().contains("draft_model"));
        for (json, needle) in [
            (r#"{"method": "eagle"}"#, "\"eagle\" is not supported"),
            (
                r#"{"method": "ngram", "num_speculative_tokens": 2}"#,
                "method \"mtp\"",
            ),
            (
                r#"{"method": "mtp", "num_speculative_tokens": 0}"#,
                "at least 1",
            ),
            (
                r#"{"method": "mtp", "num_speculative_tokens": 9000}"#,
                "--max-num-batched-tokens",
            ),
            (
                r#"{"method": "mtp", "disable_by_batch_size": 0}"#,
                "disable_by_batch_size must be at least 1",
            ),
        ] {
            let c = ServeConfig {
                model: Some("m".into()),
                speculative_config: Some(json.parse().unwrap()),
                ..ServeConfig::default()
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains("--speculative-config") && err.contains(needle),
                "{json}: {err}"
            );
        }
    }

    #[test]
    fn flags_parse_every_kind() {
        let a = parse(&[
            "m",
            "--tool-call-parser",
            "glm47",
            "--reasoning-parser",
            "glm45",
            "--enable-auto-tool-choice",
            "--no-enable-prefix-caching",
            "--load-format",
            "scripted:/tmp/x.json",
            "--kv-cache-dtype",
            "fp8",
            "--served-model-name",
            "glm",
            "glm-air",
            "--api-key",
            "k",
            "--scheduling-policy",
            "priority",
            "--enforce-eager",
        ]);
        Jail::expect_with(|_| {
            let c = load_config(&a).map_err(|e| e.to_string())?;
            assert!(c.enforce_eager);
            assert_eq!(c.tool_call_parser, Some(ToolParserName::Glm47));
            assert_eq!(c.reasoning_parser, Some(ReasoningParserName::Glm45));
            assert!(c.enable_auto_tool_choice && !c.enable_prefix_caching);
            assert_eq!(c.load_format, LoadFormat::Scripted("/tmp/x.json".into()));
            assert_eq!(c.kv_cache_dtype, KvCacheDtype::Fp8);
            assert_eq!(c.served_model_name, vec!["glm", "glm-air"]);
            assert_eq!(c.api_key.as_deref(), Some("k"));
            assert_eq!(c.scheduling_policy, SchedulingPolicy::Priority);
            Ok(())
        });
    }

    #[test]
    fn validation_messages_name_the_flag() {
        let base = ServeConfig {
            model: Some("m".into()),
            ..ServeConfig::default()
        };
        assert!(base.validate().is_ok());
        let cases: Vec<(ServeConfig, &str)> = vec![
            (
                ServeConfig {
                    tensor_parallel_size: 2,
                    ..base.clone()
                },
                "--tensor-parallel-size",
            ),
            (
                ServeConfig {
                    block_size: 24,
                    ..base.clone()
                },
                "--block-size",
            ),
            (
                ServeConfig {
                    gpu_memory_utilization: 1.5,
                    ..base.clone()
                },
                "--gpu-memory-utilization",
            ),
            (
                ServeConfig {
                    max_num_batched_tokens: 8,
                    ..base.clone()
                },
                "--max-num-batched-tokens",
            ),
            (
                ServeConfig {
                    enable_auto_tool_choice: true,
                    ..base.clone()
                },
                "--tool-call-parser",
            ),
            (
                ServeConfig {
                    api_key: Some(String::new()),
                    ..base.clone()
                },
                "--api-key",
            ),
            (
                ServeConfig {
                    max_model_len: Some(0),
                    ..base.clone()
                },
                "--max-model-len",
            ),
            (
                ServeConfig {
                    request_body_timeout_ms: 0,
                    ..base.clone()
                },
                "request_body_timeout_ms",
            ),
        ];
        for (cfg, flag) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err} should mention {flag}");
        }
    }

    #[test]
    fn bad_values_are_reported_with_their_source() {
        Jail::expect_with(|jail| {
            jail.set_env("GLMFLEET_SERVE_MAX_NUM_SEQS", "lots");
            let err = load_config(&parse(&["m"])).unwrap_err().to_string();
            assert!(err.contains("MAX_NUM_SEQS"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "max_num_sqes = 3\n")?;
            let err = load_config(&parse(&["m", "--config", "c.toml"]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_num_sqes"), "{err}");
            Ok(())
        });
        let err = load_config(&parse(&["m", "--config", "/nonexistent/x.toml"])).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    fn byte_sizes_and_load_formats() {
        assert_eq!("1024".parse::<ByteSize>(), Ok(ByteSize(1024)));
        assert_eq!("4GiB".parse::<ByteSize>(), Ok(ByteSize(4 << 30)));
        assert_eq!("1.5G".parse::<ByteSize>(), Ok(ByteSize(1_500_000_000)));
        assert_eq!("512 Mi".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert!("12XB".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        for s in [
            "auto",
            "dummy",
            "fake",
            "fake:25000us+20us",
            "scripted:/a/b.json",
        ] {
            assert_eq!(s.parse::<LoadFormat>().unwrap().to_string(), s);
        }
        let slow = "fake:25ms+0.02ms".parse::<LoadFormat>().unwrap();
        assert_eq!(slow, "fake:25000us+20us".parse().unwrap());
        let LoadFormat::Fake(l) = "fake:1.5s".parse().unwrap() else {
            panic!("not fake")
        };
        assert_eq!((l.base.as_millis(), l.per_token.as_nanos()), (1500, 0));
        for bad in [
            "fake:",
            "fake:25",
            "fake:-1ms",
            "fake:1ms+",
            "fake:2h",
            "fake:1e9s",
        ] {
            let e = bad.parse::<LoadFormat>().unwrap_err();
            assert!(e.contains("fake:25ms+20us"), "{bad}: {e}");
        }
        assert!("scripted:".parse::<LoadFormat>().is_err());
        assert!("pt".parse::<LoadFormat>().is_err());
    }

    #[test]
    fn chat_template_path_or_inline() {
        let inline = ServeConfig {
            chat_template: Some("{{ messages }}".into()),
            ..ServeConfig::default()
        };
        assert_eq!(
            inline.read_chat_template().unwrap().as_deref(),
            Some("{{ messages }}")
        );
        let missing = ServeConfig {
            chat_template: Some("/no/such/template.jinja".into()),
            ..ServeConfig::default()
        };
        assert!(missing.read_chat_template().is_err());
    }
}
