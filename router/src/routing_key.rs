//! Routing keys: chained hashes of fixed-size byte blocks of a request's prompt prefix.
//!
//! The router never tokenizes. It renders the part of an OpenAI request that decides a replica's
//! prefix-cache hit into a canonical byte stream and cuts that stream into blocks of
//! `block_bytes` bytes:
//!
//! * chat (`messages`): the `tools` array as compact JSON first (templates render tools before
//!   the conversation), then every message in order as `role 0x1F name 0x1F content 0x1F
//!   reasoning 0x1F tool_calls 0x1E`; text parts of multi-part content are concatenated and other
//!   parts are written as compact JSON;
//! * completions (`prompt`): the prompt string, or the token ids as little-endian `u32`s; for a
//!   batch of prompts, the first one (a batch goes to one replica).
//!
//! Block `i`'s key is `xxh3_64(block_i, seed = key_{i-1})` and the chain is seeded with the hash
//! of the `model` field, so two requests that share their first K blocks share their first K keys
//! and no later one. Only full blocks get keys; the partial last block gives a `tail` hash that
//! places prompts shorter than one block. At most `max_blocks` keys are computed, which bounds
//! the CPU and the affinity memory a single huge prompt can take.
//!
//! Bodies that are not JSON, or carry neither `messages` nor `prompt`, give an empty key: the
//! policy then balances by load alone. The router never rejects a body it cannot read: the
//! replica answers with the proper 400.

use std::borrow::Cow;
use std::io;

use serde::Deserialize;
use serde_json::value::RawValue;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Separates the fields of one message in the canonical stream.
const UNIT_SEP: u8 = 0x1F;
/// Ends one message (or the tools section) in the canonical stream.
const RECORD_SEP: u8 = 0x1E;

/// How routing keys are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyConfig {
    /// Bytes per block.
    pub block_bytes: usize,
    /// Most block keys computed per request.
    pub max_blocks: usize,
}

/// The chained block hashes of one request's prompt prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingKey {
    blocks: Vec<u64>,
    tail: Option<u64>,
}

impl RoutingKey {
    /// A key from precomputed parts (tests, benchmarks, callers with their own hashing).
    pub fn from_parts(blocks: Vec<u64>, tail: Option<u64>) -> Self {
        Self { blocks, tail }
    }

    /// Chained hashes of the full blocks, in prompt order.
    pub fn blocks(&self) -> &[u64] {
        &self.blocks
    }

    /// Hash of the trailing partial block (chained on the last full block), if any.
    pub fn tail(&self) -> Option<u64> {
        self.tail
    }

    /// True when the request gave nothing to hash.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.tail.is_none()
    }

    /// Cut `bytes` into a key directly (no JSON); `seed` plays the role of the model hash.
    pub fn from_bytes(bytes: &[u8], seed: u64, cfg: &KeyConfig) -> Self {
        let mut hasher = BlockHasher::new(seed, cfg);
        hasher.feed(bytes);
        hasher.finish()
    }
}

/// Extract the routing key from an OpenAI request body.
pub fn extract(body: &[u8], cfg: &KeyConfig) -> RoutingKey {
    let Ok(request) = serde_json::from_slice::<RequestBody<'_>>(body) else {
        return RoutingKey::default();
    };
    let seed = request
        .model
        .as_deref()
        .map_or(0, |m| xxh3_64(m.as_bytes()));
    let mut hasher = BlockHasher::new(seed, cfg);
    if let Some(messages) = &request.messages {
        if let Some(tools) = request.tools {
            hasher.feed(b"tools");
            hasher.feed(&[UNIT_SEP]);
            hasher.feed_json(tools);
            hasher.feed(&[RECORD_SEP]);
        }
        for message in messages {
            feed_message(&mut hasher, message);
            if hasher.is_full() {
                break;
            }
        }
    } else if let Some(prompt) = request.prompt {
        feed_prompt(&mut hasher, prompt);
    } else {
        return RoutingKey::default();
    }
    hasher.finish()
}

fn feed_message(hasher: &mut BlockHasher, message: &Message<'_>) {
    hasher.feed(message.role.as_deref().unwrap_or("").as_bytes());
    hasher.feed(&[UNIT_SEP]);
    hasher.feed(message.name.as_deref().unwrap_or("").as_bytes());
    hasher.feed(&[UNIT_SEP]);
    if let Some(content) = message.content {
        feed_content(hasher, content);
    }
    hasher.feed(&[UNIT_SEP]);
    let reasoning = message
        .reasoning_content
        .as_deref()
        .or(message.reasoning.as_deref());
    hasher.feed(reasoning.unwrap_or("").as_bytes());
    hasher.feed(&[UNIT_SEP]);
    if let Some(calls) = message.tool_calls {
        hasher.feed_json(calls);
    }
    hasher.feed(&[RECORD_SEP]);
}

fn feed_content(hasher: &mut BlockHasher, content: &RawValue) {
    let raw = content.get().trim_start();
    if raw.starts_with('"') {
        if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw) {
            hasher.feed(text.as_bytes());
        }
    } else if raw.starts_with('[') {
        let Ok(parts) = serde_json::from_str::<Vec<&RawValue>>(raw) else {
            return;
        };
        for part in parts {
            match serde_json::from_str::<TextPart<'_>>(part.get()) {
                Ok(TextPart {
                    kind,
                    text: Some(text),
                }) if kind == "text" => hasher.feed(text.as_bytes()),
                _ => hasher.feed_json(part),
            }
        }
    } else {
        hasher.feed_json(content);
    }
}

fn feed_prompt(hasher: &mut BlockHasher, prompt: &RawValue) {
    let Ok(prompt) = serde_json::from_str::<Prompt<'_>>(prompt.get()) else {
        return;
    };
    match prompt {
        Prompt::Text(text) => hasher.feed(text.as_bytes()),
        Prompt::Texts(texts) => {
            if let Some(first) = texts.first() {
                hasher.feed(first.as_bytes());
            }
        }
        Prompt::Tokens(ids) => feed_token_ids(hasher, &ids),
        Prompt::TokenLists(lists) => {
            if let Some(first) = lists.first() {
                feed_token_ids(hasher, first);
            }
        }
    }
}

fn feed_token_ids(hasher: &mut BlockHasher, ids: &[u32]) {
    for id in ids {
        hasher.feed(&id.to_le_bytes());
        if hasher.is_full() {
            return;
        }
    }
}

/// The request fields that matter for routing; everything else is skipped unparsed.
#[derive(Deserialize)]
struct RequestBody<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TextPart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// Streams bytes into fixed-size blocks and chains their hashes.
struct BlockHasher {
    block_bytes: usize,
    max_blocks: usize,
    buf: Vec<u8>,
    prev: u64,
    blocks: Vec<u64>,
}

impl BlockHasher {
    fn new(seed: u64, cfg: &KeyConfig) -> Self {
        let block_bytes = cfg.block_bytes.max(1);
        Self {
            block_bytes,
            max_blocks: cfg.max_blocks,
            buf: Vec::with_capacity(block_bytes),
            prev: seed,
            blocks: Vec::new(),
        }
    }

    fn is_full(&self) -> bool {
        self.blocks.len() >= self.max_blocks
    }

    fn push_block(&mut self, block: &[u8]) {
        let hash = xxh3_64_with_seed(block, self.prev);
        self.blocks.push(hash);
        self.prev = hash;
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.is_full() {
            if self.buf.is_empty() && data.len() >= self.block_bytes {
                let (block, rest) = data.split_at(self.block_bytes);
                self.push_block(block);
                data = rest;
                continue;
            }
            let take = (self.block_bytes - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.block_bytes {
                let block = std::mem::take(&mut self.buf);
                self.push_block(&block);
                self.buf = block;
                self.buf.clear();
            }
        }
    }

    /// Write a JSON value in compact form, so whitespace differences do not change the key.
    fn feed_json(&mut self, raw: &RawValue) {
        if self.is_full() {
            return;
        }
        match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(value) => {
                // Writing into the hasher cannot fail.
                let _ = serde_json::to_writer(&mut *self, &value);
            }
            Err(_) => self.feed(raw.get().as_bytes()),
        }
    }

    fn finish(self) -> RoutingKey {
        let tail = (!self.buf.is_empty() && !self.is_full())
            .then(|| xxh3_64_with_seed(&self.buf, self.prev));
        RoutingKey {
            blocks: self.blocks,
            tail,
        }
    }
}

impl io::Write for BlockHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: KeyConfig = KeyConfig {
        block_bytes: 16,
        max_blocks: 64,
    };

    fn chat(messages: &[(&str, &str)]) -> Vec<u8> {
        let msgs: Vec<_> = messages
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"model": "glm", "messages": msgs, "stream": true}))
            .unwrap()
    }

    #[test]
    fn shared_prefix_shares_leading_keys() {
        let system = "You are a helpful assistant that answers in great detail.";
        let a = extract(
            &chat(&[("system", system), ("user", "first question")]),
            &CFG,
        );
        let b = extract(&chat(&[("system", system), ("user", "another one")]), &CFG);
        let shared = a
            .blocks()
            .iter()
            .zip(b.blocks())
            .take_while(|(x, y)| x == y)
            .count();
        // The system prompt plus its separators covers at least three full 16-byte blocks.
        assert!(shared >= 3, "shared {shared}");
        assert_ne!(a.blocks(), b.blocks());
    }

    #[test]
    fn later_turn_extends_earlier_turn() {
        let turn1 = extract(
            &chat(&[
                ("system", "sys prompt here"),
                ("user", "hello there, how are you"),
            ]),
            &CFG,
        );
        let turn2 = extract(
            &chat(&[
                ("system", "sys prompt here"),
                ("user", "hello there, how are you"),
                ("assistant", "fine thanks, and you?"),
                ("user", "good"),
            ]),
            &CFG,
        );
        assert!(!turn1.blocks().is_empty());
        assert_eq!(&turn2.blocks()[..turn1.blocks().len()], turn1.blocks());
    }

    #[test]
    fn whitespace_in_json_does_not_change_the_key() {
        let compact = br#"{"model":"m","messages":[{"role":"user","content":"some long enough text to fill blocks"}]}"#;
        let spaced = br#"{ "model" : "m", "messages" : [ { "content" : "some long enough text to fill blocks", "role" : "user" } ] }"#;
        assert_eq!(extract(compact, &CFG), extract(spaced, &CFG));
    }

    #[test]
    fn content_parts_match_plain_text() {
        let plain = br#"{"messages":[{"role":"user","content":"hello world, this is text"}]}"#;
        let parts = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hello world, "},{"type":"text","text":"this is text"}]}]}"#;
        assert_eq!(extract(plain, &CFG), extract(parts, &CFG));
    }

    #[test]
    fn model_seeds_the_chain() {
        let a = br#"{"model":"a","prompt":"the same prompt text for both"}"#;
        let b = br#"{"model":"b","prompt":"the same prompt text for both"}"#;
        assert_ne!(extract(a, &CFG).blocks()[0], extract(b, &CFG).blocks()[0]);
    }

    #[test]
    fn completion_prompt_forms() {
        let text = extract(br#"{"prompt":"0123456789abcdef0123"}"#, &CFG);
        assert_eq!(text.blocks().len(), 1);
        assert!(text.tail().is_some());
        let batch = extract(br#"{"prompt":["0123456789abcdef0123","other"]}"#, &CFG);
        assert_eq!(batch, text);
        let ids = extract(br#"{"prompt":[1,2,3,4,5]}"#, &CFG);
        assert_eq!(ids.blocks().len(), 1); // 20 bytes: one block + tail
        let lists = extract(br#"{"prompt":[[1,2,3,4,5],[9]]}"#, &CFG);
        assert_eq!(lists, ids);
    }

    #[test]
    fn unreadable_bodies_give_empty_keys() {
        assert!(extract(b"not json", &CFG).is_empty());
        assert!(extract(br#"{"input":"embeddings"}"#, &CFG).is_empty());
        assert!(extract(br#"{"messages":"wrong"}"#, &CFG).is_empty());
        assert!(extract(b"", &CFG).is_empty());
    }

    #[test]
    fn block_count_is_bounded() {
        let cfg = KeyConfig {
            block_bytes: 16,
            max_blocks: 4,
        };
        let long = "x".repeat(10_000);
        let body = serde_json::to_vec(&serde_json::json!({"prompt": long})).unwrap();
        let key = extract(&body, &cfg);
        assert_eq!(key.blocks().len(), 4);
        assert_eq!(key.tail(), None);
    }

    #[test]
    fn feeding_in_pieces_equals_feeding_at_once() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = RoutingKey::from_bytes(&data, 5, &CFG);
        let mut hasher = BlockHasher::new(5, &CFG);
        for chunk in data.chunks(7) {
            hasher.feed(chunk);
        }
        assert_eq!(hasher.finish(), whole);
    }

    #[test]
    fn tools_come_first_and_count() {
        let with = br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
        let without = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        assert_ne!(extract(with, &CFG), extract(without, &CFG));
    }
}
