//! Prompt construction: chat-template rendering (with the request-side normalisations the
//! template layer does not do) and tokenization, plus response ids and timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::AppState;

/// Prompts longer than this (bytes) are tokenized on the blocking pool.
const BLOCKING_TOKENIZE_BYTES: usize = 32 * 1024;

/// A rendered chat prompt.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The prompt text.
    pub text: String,
    /// `chat_template_kwargs.enable_thinking` is not `false`.
    pub thinking_enabled: bool,
}

/// Inputs of a chat rendering.
#[derive(Debug, Clone, Copy)]
pub struct ChatInputs<'a> {
    /// OpenAI messages.
    pub messages: &'a Value,
    /// Tools to render (empty: none).
    pub tools: &'a [Value],
    /// Requested `add_generation_prompt` (default true unless continuing).
    pub add_generation_prompt: Option<bool>,
    /// `continue_final_message`.
    pub continue_final_message: bool,
    /// `chat_template_kwargs`.
    pub kwargs: Option<&'a Map<String, Value>>,
}

/// Renders a conversation with the server's chat template.
pub fn render_chat(st: &AppState, inp: ChatInputs<'_>) -> Result<Rendered, ApiError> {
    if inp.continue_final_message && inp.add_generation_prompt == Some(true) {
        return Err(ApiError::invalid(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
        ));
    }
    if !inp.messages.is_array() {
        return Err(ApiError::bad("messages", "messages must be an array"));
    }
    let messages = accept_reasoning_alias(inp.messages);
    let kwargs = inp.kwargs.cloned().unwrap_or_default();
    let thinking_enabled = kwargs.get("enable_thinking").and_then(Value::as_bool) != Some(false);
    let tools = Value::Array(inp.tools.to_vec());
    let tools = (!inp.tools.is_empty()).then_some(&tools);
    let text = if inp.continue_final_message {
        st.template.render_continuation(&messages, tools, &kwargs)
    } else {
        let add = inp.add_generation_prompt.unwrap_or(true);
        st.template.render(&messages, tools, add, &kwargs)
    }
    .map_err(|e| ApiError::bad("messages", e.to_string()))?;
    Ok(Rendered {
        text,
        thinking_enabled,
    })
}

/// Clients send past reasoning as `reasoning` (vLLM) or `reasoning_content` (SGLang); the
/// templates read `reasoning_content`.
fn accept_reasoning_alias(messages: &Value) -> Value {
    let mut messages = messages.clone();
    if let Some(list) = messages.as_array_mut() {
        for m in list.iter_mut().filter_map(Value::as_object_mut) {
            let has_content = m.get("reasoning_content").is_some_and(|v| !v.is_null());
            if !has_content {
                if let Some(r) = m.get("reasoning").filter(|v| v.is_string()).cloned() {
                    m.insert("reasoning_content".into(), r);
                }
            }
        }
    }
    messages
}

/// Tokenizes `text` (special tokens written in the text are matched as such; the tokenizer's
/// own special tokens are added only with `add_special_tokens`).
pub async fn encode(
    st: &AppState,
    text: String,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    let tok = st.tokenizer.clone();
    let long = text.len() > BLOCKING_TOKENIZE_BYTES;
    let run = move || -> Result<Vec<u32>, ApiError> {
        tok.encode(text.as_str(), add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}")))
    };
    if long {
        return tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| ApiError::Engine(format!("tokenization task failed: {e}")))?;
    }
    run()
}

/// `prefix-<24 alphanumerics>`.
pub fn response_id(prefix: &str) -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}-{suffix}")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
