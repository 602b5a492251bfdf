//! Test harness: a replica on the byte-level GLM test tokenizer with a fake or scripted runner,
//! called through its `App` value (no sockets).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use replica::runner::fake::StepLatency;
use replica::runner::{FakeRunner, ScriptedRunner};
use replica::testing::{byte_tokenizer, glm_eos_ids};
use replica::{App, GenerationDefaults, ModelFamily, Replica, ReplicaParts, Runner, ServeConfig};
use serde_json::Value;
use tokenizers::Tokenizer;

pub const MODEL: &str = "glm-test";

pub fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(byte_tokenizer())
}

pub fn config() -> ServeConfig {
    ServeConfig {
        model: Some("/models/glm-test".into()),
        max_model_len: Some(512),
        max_num_seqs: 16,
        max_num_batched_tokens: 1024,
        block_size: 16,
        ..ServeConfig::default()
    }
}

pub fn parts(runner: Box<dyn Runner>) -> ReplicaParts {
    ReplicaParts {
        runner,
        tokenizer: tokenizer(),
        num_blocks: 256,
        eos_token_ids: glm_eos_ids(),
        chat_template: None,
        model_family_hint: None,
        max_position_embeddings: 4096,
        default_served_name: MODEL.into(),
        generation_defaults: GenerationDefaults::default(),
    }
}

pub fn fake() -> Box<dyn Runner> {
    Box::new(FakeRunner::for_tokenizer(&byte_tokenizer()))
}

pub fn slow_fake(per_step: Duration) -> Box<dyn Runner> {
    Box::new(
        FakeRunner::for_tokenizer(&byte_tokenizer()).with_latency(StepLatency {
            base: per_step,
            per_token: Duration::ZERO,
        }),
    )
}

pub fn scripted(texts: &[&str]) -> Box<dyn Runner> {
    let tok = byte_tokenizer();
    Box::new(ScriptedRunner::from_texts(&tok, texts, glm_eos_ids()[0]).unwrap())
}

pub fn start(cfg: ServeConfig, runner: Box<dyn Runner>) -> Replica {
    Replica::start(&cfg, parts(runner)).unwrap()
}

pub fn start_with(cfg: ServeConfig, p: ReplicaParts) -> Replica {
    Replica::start(&cfg, p).unwrap()
}

pub fn glm47_parts(runner: Box<dyn Runner>) -> ReplicaParts {
    ReplicaParts {
        model_family_hint: Some(ModelFamily::Glm47),
        ..parts(runner)
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// SSE `data:` payloads up to `[DONE]` (asserts the terminator is present).
    pub fn events(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.body);
        let mut out = Vec::new();
        let mut done = false;
        for frame in text.split("\n\n").filter(|f| !f.is_empty()) {
            let data = frame.strip_prefix("data: ").expect("SSE data frame");
            if data == "[DONE]" {
                done = true;
                break;
            }
            out.push(serde_json::from_str(data).expect("JSON event"));
        }
        assert!(done, "stream must end with [DONE]: {text}");
        out
    }
}

pub fn request(method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
    let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(bytes))
        .unwrap()
}

pub async fn send(app: &App, req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(30), app.handle(req))
        .await
        .expect("handler timed out");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn post(app: &App, path: &str, body: Value) -> Reply {
    send(app, request(Method::POST, path, Some(&body))).await
}

pub async fn get(app: &App, path: &str) -> Reply {
    send(app, request(Method::GET, path, None)).await
}

/// Content of a non-streaming chat response's first choice.
pub fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

/// Waits until the engine has nothing in flight.
pub async fn wait_idle(replica: &Replica) {
    tokio::time::timeout(Duration::from_secs(10), replica.engine().wait_idle())
        .await
        .expect("engine did not become idle");
}
