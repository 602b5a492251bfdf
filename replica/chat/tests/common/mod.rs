//! Helpers shared by the chat crate's integration tests.

use rand::rngs::StdRng;
use rand::Rng;

/// Cuts `text` into pieces of 1 to `max` characters, as a stream of deltas would arrive.
pub fn split_chars(text: &str, rng: &mut StdRng, max: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let n = rng.gen_range(1..=max).min(chars.len() - i);
        out.push(chars[i..i + n].iter().collect());
        i += n;
    }
    out
}
