//! A small blocking HTTP client for the tests (ureq underneath): whole replies, and server-sent
//! event streams that a test can read event by event, read slowly, hold unread, or drop mid-way
//! (dropping closes the connection, as a client that goes away would).

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::Value;

/// Response header naming the replica that served a routed request.
pub const REPLICA_HEADER: &str = "x-glmfleet-replica";

/// Upper bound on any single read, so a stuck server fails a test instead of hanging it.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .timeout_read(READ_TIMEOUT)
        .timeout_write(Duration::from_secs(10))
        // every call on its own connection: no test depends on pooling, and a dropped stream
        // must close its socket rather than go back to a pool
        .max_idle_connections(0)
        .build()
}

/// A complete answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The `x-glmfleet-replica` header, if any.
    pub replica: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status, self.body
            )
        })
    }
}

/// Why no HTTP answer came back (connection refused, reset, timeout).
#[derive(Debug, Clone)]
pub struct TransportError(pub String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn into_response(r: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, TransportError> {
    match r {
        Ok(resp) | Err(ureq::Error::Status(_, resp)) => Ok(resp),
        Err(e) => Err(TransportError(e.to_string())),
    }
}

fn into_reply(resp: ureq::Response) -> Result<Reply, TransportError> {
    let status = resp.status();
    let replica = resp.header(REPLICA_HEADER).map(str::to_owned);
    let content_type = resp.header("content-type").map(str::to_owned);
    let body = resp
        .into_string()
        .map_err(|e| TransportError(format!("reading the body: {e}")))?;
    Ok(Reply {
        status,
        replica,
        content_type,
        body,
    })
}

/// `GET url`.
pub fn get(url: &str) -> Result<Reply, TransportError> {
    into_reply(into_response(agent().get(url).call())?)
}

/// `GET url`, JSON expected with status 200 (panics otherwise).
pub fn get_json(url: &str) -> Value {
    let reply = get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
    reply.json()
}

/// `GET url` as text with status 200 (panics otherwise).
pub fn get_text(url: &str) -> String {
    let reply = get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
    reply.body
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, body: &Value) -> Result<Reply, TransportError> {
    let req = agent().post(url).set("content-type", "application/json");
    into_reply(into_response(req.send_string(&body.to_string()))?)
}

/// An open response to a streaming request.
pub struct SseStream {
    pub status: u16,
    pub replica: Option<String>,
    reader: BufReader<Box<dyn Read + Send + Sync + 'static>>,
}

/// One thing read from a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A `data:` payload that is not `[DONE]`.
    Data(String),
    /// `data: [DONE]`.
    Done,
}

/// How a stream read to its end went.
#[derive(Debug, Clone, Default)]
pub struct StreamEnd {
    /// Data events before the end, `[DONE]` excluded.
    pub events: Vec<Value>,
    /// `[DONE]` was seen.
    pub done: bool,
    /// The `error` object of an error event (`data: {"error": ...}`), if one came.
    pub error: Option<Value>,
    /// The connection failed before a clean end of body.
    pub transport_error: Option<String>,
    /// Concatenated `delta.content` / `text` of the events.
    pub text: String,
    /// The last non-null `finish_reason`.
    pub finish_reason: Option<String>,
}

impl StreamEnd {
    /// Ended cleanly: `[DONE]` after a finish reason, or an explicit error event; never a silent cut.
    pub fn ended_clearly(&self) -> bool {
        self.transport_error.is_none()
            && ((self.done && self.finish_reason.is_some()) || self.error.is_some())
    }
}

impl SseStream {
    /// `POST url` with `body` (which should ask for `"stream": true`); returns once the response
    /// head has arrived.
    pub fn open(url: &str, body: &Value) -> Result<SseStream, TransportError> {
        let req = agent().post(url).set("content-type", "application/json");
        let resp = into_response(req.send_string(&body.to_string()))?;
        let status = resp.status();
        let replica = resp.header(REPLICA_HEADER).map(str::to_owned);
        Ok(SseStream {
            status,
            replica,
            reader: BufReader::with_capacity(1024, resp.into_reader()),
        })
    }

    /// The next event; `Ok(None)` at the end of the body.
    pub fn next_event(&mut self) -> std::io::Result<Option<Event>> {
        let mut data: Option<String> = None;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(data.map(Event::Data));
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                match data.take() {
                    Some(d) if d == "[DONE]" => return Ok(Some(Event::Done)),
                    Some(d) => return Ok(Some(Event::Data(d))),
                    None => continue,
                }
            }
            if let Some(payload) = l.strip_prefix("data:") {
                let payload = payload.strip_prefix(' ').unwrap_or(payload);
                match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(payload);
                    }
                    None => data = Some(payload.to_owned()),
                }
            }
        }
    }

    /// Reads up to `n` events (fewer if the stream ends).
    pub fn read_events(&mut self, n: usize) -> std::io::Result<usize> {
        for i in 0..n {
            if self.next_event()?.is_none() {
                return Ok(i);
            }
        }
        Ok(n)
    }

    /// Reads everything, sleeping `pause` between events (a slow client when non-zero).
    pub fn finish(mut self, pause: Duration) -> StreamEnd {
        let mut end = StreamEnd::default();
        loop {
            match self.next_event() {
                Ok(None) => return end,
                Ok(Some(Event::Done)) => end.done = true,
                Ok(Some(Event::Data(d))) => {
                    let v: Value = match serde_json::from_str(&d) {
                        Ok(v) => v,
                        Err(e) => {
                            end.transport_error = Some(format!("event is not JSON ({e}): {d}"));
                            return end;
                        }
                    };
                    if let Some(err) = v.get("error") {
                        end.error = Some(err.clone());
                        continue;
                    }
                    if let Some(choice) = v["choices"].get(0) {
                        if let Some(t) = choice["delta"]["content"]
                            .as_str()
                            .or(choice["text"].as_str())
                        {
                            end.text.push_str(t);
                        }
                        if let Some(f) = choice["finish_reason"].as_str() {
                            end.finish_reason = Some(f.to_owned());
                        }
                    }
                    end.events.push(v);
                }
                Err(e) => {
                    end.transport_error = Some(e.to_string());
                    return end;
                }
            }
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    }
}

/// A chat request body.
pub fn chat(system: &str, user: &str, max_tokens: u32, stream: bool) -> Value {
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": user}));
    serde_json::json!({
        "model": "demo",
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// `body` with `ignore_eos` set, so the answer has exactly `max_tokens` tokens.
pub fn ignoring_eos(mut body: Value) -> Value {
    body["ignore_eos"] = Value::Bool(true);
    body
}

/// `POST url` with a JSON body, giving up (and closing the connection) after `timeout`: a
/// client that stops waiting.
pub fn post_json_timeout(
    url: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Reply, TransportError> {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .max_idle_connections(0)
        .build();
    let req = agent.post(url).set("content-type", "application/json");
    into_reply(into_response(req.send_string(&body.to_string()))?)
}
