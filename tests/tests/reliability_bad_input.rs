//! Bad input on every public endpoint of a real replica and of the router in front of it gets a
//! clear OpenAI-shaped error (4xx with a message), never a 5xx, a hang or a dead server; unknown
//! fields are ignored. This covers what `replica/tests/http` does not: bytes that are not UTF-8,
//! empty and non-object bodies, nesting deep enough to overflow a recursive parser, numbers
//! beyond every integer type, empty and huge values, the tokenizer endpoints, every method on
//! every path, and all of it through the router's proxy as well.

mod reliability_support;

use std::net::SocketAddr;

use reliability_support::{assert_error, get, request, scratch, LoggedProc, RawReply};
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const TOKENIZE: &str = "/tokenize";
const DETOKENIZE: &str = "/detokenize";

fn post_raw(addr: SocketAddr, path: &str, body: &[u8], what: &str) -> RawReply {
    request(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body,
    )
    .unwrap_or_else(|e| panic!("POST {path} ({what}): {e}"))
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Bodies every POST endpoint must refuse with 400.
fn bad_for_all() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty body", Vec::new()),
        ("whitespace", b"  \n ".to_vec()),
        ("not UTF-8", vec![0xff, 0xfe, 0xfd, 0x00, 0x80]),
        ("UTF-8 BOM then JSON", b"\xef\xbb\xbf{}".to_vec()),
        ("array", b"[]".to_vec()),
        ("null", b"null".to_vec()),
        ("string", b"\"hello\"".to_vec()),
        ("number", b"42".to_vec()),
        ("truncated", b"{\"messages\": [{\"role\": \"user\"".to_vec()),
        ("trailing garbage", b"{} {}".to_vec()),
        ("NaN literal", b"{\"temperature\": NaN}".to_vec()),
        (
            "deep nesting",
            format!("{{\"x\": {}}}", nested(100_000)).into_bytes(),
        ),
        ("nul bytes", b"{\"prompt\": \"a\0b\"\0}".to_vec()),
    ]
}

fn msgs() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

/// (path, body, why) that must be refused with a 400.
fn bad_values() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let j = |v: Value| v.to_string().into_bytes();
    let big = "9".repeat(400);
    vec![
        (CHAT, b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}".to_vec(), "invalid UTF-8 in a string"),
        (CHAT, j(json!({"messages": {}})), "messages an object"),
        (CHAT, j(json!({"messages": msgs(), "max_tokens": "8"})), "max_tokens a string"),
        (CHAT, j(json!({"messages": msgs(), "max_tokens": -1})), "negative max_tokens"),
        (CHAT, format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"x\"}}], \"max_tokens\": {big}}}").into_bytes(), "max_tokens beyond u64"),
        (CHAT, j(json!({"messages": msgs(), "max_tokens": 1e30})), "max_tokens a huge float"),
        (CHAT, j(json!({"messages": msgs(), "max_tokens": u64::MAX})), "max_tokens u64::MAX"),
        (CHAT, j(json!({"messages": msgs(), "n": 1_000_000})), "huge n"),
        (CHAT, j(json!({"messages": msgs(), "n": 1.5})), "fractional n"),
        (CHAT, j(json!({"messages": msgs(), "temperature": 1e300})), "temperature overflows f32"),
        (CHAT, format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"x\"}}], \"seed\": {big}}}").into_bytes(), "seed beyond i64"),
        (CHAT, j(json!({"messages": msgs(), "stop": 5})), "stop a number"),
        (CHAT, j(json!({"messages": msgs(), "logit_bias": []})), "logit_bias an array"),
        (CHAT, j(json!({"messages": msgs(), "logprobs": true, "top_logprobs": 1_000_000})), "huge top_logprobs"),
        (CHAT, j(json!({"messages": [{}]})), "message without role"),
        (CHAT, j(json!({"messages": [{"role": 7, "content": "x"}]})), "role a number"),
        (CHAT, j(json!({"messages": [{"role": "user", "content": "x".repeat(1 << 20)}]})), "1 MiB prompt"),
        (CHAT, j(json!({"messages": (0..20_000).map(|_| json!({"role": "user", "content": ""})).collect::<Vec<_>>()})), "20k messages"),
        (CHAT, j(json!({"messages": msgs(), "tools": "x"})), "tools a string"),
        (CHAT, j(json!({"messages": msgs(), "tool_choice": 3})), "tool_choice a number"),
        (CHAT, j(json!({"messages": msgs(), "chat_template_kwargs": []})), "kwargs an array"),
        (CHAT, j(json!({"messages": msgs(), "chat_template_kwargs": {"messages": []}})), "kwargs overriding messages"),
        (CHAT, j(json!({"model": "", "messages": msgs(), "max_tokens": 0})), "max_tokens 0"),
        (COMPLETIONS, j(json!({"prompt": {}})), "prompt an object"),
        (COMPLETIONS, j(json!({"prompt": []})), "empty prompt list"),
        (COMPLETIONS, j(json!({"prompt": [[]]})), "empty token list"),
        (COMPLETIONS, j(json!({"prompt": [-1]})), "negative token id"),
        (COMPLETIONS, j(json!({"prompt": [4_294_967_296u64]})), "token id beyond u32"),
        (COMPLETIONS, j(json!({"prompt": (0..2000).map(|_| "a").collect::<Vec<_>>()})), "2000 prompts"),
        (COMPLETIONS, j(json!({"prompt": "a", "logprobs": 1_000_000})), "huge logprobs"),
        (COMPLETIONS, j(json!({"prompt": "a", "best_of": "x"})), "best_of a string"),
        (COMPLETIONS, j(json!({"prompt": "a", "stream": "yes"})), "stream a string"),
        (COMPLETIONS, j(json!({"prompt": "a", "stream_options": {"include_usage": true}})), "stream_options without stream"),
        (TOKENIZE, j(json!({})), "neither prompt nor messages"),
        (TOKENIZE, j(json!({"prompt": 5})), "prompt a number"),
        (TOKENIZE, j(json!({"messages": "x"})), "messages a string"),
        (DETOKENIZE, j(json!({})), "no tokens"),
        (DETOKENIZE, j(json!({"tokens": "abc"})), "tokens a string"),
        (DETOKENIZE, j(json!({"tokens": [-5]})), "negative id"),
        (DETOKENIZE, j(json!({"tokens": [99_999_999]})), "id out of vocabulary"),
        (DETOKENIZE, j(json!({"tokens": [1.5]})), "fractional id"),
    ]
}

/// Accepted, with a normal answer.
fn good_values() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            CHAT,
            json!({"messages": msgs(), "max_tokens": 1, "no_such_field": {"deep": [1, 2]}, "user": "u"}),
            "unknown fields",
        ),
        (
            COMPLETIONS,
            json!({"prompt": "a", "max_tokens": 1, "frobnicate": true}),
            "unknown fields",
        ),
        (
            TOKENIZE,
            json!({"prompt": "", "whatever": 1}),
            "empty prompt, unknown field",
        ),
        (DETOKENIZE, json!({"tokens": []}), "no tokens to decode"),
        // as vLLM: the template renders just the generation prompt
        (
            CHAT,
            json!({"messages": [], "max_tokens": 1}),
            "no messages",
        ),
        (
            CHAT,
            json!({"messages": [{"role": "user", "content": "é ✓ \u{0} \u{fffd}"}], "max_tokens": 1}),
            "odd characters",
        ),
    ]
}

fn check_target(addr: SocketAddr, who: &str) {
    for path in [CHAT, COMPLETIONS, TOKENIZE, DETOKENIZE] {
        for (what, body) in bad_for_all() {
            let r = post_raw(addr, path, &body, what);
            let msg = assert_error(&r, 400);
            assert!(
                msg.len() < 2000,
                "{who} {path} {what}: message too long: {msg}"
            );
        }
    }
    for (path, body, what) in bad_values() {
        let r = post_raw(addr, path, &body, what);
        assert!(
            (400..500).contains(&r.status),
            "{who} {path} {what}: got {} {}",
            r.status,
            r.text()
        );
        assert_error(&r, r.status);
    }
    for (path, body, what) in good_values() {
        let r = post_raw(addr, path, body.to_string().as_bytes(), what);
        assert_eq!(r.status, 200, "{who} {path} {what}: {}", r.text());
        r.json();
    }
    // every method on every path: 405 for the wrong method, 404 elsewhere, always JSON
    for path in [
        "/health",
        "/metrics",
        "/v1/models",
        CHAT,
        COMPLETIONS,
        TOKENIZE,
        DETOKENIZE,
    ] {
        for method in ["PUT", "DELETE", "PATCH"] {
            let r = request(addr, method, path, &[], b"").expect("method");
            assert_error(&r, 405);
        }
    }
    for path in [
        "/",
        "/v2/chat",
        "/v1",
        "/%ff%fe",
        "/health/../metrics",
        "/v1/chat/completions/x",
    ] {
        let r = get(addr, path, &[]);
        assert!(
            matches!(r.status, 404 | 405),
            "{who} GET {path}: {} {}",
            r.status,
            r.text()
        );
        assert_error(&r, r.status);
    }
    // query strings nobody asked for are ignored
    assert_eq!(get(addr, "/health?x=%ff%00&y", &[]).status, 200, "{who}");
    assert_eq!(get(addr, "/metrics?name[]=1", &[]).status, 200, "{who}");
}

#[test]
fn bad_requests_get_clear_errors_on_replica_and_router() {
    let dir = scratch("bad-input");
    let mut replica = LoggedProc::demo_replica(&dir, &[], &[]);
    let url = replica.url();
    let mut router = LoggedProc::router(&dir, &[&url], &["--health-interval-ms", "100"], &[]);
    check_target(replica.addr, "replica");
    check_target(router.addr, "router");
    assert!(replica.alive() && router.alive());
    for p in [&replica, &router] {
        let log = p.stderr();
        assert!(!log.contains("panicked"), "{}: {log}", p.url());
    }
}
