//! Incremental detokenizer tests on tokenizers built here (no downloads): byte-level BPE with
//! multi-byte characters split over tokens, WordLevel with whitespace, a Llama-style
//! SentencePiece BPE with byte fallback, and a Metaspace BPE. Invariant: the concatenated
//! stream equals `decode(all ids)`.

use std::sync::Arc;

use chat::{IncrementalDetokenizer, GLM_STRUCTURAL_TOKENS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

fn added(id: u32, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

fn assemble(
    model: Value,
    added_tokens: Vec<Value>,
    normalizer: Value,
    pre: Value,
    decoder: Value,
) -> Tokenizer {
    let j = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added_tokens,
        "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": null, "decoder": decoder,
        "model": model});
    Tokenizer::from_bytes(j.to_string().as_bytes()).expect("test tokenizer builds")
}

/// GPT-2's byte → printable-char table.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = ('!' as u32..='~' as u32).collect();
    printable.extend('¡' as u32..='¬' as u32);
    printable.extend('®' as u32..='ÿ' as u32);
    let mut n = 0;
    (0u32..256)
        .map(|b| {
            if printable.contains(&b) {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            }
        })
        .collect()
}

/// GLM-like byte-level BPE: ids 0..256 are bytes, a few merges, GLM special tokens at 300+.
fn byte_level() -> Tokenizer {
    let chars = byte_chars();
    let mut vocab = Map::new();
    for (b, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), json!(b));
    }
    let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ã", "©"), ("ä", "¸")];
    for (id, (a, b)) in (256..).zip(merges) {
        vocab.insert(format!("{a}{b}"), json!(id));
    }
    let merges: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let mut specials: Vec<Value> = GLM_STRUCTURAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| added(300 + i as u32, t, true))
        .collect();
    specials.push(added(320, "<|user|>", true));
    specials.push(added(321, "<|endoftext|>", true));
    specials.push(added(322, "[plain-added]", false));
    assemble(
        json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
               "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
               "ignore_merges": false, "vocab": vocab, "merges": merges}),
        specials,
        Value::Null,
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
    )
}

fn word_level() -> Tokenizer {
    let words = [
        "[UNK]", "hello", "world", ",", "!", "héllo", "日本", "a", "b",
    ];
    let vocab: Map<String, Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    assemble(
        json!({"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}),
        vec![added(100, "<s>", true)],
        Value::Null,
        json!({"type": "Whitespace"}),
        Value::Null,
    )
}

/// SentencePiece-style BPE vocab: specials, 256 byte-fallback pieces, then word pieces.
fn sp_vocab() -> (Map<String, Value>, Vec<String>) {
    let mut vocab = Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    for b in 0..256u32 {
        vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "t", "▁h", "▁he", "lo", "▁w", "▁t", "he", "▁the",
        "é", "▁▁",
    ];
    for (i, p) in pieces.iter().enumerate() {
        vocab.insert(p.to_string(), json!(259 + i));
    }
    let merges = ["▁ h", "▁h e", "l o", "▁ w", "▁ t", "h e", "▁t he", "▁ ▁"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    (vocab, merges)
}

fn sp_model(byte_fallback: bool) -> Value {
    let (vocab, merges) = sp_vocab();
    json!({"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
           "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": byte_fallback,
           "ignore_merges": false, "vocab": vocab, "merges": merges})
}

fn sp_specials() -> Vec<Value> {
    vec![
        added(0, "<unk>", true),
        added(1, "<s>", true),
        added(2, "</s>", true),
    ]
}

/// Llama-2 style: Prepend/Replace normalizer; Replace, ByteFallback, Fuse, Strip decoder.
fn llama_style() -> Tokenizer {
    assemble(
        sp_model(true),
        sp_specials(),
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
        Value::Null,
        json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
    )
}

/// Metaspace pre-tokenizer and decoder (prepend_scheme "always").
fn metaspace() -> Tokenizer {
    assemble(
        sp_model(false),
        sp_specials(),
        Value::Null,
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
    )
}

fn stream_all(tok: &Arc<Tokenizer>, ids: &[u32], skip: bool) -> String {
    let mut d = IncrementalDetokenizer::new(tok.clone(), skip);
    let mut out = String::new();
    for &id in ids {
        out.push_str(&d.push(id).unwrap());
    }
    out.push_str(&d.finish().unwrap());
    out
}

fn check_random(tok: Tokenizer, name: &str, seed: u64) {
    let tok = Arc::new(tok);
    let n = tok.get_vocab_size(true) as u32;
    let ids_in_use: Vec<u32> = tok.get_vocab(true).values().copied().collect();
    let mut rng = StdRng::seed_from_u64(seed);
    check_ids(&tok, name, &mut rng, |rng| {
        if rng.gen_bool(0.02) {
            vec![n + 1000] // an id the tokenizer does not know (padding rows)
        } else {
            vec![ids_in_use[rng.gen_range(0..ids_in_use.len())]]
        }
    });
}

/// Streams 400 random id sequences built from `item` and compares with `decode`.
fn check_ids(
    tok: &Arc<Tokenizer>,
    name: &str,
    rng: &mut StdRng,
    mut item: impl FnMut(&mut StdRng) -> Vec<u32>,
) {
    for _ in 0..400 {
        let len = rng.gen_range(0..30);
        let ids: Vec<u32> = (0..len).flat_map(|_| item(rng)).collect();
        for skip in [false, true] {
            let want = tok.decode(&ids, skip).unwrap();
            let got = stream_all(tok, &ids, skip);
            assert_eq!(got, want, "{name} skip={skip} ids={ids:?}");
        }
    }
}

#[test]
fn byte_level_random_ids_match_decode() {
    check_random(byte_level(), "byte-level", 1);
}

#[test]
fn word_level_random_ids_match_decode() {
    check_random(word_level(), "word-level", 2);
}

/// With ByteFallback, HF's decoder turns a whole run of byte tokens into U+FFFD as soon as one
/// byte of the run is invalid, which changes text already decoded; byte runs here are therefore
/// valid UTF-8 (as a model's are), everything else is random.
#[test]
fn llama_style_random_ids_match_decode() {
    let tok = Arc::new(llama_style());
    let pieces: Vec<u32> = (0..18).map(|i| 259 + i).chain([0, 1, 2, 9999]).collect();
    let chars = ['é', 'ß', '世', '🎉', 'a', '\u{7f}', '\u{10FFFF}', '—'];
    let mut rng = StdRng::seed_from_u64(3);
    check_ids(&tok, "llama-style", &mut rng, |rng| {
        if rng.gen_bool(0.6) {
            vec![pieces[rng.gen_range(0..pieces.len())]]
        } else {
            let c = chars[rng.gen_range(0..chars.len())];
            let mut buf = [0u8; 4];
            c.encode_utf8(&mut buf)
                .bytes()
                .map(|b| 3 + u32::from(b))
                .collect()
        }
    });
}

#[test]
fn metaspace_random_ids_match_decode() {
    check_random(metaspace(), "metaspace", 4);
}

#[test]
fn encoded_multilingual_text_round_trips() {
    let text = "the héllo 世界 🎉 the end — ünïcödé";
    for (name, tok) in [("byte-level", byte_level()), ("llama-style", llama_style())] {
        let tok = Arc::new(tok);
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        let want = tok.decode(&ids, false).unwrap();
        if name == "byte-level" {
            assert_eq!(want, text, "byte-level BPE is lossless");
        }
        assert_eq!(stream_all(&tok, &ids, false), want, "{name}");
        assert!(
            ids.len() > text.chars().count(),
            "{name}: multi-byte chars span several tokens"
        );
    }
}

#[test]
fn incomplete_characters_are_held_back() {
    let tok = Arc::new(byte_level());
    // "🎉" = F0 9F 8E 89: four byte tokens (ids are byte values)
    let mut d = IncrementalDetokenizer::new(tok.clone(), false);
    assert_eq!(d.push(u32::from(b'a')).unwrap(), "a");
    for b in [0xF0u32, 0x9F, 0x8E] {
        assert_eq!(
            d.push(b).unwrap(),
            "",
            "partial character must not be emitted"
        );
    }
    assert_eq!(d.push(0x89).unwrap(), "🎉");
    // a dangling partial character is flushed by finish() as decode() renders it
    assert_eq!(d.push(0xE4).unwrap(), "");
    assert_eq!(d.finish().unwrap(), "\u{FFFD}");
    assert_eq!(d.ids(), &[97, 0xF0, 0x9F, 0x8E, 0x89, 0xE4]);
}

#[test]
fn vllm_pr_31622_structural_special_tokens_survive_skip() {
    let tok = Arc::new(byte_level());
    let id = |t: &str| tok.token_to_id(t).unwrap();
    let ids = [
        id("<think>"),
        u32::from(b'r'),
        id("</think>"),
        id("<tool_call>"),
        u32::from(b'f'),
        id("</tool_call>"),
        id("<|user|>"),
        id("[plain-added]"),
    ];
    let mut d =
        IncrementalDetokenizer::new(tok.clone(), true).keep_special_tokens(GLM_STRUCTURAL_TOKENS);
    let out = d.push_many(&ids).unwrap() + &d.finish().unwrap();
    assert_eq!(out, "<think>r</think><tool_call>f</tool_call>[plain-added]");
    // plain skip_special_tokens drops them all, like tokenizer.decode(ids, true)
    assert_eq!(
        stream_all(&tok, &ids, true),
        tok.decode(&ids, true).unwrap()
    );
    assert_eq!(stream_all(&tok, &ids, true), "rf[plain-added]");
    assert_eq!(
        stream_all(&tok, &ids, false),
        "<think>r</think><tool_call>f</tool_call><|user|>[plain-added]"
    );
}

#[test]
fn context_shapes_but_is_not_emitted() {
    let tok = Arc::new(llama_style());
    let ctx = tok.encode("the", false).unwrap().get_ids().to_vec();
    let gen = tok.encode("the hello", false).unwrap().get_ids()[1..].to_vec();
    let mut d = IncrementalDetokenizer::new(tok.clone(), false).with_context(&ctx);
    let out = d.push_many(&gen).unwrap() + &d.finish().unwrap();
    let all: Vec<u32> = ctx.iter().chain(&gen).copied().collect();
    let full = tok.decode(&all, false).unwrap();
    let prefix = tok.decode(&ctx, false).unwrap();
    assert_eq!(out, full[prefix.len()..]);
    assert!(
        out.starts_with(' '),
        "the leading space survives with context: {out:?}"
    );
}
