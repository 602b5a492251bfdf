//! The request sets `bench serve` sends, built as vLLM's `random`, `prefix_repetition` and
//! `sharegpt` datasets build them, from a seeded generator.
//!
//! With a tokenizer, prompts are text of an exact token count: non-special vocabulary ids are
//! decoded, re-encoded and padded or truncated until the count holds (vLLM's
//! `gen_prompt_decode_to_target_len`). Without one, completions prompts are token-id lists
//! (the completions API accepts them) and chat prompts are a deterministic word text whose
//! length the server's `usage.prompt_tokens` then reports.

use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::tokenizer::BenchTokenizer;
use crate::BenchError;

/// A prompt as sent: text, or token ids for the completions endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    TokenIds(Vec<u32>),
}

/// One request of the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    pub prompt: Prompt,
    /// Prompt tokens as the dataset counts them (the server's usage replaces it).
    pub prompt_len: usize,
    /// `max_tokens` / `max_completion_tokens`.
    pub expected_output_len: usize,
    pub request_id: String,
}

/// How prompt tokens are produced.
#[derive(Debug, Clone, Copy)]
pub enum PromptSource<'a> {
    /// Real text of exact token length.
    Tokenizer(&'a BenchTokenizer),
    /// Token-id prompts over ids `0..vocab_size` (completions endpoint only).
    TokenIds { vocab_size: usize },
    /// Deterministic English words, about one token each (chat endpoint without tokenizer).
    Words,
}

/// Common English words that are one token each (with their leading space) in the usual BPE
/// vocabularies; the chat prompts without a tokenizer are made of them.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are",
    "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by",
    "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when",
    "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if",
    "will", "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her",
    "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go",
    "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water",
    "than", "call", "first", "who", "may", "down", "side", "been", "now", "find",
];

/// Parameters of the `random` dataset (vLLM's defaults: 1024 / 128 / 0.0 / 0).
#[derive(Debug, Clone, PartialEq)]
pub struct RandomConfig {
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
    pub prefix_len: usize,
}

/// Parameters of the `prefix_repetition` dataset (vLLM's defaults: 256 / 256 / 10 / 128).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixRepetitionConfig {
    pub prefix_len: usize,
    pub suffix_len: usize,
    pub num_prefixes: usize,
    pub output_len: usize,
}

/// vLLM's `random` dataset. Lengths are uniform in `[floor(L(1−r)), ceil(L(1+r))]` (input
/// first reduced by the tokenizer's special-token count, output at least 1); request `i`'s
/// tokens are `allowed[(offset + i + j) % n_allowed]` after a shared random prefix.
pub fn sample_random(
    cfg: &RandomConfig,
    num_requests: usize,
    source: PromptSource<'_>,
    seed: u64,
    id_prefix: &str,
) -> Result<Vec<SampleRequest>, BenchError> {
    if !(0.0..1.0).contains(&cfg.range_ratio) {
        return Err(BenchError::InvalidArgs(
            "--random-range-ratio must be in [0, 1)".into(),
        ));
    }
    let num_special = match source {
        PromptSource::Tokenizer(t) => t.num_special_tokens_to_add(),
        _ => 0,
    };
    let real_input_len = cfg.input_len.saturating_sub(num_special);
    let input_low = (real_input_len as f64 * (1.0 - cfg.range_ratio)).floor() as usize;
    let input_high = (real_input_len as f64 * (1.0 + cfg.range_ratio)).ceil() as usize;
    let output_low = ((cfg.output_len as f64 * (1.0 - cfg.range_ratio)).floor() as usize).max(1);
    let output_high = ((cfg.output_len as f64 * (1.0 + cfg.range_ratio)).ceil() as usize).max(1);
    if cfg.prefix_len + input_low < 1 {
        return Err(BenchError::InvalidArgs(format!(
            "--random-input-len is too small: with {num_special} special tokens and range ratio {}, \
             the minimum total input is {} tokens",
            cfg.range_ratio,
            cfg.prefix_len + input_low
        )));
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let vocab_size = source_vocab_size(source);
    let input_lens: Vec<usize> = (0..num_requests)
        .map(|_| rng.gen_range(input_low..=input_high))
        .collect();
    let output_lens: Vec<usize> = (0..num_requests)
        .map(|_| rng.gen_range(output_low..=output_high))
        .collect();
    let offsets: Vec<usize> = (0..num_requests)
        .map(|_| rng.gen_range(0..vocab_size))
        .collect();

    let allowed: Vec<u32> = match source {
        PromptSource::Tokenizer(t) => t.allowed_tokens(),
        _ => (0..vocab_size as u32).collect(),
    };
    if allowed.is_empty() {
        return Err(BenchError::Dataset(
            "the tokenizer has no non-special tokens".into(),
        ));
    }
    let prefix: Vec<u32> = (0..cfg.prefix_len)
        .map(|_| allowed[rng.gen_range(0..allowed.len())])
        .collect();

    let mut requests = Vec::with_capacity(num_requests);
    let mut mismatch_total: i64 = 0;
    for i in 0..num_requests {
        let mut seq = prefix.clone();
        seq.extend((0..input_lens[i]).map(|j| allowed[(offsets[i] + i + j) % allowed.len()]));
        let target = cfg.prefix_len + input_lens[i];
        let (prompt, prompt_len) = match source {
            PromptSource::Tokenizer(t) => {
                let (text, ids, mismatch) = decode_to_target_len(t, seq, target, &mut rng)?;
                mismatch_total += mismatch;
                (Prompt::Text(text), ids.len())
            }
            PromptSource::TokenIds { .. } => (Prompt::TokenIds(seq), target),
            PromptSource::Words => (Prompt::Text(words_text(&seq)), target),
        };
        requests.push(SampleRequest {
            prompt,
            prompt_len,
            expected_output_len: output_lens[i],
            request_id: format!("{id_prefix}{i}"),
        });
    }
    warn_mismatch(mismatch_total);
    Ok(requests)
}

fn source_vocab_size(source: PromptSource<'_>) -> usize {
    match source {
        PromptSource::Tokenizer(t) => t.vocab_size(),
        PromptSource::TokenIds { vocab_size } => vocab_size,
        PromptSource::Words => WORDS.len(),
    }
}

fn words_text(ids: &[u32]) -> String {
    let words: Vec<&str> = ids
        .iter()
        .map(|&i| WORDS[i as usize % WORDS.len()])
        .collect();
    words.join(" ")
}

fn warn_mismatch(total: i64) {
    if total != 0 {
        let sign = if total > 0 { "more" } else { "fewer" };
        eprintln!(
            "WARNING: across all generated prompts there were {} {sign} tokens than expected after \
             decoding and re-encoding",
            total.abs()
        );
    }
}

/// Decodes `ids`, re-encodes the text and pads (random ids) or truncates until the re-encoded
/// length is `target`, at most 10 rounds; returns the text, its ids and the final mismatch.
pub fn decode_to_target_len(
    tok: &BenchTokenizer,
    mut ids: Vec<u32>,
    target: usize,
    rng: &mut StdRng,
) -> Result<(String, Vec<u32>, i64), BenchError> {
    let mut remaining = 10;
    let vocab = tok.vocab_size().max(1);
    loop {
        let prompt = tok.decode(&ids)?;
        ids = tok.encode(&prompt, false)?;
        if remaining == 0 {
            let mismatch = ids.len() as i64 - target as i64;
            return Ok((prompt, ids, mismatch));
        }
        match ids.len().cmp(&target) {
            std::cmp::Ordering::Equal => return Ok((prompt, ids, 0)),
            std::cmp::Ordering::Less => {
                let missing = target - ids.len();
                ids.extend((0..missing).map(|_| rng.gen_range(0..vocab) as u32));
            }
            std::cmp::Ordering::Greater => ids.truncate(target),
        }
        remaining -= 1;
    }
}

/// vLLM's `prefix_repetition` dataset: `num_prefixes` random prefixes, each followed by
/// `num_requests / num_prefixes` random suffixes, shuffled.
pub fn sample_prefix_repetition(
    cfg: &PrefixRepetitionConfig,
    num_requests: usize,
    source: PromptSource<'_>,
    seed: u64,
    id_prefix: &str,
) -> Result<Vec<SampleRequest>, BenchError> {
    if cfg.num_prefixes == 0 || num_requests / cfg.num_prefixes == 0 {
        return Err(BenchError::InvalidArgs(format!(
            "--num-prompts ({num_requests}) must be at least --prefix-repetition-num-prefixes ({})",
            cfg.num_prefixes
        )));
    }
    let per_prefix = num_requests / cfg.num_prefixes;
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab_size = source_vocab_size(source).max(1);
    let mut mismatch_total = 0i64;
    let mut exact = |len: usize, rng: &mut StdRng| -> Result<Vec<u32>, BenchError> {
        let ids: Vec<u32> = (0..len)
            .map(|_| rng.gen_range(0..vocab_size) as u32)
            .collect();
        match source {
            PromptSource::Tokenizer(t) => {
                let (_, ids, mismatch) = decode_to_target_len(t, ids, len, rng)?;
                mismatch_total += mismatch;
                Ok(ids)
            }
            _ => Ok(ids),
        }
    };
    let mut requests = Vec::with_capacity(per_prefix * cfg.num_prefixes);
    for _ in 0..cfg.num_prefixes {
        let prefix = exact(cfg.prefix_len, &mut rng)?;
        for _ in 0..per_prefix {
            let mut combined = prefix.clone();
            combined.extend(exact(cfg.suffix_len, &mut rng)?);
            let prompt_len = combined.len();
            let prompt = match source {
                PromptSource::Tokenizer(t) => Prompt::Text(t.decode(&combined)?),
                PromptSource::TokenIds { .. } => Prompt::TokenIds(combined),
                PromptSource::Words => Prompt::Text(words_text(&combined)),
            };
            requests.push(SampleRequest {
                prompt,
                prompt_len,
                expected_output_len: cfg.output_len,
                request_id: String::new(),
            });
        }
    }
    warn_mismatch(mismatch_total);
    requests.shuffle(&mut rng);
    for (i, r) in requests.iter_mut().enumerate() {
        r.request_id = format!("{id_prefix}{i}");
    }
    Ok(requests)
}

/// Options of the ShareGPT dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareGptConfig {
    /// Replaces each conversation's completion length.
    pub output_len: Option<usize>,
    pub shuffle: bool,
    pub oversample: bool,
}

/// vLLM's `sharegpt` dataset from a local JSON file: entries with at least two turns,
/// shuffled, prompt = first turn, output length = second turn's token count; sequences outside
/// vLLM's bounds (prompt 4..=1024, output ≥ 4, total ≤ 2048) are skipped; too few samples are
/// topped up by random repetition.
pub fn sample_sharegpt(
    path: &Path,
    cfg: &ShareGptConfig,
    num_requests: usize,
    tok: &BenchTokenizer,
    seed: u64,
    id_prefix: &str,
) -> Result<Vec<SampleRequest>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    let data: Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::Dataset(format!("{}: invalid JSON: {e}", path.display())))?;
    let entries = data
        .as_array()
        .ok_or_else(|| BenchError::Dataset(format!("{}: expected a JSON array", path.display())))?;
    let mut convs: Vec<(&str, &str)> = entries
        .iter()
        .filter_map(|e| {
            let turns = e.get("conversations")?.as_array()?;
            if turns.len() < 2 {
                return None;
            }
            Some((
                turns[0].get("value")?.as_str()?,
                turns[1].get("value")?.as_str()?,
            ))
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    if cfg.shuffle {
        convs.shuffle(&mut rng);
    }
    let mut samples = Vec::new();
    for (prompt, completion) in convs {
        if samples.len() >= num_requests {
            break;
        }
        let prompt_len = tok.encode(prompt, true)?.len();
        let output_len = match cfg.output_len {
            Some(n) => n,
            None => tok.encode(completion, true)?.len(),
        };
        if !is_valid_sequence(prompt_len, output_len, cfg.output_len.is_some()) {
            continue;
        }
        samples.push(SampleRequest {
            prompt: Prompt::Text(prompt.to_string()),
            prompt_len,
            expected_output_len: output_len,
            request_id: format!("{id_prefix}{}", samples.len()),
        });
    }
    if samples.is_empty() {
        return Err(BenchError::Dataset(format!(
            "{}: no usable conversations (need ≥ 2 turns within vLLM's length bounds)",
            path.display()
        )));
    }
    if cfg.oversample && samples.len() < num_requests {
        let mut rng = StdRng::seed_from_u64(seed);
        let have = samples.len();
        for i in 0..num_requests - have {
            let mut extra = samples[rng.gen_range(0..have)].clone();
            extra.request_id = format!("{id_prefix}{}", have + i);
            samples.push(extra);
        }
    }
    Ok(samples)
}

/// vLLM's ShareGPT pruning rule.
fn is_valid_sequence(prompt_len: usize, output_len: usize, skip_min_output_check: bool) -> bool {
    let (min_len, max_prompt, max_total) = (4, 1024, 2048);
    !(prompt_len < min_len
        || (!skip_min_output_check && output_len < min_len)
        || prompt_len > max_prompt
        || prompt_len + output_len > max_total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_tokenizer;

    fn cfg(input: usize, output: usize, ratio: f64, prefix: usize) -> RandomConfig {
        RandomConfig {
            input_len: input,
            output_len: output,
            range_ratio: ratio,
            prefix_len: prefix,
        }
    }

    #[test]
    fn random_with_tokenizer_has_exact_lengths() {
        let t = test_tokenizer();
        // One special token is added by the post-processor, so 65 → 64 sampled tokens.
        let sample = |seed| {
            sample_random(
                &cfg(65, 16, 0.0, 8),
                20,
                PromptSource::Tokenizer(&t),
                seed,
                "r-",
            )
            .unwrap()
        };
        let reqs = sample(0);
        assert_eq!(reqs.len(), 20);
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(r.request_id, format!("r-{i}"));
            assert_eq!(r.expected_output_len, 16);
            let Prompt::Text(text) = &r.prompt else {
                panic!("text prompt expected")
            };
            let ids = t.encode(text, false).unwrap();
            assert_eq!(r.prompt_len, 8 + 64);
            assert_eq!(
                ids.len(),
                r.prompt_len,
                "request {i} re-encodes to the declared length"
            );
        }
        // Seeded: the same seed gives the same prompts, another seed different ones.
        assert_eq!(reqs, sample(0));
        assert_ne!(reqs, sample(1));
    }

    #[test]
    fn random_lengths_follow_range_ratio() {
        let reqs = sample_random(
            &cfg(100, 10, 0.5, 0),
            200,
            PromptSource::TokenIds { vocab_size: 1000 },
            7,
            "",
        )
        .unwrap();
        let (mut saw_low, mut saw_high) = (false, false);
        for r in &reqs {
            assert!((50..=150).contains(&r.prompt_len));
            assert!((5..=15).contains(&r.expected_output_len));
            let Prompt::TokenIds(ids) = &r.prompt else {
                panic!("ids expected")
            };
            assert_eq!(ids.len(), r.prompt_len);
            assert!(ids.iter().all(|&id| id < 1000));
            // Consecutive ids: allowed[(offset + i + j) % n].
            assert!(ids.windows(2).all(|w| w[1] == (w[0] + 1) % 1000));
            saw_low |= r.prompt_len < 75;
            saw_high |= r.prompt_len > 125;
        }
        assert!(saw_low && saw_high);
    }

    #[test]
    fn random_rejects_bad_ratio_and_empty_input() {
        let src = PromptSource::TokenIds { vocab_size: 10 };
        assert!(sample_random(&cfg(10, 10, 1.0, 0), 1, src, 0, "").is_err());
        assert!(sample_random(&cfg(0, 10, 0.0, 0), 1, src, 0, "").is_err());
        // A prefix alone is enough.
        assert_eq!(
            sample_random(&cfg(0, 10, 0.0, 3), 1, src, 0, "").unwrap()[0].prompt_len,
            3
        );
    }

    #[test]
    fn words_prompts_are_deterministic_text() {
        let reqs = sample_random(&cfg(12, 4, 0.0, 0), 2, PromptSource::Words, 3, "").unwrap();
        let Prompt::Text(a) = &reqs[0].prompt else {
            panic!()
        };
        assert_eq!(a.split(' ').count(), 12);
        assert_eq!(reqs[0].prompt_len, 12);
        assert_eq!(
            reqs,
            sample_random(&cfg(12, 4, 0.0, 0), 2, PromptSource::Words, 3, "").unwrap()
        );
    }

    #[test]
    fn decode_adjustment_pads_and_truncates() {
        let t = test_tokenizer();
        let mut rng = StdRng::seed_from_u64(0);
        // "Ġ" "t" "h" "e" decodes to " the", which re-encodes to a single token: padded back to 4.
        let g = t.encode(" ", false).unwrap()[0];
        let th = t.encode("the", false).unwrap();
        let mut ids = vec![g];
        ids.extend(t.encode("t", false).unwrap());
        ids.extend(t.encode("h", false).unwrap());
        ids.extend(t.encode("e", false).unwrap());
        assert_eq!(th.len(), 2);
        let (text, out, mismatch) = decode_to_target_len(&t, ids, 4, &mut rng).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(mismatch, 0);
        assert_eq!(t.encode(&text, false).unwrap().len(), 4);
    }

    #[test]
    fn prefix_repetition_shares_prefixes() {
        let c = PrefixRepetitionConfig {
            prefix_len: 6,
            suffix_len: 4,
            num_prefixes: 3,
            output_len: 9,
        };
        let reqs =
            sample_prefix_repetition(&c, 10, PromptSource::TokenIds { vocab_size: 5000 }, 0, "p")
                .unwrap();
        assert_eq!(reqs.len(), 9); // 10 / 3 = 3 per prefix
        let mut prefixes: Vec<Vec<u32>> = reqs
            .iter()
            .map(|r| match &r.prompt {
                Prompt::TokenIds(ids) => {
                    assert_eq!(ids.len(), 10);
                    ids[..6].to_vec()
                }
                Prompt::Text(_) => panic!("ids expected"),
            })
            .collect();
        prefixes.sort();
        prefixes.dedup();
        assert_eq!(prefixes.len(), 3);
        assert!(reqs
            .iter()
            .all(|r| r.expected_output_len == 9 && r.prompt_len == 10));
        assert!(sample_prefix_repetition(&c, 2, PromptSource::Words, 0, "").is_err());
        let t = test_tokenizer();
        let texts = sample_prefix_repetition(&c, 6, PromptSource::Tokenizer(&t), 0, "").unwrap();
        assert!(texts.iter().all(|r| r.prompt_len == 10));
    }

    #[test]
    fn sharegpt_filters_and_oversamples() {
        let dir = std::env::temp_dir().join(format!("bench-sharegpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sg.json");
        let long = "the ".repeat(30);
        let data = serde_json::json!([
            {"conversations": [{"from": "human", "value": long}, {"from": "gpt", "value": long}]},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": long}]},
            {"conversations": [{"from": "human", "value": long}]},
            {"id": "x"}
        ]);
        std::fs::write(&path, data.to_string()).unwrap();
        let t = test_tokenizer();
        let c = ShareGptConfig {
            output_len: None,
            shuffle: true,
            oversample: true,
        };
        let reqs = sample_sharegpt(&path, &c, 3, &t, 0, "s").unwrap();
        assert_eq!(reqs.len(), 3);
        // 30 × "the " → "the" (2 tokens) + 29 × "Ġthe" + trailing "Ġ" + [gMASK].
        assert!(reqs.iter().all(|r| r.prompt_len == 2 + 29 + 1 + 1));
        assert_eq!(
            reqs.iter()
                .map(|r| r.request_id.as_str())
                .collect::<Vec<_>>(),
            ["s0", "s1", "s2"]
        );
        let fixed = ShareGptConfig {
            output_len: Some(2),
            shuffle: false,
            oversample: false,
        };
        let reqs = sample_sharegpt(&path, &fixed, 3, &t, 0, "").unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].expected_output_len, 2);
        std::fs::write(&path, "[]").unwrap();
        assert!(sample_sharegpt(&path, &fixed, 3, &t, 0, "").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
