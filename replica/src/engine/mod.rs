//! The engine: a scheduler + runner + sampler loop on its own OS thread ([`core`]), reached from
//! async code through channels ([`handle`]).
//!
//! One API request becomes one [`EngineRequest`]; with `n > 1` the engine fans it out into `n`
//! scheduler requests over the same prompt (they share prompt blocks through prefix caching).
//! Each scheduler request reports [`EngineEvent`]s on the request's channel, one per step in
//! which it produced tokens, tagged with its choice index.

pub mod core;
pub mod handle;

use std::time::Instant;

use scheduler::FinishReason;

use crate::sampler::{SampleLogprobs, SamplingParams};

pub use handle::{EngineHandle, LoadSnapshot, RequestGuard, SubmitError};

/// A tokenized, validated request (built by the API layer).
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// Prompt tokens (non-empty).
    pub prompt_token_ids: Vec<u32>,
    /// Number of choices (each one a scheduler request).
    pub n: usize,
    /// Choice index of the first choice (completions with several prompts number choices
    /// `prompt_index * n + i`).
    pub choice_base: u32,
    /// Maximum generated tokens per choice (≥ 1).
    pub max_tokens: usize,
    /// Sampling parameters; with `n > 1` and a seed, choice `i` uses `seed + i`.
    pub sampling: SamplingParams,
    /// Stop strings (excluded from the text unless `include_stop_str_in_output`).
    pub stop: Vec<String>,
    /// Extra token ids that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Keep a matched stop string (or a stop token's text) in the output.
    pub include_stop_str_in_output: bool,
    /// Drop special tokens from the text (GLM's tool/think tags are always kept).
    pub skip_special_tokens: bool,
    /// Queue priority (lower first) when the scheduler runs the priority policy.
    pub priority: i32,
    /// Prefix-cache namespace.
    pub cache_salt: Option<String>,
    /// When the request arrived (start of TTFT / e2e latency).
    pub arrival: Instant,
}

/// How a choice ended, as reported to the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token id (EOS or `stop_token_ids`).
    Token(u32),
    /// A stop string.
    Text(String),
}

/// The end of one choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// Stop, length or abort.
    pub reason: FinishReason,
    /// What stopped it (for `Stop`).
    pub stop_reason: Option<StopReason>,
}

/// Tokens a choice produced in one step, and their text.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceDelta {
    /// Choice index (see [`EngineRequest::choice_base`]).
    pub index: u32,
    /// Text released by this step (may be empty: incomplete UTF-8, or held back because it
    /// may be the start of a stop string).
    pub text: String,
    /// Token ids generated in this step.
    pub token_ids: Vec<u32>,
    /// Logprobs of `token_ids` (when requested), one entry per token.
    pub logprobs: Vec<SampleLogprobs>,
    /// Set on the last delta of the choice.
    pub finish: Option<Finish>,
    /// Prompt length.
    pub num_prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
    /// Tokens generated so far (including this step's).
    pub num_generated: usize,
}

/// What the engine sends on a request's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// Progress of one choice.
    Delta(ChoiceDelta),
    /// A choice failed (rejected by the scheduler or the model step failed); it is over.
    Error {
        /// Choice index.
        index: u32,
        /// What went wrong.
        message: String,
    },
}

/// Starts the engine thread. `max_in_flight` bounds accepted-but-unfinished scheduler requests
/// (admission control; beyond it [`EngineHandle::submit`] answers `Overloaded`).
pub(crate) fn spawn(
    parts: core::EngineParts,
    max_in_flight: usize,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = std::sync::Arc::new(handle::Shared::new(parts.scheduler.stats()));
    let engine = core::EngineCore::new(parts, rx, shared.clone());
    let join = std::thread::Builder::new()
        .name("glmfleet-engine".into())
        .spawn(move || engine.run())?;
    Ok((EngineHandle::new(tx, shared, max_in_flight), join))
}
