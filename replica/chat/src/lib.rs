//! Chat plumbing for GLM-4.x serving: prompt rendering, output parsing, streaming text.
//!
//! Pure library (no async, no HTTP, no model code). The replica server uses it per request:
//!
//! 1. **Prompt** — [`resolve_chat_template`] picks the checkpoint's template (or a built-in,
//!    [`builtin::GLM45`] / [`builtin::GLM47`]); [`ChatTemplate::render`] renders OpenAI
//!    `messages` + `tools` + `chat_template_kwargs` byte-exactly as transformers would
//!    ([`ChatTemplate::render_continuation`] for `continue_final_message`).
//! 2. **Text** — [`IncrementalDetokenizer`] turns generated ids into UTF-8-safe text pieces;
//!    [`StopMatcher`] applies `stop` strings.
//! 3. **Reasoning** — [`ReasoningParser`] (vLLM `glm45`) splits text into `reasoning_content`
//!    and content; construct it with [`prompt_opens_thinking`] of the rendered prompt and the
//!    request's `enable_thinking`.
//! 4. **Tool calls** — the *content* part goes through [`ToolCallStream`] (streaming) or
//!    [`parse_tool_calls`] (non-streaming), dialect [`ToolParserKind::Glm45`] or
//!    [`ToolParserKind::Glm47`] (see [`ModelFamily::tool_parser`]).
//!
//! Chaining, streaming: `text = detok.push(id)` → `stop.push(text)` → `(r, c) =
//! reasoning.push(text)` → `tools.push(&c)`; at the end call each stage's `finish()` in the same
//! order, feeding what it returns to the next stage. Non-streaming: `reasoning.split(full)` then
//! `parse_tool_calls(kind, content, tools)`.
//!
//! For GLM the structural tokens (`<think>`, `<tool_call>`, …) are special tokens: decode with
//! `skip_special_tokens` off, or on with
//! [`IncrementalDetokenizer::keep_special_tokens`]`(`[`GLM_STRUCTURAL_TOKENS`]`)`.
//!
//! Public API:
//! * templates: [`ChatTemplate`] (`new`, `render`, `render_continuation`),
//!   [`normalize_messages`], [`TemplateError`], [`ModelFamily`], [`TemplateKind`],
//!   [`ResolvedTemplate`], [`resolve_chat_template`], [`prompt_opens_thinking`], [`builtin`];
//! * tool calls: [`ToolParserKind`], [`parse_tool_calls`], [`ParsedOutput`], [`ToolCall`],
//!   [`ToolCallStream`] (`new`, `push`, `finish`, `completed_calls`, `abandoned_call`),
//!   [`StreamDelta`], [`ArgType`], [`TypeSet`], [`classify_schema`], [`new_call_id`];
//! * reasoning: [`ReasoningParser`] (`new`, `split`, `push`, `finish`, `reasoning_ended`,
//!   `in_reasoning`);
//! * detokenizer: [`IncrementalDetokenizer`] (`new`, `keep_special_tokens`, `with_context`,
//!   `push`, `push_many`, `finish`, `ids`), [`DetokenizeError`], [`GLM_STRUCTURAL_TOKENS`];
//! * stop strings: [`StopMatcher`] (`new`, `push`, `finish`, `stopped`, `is_empty`),
//!   [`StopOutput`].

pub mod builtin;
mod detokenizer;
mod pyjson;
mod reasoning;
mod stop;
mod template;
mod tool_parser;

pub use detokenizer::{DetokenizeError, IncrementalDetokenizer, GLM_STRUCTURAL_TOKENS};
pub use reasoning::ReasoningParser;
pub use stop::{StopMatcher, StopOutput};
pub use template::{
    normalize_messages, prompt_opens_thinking, resolve_chat_template, ChatTemplate, ModelFamily,
    ResolvedTemplate, TemplateError, TemplateKind,
};
pub use tool_parser::{
    classify_schema, new_call_id, parse_tool_calls, ArgType, ParsedOutput, StreamDelta, ToolCall,
    ToolCallStream, ToolParserKind, TypeSet,
};

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn shareable_across_threads() {
        send_sync::<super::ChatTemplate>();
        send_sync::<super::ToolCallStream>();
        send_sync::<super::ReasoningParser>();
        send_sync::<super::IncrementalDetokenizer>();
        send_sync::<super::StopMatcher>();
        send_sync::<super::TemplateError>();
    }
}
