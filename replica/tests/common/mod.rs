//! What the engine tests on real models share (`engine_model.rs`, `engine_spec.rs`): building
//! requests, submitting them through the [`EngineHandle`], and collecting each choice's tokens.
// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use replica::engine::{EngineEvent, EngineHandle, EngineRequest, RequestGuard};
use replica::sampler::SamplingParams;
use scheduler::FinishReason;
use tokio::sync::mpsc;

pub const BLOCK_SIZE: usize = 16;
/// Longest wait for one engine event or for the engine to go idle.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A request for `max_tokens` tokens after `prompt` (EOS ignored, one choice).
pub fn request(prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> EngineRequest {
    EngineRequest {
        prompt_token_ids: prompt,
        n: 1,
        choice_base: 0,
        max_tokens,
        sampling,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: true,
        include_stop_str_in_output: false,
        skip_special_tokens: true,
        priority: 0,
        cache_salt: None,
        arrival: Instant::now(),
    }
}

pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    request(
        prompt,
        max_tokens,
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
    )
}

/// One finished choice.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The scheduler id (the runner's sequence id).
    pub id: u64,
    pub tokens: Vec<u32>,
    pub num_cached_tokens: usize,
    pub finish: FinishReason,
    /// Deltas that carried tokens: one per step that produced tokens for this choice.
    pub token_steps: usize,
}

pub struct Pending {
    guard: RequestGuard,
    events: mpsc::UnboundedReceiver<EngineEvent>,
}

pub fn submit(engine: &EngineHandle, req: EngineRequest) -> Pending {
    let (tx, events) = mpsc::unbounded_channel();
    let guard = engine.submit(req, tx).expect("submit");
    Pending { guard, events }
}

pub async fn collect(mut p: Pending) -> Choice {
    let id = p.guard.ids()[0];
    let mut tokens = Vec::new();
    let mut token_steps = 0;
    loop {
        let event = tokio::time::timeout(DEADLINE, p.events.recv())
            .await
            .expect("engine stalled")
            .expect("event channel closed before the request finished");
        match event {
            EngineEvent::Delta(d) => {
                token_steps += usize::from(!d.token_ids.is_empty());
                tokens.extend(&d.token_ids);
                assert_eq!(d.num_generated, tokens.len(), "num_generated of {id}");
                if let Some(finish) = d.finish {
                    p.guard.complete();
                    return Choice {
                        id,
                        tokens,
                        num_cached_tokens: d.num_cached_tokens,
                        finish: finish.reason,
                        token_steps,
                    };
                }
            }
            EngineEvent::Error { message, .. } => panic!("request {id} failed: {message}"),
        }
    }
}

/// Submits all requests at once, then collects them (the engine batches them).
pub async fn run_together(engine: &EngineHandle, reqs: &[EngineRequest]) -> Vec<Choice> {
    let pending: Vec<Pending> = reqs.iter().map(|r| submit(engine, r.clone())).collect();
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(collect(p).await);
    }
    idle(engine).await;
    out
}

/// Waits until nothing is in flight; the stats snapshot is then the one after the last step.
pub async fn idle(engine: &EngineHandle) {
    tokio::time::timeout(DEADLINE, engine.wait_idle())
        .await
        .expect("engine did not become idle");
}

/// Runs the requests one at a time.
pub async fn run_alone(engine: &EngineHandle, reqs: &[EngineRequest]) -> Vec<Choice> {
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        out.push(collect(submit(engine, r.clone())).await);
        idle(engine).await;
    }
    out
}
