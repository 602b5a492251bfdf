//! Completions: every prompt form, echo, logprobs, streaming.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn text_prompt_default_max_tokens_is_16() {
    let r = start(config(), fake());
    let v = post(
        &r.app(),
        "/v1/completions",
        json!({"prompt": "hello", "ignore_eos": true}),
    )
    .await;
    assert_eq!(v.status, 200);
    let v = v.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn all_prompt_forms() {
    let r = start(config(), scripted(&["A", "B", "C"]));
    let app = r.app();
    let cases = [
        (json!("hi"), 1),
        (json!(["hi", "there"]), 2),
        (json!([104, 105]), 1),
        (json!([[104], [105, 106], [107]]), 3),
    ];
    for (prompt, n) in cases {
        let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0});
        let reply = post(&app, "/v1/completions", body).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let v = reply.json();
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), n);
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            assert_eq!(c["text"].as_str().unwrap().len(), 1, "{c}");
            assert_eq!(c["finish_reason"], "stop");
        }
        wait_idle(&r).await;
    }
}

#[tokio::test]
async fn n_with_several_prompts_numbers_choices() {
    let r = start(config(), fake());
    let body = json!({"prompt": ["a", "b"], "n": 2, "max_tokens": 3, "ignore_eos": true});
    let v = post(&r.app(), "/v1/completions", body).await.json();
    let idx: Vec<u64> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(v["usage"]["completion_tokens"], 12);
}

#[tokio::test]
async fn echo_and_logprobs() {
    let r = start(config(), scripted(&["xy"]));
    let v = post(
        &r.app(),
        "/v1/completions",
        json!({"prompt": "ab", "echo": true, "temperature": 0}),
    )
    .await
    .json();
    assert_eq!(v["choices"][0]["text"], "abxy");
    wait_idle(&r).await;
    let v = post(
        &r.app(),
        "/v1/completions",
        json!({"prompt": "ab", "logprobs": 2, "temperature": 0}),
    )
    .await
    .json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["x", "y", "<|endoftext|>"]));
    assert_eq!(lp["text_offset"], json!([0, 1, 2]));
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 3);
    assert!(lp["top_logprobs"][0].as_object().unwrap().contains_key("x"));
}

#[tokio::test]
async fn completions_stream() {
    let r = start(config(), scripted(&["hey"]));
    let body = json!({"prompt": "p", "stream": true, "stream_options": {"include_usage": true}, "echo": true});
    let events = post(&r.app(), "/v1/completions", body).await.events();
    // 3 tokens + EOS + usage.
    assert_eq!(events.len(), 5);
    let text: String = events[..4]
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "phey");
    assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[4]["choices"], json!([]));
    assert_eq!(events[4]["usage"]["total_tokens"], 5);
}
