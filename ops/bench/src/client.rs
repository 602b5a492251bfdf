//! The HTTP side of a benchmark request: the body vLLM's `openai` / `openai-chat` backends send,
//! the streamed response read frame by frame (each SSE event timed as it is decoded), and
//! failures turned into short, countable messages. Plain HTTP only.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

use crate::dataset::Prompt;
use crate::metrics::RequestRecord;
use crate::sse::{Flow, SseDecoder, StreamKind, StreamState};
use crate::BenchError;

/// The API a benchmark talks to (vLLM's `--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `/v1/completions`, streamed.
    #[value(alias = "vllm")]
    Openai,
    /// `/v1/chat/completions`, streamed.
    OpenaiChat,
}

impl Backend {
    /// The name vLLM writes into result files.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Openai => "openai",
            Backend::OpenaiChat => "openai-chat",
        }
    }

    /// The default endpoint for the backend.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Backend::Openai => "/v1/completions",
            Backend::OpenaiChat => "/v1/chat/completions",
        }
    }

    fn stream_kind(self) -> StreamKind {
        match self {
            Backend::Openai => StreamKind::Completions,
            Backend::OpenaiChat => StreamKind::Chat,
        }
    }
}

/// What one request sends.
#[derive(Debug, Clone)]
pub struct RequestInput<'a> {
    pub model: &'a str,
    pub prompt: &'a Prompt,
    pub prompt_len: usize,
    pub output_len: usize,
    pub ignore_eos: bool,
    pub logprobs: Option<u32>,
    /// Merged last into the body (sampling parameters, `--extra-body`).
    pub extra_body: &'a Map<String, Value>,
    pub request_id: Option<&'a str>,
}

/// The JSON body vLLM's request functions build for `backend`.
pub fn build_body(backend: Backend, input: &RequestInput<'_>) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(input.model));
    let prompt = match input.prompt {
        Prompt::Text(t) => json!(t),
        Prompt::TokenIds(ids) => json!(ids),
    };
    match backend {
        Backend::Openai => {
            body.insert("prompt".into(), prompt);
            body.insert("repetition_penalty".into(), json!(1.0));
            body.insert("max_tokens".into(), json!(input.output_len));
            body.insert("logprobs".into(), json!(input.logprobs));
        }
        Backend::OpenaiChat => {
            body.insert(
                "messages".into(),
                json!([{"role": "user", "content": [{"type": "text", "text": prompt}]}]),
            );
            body.insert("max_completion_tokens".into(), json!(input.output_len));
        }
    }
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    if input.ignore_eos {
        body.insert("ignore_eos".into(), json!(true));
    }
    for (k, v) in input.extra_body {
        body.insert(k.clone(), v.clone());
    }
    Value::Object(body)
}

/// A pooled HTTP/1.1 client with the run's fixed headers.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl HttpClient {
    /// `api_key` becomes `Authorization: Bearer …`; `headers` are extra `(name, value)` pairs.
    pub fn new(
        api_key: Option<&str>,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self, BenchError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let mut fixed = Vec::new();
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            let v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                BenchError::InvalidArgs("the API key is not a valid header value".into())
            })?;
            fixed.push((AUTHORIZATION, v));
        }
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| BenchError::InvalidArgs(format!("invalid header name {k:?}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| BenchError::InvalidArgs(format!("invalid header value for {k}")))?;
            fixed.push((name, value));
        }
        Ok(Self {
            client,
            headers: fixed,
            timeout,
        })
    }

    /// `GET uri` → (status, body JSON or `Null`). Connection failures map to
    /// [`BenchError::Unreachable`].
    pub async fn get_json(&self, uri: &Uri) -> Result<(StatusCode, Value), BenchError> {
        let mut req = Request::builder().method(Method::GET).uri(uri.clone());
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| BenchError::InvalidArgs(format!("bad URL {uri}: {e}")))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| BenchError::Unreachable {
                    url: uri.to_string(),
                    reason: describe_error(&e),
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| BenchError::Server(format!("GET {uri}: {}", describe_error(&e))))?
                .to_bytes();
            Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .map_err(|_| BenchError::Unreachable {
                url: uri.to_string(),
                reason: "no answer within 30 s".into(),
            })?
    }

    /// Sends one streamed request and times it. Never fails: problems are recorded in the
    /// returned record (`success == false`, `error`). `start_time` is left at 0 for the caller.
    pub async fn send(
        &self,
        backend: Backend,
        uri: &Uri,
        input: &RequestInput<'_>,
    ) -> RequestRecord {
        let body = build_body(backend, input);
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(CONTENT_TYPE, "application/json");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(id) = input.request_id {
            req = req.header("x-request-id", id);
        }
        let mut record = RequestRecord {
            prompt_len: input.prompt_len,
            ..Default::default()
        };
        let req = match req.body(Full::new(Bytes::from(body.to_string()))) {
            Ok(r) => r,
            Err(e) => {
                record.error = format!("cannot build request: {e}");
                return record;
            }
        };
        let st = Instant::now();
        let mut state = StreamState::new(backend.stream_kind());
        let outcome = tokio::time::timeout(self.timeout, self.stream(req, st, &mut state)).await;
        let error = match outcome {
            Ok(Ok(())) => state.error.clone(),
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!(
                "request timed out after {} s",
                self.timeout.as_secs()
            )),
        };
        record.generated_text = std::mem::take(&mut state.generated_text);
        record.usage_output_tokens = state.usage_output_tokens;
        if let Some(pt) = state.usage_prompt_tokens {
            record.prompt_len = pt;
        }
        match (error, state.ttft) {
            (Some(e), _) => record.error = e,
            (None, None) => {
                record.error = "never received a token event (no choices in the stream)".into();
            }
            (None, Some(ttft)) => {
                record.success = true;
                record.ttft = ttft;
                record.itl = std::mem::take(&mut state.itl);
                record.latency = state.last_token_at;
            }
        }
        record
    }

    async fn stream(
        &self,
        req: Request<Full<Bytes>>,
        st: Instant,
        state: &mut StreamState,
    ) -> Result<(), String> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| describe_error(&e))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let mut text = Vec::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            text.extend_from_slice(d);
                        }
                    }
                    Err(_) => break,
                }
                if text.len() > 64 * 1024 {
                    break;
                }
            }
            return Err(status_error(status, &text));
        }
        let mut decoder = SseDecoder::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("stream broken: {}", describe_error(&e)))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for event in decoder.push(data) {
                let now = st.elapsed().as_secs_f64();
                if state.on_event(&event, now) == Flow::Stop {
                    return Ok(());
                }
            }
        }
        if let Some(event) = decoder.finish() {
            state.on_event(&event, st.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// `HTTP 404 Not Found: <error.message>` (the message only when the body has one).
fn status_error(status: StatusCode, body: &[u8]) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    let message = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .or_else(|| v.get("message"))
            .map(|m| {
                m.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| m.to_string())
            })
    });
    let mut out = format!("HTTP {} {reason}", status.as_u16())
        .trim_end()
        .to_string();
    if let Some(m) = message {
        let m: String = m.chars().take(200).collect();
        out.push_str(": ");
        out.push_str(&m);
    }
    out
}

/// An error and its sources as one line, repeated texts dropped.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_body_matches_vllm() {
        let extra: Map<String, Value> = serde_json::from_str(r#"{"temperature":0.0}"#).unwrap();
        let prompt = Prompt::TokenIds(vec![1, 2, 3]);
        let input = RequestInput {
            model: "glm",
            prompt: &prompt,
            prompt_len: 3,
            output_len: 16,
            ignore_eos: true,
            logprobs: None,
            extra_body: &extra,
            request_id: Some("b-0"),
        };
        let body = build_body(Backend::Openai, &input);
        assert_eq!(
            body.to_string(),
            r#"{"model":"glm","prompt":[1,2,3],"repetition_penalty":1.0,"max_tokens":16,"logprobs":null,"stream":true,"stream_options":{"include_usage":true},"ignore_eos":true,"temperature":0.0}"#
        );
    }

    #[test]
    fn chat_body_matches_vllm() {
        let extra = Map::new();
        let prompt = Prompt::Text("hi".into());
        let input = RequestInput {
            model: "glm",
            prompt: &prompt,
            prompt_len: 1,
            output_len: 4,
            ignore_eos: false,
            logprobs: None,
            extra_body: &extra,
            request_id: None,
        };
        let body = build_body(Backend::OpenaiChat, &input);
        assert_eq!(
            body.to_string(),
            r#"{"model":"glm","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":4,"stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn status_errors_are_short() {
        assert_eq!(
            status_error(
                StatusCode::NOT_FOUND,
                br#"{"error":{"message":"model x not found","code":404}}"#
            ),
            "HTTP 404 Not Found: model x not found"
        );
        assert_eq!(
            status_error(StatusCode::SERVICE_UNAVAILABLE, b"busy"),
            "HTTP 503 Service Unavailable"
        );
    }
}
