//! `glmfleet bench serve` end to end: against a `glmfleet up` fleet it prints vLLM's report and
//! saves a result JSON whose numbers agree with the run; against a dead port it fails with one
//! clear line and a non-zero exit.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e::{dead_port, glmfleet_bin, repo_root, Proc};
use serde_json::Value;

const PROMPTS: u64 = 32;
const INPUT_LEN: u64 = 64;
const OUTPUT_LEN: u64 = 16;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("glmfleet-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench(base_url: &str, extra: &[&str]) -> std::process::Output {
    let tokenizer = repo_root().join("model/demo");
    let (input, output, prompts) = (
        INPUT_LEN.to_string(),
        OUTPUT_LEN.to_string(),
        PROMPTS.to_string(),
    );
    let mut args = vec![
        "bench",
        "serve",
        "--base-url",
        base_url,
        "--model",
        "demo",
        "--tokenizer",
        tokenizer.to_str().expect("utf-8 path"),
        "--dataset-name",
        "random",
        "--random-input-len",
        &input,
        "--random-output-len",
        &output,
        "--num-prompts",
        &prompts,
    ];
    args.extend_from_slice(extra);
    Command::new(glmfleet_bin())
        .args(&args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run glmfleet bench serve")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("result field {key} is not a number: {}", v[key]))
}

#[test]
fn bench_serve_against_up() {
    let up = Proc::start(
        &["up", "--port", "0", "--replicas", "2"],
        "router",
        Duration::from_secs(120),
    );
    let dir = TempDir::new("bench");
    let out = bench(
        &up.url(),
        &[
            "--max-concurrency",
            "8",
            "--percentile-metrics",
            "ttft,tpot,itl,e2el",
            "--save-result",
            "--result-dir",
            dir.0.to_str().expect("utf-8 path"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "============ Serving Benchmark Result ============",
        "Successful requests:                     32",
        "Failed requests:                         0",
        "Maximum request concurrency:             8",
        "Benchmark duration (s):",
        "Total input tokens:",
        "Total generated tokens:                  512",
        "Request throughput (req/s):",
        "Output token throughput (tok/s):",
        "Total token throughput (tok/s):",
        "Mean TTFT (ms):",
        "P99 TTFT (ms):",
        "Mean TPOT (ms):",
        "Mean ITL (ms):",
        "Mean E2EL (ms):",
    ] {
        assert!(
            stdout.contains(line),
            "report line {line:?} missing:\n{stdout}"
        );
    }

    let files: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .expect("result dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "expected one result file: {files:?}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("read result"))
        .expect("result JSON");
    assert_eq!(v["completed"], PROMPTS);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["num_prompts"], PROMPTS);
    assert_eq!(v["max_concurrency"], 8);
    assert_eq!(v["model_id"], "demo");
    // The random dataset asks for exactly OUTPUT_LEN tokens (EOS ignored).
    assert_eq!(v["total_output_tokens"], PROMPTS * OUTPUT_LEN);
    let input = num(&v, "total_input_tokens");
    let expected_input = (PROMPTS * INPUT_LEN) as f64;
    assert!(
        (input - expected_input).abs() <= 0.1 * expected_input,
        "total_input_tokens {input} vs ~{expected_input}"
    );
    let duration = num(&v, "duration");
    assert!(duration > 0.0 && duration < 60.0, "duration {duration}");
    let rel = |a: f64, b: f64| (a - b).abs() <= 0.01 * b.abs().max(1e-9);
    assert!(
        rel(num(&v, "request_throughput") * duration, PROMPTS as f64),
        "request_throughput x duration != completed"
    );
    assert!(rel(
        num(&v, "output_throughput") * duration,
        (PROMPTS * OUTPUT_LEN) as f64
    ));
    assert!(rel(
        num(&v, "total_token_throughput") * duration,
        input + (PROMPTS * OUTPUT_LEN) as f64
    ));
    for metric in ["ttft", "tpot", "itl", "e2el"] {
        let (mean, median, p99) = (
            num(&v, &format!("mean_{metric}_ms")),
            num(&v, &format!("median_{metric}_ms")),
            num(&v, &format!("p99_{metric}_ms")),
        );
        assert!(
            mean > 0.0 && median > 0.0,
            "{metric}: mean {mean}, median {median}"
        );
        assert!(p99 >= median, "{metric}: p99 {p99} < median {median}");
        assert!(
            mean < duration * 1000.0,
            "{metric}: mean {mean} ms exceeds the run ({duration} s)"
        );
    }
    assert!(
        num(&v, "mean_ttft_ms") <= num(&v, "mean_e2el_ms"),
        "TTFT after the end of the request?"
    );
    eprintln!(
        "bench: {} requests in {duration:.2} s, {:.1} req/s, mean TTFT {:.1} ms, mean TPOT {:.2} ms",
        v["completed"],
        num(&v, "request_throughput"),
        num(&v, "mean_ttft_ms"),
        num(&v, "mean_tpot_ms")
    );
}

#[test]
fn bench_serve_against_a_dead_port_fails_clearly() {
    let url = format!("http://127.0.0.1:{}", dead_port());
    let out = bench(&url, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bench against a dead port succeeded");
    assert_eq!(out.status.code(), Some(1), "exit status {}", out.status);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(&url),
        "the message does not name the URL: {}",
        lines[0]
    );
    assert!(
        lines[0].contains("unreachable") || lines[0].contains("refused"),
        "the message does not say what failed: {}",
        lines[0]
    );
    assert!(
        out.stdout.is_empty(),
        "report printed for a failed run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
