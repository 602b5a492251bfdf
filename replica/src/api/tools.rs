//! `tools` / `tool_choice` handling for chat completions.
//!
//! Rules (vLLM's, adapted to a server without guided decoding for GLM's XML call format):
//! * `tool_choice` defaults to `"auto"` when tools are given, else `"none"`.
//! * `"none"`: tools are still rendered into the prompt (vLLM's default), output is not parsed.
//! * `"auto"` needs `--enable-auto-tool-choice` and `--tool-call-parser` (vLLM's error text).
//! * `"required"` and a named function need `--tool-call-parser`. The prompt is the same as for
//!   `"auto"` (GLM's parser cannot be combined with guided decoding, as in vLLM); after
//!   generation the server checks the output: for a named function only calls to that function
//!   are kept, and if no (matching) call was produced the request fails with HTTP 500 /
//!   an SSE error event (`type: InternalServerError`, `param: tool_choice`) — retryable, since a
//!   sampled retry may call the tool.
//! * `parallel_tool_calls: false` keeps only the first call.

use std::collections::HashMap;

use chat::{ParsedOutput, StreamDelta, ToolCallStream, ToolParserKind};
use serde_json::Value;

use super::error::ApiError;
use super::protocol::{FunctionCall, FunctionDelta, ToolCallDelta, ToolCallOut};

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolMode {
    /// No parsing.
    Off,
    /// Parse; calls optional.
    Auto,
    /// Parse; at least one call required.
    Required,
    /// Parse; a call to this function required, other calls dropped.
    Named(String),
}

/// Resolved tool configuration of one request.
#[derive(Debug, Clone)]
pub struct ToolSetup {
    /// The mode.
    pub mode: ToolMode,
    /// Parser dialect (meaningful unless `Off`).
    pub kind: ToolParserKind,
    /// The request's tools (rendered into the prompt when non-empty).
    pub tools: Vec<Value>,
    /// Allow several calls.
    pub parallel: bool,
}

fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function")?.get("name")?.as_str()
}

impl ToolSetup {
    /// Validates `tools` / `tool_choice` against the server's flags.
    pub fn resolve(
        tools: Option<Vec<Value>>,
        tool_choice: Option<&Value>,
        parallel: Option<bool>,
        parser: Option<ToolParserKind>,
        auto_enabled: bool,
    ) -> Result<Self, ApiError> {
        let tools = tools.unwrap_or_default();
        for (i, t) in tools.iter().enumerate() {
            let is_function = t.get("type").and_then(Value::as_str) == Some("function");
            if !is_function || tool_name(t).is_none() {
                return Err(ApiError::bad(
                    "tools",
                    format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"),
                ));
            }
        }
        let mode = match tool_choice {
            None if tools.is_empty() => ToolMode::Off,
            None => ToolMode::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "none" => ToolMode::Off,
                "auto" if tools.is_empty() => ToolMode::Off,
                "auto" => ToolMode::Auto,
                "required" => ToolMode::Required,
                other => {
                    return Err(ApiError::bad(
                        "tool_choice",
                        format!("tool_choice must be \"none\", \"auto\", \"required\" or a named function, got {other:?}"),
                    ))
                }
            },
            Some(v) => match v.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) => ToolMode::Named(name.to_owned()),
                None => {
                    return Err(ApiError::bad(
                        "tool_choice",
                        "a named tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ))
                }
            },
        };
        if matches!(mode, ToolMode::Required | ToolMode::Named(_)) && tools.is_empty() {
            return Err(ApiError::bad(
                "tool_choice",
                "When using `tool_choice`, `tools` must be set.",
            ));
        }
        if let ToolMode::Named(name) = &mode {
            if !tools.iter().any(|t| tool_name(t) == Some(name)) {
                return Err(ApiError::bad(
                    "tool_choice",
                    format!("Tool '{name}' has not been passed in `tools`."),
                ));
            }
        }
        let kind = match (&mode, parser) {
            (ToolMode::Off, p) => p.unwrap_or(ToolParserKind::Glm45),
            (ToolMode::Auto, Some(p)) if auto_enabled => p,
            (ToolMode::Auto, _) => {
                return Err(ApiError::bad(
                    "tool_choice",
                    "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                ))
            }
            (_, Some(p)) => p,
            (_, None) => {
                return Err(ApiError::bad(
                    "tool_choice",
                    "tool_choice \"required\" or a named function requires the server to run with --tool-call-parser",
                ))
            }
        };
        Ok(Self {
            mode,
            kind,
            tools,
            parallel: parallel.unwrap_or(true),
        })
    }

    /// Whether output is parsed for calls.
    pub fn parses(&self) -> bool {
        self.mode != ToolMode::Off
    }

    fn allows(&self, name: &str, already: usize) -> bool {
        let name_ok = match &self.mode {
            ToolMode::Named(n) => n == name,
            _ => true,
        };
        name_ok && (self.parallel || already == 0)
    }

    /// Applies the mode to a non-streaming parse; errors when a required call is missing.
    pub fn filter(
        &self,
        parsed: ParsedOutput,
    ) -> Result<(Option<String>, Vec<ToolCallOut>), ApiError> {
        let mut calls = Vec::new();
        for c in parsed.tool_calls {
            if self.allows(&c.name, calls.len()) {
                calls.push(ToolCallOut {
                    id: c.id,
                    kind: "function",
                    function: FunctionCall {
                        name: c.name,
                        arguments: c.arguments,
                    },
                });
            }
        }
        self.check_required(calls.len())?;
        Ok((parsed.content, calls))
    }

    /// Errors when the mode requires a call and `calls` is zero.
    pub fn check_required(&self, calls: usize) -> Result<(), ApiError> {
        if calls > 0 {
            return Ok(());
        }
        match &self.mode {
            ToolMode::Required => Err(ApiError::ToolCallMissing(
                "tool_choice is \"required\" but the model did not produce a tool call".into(),
            )),
            ToolMode::Named(n) => Err(ApiError::ToolCallMissing(format!(
                "tool_choice names `{n}` but the model did not call it"
            ))),
            _ => Ok(()),
        }
    }
}

/// Streaming tool-call parsing with the mode applied (calls renumbered from 0).
#[derive(Debug)]
pub struct ToolStream {
    setup: ToolSetup,
    parser: ToolCallStream,
    /// Parser call index → output call index, for allowed calls.
    allowed: HashMap<usize, usize>,
}

impl ToolStream {
    /// A stream for one choice.
    pub fn new(setup: &ToolSetup) -> Self {
        Self {
            parser: ToolCallStream::new(setup.kind, &setup.tools),
            setup: setup.clone(),
            allowed: HashMap::new(),
        }
    }

    /// Feeds content text; appends content and call fragments.
    pub fn push(&mut self, text: &str, content: &mut String, calls: &mut Vec<ToolCallDelta>) {
        let deltas = self.parser.push(text);
        self.map(deltas, content, calls);
    }

    /// Ends the output.
    pub fn finish(&mut self, content: &mut String, calls: &mut Vec<ToolCallDelta>) {
        let deltas = self.parser.finish();
        self.map(deltas, content, calls);
    }

    /// Calls streamed and completed (an abandoned, never-closed call does not count).
    pub fn completed_calls(&self) -> usize {
        let abandoned = self
            .parser
            .abandoned_call()
            .is_some_and(|i| self.allowed.contains_key(&i));
        self.allowed.len() - usize::from(abandoned)
    }

    /// The resolved setup.
    pub fn setup(&self) -> &ToolSetup {
        &self.setup
    }

    fn map(
        &mut self,
        deltas: Vec<StreamDelta>,
        content: &mut String,
        calls: &mut Vec<ToolCallDelta>,
    ) {
        for d in deltas {
            match d {
                StreamDelta::Content(c) => content.push_str(&c),
                StreamDelta::ToolCallStart { index, id, name } => {
                    if self.setup.allows(&name, self.allowed.len()) {
                        let out = self.allowed.len();
                        self.allowed.insert(index, out);
                        calls.push(ToolCallDelta {
                            index: out,
                            id: Some(id),
                            kind: Some("function"),
                            function: FunctionDelta {
                                name: Some(name),
                                arguments: Some(String::new()),
                            },
                        });
                    }
                }
                StreamDelta::ToolCallArgs { index, fragment } => {
                    if let Some(&out) = self.allowed.get(&index) {
                        calls.push(ToolCallDelta {
                            index: out,
                            id: None,
                            kind: None,
                            function: FunctionDelta {
                                name: None,
                                arguments: Some(fragment),
                            },
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {}}}),
            json!({"type": "function", "function": {"name": "get_time", "parameters": {}}}),
        ]
    }

    fn resolve(choice: Option<Value>, parser: bool, auto: bool) -> Result<ToolSetup, ApiError> {
        ToolSetup::resolve(
            Some(tools()),
            choice.as_ref(),
            None,
            parser.then_some(ToolParserKind::Glm45),
            auto,
        )
    }

    #[test]
    fn modes_and_vllm_errors() {
        assert_eq!(resolve(None, true, true).unwrap().mode, ToolMode::Auto);
        let err = resolve(None, true, false).unwrap_err().to_string();
        assert!(err.contains("--enable-auto-tool-choice"), "{err}");
        assert_eq!(
            resolve(Some(json!("none")), false, false).unwrap().mode,
            ToolMode::Off
        );
        assert!(resolve(Some(json!("required")), false, false).is_err());
        assert_eq!(
            resolve(Some(json!("required")), true, false).unwrap().mode,
            ToolMode::Required
        );
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        assert_eq!(
            resolve(Some(named), true, false).unwrap().mode,
            ToolMode::Named("get_time".into())
        );
        let unknown = json!({"type": "function", "function": {"name": "nope"}});
        assert!(resolve(Some(unknown), true, false)
            .unwrap_err()
            .to_string()
            .contains("nope"));
        assert!(resolve(Some(json!("sometimes")), true, true).is_err());
        let no_tools = ToolSetup::resolve(
            None,
            Some(&json!("required")),
            None,
            Some(ToolParserKind::Glm45),
            true,
        );
        assert!(no_tools.is_err());
        let bad_tool =
            ToolSetup::resolve(Some(vec![json!({"type": "x"})]), None, None, None, false);
        assert!(bad_tool.is_err());
    }

    #[test]
    fn named_filter_and_required_check() {
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        let setup = resolve(Some(named), true, false).unwrap();
        let text = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>";
        let parsed = chat::parse_tool_calls(ToolParserKind::Glm45, text, &setup.tools);
        assert_eq!(parsed.tool_calls.len(), 1);
        assert!(matches!(
            setup.filter(parsed),
            Err(ApiError::ToolCallMissing(_))
        ));
        let text = format!("{text}\n<tool_call>get_time\n</tool_call>");
        let parsed = chat::parse_tool_calls(ToolParserKind::Glm45, &text, &setup.tools);
        let (_, calls) = setup.filter(parsed).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "get_time");
    }
}
