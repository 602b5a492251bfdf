//! `bench serve` and `bench sweep` against the scripted stub server: exact counts, request bodies
//! as vLLM sends them, timings within the script's bounds, failures and unreachable servers.

mod common;

use std::time::Duration;

use bench::{
    run_serve, run_sweep, Backend, BenchError, DatasetName, ServeArgs, SweepArgs, Workload,
};
use common::{dead_url, start, Script};

fn args(url: &str) -> ServeArgs {
    ServeArgs {
        base_url: Some(url.to_string()),
        num_prompts: 8,
        random_input_len: 32,
        random_output_len: 5,
        max_concurrency: Some(4),
        request_id_prefix: Some("t-".into()),
        disable_tqdm: true,
        ..ServeArgs::default()
    }
}

/// The default script with 1 ms to the first token and between tokens.
fn quick() -> Script {
    Script {
        ttft: Duration::from_millis(1),
        itl: Duration::from_millis(1),
        ..Script::default()
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bench-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_counts_bodies_and_timings() {
    let stub = start(Script::default()).await;
    let dir = temp_dir("completions");
    let a = ServeArgs {
        save_result: true,
        result_dir: Some(dir.clone()),
        result_filename: Some("r.json".into()),
        percentile_metrics: Some("ttft,tpot,itl,e2el".into()),
        api_key: Some("sk-test".into()),
        ..args(&stub.url)
    };
    let r = run_serve(a).await.unwrap();
    let m = &r.metrics;
    // Counts are exact: 8 requests × 32 prompt ids (usage echoes the id count) × 5 tokens.
    assert_eq!((m.completed, m.failed), (8, 0));
    assert_eq!((m.total_input, m.total_output), (256, 40));
    assert_eq!(
        r.model_id, "stub-root",
        "model taken from GET /v1/models (root)"
    );
    // Every request: 5 token events → 4 ITL samples.
    assert!(r
        .records
        .iter()
        .all(|x| x.itl.len() == 4 && x.usage_output_tokens == Some(5)));
    // Timings within the script's bounds (40 ms to the first token, 10 ms gaps), with slack
    // for a busy machine on the upper side.
    assert!(
        m.ttft.mean >= 39.0 && m.ttft.mean < 1000.0,
        "ttft {}",
        m.ttft.mean
    );
    assert!(
        m.tpot.mean >= 7.0 && m.tpot.mean < 500.0,
        "tpot {}",
        m.tpot.mean
    );
    assert!(m.e2el.mean >= 75.0, "e2el {}", m.e2el.mean);
    assert!(m.max_concurrent_requests >= 1 && m.max_concurrent_requests <= 4);
    // Two waves of ≥ 80 ms each under the concurrency limit of 4.
    assert!(r.duration >= 0.16, "duration {}", r.duration);
    // TPOT is (latency − TTFT) / (tokens − 1) per request, averaged.
    let tpots: Vec<f64> = r
        .records
        .iter()
        .map(|x| (x.latency - x.ttft) / 4.0 * 1000.0)
        .collect();
    let want = tpots.iter().sum::<f64>() / tpots.len() as f64;
    assert!((m.tpot.mean - want).abs() < 1e-9);

    // Bodies as vLLM's openai backend sends them.
    let seen = stub.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 8);
    let mut ids: Vec<String> = seen.iter().map(|s| s.request_id.clone().unwrap()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["t-0", "t-1", "t-2", "t-3", "t-4", "t-5", "t-6", "t-7"]
    );
    for s in &seen {
        assert_eq!(s.path, "/v1/completions");
        assert_eq!(s.authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(s.body["model"], "stub-model");
        assert_eq!(s.body["max_tokens"], 5);
        assert_eq!(s.body["ignore_eos"], true);
        assert_eq!(s.body["stream"], true);
        assert_eq!(s.body["stream_options"]["include_usage"], true);
        assert_eq!(s.body["prompt"].as_array().unwrap().len(), 32);
    }

    // The saved result has vLLM's field names.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("r.json")).unwrap()).unwrap();
    for key in [
        "completed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "mean_ttft_ms",
        "p99_tpot_ms",
        "median_itl_ms",
        "std_e2el_ms",
        "max_concurrent_requests",
    ] {
        assert!(saved.get(key).is_some(), "missing {key}");
    }
    assert_eq!(saved["total_output_tokens"], 40);
    assert_eq!(saved["max_concurrency"], 4);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_without_usage_counts_token_events() {
    let stub = start(Script {
        send_usage: false,
        ..quick()
    })
    .await;
    let a = ServeArgs {
        backend: Backend::OpenaiChat,
        model: Some("glm".into()),
        random_output_len: 7,
        ..args(&stub.url)
    };
    let r = run_serve(a).await.unwrap();
    assert_eq!(r.metrics.completed, 8);
    // No usage: output = token events; input = the dataset's word count.
    assert_eq!(r.metrics.total_output, 8 * 7);
    assert_eq!(r.metrics.total_input, 8 * 32);
    let seen = stub.seen.lock().unwrap().clone();
    for s in &seen {
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(s.body["model"], "glm");
        assert_eq!(s.body["max_completion_tokens"], 7);
        assert!(s.body.get("max_tokens").is_none());
        let text = s.body["messages"][0]["content"][0]["text"]
            .as_str()
            .unwrap();
        assert_eq!(text.split(' ').count(), 32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_prompts_and_output_counting() {
    let stub = start(Script {
        send_usage: false,
        token_text: " the".into(),
        ..quick()
    })
    .await;
    let dir = temp_dir("tok");
    std::fs::write(
        dir.join("tokenizer.json"),
        bench::tokenizer::test_tokenizer_json(),
    )
    .unwrap();
    let a = ServeArgs {
        tokenizer: Some(dir.clone()),
        random_input_len: 21, // 20 + the one special token the test tokenizer adds
        ..args(&stub.url)
    };
    let r = run_serve(a).await.unwrap();
    // Output counted by re-tokenizing " the" × 5 (one token each); input from the dataset.
    assert_eq!(r.metrics.total_output, 40);
    assert_eq!(r.metrics.total_input, 8 * 20);
    let seen = stub.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.body["prompt"].is_string()));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_and_all_failed_is_an_error() {
    let stub = start(Script {
        fail_every: Some(2),
        ..quick()
    })
    .await;
    let r = run_serve(ServeArgs {
        max_concurrency: Some(1),
        ..args(&stub.url)
    })
    .await
    .unwrap();
    assert_eq!((r.metrics.completed, r.metrics.failed), (4, 4));
    assert_eq!(r.metrics.total_output, 20);
    assert_eq!(
        r.error_counts,
        vec![(
            "HTTP 500 Internal Server Error: stub failure".to_string(),
            4
        )]
    );

    let all_fail = start(Script {
        fail_every: Some(1),
        ..Script::default()
    })
    .await;
    let err = run_serve(args(&all_fail.url)).await.unwrap_err();
    assert!(
        matches!(err, BenchError::AllFailed { total: 8, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "all 8 requests failed: 8× HTTP 500 Internal Server Error: stub failure"
    );

    let silent = start(Script {
        no_tokens: true,
        ..Script::default()
    })
    .await;
    let err = run_serve(args(&silent.url)).await.unwrap_err();
    assert!(
        err.to_string().contains("never received a token event"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_clear_error() {
    let url = dead_url().await;
    let err = run_serve(args(&url)).await.unwrap_err();
    assert!(matches!(err, BenchError::Unreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("server unreachable at {url}/v1/models")),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_paces_arrivals() {
    let stub = start(quick()).await;
    // 8 requests at 40 req/s: the last leaves at exactly 8/40 = 0.2 s.
    let r = run_serve(ServeArgs {
        request_rate: 40.0,
        max_concurrency: None,
        ..args(&stub.url)
    })
    .await
    .unwrap();
    let last_start = r.records.iter().map(|x| x.start_time).fold(0.0, f64::max);
    assert!(last_start >= 0.199, "last start {last_start}");
    assert!(r
        .report_text()
        .contains("Request rate configured (RPS):           40.00     \n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_repetition_dataset_runs() {
    let stub = start(quick()).await;
    let r = run_serve(ServeArgs {
        dataset_name: DatasetName::PrefixRepetition,
        prefix_repetition_prefix_len: 10,
        prefix_repetition_suffix_len: 6,
        prefix_repetition_num_prefixes: 2,
        prefix_repetition_output_len: 3,
        ..args(&stub.url)
    })
    .await
    .unwrap();
    assert_eq!(r.metrics.completed, 8);
    assert_eq!(r.metrics.total_input, 8 * 16);
    assert_eq!(r.metrics.total_output, 8 * 3);
    let seen = stub.seen.lock().unwrap().clone();
    // prefix_repetition does not force ignore_eos (vLLM only forces it for random).
    assert!(seen.iter().all(|s| s.body.get("ignore_eos").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_writes_tables_and_charts() {
    let fast = Script {
        ttft: Duration::from_millis(0),
        itl: Duration::from_millis(0),
        ..Script::default()
    };
    let (a, b) = (start(fast.clone()).await, start(fast).await);
    let dir = temp_dir("sweep");
    let args = SweepArgs {
        base_urls: vec![format!("a={}", a.url), format!("b={}", b.url)],
        workloads: vec![Workload::Balanced],
        concurrency: vec![1, 2],
        num_prompts: Some(2),
        result_dir: dir.clone(),
        disable_tqdm: true,
        ..sweep_defaults()
    };
    run_sweep(args).await.unwrap();
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 4);
    assert!(lines[0].starts_with(
        "endpoint,url,workload,input_len,output_len,concurrency,num_prompts,completed"
    ));
    assert!(lines[0].contains("mean_tpot_ms") && lines[0].contains("p99_ttft_ms"));
    assert!(lines[1].starts_with(&format!("a,{},balanced,1000,1000,1,2,2,0,", a.url)));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    let points = json["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    assert!(points.iter().all(|p| p["completed"] == 2));
    // 1000 output tokens per request; the request bodies asked for 1000 with 1000-id prompts.
    assert!(points
        .iter()
        .all(|p| p["output_throughput"].as_f64().unwrap() > 0.0));
    assert!(a
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.body["max_tokens"] == 1000
            && s.body["prompt"].as_array().map(Vec::len) == Some(1000)));
    for png in ["output_throughput.png", "tpot.png", "ttft.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG", "{png}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_stops_on_unreachable_endpoint() {
    let dir = temp_dir("sweep-dead");
    let err = run_sweep(SweepArgs {
        base_urls: vec![dead_url().await],
        result_dir: dir.clone(),
        ..sweep_defaults()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, BenchError::Unreachable { .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn sweep_defaults() -> SweepArgs {
    SweepArgs::default()
}
