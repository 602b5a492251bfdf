//! Incremental detokenization for streaming responses.
//!
//! Decoding token by token is wrong for byte-level BPE (a multi-byte UTF-8 character is often
//! split over several tokens) and for decoders that depend on neighbours (SentencePiece's `▁`,
//! WordLevel's joining spaces). The standard remedy, used here: keep a small window of ids
//! (`prefix_offset..read_offset` already emitted, plus the new ones), decode the window with and
//! without the new ids, and emit the difference only when the decoded text does not end in an
//! incomplete character (U+FFFD). Concatenating every emitted piece plus [`finish`] gives
//! exactly `tokenizer.decode(all_ids, skip_special_tokens)`.
//!
//! `skip_special_tokens` drops special added tokens before decoding; a keep-list lets
//! structural tokens (GLM's `<think>`, `<tool_call>`, …) survive it so the reasoning and tool
//! parsers still see them.
//!
//! Limitation: the invariant needs a decoder whose output for a prefix is a prefix of the
//! output for the whole. Byte-level BPE (GLM), WordLevel, Metaspace and SentencePiece decoders
//! are, except one case: HF's `ByteFallback` decoder replaces a whole run of `<0xNN>` tokens by
//! U+FFFD when any byte of the run is invalid UTF-8, so valid bytes already streamed before an
//! invalid one are kept here while `decode` would show them as U+FFFD.
//!
//! [`finish`]: IncrementalDetokenizer::finish

use std::collections::HashSet;
use std::sync::Arc;

use tokenizers::Tokenizer;

/// GLM special tokens the reasoning and tool-call parsers need to see in the text.
pub const GLM_STRUCTURAL_TOKENS: &[&str] = &[
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
];

/// Decoding failed inside the `tokenizers` library.
#[derive(Debug, thiserror::Error)]
#[error("detokenization failed: {0}")]
pub struct DetokenizeError(pub String);

/// Streaming detokenizer for one sequence.
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    /// Special ids to drop (empty when `skip_special_tokens` is off).
    skip: HashSet<u32>,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDetokenizer {
    /// A detokenizer; with `skip_special_tokens`, every added token marked special is dropped.
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool) -> Self {
        let skip = if skip_special_tokens {
            tokenizer
                .get_added_tokens_decoder()
                .into_iter()
                .filter(|(_, tok)| tok.special)
                .map(|(id, _)| id)
                .collect()
        } else {
            HashSet::new()
        };
        IncrementalDetokenizer {
            tokenizer,
            skip,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Keeps these special tokens (by text) even when skipping special tokens.
    pub fn keep_special_tokens<S: AsRef<str>>(mut self, tokens: &[S]) -> Self {
        for t in tokens {
            if let Some(id) = self.tokenizer.token_to_id(t.as_ref()) {
                self.skip.remove(&id);
            }
        }
        self
    }

    /// Uses `ids` (e.g. the end of the prompt) as left context: they shape how the first
    /// generated tokens decode but are never emitted.
    pub fn with_context(mut self, ids: &[u32]) -> Self {
        self.ids = ids
            .iter()
            .copied()
            .filter(|id| !self.skip.contains(id))
            .collect();
        self.prefix_offset = 0;
        self.read_offset = self.ids.len();
        self
    }

    fn decode(&self, ids: &[u32]) -> Result<String, DetokenizeError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| DetokenizeError(e.to_string()))
    }

    /// Adds one generated id; returns the text that became final (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, DetokenizeError> {
        if self.skip.contains(&id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let delta = diff_suffix(&prefix, &full);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Adds several ids; returns the concatenated new text.
    pub fn push_many(&mut self, ids: &[u32]) -> Result<String, DetokenizeError> {
        let mut out = String::new();
        for &id in ids {
            out.push_str(&self.push(id)?);
        }
        Ok(out)
    }

    /// Flushes text held back at the end (an incomplete character decodes as U+FFFD).
    pub fn finish(&mut self) -> Result<String, DetokenizeError> {
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() {
            Ok(diff_suffix(&prefix, &full))
        } else {
            Ok(String::new())
        }
    }

    /// Ids pushed so far (context included, skipped specials excluded).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// `full` minus its leading `prefix`. Decoders are prefix-stable in practice; if one is not,
/// the text from the same byte length on (moved back to a character boundary) is returned.
fn diff_suffix(prefix: &str, full: &str) -> String {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest.to_string();
    }
    let mut at = prefix.len().min(full.len());
    while !full.is_char_boundary(at) {
        at -= 1;
    }
    full[at..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_suffix_handles_non_prefix() {
        assert_eq!(diff_suffix("ab", "abc"), "c");
        assert_eq!(diff_suffix("aé", "ax yz"), "yz");
        assert_eq!(
            diff_suffix("aé", "ab€c"),
            "€c",
            "moved back to a char boundary"
        );
        assert_eq!(diff_suffix("", "x"), "x");
    }
}
