//! Per-choice text output: the chat crate's incremental detokenizer followed by its stop-string
//! matcher.
//!
//! [`TextOutput`] turns the tokens a choice generates into text deltas. Text that could still
//! be the beginning of a stop string is held back until it either completes the stop string
//! (the choice then finishes; the stop string and everything after it are dropped unless
//! `include_stop_str_in_output`) or can no longer match (then it is released). Stop strings are
//! only looked for once `min_tokens` tokens were generated, as in vLLM.

use std::sync::Arc;

use chat::{IncrementalDetokenizer, StopMatcher, GLM_STRUCTURAL_TOKENS};
use tokenizers::Tokenizer;

/// Prompt tokens given to the detokenizer as left context (vLLM uses 5).
const PROMPT_CONTEXT_TOKENS: usize = 5;

/// Number of token ids the tokenizer can produce: the larger of its size with added tokens and
/// the highest added id + 1 (added ids need not be contiguous). Logits columns at and above it
/// are padding.
pub fn tokenizer_size(tokenizer: &Tokenizer) -> usize {
    let max_added = tokenizer
        .get_added_tokens_decoder()
        .keys()
        .max()
        .map_or(0, |&id| id as usize + 1);
    tokenizer.get_vocab_size(true).max(max_added)
}

/// Result of pushing tokens into a [`TextOutput`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextDelta {
    /// Text released now.
    pub text: String,
    /// The stop string that matched; the choice must finish.
    pub stop: Option<String>,
}

/// Detokenizer + stop strings for one choice (see the module docs).
#[derive(Debug, Clone)]
pub struct TextOutput {
    detok: IncrementalDetokenizer,
    stops: StopMatcher,
    include_stop: bool,
    stopped: bool,
}

impl TextOutput {
    /// A fresh output. With `skip_special_tokens`, special tokens are dropped except GLM's
    /// structural tags (`<think>`, `<tool_call>`, …), which the parsers need.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        prompt: &[u32],
        skip_special_tokens: bool,
        stops: Vec<String>,
        include_stop_str_in_output: bool,
    ) -> Self {
        let context = &prompt[prompt.len().saturating_sub(PROMPT_CONTEXT_TOKENS)..];
        let detok = IncrementalDetokenizer::new(tokenizer, skip_special_tokens)
            .keep_special_tokens(GLM_STRUCTURAL_TOKENS)
            .with_context(context);
        Self {
            detok,
            stops: StopMatcher::new(stops),
            include_stop: include_stop_str_in_output,
            stopped: false,
        }
    }

    /// Adds generated tokens. Stop strings are only searched when `check_stop`.
    pub fn push(&mut self, tokens: &[u32], check_stop: bool) -> TextDelta {
        if self.stopped {
            return TextDelta::default();
        }
        let text = self.decode(tokens);
        if !check_stop || self.stops.is_empty() {
            // Flush anything held back from earlier pushes first, keeping order.
            let mut out = self.stops.finish();
            out.push_str(&text);
            return TextDelta {
                text: out,
                stop: None,
            };
        }
        let out = self.stops.push(&text);
        match out.stopped {
            Some(_) => {
                self.stopped = true;
                let stop = self.stops.stopped().unwrap_or_default().to_owned();
                let mut text = out.text;
                if self.include_stop {
                    text.push_str(&stop);
                }
                TextDelta {
                    text,
                    stop: Some(stop),
                }
            }
            None => TextDelta {
                text: out.text,
                stop: None,
            },
        }
    }

    /// Releases everything still held back (the choice ended without a stop string).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let tail = match self.detok.finish() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("{e}");
                String::new()
            }
        };
        let mut out = self.stops.push(&tail).text;
        out.push_str(&self.stops.finish());
        out
    }

    fn decode(&mut self, tokens: &[u32]) -> String {
        match self.detok.push_many(tokens) {
            Ok(t) => t,
            Err(e) => {
                // The tokenizer cannot decode these ids (out of range): drop them from the text
                // rather than failing the request.
                tracing::warn!("{e}");
                String::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::byte_tokenizer;

    fn ids(tok: &Tokenizer, s: &str) -> Vec<u32> {
        tok.encode(s, false).unwrap().get_ids().to_vec()
    }

    fn output(stops: &[&str], include: bool) -> (Arc<Tokenizer>, TextOutput) {
        let tok = Arc::new(byte_tokenizer());
        let out = TextOutput::new(
            tok.clone(),
            &[1, 2, 3],
            true,
            stops.iter().map(|s| s.to_string()).collect(),
            include,
        );
        (tok, out)
    }

    #[test]
    fn streams_multibyte_text_token_by_token() {
        let (tok, mut out) = output(&[], false);
        let mut streamed = String::new();
        for t in ids(&tok, "héllo 世界") {
            streamed.push_str(&out.push(&[t], true).text);
        }
        streamed.push_str(&out.finish());
        assert_eq!(streamed, "héllo 世界");
    }

    #[test]
    fn stop_string_is_held_back_then_cut() {
        let (tok, mut out) = output(&["STOP"], false);
        let mut streamed = String::new();
        let mut stop = None;
        for t in ids(&tok, "abc STxSTOP tail") {
            let d = out.push(&[t], true);
            streamed.push_str(&d.text);
            if d.stop.is_some() {
                stop = d.stop;
                break;
            }
            assert!(!streamed.ends_with("ST") && !streamed.ends_with("STO"));
        }
        assert_eq!(stop.as_deref(), Some("STOP"));
        assert_eq!(streamed, "abc STx");
        assert_eq!(out.finish(), "");
        assert_eq!(out.push(&ids(&tok, "more"), true), TextDelta::default());
    }

    #[test]
    fn include_stop_and_release_on_finish() {
        let (tok, mut out) = output(&["</end>"], true);
        let d = out.push(&ids(&tok, "x</end>y"), true);
        assert_eq!(
            (d.text.as_str(), d.stop.as_deref()),
            ("x</end>", Some("</end>"))
        );
        let (tok, mut out) = output(&["</end>"], false);
        let d = out.push(&ids(&tok, "x</e"), true);
        assert_eq!(d.text, "x");
        assert_eq!(out.finish(), "</e");
    }

    #[test]
    fn stop_checks_wait_for_min_tokens() {
        let (tok, mut out) = output(&["a"], false);
        let d = out.push(&ids(&tok, "ba"), false);
        assert_eq!((d.text.as_str(), d.stop), ("ba", None));
        let d = out.push(&ids(&tok, "ca"), true);
        assert_eq!((d.text.as_str(), d.stop.as_deref()), ("c", Some("a")));
    }

    #[test]
    fn special_tokens_skipped_but_structural_tags_kept() {
        let (tok, mut out) = output(&[], false);
        let mut toks = ids(&tok, "<think>hi</think>");
        toks.extend(ids(&tok, "<|user|>"));
        let mut text = out.push(&toks, true).text;
        text.push_str(&out.finish());
        assert_eq!(text, "<think>hi</think>");
    }
}
