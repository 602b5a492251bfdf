//! Model stand-ins that need no GPU and no weights, so the full server path (engine →
//! detokenizer → parsers → SSE) runs for real in tests, in the e2e crate and for router work.
//!
//! * [`FakeRunner`]: deterministic "parrot" logits. The favoured next token is a hash of the
//!   last computed token and its position, so the output depends only on the context (never on
//!   batch composition, chunking or prefix-cache hits) and needs no per-sequence state. Four
//!   candidates get graded logits so seeded sampling is meaningfully random. It also drafts
//!   (speculative decoding without a model): its draft rows favour the same token as its
//!   logits, except at every fourth position (by hash), where they favour a wrong one.
//! * [`ScriptedRunner`]: replays scripted responses (e.g. a GLM tool call or a `<think>` block),
//!   one script per request in arrival order, then emits EOS. Selected on the command line with
//!   `--load-format scripted:<path>`; the file is either a JSON array of strings, a JSON object
//!   `{"responses": [...]}`, or any other text (one response, the whole file).
//!
//! Both can emulate step latency (`base + per_token * batched tokens`) for load experiments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scheduler::SchedulerOutput;
use tokenizers::Tokenizer;

use super::{DraftSeq, Logits, Runner, RunnerError};
use crate::config::LoadFormat;

/// Logit values of the four favoured candidates of [`FakeRunner`] (all others are 0).
const CANDIDATE_LOGITS: [f32; 4] = [20.0, 18.0, 17.0, 16.0];
/// Logit of the scripted token in [`ScriptedRunner`] rows (all others are 0).
const SCRIPT_LOGIT: f32 = 40.0;

/// Simulated step time: `base + per_token * num_batched_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepLatency {
    /// Fixed cost per step.
    pub base: Duration,
    /// Extra cost per scheduled token.
    pub per_token: Duration,
}

impl StepLatency {
    pub fn is_zero(&self) -> bool {
        self.base.is_zero() && self.per_token.is_zero()
    }

    fn wait(&self, tokens: usize) {
        let tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
        let total = self.base + self.per_token.saturating_mul(tokens);
        if !total.is_zero() {
            std::thread::sleep(total);
        }
    }
}

/// Deterministic context-hash model; see the module docs.
#[derive(Debug, Clone)]
pub struct FakeRunner {
    vocab: usize,
    /// Tokens the fake may favour: `[0, emit_limit)` (regular, non-special tokens).
    emit_limit: u32,
    latency: StepLatency,
    /// Draft chains: position of each drafting sequence's next draft row.
    drafting: HashMap<u64, usize>,
}

impl FakeRunner {
    /// A fake with rows of width `vocab` that favours tokens below `emit_limit`
    /// (clamped to `1..=vocab`).
    pub fn new(vocab: usize, emit_limit: u32) -> Self {
        let vocab = vocab.max(1);
        let cap = u32::try_from(vocab).unwrap_or(u32::MAX);
        Self {
            vocab,
            emit_limit: emit_limit.clamp(1, cap),
            latency: StepLatency::default(),
            drafting: HashMap::new(),
        }
    }

    /// A fake sized for `tokenizer`: rows as wide as the full vocabulary, favouring only
    /// regular tokens (ids below the first added/special token).
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Self {
        let vocab = tokenizer.get_vocab_size(true);
        Self::new(vocab, first_added_id(tokenizer).unwrap_or(vocab as u32))
    }

    /// Adds simulated step latency.
    pub fn with_latency(mut self, latency: StepLatency) -> Self {
        self.latency = latency;
        self
    }

    /// The token this fake favours most after `last` at position `pos`.
    pub fn favoured(&self, last: u32, pos: usize) -> u32 {
        self.candidates(last, pos)[0]
    }

    /// Writes the logits row of the token after `last` (at `pos`).
    fn fill_row(&self, out: &mut [f32], last: u32, pos: usize) {
        // Later candidates may collide with earlier ones; keep the larger logit.
        for (tok, value) in self.candidates(last, pos).iter().zip(CANDIDATE_LOGITS) {
            let slot = &mut out[*tok as usize];
            *slot = slot.max(value);
        }
    }

    /// The draft row for the token after `last` (at `pos`): the model's own favourite, except at
    /// every fourth position, where a wrong token leads.
    fn fill_draft_row(&self, out: &mut [f32], last: u32, pos: usize) {
        self.fill_row(out, last, pos);
        if splitmix64(pos as u64 ^ 0xd7af).is_multiple_of(4) {
            let favoured = self.favoured(last, pos);
            let wrong = (favoured + 1) % self.emit_limit;
            out[wrong as usize] = CANDIDATE_LOGITS[0] + 1.0;
        }
    }

    fn candidates(&self, last: u32, pos: usize) -> [u32; 4] {
        let mut h = splitmix64(u64::from(last) ^ (pos as u64).rotate_left(32));
        let mut out = [0u32; 4];
        for slot in &mut out {
            h = splitmix64(h);
            *slot = (h % u64::from(self.emit_limit)) as u32;
        }
        out
    }
}

impl Runner for FakeRunner {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.latency.wait(batch.num_batched_tokens);
        let sampled: Vec<_> = batch.seqs.iter().filter(|s| s.sample).collect();
        let mut logits = Logits::zeros(sampled.len(), self.vocab);
        for (row, seq) in sampled.iter().enumerate() {
            let last = *seq.token_ids.last().ok_or_else(|| {
                RunnerError::Execution(format!("sequence {} sampled with no tokens", seq.id))
            })?;
            let pos = seq.start_pos + seq.token_ids.len() - 1;
            self.fill_row(logits.row_mut(row), last, pos);
        }
        Ok(logits)
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn release(&mut self, ids: &[u64]) {
        for id in ids {
            self.drafting.remove(id);
        }
    }

    fn supports_drafting(&self) -> bool {
        true
    }

    fn execute_verify(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.latency.wait(batch.num_batched_tokens);
        let rows: usize = batch.seqs.iter().map(|s| s.num_logits()).sum();
        let mut logits = Logits::zeros(rows, self.vocab);
        let mut row = 0;
        for seq in batch.seqs.iter().filter(|s| s.sample) {
            let first = seq.token_ids.len() - seq.num_logits();
            for (i, &token) in seq.token_ids.iter().enumerate().skip(first) {
                self.fill_row(logits.row_mut(row), token, seq.start_pos + i);
                row += 1;
            }
        }
        Ok(logits)
    }

    fn draft(&mut self, batch: &SchedulerOutput, seqs: &[DraftSeq]) -> Result<Logits, RunnerError> {
        self.drafting.clear();
        let mut logits = Logits::zeros(seqs.len(), self.vocab);
        for (row, d) in seqs.iter().enumerate() {
            let seq = batch.seqs.iter().find(|s| s.id == d.id && s.sample);
            let Some(seq) = seq else {
                return Err(RunnerError::Execution(format!(
                    "draft: sequence {} is not a sampling sequence of the batch",
                    d.id
                )));
            };
            // `next_token` sits at this position; the row scores the token after it.
            let pos = seq.start_pos + d.num_verified;
            self.fill_draft_row(logits.row_mut(row), d.next_token, pos);
            self.drafting.insert(d.id, pos + 1);
        }
        Ok(logits)
    }

    fn draft_next(&mut self, tokens: &[(u64, u32)]) -> Result<Logits, RunnerError> {
        let mut logits = Logits::zeros(tokens.len(), self.vocab);
        for (row, &(id, token)) in tokens.iter().enumerate() {
            let pos = self.drafting.get_mut(&id).ok_or_else(|| {
                RunnerError::Execution(format!("draft_next: sequence {id} has no draft chain"))
            })?;
            let p = *pos;
            *pos += 1;
            self.fill_draft_row(logits.row_mut(row), token, p);
        }
        Ok(logits)
    }
}

/// Why a script could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The script file could not be read.
    #[error("cannot read script {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The script is empty or has an empty response.
    #[error("script {0} has no (non-empty) responses")]
    Empty(String),
    /// The tokenizer could not encode a response.
    #[error("cannot tokenize script response: {0}")]
    Tokenize(String),
    /// A token id does not fit the runner's vocabulary.
    #[error("script token {token} is outside the vocabulary of {vocab}")]
    OutOfVocab {
        /// The token.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct ScriptCursor {
    script: usize,
    prompt_len: usize,
}

/// Replays scripted responses; see the module docs.
#[derive(Debug, Clone)]
pub struct ScriptedRunner {
    vocab: usize,
    scripts: Vec<Vec<u32>>,
    eos: u32,
    next_script: usize,
    seqs: HashMap<u64, ScriptCursor>,
    latency: StepLatency,
}

impl ScriptedRunner {
    /// A runner replaying `scripts` (token ids) in turn, one per new sequence, then `eos`.
    pub fn new(vocab: usize, scripts: Vec<Vec<u32>>, eos: u32) -> Result<Self, ScriptError> {
        if scripts.is_empty() {
            return Err(ScriptError::Empty("given".into()));
        }
        for &token in scripts.iter().flatten().chain(std::iter::once(&eos)) {
            if token as usize >= vocab {
                return Err(ScriptError::OutOfVocab { token, vocab });
            }
        }
        Ok(Self {
            vocab,
            scripts,
            eos,
            next_script: 0,
            seqs: HashMap::new(),
            latency: StepLatency::default(),
        })
    }

    /// Tokenizes `texts` (special tokens written as text, e.g. `<tool_call>`, become their ids).
    pub fn from_texts<S: AsRef<str>>(
        tokenizer: &Tokenizer,
        texts: &[S],
        eos: u32,
    ) -> Result<Self, ScriptError> {
        let mut scripts = Vec::with_capacity(texts.len());
        for text in texts {
            let enc = tokenizer
                .encode(text.as_ref(), false)
                .map_err(|e| ScriptError::Tokenize(e.to_string()))?;
            if enc.get_ids().is_empty() {
                return Err(ScriptError::Empty("response".into()));
            }
            scripts.push(enc.get_ids().to_vec());
        }
        Self::new(tokenizer.get_vocab_size(true), scripts, eos)
    }

    /// Loads a script file (format in the module docs).
    pub fn from_file(path: &Path, tokenizer: &Tokenizer, eos: u32) -> Result<Self, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_owned(),
            source,
        })?;
        let texts = parse_script(&text);
        if texts.is_empty() {
            return Err(ScriptError::Empty(path.display().to_string()));
        }
        Self::from_texts(tokenizer, &texts, eos)
    }

    /// Adds simulated step latency.
    pub fn with_latency(mut self, latency: StepLatency) -> Self {
        self.latency = latency;
        self
    }

    fn next_token(&mut self, id: u64, computed: usize) -> u32 {
        let n_scripts = self.scripts.len();
        let next_script = &mut self.next_script;
        let cursor = *self.seqs.entry(id).or_insert_with(|| {
            let script = *next_script % n_scripts;
            *next_script += 1;
            ScriptCursor {
                script,
                prompt_len: computed,
            }
        });
        let offset = computed.saturating_sub(cursor.prompt_len);
        self.scripts[cursor.script]
            .get(offset)
            .copied()
            .unwrap_or(self.eos)
    }
}

/// Splits a script file into responses: a JSON array of strings, `{"responses": [...]}`, or the
/// whole text as one response.
fn parse_script(text: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Script {
        List(Vec<String>),
        Object { responses: Vec<String> },
    }
    match serde_json::from_str::<Script>(text) {
        Ok(Script::List(v)) | Ok(Script::Object { responses: v }) => v,
        Err(_) if text.is_empty() => Vec::new(),
        Err(_) => vec![text.to_owned()],
    }
}

impl Runner for ScriptedRunner {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.latency.wait(batch.num_batched_tokens);
        let rows = batch.seqs.iter().filter(|s| s.sample).count();
        let mut logits = Logits::zeros(rows, self.vocab);
        for (row, seq) in batch.seqs.iter().filter(|s| s.sample).enumerate() {
            let computed = seq.start_pos + seq.token_ids.len();
            let token = self.next_token(seq.id, computed);
            logits.row_mut(row)[token as usize] = SCRIPT_LOGIT;
        }
        Ok(logits)
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn release(&mut self, ids: &[u64]) {
        for id in ids {
            self.seqs.remove(id);
        }
    }
}

/// Builds the runner for the test-only load formats (`fake`, `scripted:<path>`); `None` for the
/// formats that need the real model (`auto`, `dummy`), which the CLI builds with the `model`
/// crate.
pub fn runner_for_load_format(
    format: &LoadFormat,
    tokenizer: &Tokenizer,
    eos_token_ids: &[u32],
) -> Result<Option<Box<dyn Runner>>, ScriptError> {
    match format {
        LoadFormat::Fake(latency) => Ok(Some(Box::new(
            FakeRunner::for_tokenizer(tokenizer).with_latency(*latency),
        ))),
        LoadFormat::Scripted(path) => {
            let eos = eos_token_ids
                .first()
                .copied()
                .or_else(|| first_added_id(tokenizer))
                .unwrap_or(0);
            Ok(Some(Box::new(ScriptedRunner::from_file(
                path, tokenizer, eos,
            )?)))
        }
        LoadFormat::Auto | LoadFormat::Dummy => Ok(None),
    }
}

/// Lowest id of an added (special or user-added) token.
fn first_added_id(tokenizer: &Tokenizer) -> Option<u32> {
    tokenizer.get_added_tokens_decoder().keys().min().copied()
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scheduler::ScheduledSeq;

    fn seq(id: u64, token_ids: Vec<u32>, start_pos: usize, sample: bool) -> ScheduledSeq {
        ScheduledSeq {
            id,
            token_ids,
            start_pos,
            block_table: vec![],
            sample,
            num_draft_tokens: 0,
        }
    }

    fn batch(seqs: Vec<ScheduledSeq>) -> SchedulerOutput {
        let num_batched_tokens = seqs.iter().map(|s| s.token_ids.len()).sum();
        SchedulerOutput {
            seqs,
            num_batched_tokens,
            preempted: vec![],
        }
    }

    /// `--load-format fake:STEP+PER_TOKEN` builds a fake whose steps take at least that long.
    #[test]
    fn fake_load_format_carries_its_step_time() {
        let tok = crate::testing::byte_tokenizer();
        let fmt: LoadFormat = "fake:20ms+1ms".parse().unwrap();
        let mut r = runner_for_load_format(&fmt, &tok, &[]).unwrap().unwrap();
        let t = std::time::Instant::now();
        let out = r
            .execute(&batch(vec![seq(1, vec![3, 4, 5], 0, true)]))
            .unwrap();
        assert_eq!(out.rows, 1);
        assert!(
            t.elapsed() >= Duration::from_millis(23),
            "{:?}",
            t.elapsed()
        );
    }

    fn argmax(row: &[f32]) -> u32 {
        let mut best = 0;
        for (i, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = i;
            }
        }
        best as u32
    }

    #[test]
    fn fake_depends_only_on_last_token_and_position() {
        let mut r = FakeRunner::new(100, 90);
        // Same context computed whole vs. as a decode step after a cached prefix.
        let a = r
            .execute(&batch(vec![seq(1, vec![5, 6, 7], 0, true)]))
            .unwrap();
        let b = r
            .execute(&batch(vec![
                seq(9, vec![1, 2], 0, false),
                seq(2, vec![7], 2, true),
            ]))
            .unwrap();
        assert_eq!(a.rows, 1);
        assert_eq!(b.rows, 1);
        assert_eq!(a.row(0), b.row(0));
        assert_eq!(argmax(a.row(0)), r.favoured(7, 2));
        assert!(argmax(a.row(0)) < 90);
    }

    #[test]
    fn scripted_replays_then_eos_and_survives_recompute() {
        let mut r = ScriptedRunner::new(50, vec![vec![10, 11, 12], vec![20]], 3).unwrap();
        let step = |r: &mut ScriptedRunner, id, toks: Vec<u32>, start| {
            let l = r.execute(&batch(vec![seq(id, toks, start, true)])).unwrap();
            argmax(l.row(0))
        };
        assert_eq!(step(&mut r, 1, vec![1, 2, 3, 4], 0), 10);
        assert_eq!(step(&mut r, 2, vec![1, 2], 0), 20);
        assert_eq!(step(&mut r, 1, vec![10], 4), 11);
        // Preempted and recomputed from scratch: the cursor survives.
        assert_eq!(step(&mut r, 1, vec![1, 2, 3, 4, 10, 11], 0), 12);
        assert_eq!(step(&mut r, 1, vec![12], 6), 3);
        assert_eq!(step(&mut r, 2, vec![20], 2), 3);
        r.release(&[1, 2]);
        assert!(r.seqs.is_empty());
        // Scripts cycle.
        assert_eq!(step(&mut r, 3, vec![1], 0), 10);
    }

    #[test]
    fn scripted_rejects_out_of_vocab() {
        assert!(matches!(
            ScriptedRunner::new(10, vec![vec![10]], 0),
            Err(ScriptError::OutOfVocab { token: 10, .. })
        ));
        assert!(matches!(
            ScriptedRunner::new(10, vec![], 0),
            Err(ScriptError::Empty(_))
        ));
    }

    #[test]
    fn script_file_formats() {
        assert_eq!(parse_script(r#"["a","b"]"#), vec!["a", "b"]);
        assert_eq!(parse_script(r#"{"responses":["x"]}"#), vec!["x"]);
        assert_eq!(
            parse_script("plain <b>text</b>\n"),
            vec!["plain <b>text</b>\n"]
        );
        assert!(parse_script("").is_empty());
    }
}
