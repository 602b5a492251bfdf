//! Metrics (with `promtool check metrics` when installed), `/load`, `/health`, `/version`,
//! `/v1/models`, `/tokenize`, `/detokenize`.

use std::io::Write;
use std::process::{Command, Stdio};

use replica::ServeConfig;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn metrics_have_vllm_names_and_pass_promtool() {
    let r = start(config(), scripted(&["metrics!"]));
    let app = r.app();
    post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "m"}]}),
    )
    .await;
    wait_idle(&r).await;
    let reply = get(&app, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    for name in [
        "vllm:num_requests_running{model_name=\"glm-test\"} 0",
        "vllm:num_requests_waiting{model_name=\"glm-test\"} 0",
        "vllm:kv_cache_usage_perc{model_name=\"glm-test\"} 0",
        "vllm:prefix_cache_queries_total{model_name=\"glm-test\"}",
        "vllm:prefix_cache_hits_total{model_name=\"glm-test\"}",
        "vllm:num_preemptions_total{model_name=\"glm-test\"} 0",
        "vllm:prompt_tokens_total{model_name=\"glm-test\"} 6",
        "vllm:generation_tokens_total{model_name=\"glm-test\"} 9",
        "vllm:request_success_total{finished_reason=\"stop\",model_name=\"glm-test\"} 1",
        "vllm:time_to_first_token_seconds_count{model_name=\"glm-test\"} 1",
        "vllm:inter_token_latency_seconds_count{model_name=\"glm-test\"} 8",
        "vllm:time_per_output_token_seconds_count{model_name=\"glm-test\"} 8",
        "vllm:e2e_request_latency_seconds_count{model_name=\"glm-test\"} 1",
        "vllm:request_queue_time_seconds_count{model_name=\"glm-test\"} 1",
        "vllm:request_prefill_time_seconds_count{model_name=\"glm-test\"} 1",
        "vllm:request_decode_time_seconds_count{model_name=\"glm-test\"} 1",
        "vllm:iteration_tokens_total_count{model_name=\"glm-test\"}",
        "vllm:cache_config_info{block_size=\"16\"",
    ] {
        assert!(text.contains(name), "missing {name}\n{text}");
    }
    promtool_check(&text);
}

/// `--speculative-config` on the fake runner (which drafts, wrong at every fourth position):
/// greedy completions are the same text as without speculation, and the `vllm:spec_decode_*`
/// counters add up (every step yields its accepted drafts plus one token).
#[tokio::test]
async fn speculative_decoding_keeps_greedy_text_and_exports_spec_metrics() {
    let body = json!({"prompt": "speculate", "max_tokens": 40, "temperature": 0});
    let plain = start(config(), fake());
    let want = post(&plain.app(), "/v1/completions", body.clone())
        .await
        .json();
    let plain_text = get(&plain.app(), "/metrics").await;
    assert!(!String::from_utf8_lossy(&plain_text.body).contains("spec_decode"));
    let cfg = ServeConfig {
        speculative_config: Some(
            r#"{"method": "mtp", "num_speculative_tokens": 3}"#.parse().unwrap(),
        ),
        ..config()
    };
    let r = start(cfg, fake());
    let app = r.app();
    let got = post(&app, "/v1/completions", body).await.json();
    assert_eq!(got["choices"][0]["text"], want["choices"][0]["text"]);
    assert_eq!(got["usage"], want["usage"]);
    // A sampled request speculates too.
    let sampled = post(
        &app,
        "/v1/completions",
        json!({"prompt": "sample", "max_tokens": 20, "temperature": 1.0, "seed": 3}),
    )
    .await;
    assert_eq!(sampled.status, 200);
    assert_eq!(sampled.json()["usage"]["completion_tokens"], 20);
    wait_idle(&r).await;
    let text = String::from_utf8(get(&app, "/metrics").await.body.to_vec()).unwrap();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("missing {name}\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let drafts = value("vllm:spec_decode_num_drafts_total{");
    let draft_tokens = value("vllm:spec_decode_num_draft_tokens_total{");
    let accepted = value("vllm:spec_decode_num_accepted_tokens_total{");
    let per_pos: f64 = (0..3)
        .map(|p| {
            value(&format!(
                "vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name=\"glm-test\",position=\"{p}\"}}"
            ))
        })
        .sum();
    assert!(
        drafts > 0.0 && accepted > 0.0 && accepted < draft_tokens,
        "{text}"
    );
    assert_eq!(per_pos, accepted);
    // 60 generated tokens over the decode steps of two requests.
    assert_eq!(value("vllm:generation_tokens_total{"), 60.0);
    promtool_check(&text);
}

/// A stop string completed by an accepted draft token ends the choice there: same text, same
/// token count and same stop reason as without speculation.
#[tokio::test]
async fn stop_string_inside_accepted_drafts_matches_plain_decoding() {
    let spec_cfg = || ServeConfig {
        speculative_config: Some(
            r#"{"method": "mtp", "num_speculative_tokens": 3}"#.parse().unwrap(),
        ),
        ..config()
    };
    let plain = start(config(), fake());
    let spec = start(spec_cfg(), fake());
    let body = json!({"prompt": "stop here", "max_tokens": 60, "temperature": 0});
    let full = post(&plain.app(), "/v1/completions", body).await.json();
    let text: Vec<char> = full["choices"][0]["text"]
        .as_str()
        .unwrap()
        .chars()
        .collect();
    // Stop strings taken from the greedy text (first occurrences past the start).
    let mut stops: Vec<String> = Vec::new();
    for (i, c) in text.iter().enumerate().skip(3) {
        let s = c.to_string();
        if c.is_ascii_alphanumeric() && !text[..i].contains(c) && !stops.contains(&s) {
            stops.push(s);
        }
    }
    assert!(stops.len() >= 2, "no usable stop strings in {text:?}");
    for stop in stops.iter().take(4) {
        let body = json!({
            "prompt": "stop here", "max_tokens": 60, "temperature": 0, "stop": [stop]
        });
        let want = post(&plain.app(), "/v1/completions", body.clone())
            .await
            .json();
        let got = post(&spec.app(), "/v1/completions", body).await.json();
        assert_eq!(got["choices"], want["choices"], "stop {stop:?}");
        assert_eq!(got["usage"], want["usage"], "stop {stop:?}");
        assert_eq!(want["choices"][0]["stop_reason"], json!(stop));
    }
}

/// A runner that cannot draft (the scripted one) refuses `--speculative-config` at startup.
#[tokio::test]
async fn speculative_config_needs_a_drafting_runner() {
    let cfg = ServeConfig {
        speculative_config: Some(r#"{"method": "mtp"}"#.parse().unwrap()),
        ..config()
    };
    let err = replica::Replica::start(&cfg, parts(scripted(&["x"])))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--speculative-config") && err.contains("MTP"),
        "{err}"
    );
}

/// Runs `promtool check metrics`; the only lint findings allowed are the two that vLLM's
/// naming implies (`:` in names, the `_total` histogram).
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) => {
            eprintln!("NOTICE: promtool not installed; skipping `promtool check metrics`");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 0: clean; 3: lint findings only; anything else: the exposition did not parse.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool failed to parse:\n{report}"
    );
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let allowed = line.ends_with("metric names should not contain ':'")
            || line == "vllm:iteration_tokens_total non-counter metrics should not have \"_total\" suffix";
        assert!(allowed, "unexpected promtool finding: {line}");
    }
}

#[tokio::test]
async fn load_health_version_models() {
    let r = start(config(), fake());
    let app = r.app();
    let load = get(&app, "/load").await.json();
    assert_eq!(
        load,
        json!({"running": 0, "waiting": 0, "kv_usage": 0.0, "free_blocks": 256, "num_blocks": 256})
    );
    assert_eq!(get(&app, "/health").await.status, 200);
    assert_eq!(
        get(&app, "/version").await.json()["version"],
        env!("CARGO_PKG_VERSION")
    );
    let models = get(&app, "/v1/models").await.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], 512);
    assert_eq!(models["data"][0]["root"], "/models/glm-test");
}

#[tokio::test]
async fn served_model_names_are_all_accepted() {
    let cfg = replica::ServeConfig {
        served_model_name: vec!["glm".into(), "glm-4.5".into()],
        ..config()
    };
    let r = start(cfg, fake());
    let app = r.app();
    let v = post(
        &app,
        "/v1/completions",
        json!({"model": "glm-4.5", "prompt": "a", "max_tokens": 1}),
    )
    .await
    .json();
    assert_eq!(v["model"], "glm-4.5");
    assert_eq!(
        post(
            &app,
            "/v1/completions",
            json!({"model": MODEL, "prompt": "a"})
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn tokenize_detokenize() {
    let r = start(config(), fake());
    let app = r.app();
    let v = post(
        &app,
        "/tokenize",
        json!({"prompt": "<think>hi", "return_token_strs": true}),
    )
    .await
    .json();
    assert_eq!(v["tokens"], json!([277, 104, 105]));
    assert_eq!(v["count"], 3);
    assert_eq!(v["max_model_len"], 512);
    assert_eq!(v["token_strs"], json!(["<think>", "h", "i"]));
    let v = post(&app, "/detokenize", json!({"tokens": [277, 104, 105]}))
        .await
        .json();
    assert_eq!(v["prompt"], "<think>hi");
    assert_eq!(
        post(&app, "/detokenize", json!({"tokens": [100000]}))
            .await
            .status,
        400
    );
    assert_eq!(post(&app, "/tokenize", json!({})).await.status, 400);
    // continue_final_message: the prompt ends inside the assistant message, no new turn.
    let msgs = json!([
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "The answer is"}
    ]);
    let body =
        json!({"messages": msgs, "continue_final_message": true, "add_generation_prompt": false});
    let tokens = post(&app, "/tokenize", body).await.json()["tokens"].clone();
    let text = post(&app, "/detokenize", json!({"tokens": tokens}))
        .await
        .json();
    assert!(
        text["prompt"]
            .as_str()
            .unwrap()
            .ends_with("<|assistant|>\n<think></think>\nThe answer is"),
        "{text}"
    );
}
