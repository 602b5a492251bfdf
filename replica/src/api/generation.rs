//! Submitting engine requests for one API call and reading their events back.
//!
//! A [`Submission`] owns the receiving end of the call's event channel and the
//! [`RequestGuard`]s of its engine requests, so dropping it (the client went away, the handler
//! future was cancelled, the SSE body was dropped) aborts everything still running and frees
//! its KV blocks.

use tokio::sync::mpsc;

use super::error::ApiError;
use super::protocol::{PromptTokensDetails, Usage};
use super::AppState;
use crate::engine::{ChoiceDelta, EngineEvent, EngineRequest, Finish, RequestGuard, SubmitError};
use crate::sampler::SampleLogprobs;

/// One API call in flight.
#[derive(Debug)]
pub struct Submission {
    rx: mpsc::UnboundedReceiver<EngineEvent>,
    guards: Vec<RequestGuard>,
    /// Total choices (prompts × n).
    pub total_choices: usize,
    /// Choices that ended.
    finished: usize,
    /// Per engine request: (first choice index, n, prompt length).
    requests: Vec<(u32, usize, usize)>,
}

/// Everything a choice produced (non-streaming).
#[derive(Debug, Clone, Default)]
pub struct ChoiceOutput {
    /// Choice index.
    pub index: u32,
    /// Full text.
    pub text: String,
    /// Generated token ids.
    pub token_ids: Vec<u32>,
    /// Per-token logprobs (when requested).
    pub logprobs: Vec<SampleLogprobs>,
    /// How it ended.
    pub finish: Option<Finish>,
    /// Generated tokens.
    pub num_generated: usize,
    /// Prompt tokens served from the prefix cache.
    pub num_cached: usize,
}

impl Submission {
    /// Submits `requests` (one per prompt) sharing one event channel.
    pub fn start(st: &AppState, requests: Vec<EngineRequest>) -> Result<Self, ApiError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut guards = Vec::with_capacity(requests.len());
        let mut meta = Vec::with_capacity(requests.len());
        let mut total = 0;
        for req in requests {
            meta.push((req.choice_base, req.n, req.prompt_token_ids.len()));
            total += req.n;
            // On error the guards submitted so far are dropped, which aborts them.
            let guard = st.engine.submit(req, tx.clone()).map_err(|e| match e {
                SubmitError::EngineDown => ApiError::EngineDown,
                SubmitError::Overloaded { .. } => ApiError::Overloaded(e.to_string()),
            })?;
            guards.push(guard);
        }
        Ok(Self {
            rx,
            guards,
            total_choices: total,
            finished: 0,
            requests: meta,
        })
    }

    /// The next event, or `Ok(None)` when every choice ended. An error means the engine went
    /// away mid-request.
    pub async fn next(&mut self) -> Result<Option<EngineEvent>, ApiError> {
        if self.finished >= self.total_choices {
            self.complete();
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(ev) => {
                let ends = match &ev {
                    EngineEvent::Delta(d) => d.finish.is_some(),
                    EngineEvent::Error { .. } => true,
                };
                if ends {
                    self.finished += 1;
                }
                Ok(Some(ev))
            }
            None => Err(ApiError::EngineDown),
        }
    }

    /// Every choice ended: nothing to abort on drop.
    fn complete(&mut self) {
        for g in &mut self.guards {
            g.complete();
        }
    }

    /// Prompt tokens of all prompts (counted once per prompt, whatever `n`).
    pub fn prompt_tokens(&self) -> usize {
        self.requests.iter().map(|r| r.2).sum()
    }

    /// Usage for generated-token counts and cache hits per choice index.
    pub fn usage(&self, generated: &[usize], cached: &[usize]) -> Usage {
        let prompt_tokens = self.prompt_tokens();
        let completion_tokens: usize = generated.iter().sum();
        let cached_tokens = self
            .requests
            .iter()
            .map(|&(base, _, _)| cached.get(base as usize).copied().unwrap_or(0))
            .sum();
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
        }
    }

    /// Collects every choice (non-streaming). An engine-reported failure fails the call.
    pub async fn collect(mut self) -> Result<(Vec<ChoiceOutput>, Usage), ApiError> {
        let mut outs: Vec<ChoiceOutput> = (0..self.total_choices)
            .map(|i| ChoiceOutput {
                index: i as u32,
                ..ChoiceOutput::default()
            })
            .collect();
        while let Some(ev) = self.next().await? {
            match ev {
                EngineEvent::Delta(d) => {
                    if let Some(out) = outs.get_mut(d.index as usize) {
                        absorb(out, d);
                    }
                }
                EngineEvent::Error { message, .. } => return Err(ApiError::Engine(message)),
            }
        }
        let generated: Vec<usize> = outs.iter().map(|o| o.num_generated).collect();
        let cached: Vec<usize> = outs.iter().map(|o| o.num_cached).collect();
        let usage = self.usage(&generated, &cached);
        Ok((outs, usage))
    }
}

fn absorb(out: &mut ChoiceOutput, d: ChoiceDelta) {
    out.text.push_str(&d.text);
    out.token_ids.extend(d.token_ids);
    out.logprobs.extend(d.logprobs);
    out.num_generated = d.num_generated;
    out.num_cached = d.num_cached_tokens;
    if d.finish.is_some() {
        out.finish = d.finish;
    }
}

/// OpenAI's `finish_reason` for a finish.
pub fn finish_reason(f: &Finish) -> &'static str {
    f.reason.as_str()
}

/// vLLM's `stop_reason`: the stop token id or the stop string.
pub fn stop_reason(f: &Finish) -> Option<serde_json::Value> {
    f.stop_reason.as_ref().map(|r| match r {
        crate::engine::StopReason::Token(t) => serde_json::Value::from(*t),
        crate::engine::StopReason::Text(s) => serde_json::Value::from(s.clone()),
    })
}
