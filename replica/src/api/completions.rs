//! `POST /v1/completions`: the prompt is a text, a list of texts, a list of token ids or a list
//! of such lists. Each prompt becomes one engine request with `n` choices, numbered
//! `prompt_index * n + i`. Streaming sends one event per engine step of each choice.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::body::{json, parse_json, ApiBody};
use super::error::ApiError;
use super::generation::{finish_reason, stop_reason, Submission};
use super::params::{common_params, engine_request, max_tokens_for, CommonParams};
use super::prompt::{encode, response_id, unix_now};
use super::protocol::{
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptInput,
    StreamOptions, Usage,
};
use super::{logprobs, sse, AppState};
use crate::engine::EngineEvent;

/// Most prompts accepted in one request.
pub const MAX_PROMPTS: usize = 1024;
/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// A tokenized prompt and its text (for `echo`).
struct Prompt {
    ids: Vec<u32>,
    text: String,
}

async fn prompts(
    st: &AppState,
    input: Option<PromptInput>,
    add_special: bool,
) -> Result<Vec<Prompt>, ApiError> {
    let input = input.ok_or_else(|| ApiError::bad("prompt", "prompt must be given"))?;
    let mut out = Vec::new();
    let check_ids = |ids: &[u32]| -> Result<(), ApiError> {
        match ids.iter().find(|&&t| t as usize >= st.vocab_size) {
            Some(bad) => Err(ApiError::bad(
                "prompt",
                format!("token id {bad} is out of vocabulary ({})", st.vocab_size),
            )),
            None => Ok(()),
        }
    };
    match input {
        PromptInput::Text(t) => out.push((t, None)),
        PromptInput::Texts(ts) => out.extend(ts.into_iter().map(|t| (t, None))),
        PromptInput::Tokens(ids) => {
            check_ids(&ids)?;
            out.push((String::new(), Some(ids)));
        }
        PromptInput::TokenLists(lists) => {
            for ids in lists {
                check_ids(&ids)?;
                out.push((String::new(), Some(ids)));
            }
        }
    }
    if out.is_empty() || out.len() > MAX_PROMPTS {
        return Err(ApiError::bad(
            "prompt",
            format!(
                "between 1 and {MAX_PROMPTS} prompts are accepted, got {}",
                out.len()
            ),
        ));
    }
    let mut prompts = Vec::with_capacity(out.len());
    for (text, ids) in out {
        let prompt = match ids {
            Some(ids) => Prompt {
                text: st.tokenizer.decode(&ids, false).unwrap_or_default(),
                ids,
            },
            None => Prompt {
                ids: encode(st, text.clone(), add_special).await?,
                text,
            },
        };
        if prompt.ids.is_empty() {
            return Err(ApiError::bad(
                "prompt",
                "The decoder prompt cannot be empty",
            ));
        }
        prompts.push(prompt);
    }
    Ok(prompts)
}

fn validate(req: &CompletionRequest) -> Result<(), ApiError> {
    if req.suffix.is_some() {
        return Err(ApiError::bad("suffix", "suffix is not supported"));
    }
    let n = req.sampling.n.unwrap_or(1);
    if req.best_of.is_some_and(|b| b != n) {
        return Err(ApiError::bad(
            "best_of",
            "best_of must equal n (best-of sampling is not supported)",
        ));
    }
    if req.echo && req.logprobs.is_some() {
        return Err(ApiError::bad(
            "echo",
            "echo together with logprobs (prompt logprobs) is not supported",
        ));
    }
    Ok(())
}

struct Ctx {
    st: Arc<AppState>,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    /// Echo text per choice.
    echo: Vec<String>,
    stream_options: StreamOptions,
}

/// The handler.
pub async fn completions(st: Arc<AppState>, body: Bytes) -> Result<Response<ApiBody>, ApiError> {
    let arrival = Instant::now();
    let req: CompletionRequest = parse_json(&body)?;
    let model = st.check_model(req.sampling.model.as_deref())?;
    validate(&req)?;
    let common: CommonParams = common_params(&req.sampling, req.logprobs, &st)?;
    let prompts = prompts(
        &st,
        req.prompt.clone(),
        req.add_special_tokens.unwrap_or(true),
    )
    .await?;
    let requested = Some(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
    let mut engine_reqs = Vec::with_capacity(prompts.len());
    let mut echo = Vec::new();
    for (i, p) in prompts.into_iter().enumerate() {
        let max_tokens = max_tokens_for(p.ids.len(), requested, &st).map_err(|e| match e {
            ApiError::BadRequest { message, .. } => ApiError::bad("prompt", message),
            other => other,
        })?;
        for _ in 0..common.n {
            echo.push(if req.echo {
                p.text.clone()
            } else {
                String::new()
            });
        }
        engine_reqs.push(engine_request(
            p.ids,
            max_tokens,
            &common,
            (i * common.n) as u32,
            arrival,
        )?);
    }
    let sub = Submission::start(&st, engine_reqs)?;
    let ctx = Ctx {
        st,
        id: response_id("cmpl"),
        created: unix_now(),
        model,
        logprobs: req.logprobs.is_some(),
        echo,
        stream_options: req.sampling.stream_options.clone().unwrap_or_default(),
    };
    if req.sampling.stream {
        Ok(respond_stream(sub, ctx))
    } else {
        respond_full(sub, ctx).await
    }
}

async fn respond_full(sub: Submission, ctx: Ctx) -> Result<Response<ApiBody>, ApiError> {
    let (outs, usage) = sub.collect().await?;
    let choices = outs
        .into_iter()
        .map(|out| {
            let echo = ctx
                .echo
                .get(out.index as usize)
                .cloned()
                .unwrap_or_default();
            let logprobs = ctx.logprobs.then(|| {
                let mut lp = CompletionLogprobs::default();
                let mut offset = echo.len();
                logprobs::append_completion(&mut lp, &ctx.st.tokenizer, &out.logprobs, &mut offset);
                lp
            });
            CompletionChoice {
                index: out.index,
                text: echo + &out.text,
                logprobs,
                finish_reason: out.finish.as_ref().map(finish_reason),
                stop_reason: out.finish.as_ref().and_then(stop_reason),
            }
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &Completion {
            id: ctx.id,
            object: "text_completion",
            created: ctx.created,
            model: ctx.model,
            choices,
            usage: Some(usage),
        },
    ))
}

struct CompletionStream {
    sub: Submission,
    ctx: Ctx,
    /// Per choice: (echo sent, logprobs text offset, generated, cached).
    progress: Vec<(bool, usize, usize, usize)>,
}

impl CompletionStream {
    fn usage(&self) -> Usage {
        let generated: Vec<usize> = self.progress.iter().map(|p| p.2).collect();
        let cached: Vec<usize> = self.progress.iter().map(|p| p.3).collect();
        self.sub.usage(&generated, &cached)
    }

    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Completion {
        Completion {
            id: self.ctx.id.clone(),
            object: "text_completion",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage,
        }
    }

    async fn next(&mut self) -> (Bytes, bool) {
        let mut buf = Vec::new();
        let err = match self.sub.next().await {
            Ok(Some(EngineEvent::Delta(d))) => {
                let i = d.index as usize;
                let Some(p) = self.progress.get_mut(i) else {
                    return (Bytes::new(), true);
                };
                let mut text = String::new();
                if !p.0 {
                    p.0 = true;
                    text.push_str(self.ctx.echo.get(i).map_or("", String::as_str));
                }
                text.push_str(&d.text);
                p.2 = d.num_generated;
                p.3 = d.num_cached_tokens;
                let logprobs = self.ctx.logprobs.then(|| {
                    let mut lp = CompletionLogprobs::default();
                    logprobs::append_completion(
                        &mut lp,
                        &self.ctx.st.tokenizer,
                        &d.logprobs,
                        &mut p.1,
                    );
                    lp
                });
                let choice = CompletionChoice {
                    index: d.index,
                    text,
                    logprobs,
                    finish_reason: d.finish.as_ref().map(finish_reason),
                    stop_reason: d.finish.as_ref().and_then(stop_reason),
                };
                let usage = self
                    .ctx
                    .stream_options
                    .continuous_usage_stats
                    .then(|| self.usage());
                sse::push_event(&mut buf, &self.chunk(vec![choice], usage));
                return (Bytes::from(buf), true);
            }
            Ok(Some(EngineEvent::Error { message, .. })) => ApiError::Engine(message),
            Ok(None) => {
                if self.ctx.stream_options.include_usage {
                    let usage = self.usage();
                    sse::push_event(&mut buf, &self.chunk(Vec::new(), Some(usage)));
                }
                buf.extend_from_slice(sse::DONE);
                return (Bytes::from(buf), false);
            }
            Err(e) => e,
        };
        sse::push_error(&mut buf, &err);
        buf.extend_from_slice(sse::DONE);
        (Bytes::from(buf), false)
    }
}

fn respond_stream(sub: Submission, ctx: Ctx) -> Response<ApiBody> {
    let progress = (0..sub.total_choices)
        .map(|i| (false, ctx.echo.get(i).map_or(0, String::len), 0, 0))
        .collect();
    let stream = CompletionStream { sub, ctx, progress };
    sse::response(futures_util::stream::unfold(
        Some(stream),
        |state| async move {
            let mut s = state?;
            let (bytes, more) = s.next().await;
            Some((bytes, more.then_some(s)))
        },
    ))
}
