//! Streaming chat completions: one SSE event per engine step of each choice (so one per
//! generated token; load generators count events), preceded by a role chunk per choice and
//! followed by an optional usage chunk (`stream_options.include_usage`, empty `choices`) and
//! `data: [DONE]`.
//!
//! Each choice's text goes through its own reasoning parser and tool-call stream. A step whose
//! text the parsers hold back still yields an event, with an empty delta. Errors after the
//! response started are sent as an `{"error": …}` event, then `[DONE]`.
//!
//! The SSE body owns the [`Submission`]; when the client disconnects hyper drops the body, and
//! with it the request guards, which abort the engine requests and free their KV blocks.

use std::sync::Arc;

use bytes::Bytes;
use chat::ReasoningParser;
use http::Response;
use scheduler::FinishReason;

use super::body::ApiBody;
use super::chat::ChatContext;
use super::error::ApiError;
use super::generation::{finish_reason, stop_reason, Submission};
use super::protocol::{ChatChunkChoice, ChatCompletionChunk, ChatDelta, ToolCallDelta, Usage};
use super::tools::ToolStream;
use super::{logprobs, sse, AppState};
use crate::engine::{ChoiceDelta, EngineEvent};

/// Per-choice parser state.
#[derive(Debug)]
struct ChoiceState {
    reasoning: Option<ReasoningParser>,
    tools: Option<ToolStream>,
    generated: usize,
    cached: usize,
}

/// Text of one step after the parsers.
#[derive(Debug, Default)]
struct Parts {
    reasoning: String,
    content: String,
    calls: Vec<ToolCallDelta>,
}

impl ChoiceState {
    fn feed_content(&mut self, text: &str, parts: &mut Parts) {
        match &mut self.tools {
            Some(t) => t.push(text, &mut parts.content, &mut parts.calls),
            None => parts.content.push_str(text),
        }
    }

    fn push(&mut self, text: &str, parts: &mut Parts) {
        let content = match &mut self.reasoning {
            Some(p) => {
                let (r, c) = p.push(text);
                parts.reasoning.push_str(&r);
                c
            }
            None => text.to_owned(),
        };
        self.feed_content(&content, parts);
    }

    fn finish(&mut self, parts: &mut Parts) -> Result<(), ApiError> {
        if let Some(p) = &mut self.reasoning {
            let (r, c) = p.finish();
            parts.reasoning.push_str(&r);
            self.feed_content(&c, parts);
        }
        if let Some(t) = &mut self.tools {
            t.finish(&mut parts.content, &mut parts.calls);
            t.setup().check_required(t.completed_calls())?;
        }
        Ok(())
    }

    fn called_tools(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| t.completed_calls() > 0)
    }
}

struct ChatStream {
    st: Arc<AppState>,
    sub: Submission,
    ctx: ChatContext,
    choices: Vec<ChoiceState>,
    started: bool,
}

impl ChatStream {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.ctx.id.clone(),
            object: "chat.completion.chunk",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage,
        }
    }

    fn usage(&self) -> Usage {
        let generated: Vec<usize> = self.choices.iter().map(|c| c.generated).collect();
        let cached: Vec<usize> = self.choices.iter().map(|c| c.cached).collect();
        self.sub.usage(&generated, &cached)
    }

    /// Role chunks, once, before the first token of any choice.
    fn start(&mut self, buf: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        for index in 0..self.choices.len() {
            let role = ChatChunkChoice {
                index: index as u32,
                delta: ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..ChatDelta::default()
                },
                logprobs: None,
                finish_reason: None,
                stop_reason: None,
            };
            let usage = self
                .ctx
                .stream_options
                .continuous_usage_stats
                .then(|| self.usage());
            sse::push_event(buf, &self.chunk(vec![role], usage));
        }
    }

    /// One engine delta → one chunk. An error means the stream must end after it.
    fn on_delta(&mut self, d: ChoiceDelta, buf: &mut Vec<u8>) -> Result<(), ApiError> {
        self.start(buf);
        let Some(state) = self.choices.get_mut(d.index as usize) else {
            return Ok(());
        };
        state.generated = d.num_generated;
        state.cached = d.num_cached_tokens;
        let mut parts = Parts::default();
        state.push(&d.text, &mut parts);
        let finished = d.finish.as_ref().map(|_| state.finish(&mut parts));
        let finish_reason = d.finish.as_ref().map(|f| {
            if state.called_tools() && f.reason == FinishReason::Stop {
                "tool_calls"
            } else {
                finish_reason(f)
            }
        });
        let reasoning = (!parts.reasoning.is_empty()).then_some(parts.reasoning);
        let choice = ChatChunkChoice {
            index: d.index,
            delta: ChatDelta {
                role: None,
                content: (!parts.content.is_empty()).then_some(parts.content),
                reasoning_content: reasoning.clone(),
                reasoning,
                tool_calls: parts.calls,
            },
            logprobs: self
                .ctx
                .logprobs
                .then(|| logprobs::chat(&self.st.tokenizer, &d.logprobs)),
            finish_reason,
            stop_reason: d.finish.as_ref().and_then(stop_reason),
        };
        let usage = self
            .ctx
            .stream_options
            .continuous_usage_stats
            .then(|| self.usage());
        sse::push_event(buf, &self.chunk(vec![choice], usage));
        finished.unwrap_or(Ok(()))
    }

    /// The bytes for the next event(s); `false` when the stream ends after them.
    async fn next(&mut self) -> (Bytes, bool) {
        let mut buf = Vec::new();
        let outcome = match self.sub.next().await {
            Ok(Some(EngineEvent::Delta(d))) => self.on_delta(d, &mut buf).map(|()| true),
            Ok(Some(EngineEvent::Error { message, .. })) => Err(ApiError::Engine(message)),
            Ok(None) => {
                self.start(&mut buf);
                if self.ctx.stream_options.include_usage {
                    let usage = self.usage();
                    sse::push_event(&mut buf, &self.chunk(Vec::new(), Some(usage)));
                }
                buf.extend_from_slice(sse::DONE);
                Ok(false)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(more) => (Bytes::from(buf), more),
            Err(e) => {
                sse::push_error(&mut buf, &e);
                buf.extend_from_slice(sse::DONE);
                (Bytes::from(buf), false)
            }
        }
    }
}

/// The SSE response for a submitted chat request.
pub fn respond(st: Arc<AppState>, sub: Submission, ctx: ChatContext) -> Response<ApiBody> {
    let choices = (0..sub.total_choices)
        .map(|_| ChoiceState {
            reasoning: ctx.reasoning_parser(),
            tools: ctx.tools.parses().then(|| ToolStream::new(&ctx.tools)),
            generated: 0,
            cached: 0,
        })
        .collect();
    let stream = ChatStream {
        st,
        sub,
        ctx,
        choices,
        started: false,
    };
    sse::response(futures_util::stream::unfold(
        Some(stream),
        |state| async move {
            let mut s = state?;
            let (bytes, more) = s.next().await;
            Some((bytes, more.then_some(s)))
        },
    ))
}
