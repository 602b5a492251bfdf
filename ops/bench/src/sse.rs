//! Server-sent-events decoding and the per-request token timing, kept free of I/O so that the
//! rules vLLM's client applies can be tested on their own: events end at a blank line, `:`
//! lines are comments, `data:` lines carry JSON, `[DONE]` ends the stream, and every event with a
//! non-empty `choices` array is one token arrival (first → TTFT, later → one ITL sample each),
//! even when its text is empty. An event without choices but with `usage` supplies the token
//! counts.

use serde_json::Value;

/// Splits a byte stream into SSE events and returns each event's `data` payload.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a separator (none ends before this point), so an
    /// event arriving in many small chunks is scanned once, not once per chunk.
    scanned: usize,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the data payloads of the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        // A separator is at most 4 bytes: one that ends in the new bytes starts at most 3
        // bytes before them.
        let mut from = self.scanned.saturating_sub(3);
        while let Some((end, sep_len)) = find_event_end(&self.buf, from) {
            let event: Vec<u8> = self.buf.drain(..end + sep_len).take(end).collect();
            if let Some(data) = event_data(&event) {
                out.push(data);
            }
            from = 0;
        }
        self.scanned = self.buf.len();
        out
    }

    /// Ends the stream: an unterminated last event still counts when it carries data.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        event_data(&rest)
    }
}

/// Position and length of the first blank-line separator (`\n\n`, `\r\n\r\n` or `\r\r`)
/// starting at or after `from`.
fn find_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < buf.len() {
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some((i, 2)),
            b'\r' if buf[i + 1..].starts_with(b"\n\r\n") => return Some((i, 4)),
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some((i, 2)),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The joined `data:` lines of one event, or `None` for comments and data-less events.
fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
    }
    data
}

/// Which streaming API the events come from (where the text sits in a choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `/v1/completions`: `choices[0].text`.
    Completions,
    /// `/v1/chat/completions`: `choices[0].delta.content` (plus `reasoning_content`).
    Chat,
}

/// Timing and token state of one streamed response. Times are seconds since the request was
/// sent.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamState {
    kind: StreamKind,
    pub ttft: Option<f64>,
    pub itl: Vec<f64>,
    /// Time of the latest token event (the request's latency once the stream ends).
    pub last_token_at: f64,
    pub generated_text: String,
    pub usage_output_tokens: Option<usize>,
    pub usage_prompt_tokens: Option<usize>,
    /// An `error` object sent inside the stream.
    pub error: Option<String>,
    pub done: bool,
}

/// What the caller should do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

impl StreamState {
    pub fn new(kind: StreamKind) -> Self {
        Self {
            kind,
            ttft: None,
            itl: Vec::new(),
            last_token_at: 0.0,
            generated_text: String::new(),
            usage_output_tokens: None,
            usage_prompt_tokens: None,
            error: None,
            done: false,
        }
    }

    /// Applies one event's data, received at `now` seconds after the send.
    pub fn on_event(&mut self, data: &str, now: f64) -> Flow {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Flow::Stop;
        }
        if data.is_empty() {
            return Flow::Continue;
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(format!("invalid JSON in stream: {e}"));
                return Flow::Stop;
            }
        };
        if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            self.error = Some(format!("error event: {msg}"));
            return Flow::Stop;
        }
        let choices = value
            .get("choices")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty());
        if let Some(choices) = choices {
            match self.ttft {
                None => self.ttft = Some(now),
                Some(_) => self.itl.push(now - self.last_token_at),
            }
            self.last_token_at = now;
            let choice = &choices[0];
            match self.kind {
                StreamKind::Completions => {
                    if let Some(t) = choice.get("text").and_then(Value::as_str) {
                        self.generated_text.push_str(t);
                    }
                }
                StreamKind::Chat => {
                    if let Some(delta) = choice.get("delta") {
                        for key in ["reasoning_content", "content"] {
                            if let Some(t) = delta.get(key).and_then(Value::as_str) {
                                self.generated_text.push_str(t);
                            }
                        }
                    }
                }
            }
        }
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            if let Some(n) = usage.get("completion_tokens").and_then(Value::as_u64) {
                self.usage_output_tokens = Some(n as usize);
            }
            if let Some(n) = usage.get("prompt_tokens").and_then(Value::as_u64) {
                self.usage_prompt_tokens = Some(n as usize);
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks_and_skips_comments() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            d.push(b":1}\n\n: ping\n\ndata: x\r\n\r\nda"),
            vec!["{\"a\":1}".to_string(), "x".to_string()]
        );
        assert_eq!(d.push(b"ta: [DONE]\n\n"), vec!["[DONE]".to_string()]);
        assert!(d.push(b"event: message\ndata: one\ndata: two").is_empty());
        assert_eq!(d.finish(), Some("one\ntwo".to_string()));
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn separators_split_across_chunks_are_found() {
        for sep in ["\n\n", "\r\n\r\n", "\r\r"] {
            let text = format!("data: a{sep}data: b{sep}");
            let bytes = text.as_bytes();
            for cut in 0..=bytes.len() {
                let mut d = SseDecoder::new();
                let mut got = d.push(&bytes[..cut]);
                got.extend(d.push(&bytes[cut..]));
                assert_eq!(got, ["a", "b"], "{sep:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_large_event_in_small_chunks_is_scanned_once() {
        // Regression: every push rescanned the whole buffered event from its start, so a 4 MiB
        // event in 64-byte chunks cost ~1.3e11 steps instead of 4e6.
        let mut d = SseDecoder::new();
        let started = std::time::Instant::now();
        assert!(d.push(b"data: ").is_empty());
        let chunk = [b'x'; 64];
        for _ in 0..(4 << 20) / 64 {
            assert!(d.push(&chunk).is_empty());
        }
        let events = d.push(b"\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].len(), 4 << 20);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn splits_multibyte_text_across_chunks() {
        let mut d = SseDecoder::new();
        let bytes = "data: é\n\n".as_bytes();
        assert!(d.push(&bytes[..7]).is_empty());
        assert_eq!(d.push(&bytes[7..]), vec!["é".to_string()]);
    }

    #[test]
    fn token_events_give_ttft_itl_and_latency() {
        let mut s = StreamState::new(StreamKind::Completions);
        assert_eq!(
            s.on_event(r#"{"choices":[{"text":"He"}]}"#, 0.5),
            Flow::Continue
        );
        s.on_event(r#"{"choices":[{"text":""}]}"#, 0.75);
        s.on_event(r#"{"choices":[{"text":"llo"}]}"#, 1.0);
        s.on_event(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
            1.5,
        );
        assert_eq!(s.on_event("[DONE]", 1.6), Flow::Stop);
        assert_eq!(s.ttft, Some(0.5));
        assert_eq!(s.itl, vec![0.25, 0.25]);
        // The usage event does not move the end of the request.
        assert_eq!(s.last_token_at, 1.0);
        assert_eq!(s.generated_text, "Hello");
        assert_eq!(
            (s.usage_prompt_tokens, s.usage_output_tokens),
            (Some(7), Some(3))
        );
        assert!(s.done);
    }

    #[test]
    fn chat_deltas_and_error_events() {
        let mut s = StreamState::new(StreamKind::Chat);
        s.on_event(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#, 0.1);
        s.on_event(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#, 0.2);
        assert_eq!(s.generated_text, "Hi");
        assert_eq!(s.itl.len(), 1);
        assert_eq!(
            s.on_event(r#"{"error":{"message":"boom","code":500}}"#, 0.3),
            Flow::Stop
        );
        assert_eq!(s.error.as_deref(), Some("error event: boom"));
        let mut bad = StreamState::new(StreamKind::Chat);
        assert_eq!(bad.on_event("{not json", 0.1), Flow::Stop);
        assert!(bad.error.is_some());
    }
}
