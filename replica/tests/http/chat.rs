//! Chat completions: full and streamed, n > 1, stop strings, logprobs, seeds.

use serde_json::{json, Value};

use crate::common::*;

fn hello() -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0})
}

#[tokio::test]
async fn chat_full_response() {
    let r = start(config(), scripted(&["Hello world!"]));
    let v = post(&r.app(), "/v1/chat/completions", hello()).await;
    assert_eq!(v.status, 200);
    let v = v.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], MODEL);
    assert_eq!(content(&v), "Hello world!");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The primary EOS is not a stop reason (vLLM).
    assert_eq!(v["choices"][0]["stop_reason"], Value::Null);
    // 12 bytes + EOS; prompt "[gMASK]<sop><|user|>\nHi<|assistant|>" = 3 specials + 3 bytes + 1.
    assert_eq!(v["usage"]["completion_tokens"], 13);
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 20);
}

#[tokio::test]
async fn chat_stream_one_event_per_token_with_usage() {
    let r = start(config(), scripted(&["Hey"]));
    let mut body = hello();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = post(&r.app(), "/v1/chat/completions", body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let events = reply.events();
    // role chunk + 3 tokens + EOS token + usage chunk
    assert_eq!(events.len(), 6, "{events:#?}");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events[1..5]
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hey");
    assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
    for e in &events[..5] {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["id"], events[0]["id"]);
        assert!(e.get("usage").is_none());
    }
    let last = &events[5];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn chat_stream_without_usage_ends_with_done() {
    let r = start(config(), scripted(&["ok"]));
    let mut body = hello();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": false, "continuous_usage_stats": true});
    let events = post(&r.app(), "/v1/chat/completions", body).await.events();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e["usage"]["prompt_tokens"] == 7));
    assert_eq!(events[3]["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn n_two_choices_share_the_prompt_blocks() {
    let r = start(config(), fake());
    let long = "x".repeat(100);
    let body = json!({
        "messages": [{"role": "user", "content": long}],
        "n": 2, "max_tokens": 8, "seed": 3, "temperature": 1.0, "ignore_eos": true
    });
    let v = post(&r.app(), "/v1/chat/completions", body).await.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(choices[0]["finish_reason"], "length");
    // The second choice reuses the first one's full prompt blocks.
    let stats = r.engine().stats();
    assert!(stats.prefix_hits_tokens >= 96, "{stats:?}");
}

#[tokio::test]
async fn stop_strings_cut_and_report() {
    let r = start(config(), scripted(&["abc STOP def"]));
    let mut body = hello();
    body["stop"] = json!(["STOP", "zzz"]);
    let v = post(&r.app(), "/v1/chat/completions", body.clone())
        .await
        .json();
    assert_eq!(content(&v), "abc ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["stop_reason"], "STOP");
    wait_idle(&r).await;
    // Streaming: the held-back "S", "ST", "STO" never leak.
    body["stream"] = json!(true);
    body["include_stop_str_in_output"] = json!(true);
    let events = post(&r.app(), "/v1/chat/completions", body).await.events();
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "abc STOP");
    assert_eq!(events.last().unwrap()["choices"][0]["stop_reason"], "STOP");
    // The request was finished in the scheduler (blocks freed).
    wait_idle(&r).await;
    assert_eq!(r.engine().load().running, 0);
}

#[tokio::test]
async fn chat_logprobs() {
    let r = start(config(), scripted(&["ab"]));
    let mut body = hello();
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let v = post(&r.app(), "/v1/chat/completions", body).await.json();
    let lp = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lp.len(), 3); // a, b, EOS
    assert_eq!(lp[0]["token"], "a");
    assert_eq!(lp[0]["bytes"], json!([97]));
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(lp[0]["top_logprobs"][0]["token"], "a");
    let p = lp[0]["logprob"].as_f64().unwrap();
    assert!(
        p <= 0.0 && p > -1e-3,
        "scripted tokens are near-certain: {p}"
    );
}

async fn sampled(app: &replica::App, seed: i64) -> String {
    let body = json!({
        "messages": [{"role": "user", "content": "seeded"}],
        "seed": seed, "temperature": 1.0, "max_tokens": 32, "ignore_eos": true
    });
    let v = post(app, "/v1/chat/completions", body).await.json();
    content(&v).to_owned()
}

#[tokio::test]
async fn seed_reproducible_regardless_of_batch() {
    let r = start(config(), fake());
    let app = r.app();
    let alone = sampled(&app, 42).await;
    assert_eq!(alone, sampled(&app, 42).await);
    assert_ne!(alone, sampled(&app, 43).await);
    // Same seed while other requests share the batch.
    let noise = |i: i64| {
        let app = app.clone();
        tokio::spawn(async move { sampled(&app, 1000 + i).await })
    };
    let others: Vec<_> = (0..3).map(noise).collect();
    let batched = sampled(&app, 42).await;
    for o in others {
        o.await.unwrap();
    }
    assert_eq!(alone, batched);
}
