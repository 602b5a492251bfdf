//! Test support shared by this crate's tests, the e2e crate and router development: a small
//! byte-level BPE tokenizer that knows GLM's special tokens.
//!
//! Ids 0..=255 are the 256 bytes (GPT-2 byte-to-unicode alphabet, no merges), followed by the
//! 36 GLM special tokens in GLM's order (`<|endoftext|>` = 256, `<|user|>` = 263,
//! `<|observation|>` = 265, `<think>` = 277, ...). Any UTF-8 text round-trips.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// GLM-4.x special tokens in id order (glm.md §5.2: ids 151329..=151364 in the real vocab).
pub const GLM_SPECIAL_TOKENS: [&str; 36] = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
    "<|begin_of_transcription|>",
    "<|end_of_transcription|>",
    "<|code_prefix|>",
    "<|code_middle|>",
    "<|code_suffix|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "/nothink",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<|image|>",
    "<|video|>",
];

/// Id of the first special token in [`byte_tokenizer`].
pub const FIRST_SPECIAL_ID: u32 = 256;

/// Id of `token` in [`byte_tokenizer`] if it is a GLM special token.
pub fn special_id(token: &str) -> Option<u32> {
    GLM_SPECIAL_TOKENS
        .iter()
        .position(|t| *t == token)
        .map(|i| FIRST_SPECIAL_ID + i as u32)
}

/// GLM's generation stop ids (`<|endoftext|>`, `<|user|>`, `<|observation|>`) in
/// [`byte_tokenizer`].
pub fn glm_eos_ids() -> Vec<u32> {
    ["<|endoftext|>", "<|user|>", "<|observation|>"]
        .iter()
        .filter_map(|t| special_id(t))
        .collect()
}

/// GPT-2's reversible byte → printable-char table.
fn byte_chars() -> Vec<char> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut extra = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// The byte-level tokenizer described in the module docs.
pub fn byte_tokenizer() -> Tokenizer {
    let vocab: Vocab = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(b, c)| (c.to_string(), b as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .unwrap_or_default();
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = GLM_SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tok.add_special_tokens(&specials);
    tok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_specials_have_fixed_ids() {
        let tok = byte_tokenizer();
        assert_eq!(tok.get_vocab_size(true), 292);
        let text = "[gMASK]<sop><|user|>\nhé 世<|assistant|><think>";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids[0], special_id("[gMASK]").unwrap());
        assert_eq!(special_id("<think>"), Some(277));
        assert_eq!(*ids.last().unwrap(), 277);
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(tok.encode("ab", false).unwrap().get_ids(), &[97, 98]);
        assert_eq!(glm_eos_ids(), vec![256, 263, 265]);
    }
}
