//! The replica's request path end to end, on arbitrary request bodies: JSON parsing of the
//! chat/completions/tokenize/detokenize bodies, validation, template rendering, tokenization,
//! the engine (a fake model on the byte-level GLM test tokenizer) and the response, streaming
//! included. Every answer must be a well-formed OpenAI response or error: no panic, no hang, no
//! 500 that is not the documented `tool_choice` one, and every stream ends with `[DONE]`.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use replica::config::{ReasoningParserName, ToolParserName};
use replica::runner::FakeRunner;
use replica::testing::{byte_tokenizer, glm_eos_ids};
use replica::{App, GenerationDefaults, Replica, ReplicaParts, ServeConfig};
use serde_json::Value;

const PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/tokenize",
    "/detokenize",
];

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: App,
    _replica: Replica,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Small limits keep the legitimate worst case (n = 128 choices, every token with top
        // logprobs, streamed) well inside libFuzzer's per-input timeout: at 96 tokens and 20
        // logprobs that one valid request took 16 s here, which libFuzzer would report as a hang.
        let cfg = ServeConfig {
            model: Some("/models/glm-fuzz".into()),
            max_model_len: Some(40),
            max_logprobs: 4,
            max_num_seqs: 8,
            max_num_batched_tokens: 512,
            block_size: 16,
            max_request_body_bytes: 64 * 1024,
            tool_call_parser: Some(ToolParserName::Glm45),
            reasoning_parser: Some(ReasoningParserName::Glm45),
            enable_auto_tool_choice: true,
            ..ServeConfig::default()
        };
        let tokenizer = byte_tokenizer();
        let parts = ReplicaParts {
            runner: Box::new(FakeRunner::for_tokenizer(&tokenizer)),
            tokenizer: Arc::new(tokenizer),
            num_blocks: 64,
            eos_token_ids: glm_eos_ids(),
            chat_template: None,
            model_family_hint: None,
            max_position_embeddings: 4096,
            default_served_name: "glm-fuzz".into(),
            generation_defaults: GenerationDefaults::default(),
        };
        let replica = rt.block_on(async { Replica::start(&cfg, parts).expect("replica starts") });
        Fixture {
            app: replica.app(),
            _replica: replica,
            rt,
        }
    })
}

fn check_error(status: u16, body: &[u8]) {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{status} error body is not JSON ({e}): {body:?}"));
    let err = &v["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{status} without a message: {v}"
    );
    assert_eq!(err["code"], status, "{v}");
    if status == 500 {
        assert_eq!(err["param"], "tool_choice", "unexpected 500: {v}");
    }
}

fn check_stream(body: &[u8]) {
    let text = std::str::from_utf8(body).expect("SSE body is UTF-8");
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream without [DONE]: {text:?}"
    );
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("event without data: {event:?}"));
        if data != "[DONE]" {
            let v: Value = serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("event is not JSON ({e}): {data:?}"));
            if let Some(err) = v.get("error") {
                assert!(err["message"].is_string(), "{v}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let path = PATHS[usize::from(selector) % PATHS.len()];
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let (status, content_type, bytes) = f.rt.block_on(async {
        let exchange = async {
            let resp = f.app.handle(request).await;
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (status, ct, bytes)
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("request hung for 20 s")
    });
    match status {
        200 if content_type.starts_with("text/event-stream") => check_stream(&bytes),
        200 => {
            serde_json::from_slice::<Value>(&bytes).expect("200 body is JSON");
        }
        400 | 404 | 413 | 500 => check_error(status, &bytes),
        other => panic!(
            "unexpected status {other}: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    }
});
