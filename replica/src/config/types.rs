//! Value types of the serve configuration: parser names, KV dtype, scheduling policy, load
//! format and byte sizes (each parseable from a flag, an environment variable and TOML).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runner::fake::StepLatency;

/// Tool-call parser (`--tool-call-parser`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ToolParserName {
    /// GLM-4.5 / GLM-4.6 XML tool calls (name ends at a newline).
    Glm45,
    /// GLM-4.7 compact tool calls (no newlines required).
    Glm47,
}

/// Reasoning parser (`--reasoning-parser`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningParserName {
    /// `<think>…</think>` reasoning of GLM-4.5/4.6/4.7 (vLLM's `glm45`).
    Glm45,
}

/// KV-cache element type (`--kv-cache-dtype`); the model runner allocates the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    /// The model's activation dtype.
    #[default]
    Auto,
    /// bfloat16.
    Bf16,
    /// 8-bit float (e4m3).
    Fp8,
}

impl KvCacheDtype {
    /// The flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Bf16 => "bf16",
            Self::Fp8 => "fp8",
        }
    }
}

/// Waiting-queue order (`--scheduling-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SchedulingPolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Lower request `priority` first (ties by arrival).
    Priority,
}

/// How to obtain the model (`--load-format`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LoadFormat {
    /// Load the checkpoint's weights.
    #[default]
    Auto,
    /// Random weights with the checkpoint's shapes (performance work without a download).
    Dummy,
    /// No model at all: a deterministic fake that favours a token derived from the context
    /// (tests, router development). See [`crate::runner::FakeRunner`]. `fake:25ms+20us` adds a
    /// simulated step time (25 ms per step plus 20 µs per scheduled token): a stand-in for a GPU
    /// replica when measuring the router and the fleet on a machine without one.
    Fake(StepLatency),
    /// No model: replay the scripted responses in this file
    /// (see [`crate::runner::ScriptedRunner`]).
    Scripted(PathBuf),
}

impl fmt::Display for LoadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Dummy => f.write_str("dummy"),
            Self::Fake(l) if l.is_zero() => f.write_str("fake"),
            Self::Fake(l) => write!(f, "fake:{}+{}", micros(l.base), micros(l.per_token)),
            Self::Scripted(p) => write!(f, "scripted:{}", p.display()),
        }
    }
}

impl FromStr for LoadFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "dummy" => Ok(Self::Dummy),
            "fake" => Ok(Self::Fake(StepLatency::default())),
            _ => {
                if let Some(t) = s.strip_prefix("fake:") {
                    return fake_latency(t).map(Self::Fake).ok_or_else(|| {
                        format!(
                            "load format {s:?}: expected fake:<step time>[+<time per token>], \
                             e.g. fake:25ms+20us"
                        )
                    });
                }
                match s.strip_prefix("scripted:") {
                    Some(p) if !p.is_empty() => Ok(Self::Scripted(PathBuf::from(p))),
                    _ => Err(format!(
                        "unknown load format {s:?}: expected auto, dummy, fake[:<step time>\
                         [+<time per token>]] or scripted:<path>"
                    )),
                }
            }
        }
    }
}

/// `25ms+20us` (the second part optional; units s, ms, us).
fn fake_latency(s: &str) -> Option<StepLatency> {
    let (base, per_token) = match s.split_once('+') {
        Some((b, t)) => (b, Some(t)),
        None => (s, None),
    };
    Some(StepLatency {
        base: duration(base)?,
        per_token: per_token.map_or(Some(Duration::ZERO), duration)?,
    })
}

fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        (s.strip_suffix('s')?, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0 && v * scale < 3600.0).then(|| Duration::from_secs_f64(v * scale))
}

/// A duration as whole microseconds with its unit (`Display` of [`LoadFormat::Fake`]).
fn micros(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

impl Serialize for LoadFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LoadFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A byte count written as an integer or with a unit (`"20GiB"`, `"512M"`, `"1.5G"`;
/// K/M/G/T are powers of 1000, Ki/Mi/Gi/Ti powers of 1024, a trailing `B` is optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let unit = unit.strip_suffix(['B', 'b']).unwrap_or(unit);
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" => 1,
            "k" => 1_000,
            "m" => 1_000_000,
            "g" => 1_000_000_000,
            "t" => 1_000_000_000_000,
            "ki" => 1 << 10,
            "mi" => 1 << 20,
            "gi" => 1 << 30,
            "ti" => 1 << 40,
            _ => return Err(format!("invalid byte size {s:?}: unknown unit")),
        };
        let value: f64 = num.parse().map_err(|_| {
            format!("invalid byte size {s:?}: expected a number with an optional unit")
        })?;
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("invalid byte size {s:?}: out of range"));
        }
        Ok(Self(bytes as u64))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `--speculative-config` (vLLM's JSON, e.g. `{"method": "mtp", "num_speculative_tokens": 1}`):
/// speculative decoding with the checkpoint's MTP layer as the draft model. In a TOML file or
/// the environment it is a table (`{method = "mtp", num_speculative_tokens = 1}`) or the same
/// JSON as a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeculativeConfig {
    /// `mtp`; vLLM's aliases `glm4_moe_mtp` and `deepseek_mtp` are accepted too.
    pub method: String,
    /// Draft tokens per step (at least 1). Default 1 (GLM has one MTP layer; vLLM's recipe
    /// recommends 1).
    pub num_speculative_tokens: usize,
    /// No drafts after a step that ran more than this many sequences (vLLM V0's key of the same
    /// name). A draft+verify step costs more the larger the batch (on one H200 with Air: 1.2×
    /// a plain step at 64 sequences, 2× at 256), so at large batches speculation stops paying.
    /// The draft model still runs over every step, so its KV cache stays whole for later drafts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_by_batch_size: Option<usize>,
}

/// Method names that select the MTP draft layer.
const MTP_METHODS: [&str; 3] = ["mtp", "glm4_moe_mtp", "deepseek_mtp"];

impl SpeculativeConfig {
    /// Checks the method and the token count.
    pub fn validate(&self) -> Result<(), String> {
        if !MTP_METHODS.contains(&self.method.as_str()) {
            return Err(format!(
                "method {:?} is not supported: glmfleet drafts with the checkpoint's MTP layer \
                 (method \"mtp\")",
                self.method
            ));
        }
        if self.num_speculative_tokens == 0 {
            return Err("num_speculative_tokens must be at least 1".into());
        }
        if self.disable_by_batch_size == Some(0) {
            return Err(
                "disable_by_batch_size must be at least 1 (leave it out to always draft)".into(),
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpeculativeConfig {
    method: String,
    #[serde(default = "one")]
    num_speculative_tokens: usize,
    #[serde(default)]
    disable_by_batch_size: Option<usize>,
}

fn one() -> usize {
    1
}

impl From<RawSpeculativeConfig> for SpeculativeConfig {
    fn from(r: RawSpeculativeConfig) -> Self {
        Self {
            method: r.method,
            num_speculative_tokens: r.num_speculative_tokens,
            disable_by_batch_size: r.disable_by_batch_size,
        }
    }
}

impl FromStr for SpeculativeConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str::<RawSpeculativeConfig>(s)
            .map(Self::from)
            .map_err(|e| {
                format!(
                    "invalid speculative config {s:?}: {e} (expected JSON such as \
                     '{{\"method\": \"mtp\", \"num_speculative_tokens\": 1}}')"
                )
            })
    }
}

impl<'de> Deserialize<'de> for SpeculativeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            v => serde_json::from_value::<RawSpeculativeConfig>(v)
                .map(Self::from)
                .map_err(serde::de::Error::custom),
        }
    }
}
