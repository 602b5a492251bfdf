//! Shared pieces of the fuzz targets: how an input is cut into the framing bytes a target needs
//! and the text it parses, deterministic "arbitrary splits" of that text into streaming deltas,
//! and the tool sets the tool-call targets parse against.
//!
//! Splits come from a small xorshift generator seeded by input bytes, so libFuzzer controls them
//! (and a crash reproduces from its input file alone) while every target can compare several
//! splittings of the same text with each other and with the one-shot parse.

use serde_json::{json, Value};

pub mod tool_call;

/// `(flags, split seed, rest)`: the first two bytes of an input configure the target.
pub fn header(data: &[u8]) -> Option<(u8, u8, &[u8])> {
    match data {
        [flags, seed, rest @ ..] => Some((*flags, *seed, rest)),
        _ => None,
    }
}

/// Cuts `len` bytes into chunk lengths of 1..=`max_chunk` from a generator seeded by `seed`.
pub fn chunk_lengths(len: usize, seed: u64, max_chunk: usize) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % max_chunk.max(1) as u64) as usize + 1;
        let n = n.min(left);
        out.push(n);
        left -= n;
    }
    out
}

/// Splits `text` into pieces at char boundaries, sizes from [`chunk_lengths`].
pub fn split_str(text: &str, seed: u64, max_chunk: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for n in chunk_lengths(text.len(), seed, max_chunk) {
        if at >= text.len() {
            break;
        }
        let mut end = (at + n).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&text[at..end]);
        at = end;
    }
    pieces
}

/// Splits bytes (no boundary constraint: byte streams may cut anywhere).
pub fn split_bytes(data: &[u8], seed: u64, max_chunk: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for n in chunk_lengths(data.len(), seed, max_chunk) {
        pieces.push(&data[at..at + n]);
        at += n;
    }
    pieces
}

/// The input as text: valid UTF-8 as is, anything else through lossy decoding (the parsers
/// only ever see `&str`).
pub fn text_of(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Tool sets the tool-call targets choose from with `flags % 4`; they cover every schema class
/// (string-only, non-string, mixed, unknown) and a name that is a prefix of another (the
/// missing-`<arg_key>` recovery).
pub fn tool_set(flags: u8) -> Vec<Value> {
    match flags % 4 {
        0 => Vec::new(),
        1 => vec![json!({"type": "function", "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"enum": ["c", "f"]}
            }}
        }})],
        2 => vec![
            json!({"type": "function", "function": {"name": "get", "parameters": {
                "type": "object", "properties": {"key": {"type": "string"}}}}}),
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {
                "city": {"type": ["string", "null"]},
                "when": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "flags": {"type": "array"},
                "opts": {"type": "object"},
                "ok": {"type": "boolean"},
                "ratio": {"type": "number"},
                "free": {"description": "no type"}
            }}}}),
        ],
        _ => vec![json!({"name": "bare", "parameters": {"properties": {
            "s": {"type": "string"}, "n": {"type": "number"}}}})],
    }
}

/// Tools given by the input itself: `TOOLS_JSON \0 TEXT` when `flags & 0x80`; otherwise the
/// built-in set and the whole input as text.
pub fn tools_and_text(flags: u8, rest: &[u8]) -> (Vec<Value>, String) {
    if flags & 0x80 != 0 {
        if let Some(nul) = rest.iter().position(|&b| b == 0) {
            let tools = serde_json::from_slice::<Vec<Value>>(&rest[..nul]).unwrap_or_default();
            return (tools, text_of(&rest[nul + 1..]));
        }
    }
    (tool_set(flags), text_of(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_the_input_at_char_boundaries() {
        let text = "héllo <tool_call>wörld</tool_call> ✓";
        for seed in 0..50 {
            let pieces = split_str(text, seed, 7);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|p| !p.is_empty()));
            let bytes = split_bytes(text.as_bytes(), seed, 3);
            assert_eq!(bytes.concat(), text.as_bytes());
        }
    }
}
