//! OpenAI (and vLLM-extension) request and response bodies.
//!
//! Requests accept unknown fields (clients send many optional ones); known fields are typed so
//! wrong types fail with serde's message (→ 400). Responses skip absent optional fields, except
//! the reasoning pair, which is always present in messages (`reasoning_content` for SGLang-style
//! clients and `reasoning` for current vLLM clients).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StopField {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl StopField {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and empty `choices` before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
    /// vLLM extension: `usage` on every chunk.
    #[serde(default)]
    pub continuous_usage_stats: bool,
}

/// Sampling fields shared by chat and completions (OpenAI plus vLLM extensions).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SamplingFields {
    /// Choices per prompt.
    pub n: Option<usize>,
    /// 0 = greedy.
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Top-k (−1 or 0 disable).
    pub top_k: Option<i64>,
    /// Min-p.
    pub min_p: Option<f32>,
    /// Presence penalty in [−2, 2].
    pub presence_penalty: Option<f32>,
    /// Frequency penalty in [−2, 2].
    pub frequency_penalty: Option<f32>,
    /// Repetition penalty (> 0).
    pub repetition_penalty: Option<f32>,
    /// Request seed.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Extra stop token ids.
    pub stop_token_ids: Option<Vec<u32>>,
    /// Keep generating past EOS.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Minimum generated tokens before EOS/stop may end generation.
    pub min_tokens: Option<usize>,
    /// Keep matched stop strings in the text.
    #[serde(default)]
    pub include_stop_str_in_output: bool,
    /// Drop special tokens from the text (default true).
    pub skip_special_tokens: Option<bool>,
    /// Token id (as a string) → bias.
    pub logit_bias: Option<Map<String, Value>>,
    /// Scheduling priority (lower first).
    pub priority: Option<i32>,
    /// Prefix-cache namespace.
    pub cache_salt: Option<String>,
    /// Streaming.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Requested model name.
    pub model: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// The conversation (validated by the chat template layer).
    pub messages: Value,
    /// OpenAI tools.
    pub tools: Option<Vec<Value>>,
    /// `"none" | "auto" | "required" | {"type":"function","function":{"name":…}}`.
    pub tool_choice: Option<Value>,
    /// Allow more than one call (default true).
    pub parallel_tool_calls: Option<bool>,
    /// Return logprobs of the generated tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token (requires `logprobs`).
    pub top_logprobs: Option<usize>,
    /// Deprecated alias of `max_completion_tokens`.
    pub max_tokens: Option<usize>,
    /// Maximum generated tokens.
    pub max_completion_tokens: Option<usize>,
    /// Template variables, e.g. `{"enable_thinking": false}`.
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Append the assistant turn opener (default true).
    pub add_generation_prompt: Option<bool>,
    /// Continue the final (assistant) message instead of starting a new turn.
    #[serde(default)]
    pub continue_final_message: bool,
    /// Structured output (only `{"type": "text"}` is supported).
    pub response_format: Option<Value>,
    /// Shared sampling fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt` of a completions request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One tokenized prompt.
    Tokens(Vec<u32>),
    /// Several tokenized prompts.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Prompt(s).
    pub prompt: Option<PromptInput>,
    /// Not supported (400 when set).
    pub suffix: Option<String>,
    /// Maximum generated tokens (default 16, as OpenAI).
    pub max_tokens: Option<usize>,
    /// Prepend the prompt to the text.
    #[serde(default)]
    pub echo: bool,
    /// Number of top logprobs per token (0..=max_logprobs).
    pub logprobs: Option<usize>,
    /// Must equal `n` when given.
    pub best_of: Option<usize>,
    /// Add the tokenizer's special tokens to text prompts (default true).
    pub add_special_tokens: Option<bool>,
    /// Shared sampling fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `POST /tokenize`: either a `prompt` or chat `messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// Requested model name.
    pub model: Option<String>,
    /// Text to tokenize.
    pub prompt: Option<String>,
    /// Conversation to render with the chat template, then tokenize.
    pub messages: Option<Value>,
    /// Tools for the template.
    pub tools: Option<Vec<Value>>,
    /// For `prompt` (default true).
    pub add_special_tokens: Option<bool>,
    /// For `messages` (default true).
    pub add_generation_prompt: Option<bool>,
    /// For `messages`.
    #[serde(default)]
    pub continue_final_message: bool,
    /// For `messages`.
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Also return each token's text.
    #[serde(default)]
    pub return_token_strs: bool,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    /// Requested model name.
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// `usage`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens (all prompts).
    pub prompt_tokens: usize,
    /// Generated tokens (all choices).
    pub completion_tokens: usize,
    /// Sum.
    pub total_tokens: usize,
    /// Prefix-cache details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// One alternative in chat logprobs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTopLogprob {
    /// Token text.
    pub token: String,
    /// Log probability.
    pub logprob: f32,
    /// UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
}

/// One token in chat logprobs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatLogprob {
    /// Token text.
    pub token: String,
    /// Log probability.
    pub logprob: f32,
    /// UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
    /// Most likely alternatives.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// Chat `logprobs` object.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatLogprob>,
}

/// A function call in a response message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as JSON text.
    pub arguments: String,
}

/// A tool call in a response message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallOut {
    /// Call id.
    pub id: String,
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The call.
    pub function: FunctionCall,
}

/// The assistant message of a non-streaming chat choice.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    /// Always `"assistant"`.
    pub role: &'static str,
    /// Answer text (null when only tool calls / reasoning).
    pub content: Option<String>,
    /// Reasoning (SGLang / older vLLM field name).
    pub reasoning_content: Option<String>,
    /// Reasoning (current vLLM field name).
    pub reasoning: Option<String>,
    /// Parsed tool calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A non-streaming chat choice.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChoice {
    /// Choice index.
    pub index: u32,
    /// The message.
    pub message: ChatMessage,
    /// Logprobs when requested.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, `tool_calls` or `abort`.
    pub finish_reason: Option<&'static str>,
    /// The stop token id or stop string that ended the choice.
    pub stop_reason: Option<Value>,
}

/// `chat.completion`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `"chat.completion"`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Choices by index.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// A function-call fragment in a streamed delta.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct FunctionDelta {
    /// Name (first fragment only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Arguments text to append.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// A tool-call fragment in a streamed delta.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallDelta {
    /// Which call.
    pub index: usize,
    /// Call id (first fragment only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `"function"` (first fragment only).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Name / arguments fragment.
    pub function: FunctionDelta,
}

/// A streamed chat delta.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ChatDelta {
    /// `"assistant"` on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Answer text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Reasoning text (SGLang name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Reasoning text (vLLM name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Tool-call fragments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A streamed chat choice.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChunkChoice {
    /// Choice index.
    pub index: u32,
    /// The delta.
    pub delta: ChatDelta,
    /// Logprobs of this chunk's tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChatLogprobs>,
    /// Set on the last chunk of the choice.
    pub finish_reason: Option<&'static str>,
    /// The stop token id or string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Value>,
}

/// `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletionChunk {
    /// Same id on every chunk.
    pub id: String,
    /// `"chat.completion.chunk"`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Zero or one choice (empty on the usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Usage (final chunk, or every chunk with `continuous_usage_stats`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Completions `logprobs` object (legacy format).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their logprobs.
    pub token_logprobs: Vec<f32>,
    /// Alternatives per token.
    pub top_logprobs: Vec<Map<String, Value>>,
    /// Byte offset of each token in the choice text.
    pub text_offset: Vec<usize>,
}

/// A completions choice (also used for streamed chunks).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionChoice {
    /// Choice index.
    pub index: u32,
    /// Text (a delta when streaming).
    pub text: String,
    /// Logprobs when requested.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop`, `length` or `abort`.
    pub finish_reason: Option<&'static str>,
    /// The stop token id or string.
    pub stop_reason: Option<Value>,
}

/// `text_completion` (response and stream chunk).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// `"text_completion"`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// Choices.
    pub choices: Vec<CompletionChoice>,
    /// Usage (always on responses; on the final stream chunk with `include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_forms() {
        let p = |v: Value| serde_json::from_value::<PromptInput>(v).unwrap();
        assert_eq!(p(json!("a")), PromptInput::Text("a".into()));
        assert_eq!(
            p(json!(["a", "b"])),
            PromptInput::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(p(json!([1, 2])), PromptInput::Tokens(vec![1, 2]));
        assert_eq!(
            p(json!([[1], [2, 3]])),
            PromptInput::TokenLists(vec![vec![1], vec![2, 3]])
        );
        assert!(serde_json::from_value::<PromptInput>(json!([1, "a"])).is_err());
    }

    #[test]
    fn chat_request_reads_flattened_sampling_and_rejects_bad_types() {
        let r: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m", "messages": [], "temperature": 0, "stop": "x", "n": 2, "seed": -1,
            "stream": true, "stream_options": {"include_usage": true}, "unknown_field": 1
        }))
        .unwrap();
        assert_eq!(r.sampling.temperature, Some(0.0));
        assert_eq!(r.sampling.stop, Some(StopField::One("x".into())));
        assert_eq!(
            (r.sampling.n, r.sampling.seed, r.sampling.stream),
            (Some(2), Some(-1), true)
        );
        assert!(r.sampling.stream_options.unwrap().include_usage);
        let bad = serde_json::from_value::<ChatCompletionRequest>(
            json!({"messages": [], "temperature": "hot"}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn message_always_has_both_reasoning_fields() {
        let m = ChatMessage {
            role: "assistant",
            content: Some("hi".into()),
            reasoning_content: None,
            reasoning: None,
            tool_calls: vec![],
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"role": "assistant", "content": "hi", "reasoning_content": null, "reasoning": null})
        );
    }
}
