//! Reasoning extraction for GLM (`--reasoning-parser glm45`), non-streaming and streaming.
//!
//! GLM models think inside `<think>…</think>`. Where the block starts depends on the template:
//! GLM-4.5/4.6 prompts end at `<|assistant|>` and the model writes `\n<think>` itself; GLM-4.7
//! prompts end with `<think>`, so the output starts inside the block and only `</think>`
//! appears. With `enable_thinking=false` the template closes the block in the prompt and the
//! whole output is the answer.
//!
//! # Rule (current vLLM semantics, made correct for all three cases)
//! | prompt opened `<think>` | thinking enabled | behaviour |
//! |---|---|---|
//! | yes (GLM-4.7, or a continued open block) | any | R1: output starts as reasoning |
//! | no (GLM-4.5/4.6) | yes | reasoning only if the output opens with `<think>` |
//! | no | no | everything is content |
//!
//! * Leading whitespace followed by `<think>` is dropped together with the tag (an optional
//!   repeated `<think>` in R1 mode, the model's own opener in GLM-4.5/4.6 mode).
//! * In reasoning, the first `</think>` ends it (tag dropped); everything after is content,
//!   verbatim (so GLM-4.5's `\n` after `</think>` stays, as in vLLM).
//! * A `<tool_call>` inside reasoning also ends it and starts the content (tag kept), as in newer
//!   vLLM (PR #56635): a model that forgets `</think>` before calling a tool still gets its
//!   call parsed.
//! * Reasoning without `</think>` (truncation, or a GLM-4.7 model that skipped thinking) stays
//!   reasoning to the end — R1 behaviour; SGLang #37645 describes the trade-off.
//! * In GLM-4.5/4.6 mode an output that does not open with `<think>` is all content (a
//!   `</think>` later is not special): this is what fixes SGLang #37645 for these models.
//!
//! # Chaining with the tool parser
//! The server runs reasoning extraction first and feeds only the content part to
//! [`crate::ToolCallStream`] (streaming: each `content_delta` is pushed to the tool stream;
//! non-streaming: [`crate::parse_tool_calls`] on the content of [`ReasoningParser::split`]).

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_OPEN: &str = "<tool_call>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Deciding whether the output opens with `<think>`; `fallback` applies when it does not.
    Opening {
        fallback_reasoning: bool,
    },
    Reasoning,
    Content,
    Done,
}

/// Splits model output into reasoning and content; see the module docs.
#[derive(Debug, Clone)]
pub struct ReasoningParser {
    phase: Phase,
    buf: String,
    saw_end: bool,
}

impl ReasoningParser {
    /// `prompt_ends_in_think`: the rendered prompt leaves a `<think>` block open (see
    /// [`crate::prompt_opens_thinking`]); `thinking_enabled`: the request did not set
    /// `enable_thinking: false`.
    pub fn new(prompt_ends_in_think: bool, thinking_enabled: bool) -> Self {
        let phase = if prompt_ends_in_think {
            Phase::Opening {
                fallback_reasoning: true,
            }
        } else if thinking_enabled {
            Phase::Opening {
                fallback_reasoning: false,
            }
        } else {
            Phase::Content
        };
        ReasoningParser {
            phase,
            buf: String::new(),
            saw_end: false,
        }
    }

    /// Non-streaming split of a complete output: `(reasoning, content)`, each `None` when empty.
    pub fn split(&self, text: &str) -> (Option<String>, Option<String>) {
        let mut p = self.clone();
        let (mut r, mut c) = p.push(text);
        let (r2, c2) = p.finish();
        r.push_str(&r2);
        c.push_str(&c2);
        ((!r.is_empty()).then_some(r), (!c.is_empty()).then_some(c))
    }

    /// Feeds the next piece of output: `(reasoning_delta, content_delta)`.
    pub fn push(&mut self, delta: &str) -> (String, String) {
        if self.phase == Phase::Done {
            return (String::new(), String::new());
        }
        self.buf.push_str(delta);
        self.run(false)
    }

    /// Ends the output and flushes held-back text.
    pub fn finish(&mut self) -> (String, String) {
        if self.phase == Phase::Done {
            return (String::new(), String::new());
        }
        let out = self.run(true);
        self.phase = Phase::Done;
        out
    }

    /// True once reasoning is over (content is flowing), e.g. to start enforcing a response
    /// format only on the answer.
    pub fn reasoning_ended(&self) -> bool {
        self.saw_end || self.phase == Phase::Content
    }

    /// True while output is being classified as reasoning.
    pub fn in_reasoning(&self) -> bool {
        self.phase == Phase::Reasoning
    }

    fn run(&mut self, eof: bool) -> (String, String) {
        let mut reasoning = String::new();
        let mut content = String::new();
        loop {
            match self.phase {
                Phase::Done => break,
                Phase::Opening { fallback_reasoning } => {
                    let rest = self.buf.trim_start();
                    if let Some(after) = rest.strip_prefix(THINK_OPEN) {
                        self.buf = after.to_string();
                        self.phase = Phase::Reasoning;
                        continue;
                    }
                    let undecided = rest.is_empty() || THINK_OPEN.starts_with(rest);
                    if undecided && !eof {
                        break;
                    }
                    self.phase = if fallback_reasoning {
                        Phase::Reasoning
                    } else {
                        Phase::Content
                    };
                }
                Phase::Reasoning => {
                    let close = self.buf.find(THINK_CLOSE);
                    let tool = self.buf.find(TOOL_OPEN);
                    let end = match (close, tool) {
                        (Some(c), Some(t)) if t < c => Some((t, 0)),
                        (Some(c), _) => Some((c, THINK_CLOSE.len())),
                        (None, Some(t)) => Some((t, 0)),
                        (None, None) => None,
                    };
                    match end {
                        Some((at, tag_len)) => {
                            // `</think>` is dropped; a `<tool_call>` stays for the content
                            reasoning.push_str(&self.buf[..at]);
                            self.buf.drain(..at + tag_len);
                            self.saw_end = true;
                            self.phase = Phase::Content;
                        }
                        None => {
                            let hold = if eof {
                                0
                            } else {
                                partial_suffix(&self.buf, &[THINK_CLOSE, TOOL_OPEN])
                            };
                            let n = self.buf.len() - hold;
                            reasoning.push_str(&self.buf[..n]);
                            self.buf.drain(..n);
                            break;
                        }
                    }
                }
                Phase::Content => {
                    content.push_str(&self.buf);
                    self.buf.clear();
                    break;
                }
            }
        }
        (reasoning, content)
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of one of `tags`.
fn partial_suffix(s: &str, tags: &[&str]) -> usize {
    let max = tags.iter().map(|t| t.len()).max().unwrap_or(0);
    let lo = s.len().saturating_sub(max.saturating_sub(1));
    (lo..s.len())
        .filter(|&i| s.is_char_boundary(i))
        .find(|&i| {
            let tail = &s[i..];
            tags.iter()
                .any(|t| t.len() > tail.len() && t.starts_with(tail))
        })
        .map_or(0, |i| s.len() - i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(open: bool, enabled: bool, text: &str) -> (Option<String>, Option<String>) {
        ReasoningParser::new(open, enabled).split(text)
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn glm45_model_writes_think() {
        assert_eq!(
            split(false, true, "\n<think>Let me see.</think>\nParis."),
            (s("Let me see."), s("\nParis."))
        );
        assert_eq!(split(false, true, "<think></think>Hi"), (None, s("Hi")));
        // truncated inside thinking
        assert_eq!(
            split(false, true, "\n<think>still going"),
            (s("still going"), None)
        );
        // model skipped thinking: all content (SGLang #37645 does not happen here)
        assert_eq!(
            split(false, true, "Just the answer."),
            (None, s("Just the answer."))
        );
        assert_eq!(
            split(false, true, "\nAnswer</think>tail"),
            (None, s("\nAnswer</think>tail"))
        );
    }

    #[test]
    fn glm47_prompt_opened_think() {
        assert_eq!(
            split(true, true, "Reasoning here.</think>Answer."),
            (s("Reasoning here."), s("Answer."))
        );
        assert_eq!(split(true, true, "<think>R</think>A"), (s("R"), s("A")));
        assert_eq!(split(true, true, "no end tag"), (s("no end tag"), None));
        assert_eq!(split(true, true, "</think>A"), (None, s("A")));
    }

    #[test]
    fn thinking_disabled_is_identity() {
        assert_eq!(
            split(false, false, "<think>x</think>y"),
            (None, s("<think>x</think>y"))
        );
        assert_eq!(split(false, false, ""), (None, None));
    }

    #[test]
    fn tool_call_ends_reasoning() {
        assert_eq!(
            split(true, true, "I need the tool.<tool_call>f</tool_call>"),
            (s("I need the tool."), s("<tool_call>f</tool_call>"))
        );
    }

    #[test]
    fn state_queries() {
        let mut p = ReasoningParser::new(true, true);
        assert!(!p.reasoning_ended());
        let (r, c) = p.push("abc</thi");
        assert_eq!((r.as_str(), c.as_str()), ("abc", ""));
        assert!(p.in_reasoning());
        let (r, c) = p.push("nk>x");
        assert_eq!((r.as_str(), c.as_str()), ("", "x"));
        assert!(p.reasoning_ended());
        assert_eq!(p.finish(), (String::new(), String::new()));
        assert_eq!(p.push("more"), (String::new(), String::new()));
    }
}
