//! `POST /v1/chat/completions`: validate → render the chat template → tokenize (no extra
//! special tokens: the template writes them) → submit → answer in full or as SSE
//! ([`super::chat_stream`]).
//!
//! Output parsing: the reasoning parser (`--reasoning-parser glm45`) runs first and fills both
//! `reasoning_content` and `reasoning`; its content part goes to the tool-call parser when
//! `tool_choice` asks for parsing ([`super::tools`]). Whether the output starts inside a
//! reasoning block is read off the rendered prompt (GLM-4.7's prompt ends with `<think>`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chat::{parse_tool_calls, ReasoningParser};
use http::{Response, StatusCode};
use scheduler::FinishReason;
use serde_json::Value;

use super::body::{json, parse_json, ApiBody};
use super::error::ApiError;
use super::generation::{finish_reason, stop_reason, ChoiceOutput, Submission};
use super::params::{common_params, engine_request, max_tokens_for};
use super::prompt::{encode, render_chat, response_id, unix_now, ChatInputs};
use super::protocol::{
    ChatChoice, ChatCompletion, ChatCompletionRequest, ChatMessage, StreamOptions, ToolCallOut,
};
use super::tools::ToolSetup;
use super::{chat_stream, logprobs, AppState};

/// What the response builders need to know about the request.
#[derive(Debug, Clone)]
pub struct ChatContext {
    /// `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Model name to report.
    pub model: String,
    /// `(prompt opens <think>, thinking enabled)` when the reasoning parser is on.
    pub reasoning: Option<(bool, bool)>,
    /// Tool handling.
    pub tools: ToolSetup,
    /// Logprobs requested.
    pub logprobs: bool,
    /// Stream options.
    pub stream_options: StreamOptions,
}

impl ChatContext {
    /// A fresh reasoning parser for one choice.
    pub fn reasoning_parser(&self) -> Option<ReasoningParser> {
        self.reasoning
            .map(|(opens, enabled)| ReasoningParser::new(opens, enabled))
    }
}

fn check_response_format(rf: Option<&Value>) -> Result<(), ApiError> {
    match rf.and_then(|v| v.get("type")).and_then(Value::as_str) {
        None | Some("text") => Ok(()),
        Some(other) => Err(ApiError::bad(
            "response_format",
            format!("response_format type {other:?} is not supported by this server (structured output is not implemented)"),
        )),
    }
}

fn logprobs_count(req: &ChatCompletionRequest) -> Result<Option<usize>, ApiError> {
    match (req.logprobs, req.top_logprobs) {
        (true, n) => Ok(Some(n.unwrap_or(0))),
        (false, Some(n)) if n > 0 => Err(ApiError::bad(
            "top_logprobs",
            "when using `top_logprobs`, `logprobs` must be set to true",
        )),
        (false, _) => Ok(None),
    }
}

/// The handler.
pub async fn chat_completions(
    st: Arc<AppState>,
    body: Bytes,
) -> Result<Response<ApiBody>, ApiError> {
    let arrival = Instant::now();
    let req: ChatCompletionRequest = parse_json(&body)?;
    let model = st.check_model(req.sampling.model.as_deref())?;
    check_response_format(req.response_format.as_ref())?;
    let tools = ToolSetup::resolve(
        req.tools.clone(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
        st.tool_parser,
        st.auto_tool_choice,
    )?;
    let rendered = render_chat(
        &st,
        ChatInputs {
            messages: &req.messages,
            tools: &tools.tools,
            add_generation_prompt: req.add_generation_prompt,
            continue_final_message: req.continue_final_message,
            kwargs: req.chat_template_kwargs.as_ref(),
        },
    )?;
    let prompt = encode(&st, rendered.text.clone(), false).await?;
    let max_tokens = max_tokens_for(
        prompt.len(),
        req.max_completion_tokens.or(req.max_tokens),
        &st,
    )?;
    let top = logprobs_count(&req)?;
    let common = common_params(&req.sampling, top, &st)?;
    let engine_req = engine_request(prompt, max_tokens, &common, 0, arrival)?;
    let sub = Submission::start(&st, vec![engine_req])?;
    let ctx = ChatContext {
        id: response_id("chatcmpl"),
        created: unix_now(),
        model,
        reasoning: st.reasoning_parser.then(|| {
            (
                chat::prompt_opens_thinking(&rendered.text),
                rendered.thinking_enabled,
            )
        }),
        tools,
        logprobs: top.is_some(),
        stream_options: req.sampling.stream_options.clone().unwrap_or_default(),
    };
    if req.sampling.stream {
        Ok(chat_stream::respond(st, sub, ctx))
    } else {
        respond_full(&st, sub, &ctx).await
    }
}

async fn respond_full(
    st: &AppState,
    sub: Submission,
    ctx: &ChatContext,
) -> Result<Response<ApiBody>, ApiError> {
    let (outs, usage) = sub.collect().await?;
    let choices = outs
        .into_iter()
        .map(|out| build_choice(st, ctx, out))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json(
        StatusCode::OK,
        &ChatCompletion {
            id: ctx.id.clone(),
            object: "chat.completion",
            created: ctx.created,
            model: ctx.model.clone(),
            choices,
            usage,
        },
    ))
}

fn build_choice(
    st: &AppState,
    ctx: &ChatContext,
    out: ChoiceOutput,
) -> Result<ChatChoice, ApiError> {
    let (reasoning, content) = match ctx.reasoning_parser() {
        Some(p) => p.split(&out.text),
        None => (None, Some(out.text)),
    };
    let (content, tool_calls): (Option<String>, Vec<ToolCallOut>) = if ctx.tools.parses() {
        match content {
            Some(c) => ctx
                .tools
                .filter(parse_tool_calls(ctx.tools.kind, &c, &ctx.tools.tools))?,
            None => {
                ctx.tools.check_required(0)?;
                (None, Vec::new())
            }
        }
    } else {
        (content, Vec::new())
    };
    let finish = out.finish.as_ref();
    let finish_reason = finish.map(|f| {
        if !tool_calls.is_empty() && f.reason == FinishReason::Stop {
            "tool_calls"
        } else {
            finish_reason(f)
        }
    });
    Ok(ChatChoice {
        index: out.index,
        message: ChatMessage {
            role: "assistant",
            content,
            reasoning_content: reasoning.clone(),
            reasoning,
            tool_calls,
        },
        logprobs: ctx
            .logprobs
            .then(|| logprobs::chat(&st.tokenizer, &out.logprobs)),
        finish_reason,
        stop_reason: finish.and_then(stop_reason),
    })
}
