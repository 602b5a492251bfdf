//! The optional local tokenizer (`--tokenizer`): a `tokenizer.json` file or a folder holding one.
//! It gives the random datasets real text of an exact token length and counts output tokens when
//! a server sends no usage. Nothing is ever downloaded.

use std::path::{Path, PathBuf};

use tokenizers::{PostProcessor, Tokenizer};

use crate::BenchError;

/// A loaded tokenizer plus the facts vLLM's datasets read from a Hugging Face tokenizer.
pub struct BenchTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    vocab_size: usize,
    special_ids: Vec<u32>,
    num_special_tokens_to_add: usize,
}

impl std::fmt::Debug for BenchTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl BenchTokenizer {
    /// Loads `path`: a `tokenizer.json` file, or a folder containing one.
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(BenchError::Tokenizer(format!(
                "{} not found",
                file.display()
            )));
        }
        let inner = Tokenizer::from_file(&file)
            .map_err(|e| BenchError::Tokenizer(format!("cannot load {}: {e}", file.display())))?;
        Ok(Self::from_tokenizer(inner, file))
    }

    /// Wraps an already built tokenizer (`path` is only reported).
    pub fn from_tokenizer(inner: Tokenizer, path: PathBuf) -> Self {
        let vocab_size = inner.get_vocab_size(false);
        let mut special_ids: Vec<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        special_ids.sort_unstable();
        let num_special_tokens_to_add = inner
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        Self {
            inner,
            path,
            vocab_size,
            special_ids,
            num_special_tokens_to_add,
        }
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Base vocabulary size without added tokens (Hugging Face's `tokenizer.vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Special tokens the post-processor adds to one sequence.
    pub fn num_special_tokens_to_add(&self) -> usize {
        self.num_special_tokens_to_add
    }

    /// Ids below `vocab_size` that are not special tokens, ascending.
    pub fn allowed_tokens(&self) -> Vec<u32> {
        (0..self.vocab_size as u32)
            .filter(|id| self.special_ids.binary_search(id).is_err())
            .collect()
    }

    /// Encodes text, optionally with the post-processor's special tokens.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, BenchError> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| BenchError::Tokenizer(format!("encode: {e}")))
    }

    /// Decodes ids, keeping special tokens (Hugging Face's default).
    pub fn decode(&self, ids: &[u32]) -> Result<String, BenchError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| BenchError::Tokenizer(format!("decode: {e}")))
    }

    /// Token count of generated text (no special tokens), 0 when it cannot be encoded.
    pub fn count(&self, text: &str) -> usize {
        self.encode(text, false).map(|ids| ids.len()).unwrap_or(0)
    }
}

/// A small byte-level BPE tokenizer for tests: 97 ASCII byte tokens, 8 merges, two special
/// tokens (one added by the post-processor in front of every sequence).
#[cfg(test)]
pub(crate) fn test_tokenizer() -> BenchTokenizer {
    let json = test_tokenizer_json();
    let inner = Tokenizer::from_bytes(json.as_bytes()).expect("test tokenizer");
    BenchTokenizer::from_tokenizer(inner, PathBuf::from("test-tokenizer.json"))
}

/// JSON of [`test_tokenizer`], also written to disk by the integration tests.
#[doc(hidden)]
pub fn test_tokenizer_json() -> String {
    use serde_json::json;
    // GPT-2's byte → printable-char table.
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    // ASCII bytes only (tab, newline, printable): random id sequences always decode to valid
    // UTF-8, as they mostly do with a real vocabulary.
    let mut pairs: Vec<(u32, char)> = bs
        .into_iter()
        .zip(cs.into_iter().map(|c| char::from_u32(c).unwrap()))
        .filter(|(b, _)| *b == 9 || *b == 10 || (32..127).contains(b))
        .collect();
    pairs.sort_by_key(|p| p.0);
    let mut vocab = serde_json::Map::new();
    for (i, (_, c)) in pairs.iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    let merges = ["Ġ t", "h e", "Ġt he", "a n", "i n", "Ġ a", "e r", "o n"];
    let mut next = vocab.len();
    for m in merges {
        let merged: String = m.split(' ').collect();
        vocab.insert(merged, json!(next));
        next += 1;
    }
    let specials = ["<|endoftext|>", "[gMASK]"];
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": next + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[gMASK]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[gMASK]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"[gMASK]": {"id": "[gMASK]", "ids": [next + 1], "tokens": ["[gMASK]"]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": merges}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tokenizer_facts() {
        let t = test_tokenizer();
        assert_eq!(t.vocab_size(), 97 + 8);
        assert_eq!(t.num_special_tokens_to_add(), 1);
        assert_eq!(t.allowed_tokens().len(), 105);
        let ids = t.encode(" the an", false).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), " the an");
        assert_eq!(ids.len(), 1 + 2); // "Ġthe" + "Ġ" "an"
        assert_eq!(t.encode("x", true).unwrap().len(), 2);
        assert_eq!(t.count("the"), 2); // "t" "he"
    }
}
