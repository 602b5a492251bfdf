//! `glmfleet bench sweep`: the guide's grid of random-dataset runs — prompt-heavy 8000/1000,
//! decode-heavy 1000/8000 and balanced 1000/1000 at concurrencies 1…512 — against one or more
//! endpoints, written as a CSV and a JSON table plus PNG charts of output tok/s, TPOT and TTFT
//! against concurrency.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::client::Backend;
use crate::plot::{line_chart, Series};
use crate::result::{stat_fields, BenchResult, MetricName};
use crate::serve::{
    error_summary, execute_and_report, load_tokenizer, parse_flags, plan, probe_server, target,
    DatasetName, ServeArgs,
};
use crate::BenchError;

/// A shape of traffic in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 8000 prompt tokens, 1000 output tokens.
    PromptHeavy,
    /// 1000 prompt tokens, 8000 output tokens.
    DecodeHeavy,
    /// 1000 prompt tokens, 1000 output tokens.
    Balanced,
}

impl Workload {
    /// Name in tables and legends.
    pub fn name(self) -> &'static str {
        match self {
            Workload::PromptHeavy => "prompt-heavy",
            Workload::DecodeHeavy => "decode-heavy",
            Workload::Balanced => "balanced",
        }
    }

    /// `(input tokens, output tokens)`.
    pub fn lengths(self) -> (usize, usize) {
        match self {
            Workload::PromptHeavy => (8000, 1000),
            Workload::DecodeHeavy => (1000, 8000),
            Workload::Balanced => (1000, 1000),
        }
    }
}

/// Flags of `glmfleet bench sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// Endpoint to measure, `URL` or `NAME=URL`; repeat to compare several.
    #[arg(long = "base-url", default_value = "http://127.0.0.1:8000")]
    pub base_urls: Vec<String>,
    #[arg(long, value_enum, default_value = "openai")]
    pub backend: Backend,
    /// API path; defaults to the backend's.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Model name; defaults to each server's first model.
    #[arg(long)]
    pub model: Option<String>,
    /// A tokenizer.json, or a folder holding one.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Workloads to run (comma separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "prompt-heavy,decode-heavy,balanced"
    )]
    pub workloads: Vec<Workload>,
    /// Client concurrencies (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,32,64,128,256,512")]
    pub concurrency: Vec<usize>,
    /// Prompts per point; default max(concurrency × --prompts-per-concurrency, 16), at most --max-num-prompts.
    #[arg(long)]
    pub num_prompts: Option<usize>,
    #[arg(long, default_value_t = 4)]
    pub prompts_per_concurrency: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_num_prompts: usize,
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Requests per second per point (`inf`: all at once, limited by the concurrency).
    #[arg(long, default_value = "inf")]
    pub request_rate: f64,
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Percentiles reported in the tables (comma separated).
    #[arg(long, default_value = "99")]
    pub metric_percentiles: String,
    /// Folder for sweep.csv, sweep.json and the PNG charts.
    #[arg(long, default_value = "bench-sweep")]
    pub result_dir: PathBuf,
    /// Extra request headers, KEY=VALUE.
    #[arg(long, num_args = 1..)]
    pub header: Vec<String>,
    /// JSON object merged into every request body.
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Bearer token (default: $OPENAI_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    #[arg(long)]
    pub disable_tqdm: bool,
    /// Wait up to this long for each endpoint's first request to succeed (0: no check).
    #[arg(long, default_value_t = 0)]
    pub ready_check_timeout_sec: u64,
    #[arg(long, default_value_t = 151_329)]
    pub synthetic_vocab_size: usize,
    #[arg(long, default_value_t = 21_600)]
    pub request_timeout_s: u64,
}

impl Default for SweepArgs {
    /// The flag defaults, as the command line gives them.
    fn default() -> Self {
        parse_flags(&["sweep"]).expect("SweepArgs defaults parse")
    }
}

/// One endpoint of the comparison.
#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    name: String,
    url: String,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, BenchError> {
    let (name, url) = match s.split_once('=') {
        Some((n, u)) if !n.contains("://") => (n.trim().to_string(), u.trim().to_string()),
        _ => {
            let url = s.trim().to_string();
            let name = url
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_string();
            (name, url)
        }
    };
    if name.is_empty() || url.is_empty() {
        return Err(BenchError::InvalidArgs(format!(
            "--base-url {s:?}: use URL or NAME=URL"
        )));
    }
    Ok(Endpoint { name, url })
}

/// One measured point.
#[derive(Debug, Clone)]
struct Point {
    endpoint: Endpoint,
    workload: Workload,
    concurrency: usize,
    num_prompts: usize,
    result: BenchResult,
}

impl SweepArgs {
    fn prompts_for(&self, concurrency: usize) -> usize {
        self.num_prompts.unwrap_or_else(|| {
            (concurrency.saturating_mul(self.prompts_per_concurrency))
                .max(16)
                .min(self.max_num_prompts.max(1))
        })
    }

    fn serve_args(&self, ep: &Endpoint, w: Workload, concurrency: usize, first: bool) -> ServeArgs {
        let (input_len, output_len) = w.lengths();
        ServeArgs {
            backend: self.backend,
            label: Some(ep.name.clone()),
            base_url: Some(ep.url.clone()),
            endpoint: self.endpoint.clone(),
            header: self.header.clone(),
            max_concurrency: Some(concurrency),
            model: self.model.clone(),
            dataset_name: DatasetName::Random,
            num_prompts: self.prompts_for(concurrency),
            seed: self.seed,
            random_input_len: input_len,
            random_output_len: output_len,
            random_range_ratio: self.random_range_ratio,
            request_rate: self.request_rate,
            burstiness: self.burstiness,
            disable_tqdm: self.disable_tqdm,
            ignore_eos: true,
            percentile_metrics: Some("ttft,tpot,itl,e2el".into()),
            metric_percentiles: self.metric_percentiles.clone(),
            extra_body: self.extra_body.clone(),
            api_key: self.api_key.clone(),
            ready_check_timeout_sec: if first {
                self.ready_check_timeout_sec
            } else {
                0
            },
            synthetic_vocab_size: self.synthetic_vocab_size,
            request_timeout_s: self.request_timeout_s,
            ..ServeArgs::default()
        }
    }
}

/// `glmfleet bench sweep`: runs every (endpoint, workload, concurrency) point, prints each
/// point's report, and writes `sweep.csv`, `sweep.json`, `output_throughput.png`,
/// `tpot.png` and `ttft.png` into `--result-dir`. Fails when an endpoint is unreachable or
/// when every point failed.
pub async fn run_sweep(args: SweepArgs) -> Result<(), BenchError> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return Err(BenchError::InvalidArgs(
            "--concurrency needs values of at least 1".into(),
        ));
    }
    if args.workloads.is_empty() {
        return Err(BenchError::InvalidArgs("--workloads is empty".into()));
    }
    let endpoints = args
        .base_urls
        .iter()
        .map(|s| parse_endpoint(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != endpoints.len() {
        return Err(BenchError::InvalidArgs(
            "--base-url names must be distinct".into(),
        ));
    }
    let tokenizer = load_tokenizer(&ServeArgs {
        tokenizer: args.tokenizer.clone(),
        model: args.model.clone(),
        ..ServeArgs::default()
    })?;
    std::fs::create_dir_all(&args.result_dir).map_err(|e| BenchError::io(&args.result_dir, e))?;

    // Check every endpoint before spending time on any.
    let mut targets = Vec::new();
    for ep in &endpoints {
        let probe_args = args.serve_args(ep, args.workloads[0], args.concurrency[0], true);
        let t = target(&probe_args)?;
        let model = probe_server(&t).await?;
        if args.model.is_none() && model.is_none() {
            return Err(BenchError::Server(format!(
                "no model listed at {}/v1/models; pass --model",
                ep.url
            )));
        }
        targets.push((ep.clone(), t, model));
    }

    let mut points = Vec::new();
    for (ep, t, model) in &targets {
        let mut first = true;
        for &w in &args.workloads {
            for &c in &args.concurrency {
                let serve_args = args.serve_args(ep, w, c, first);
                first = false;
                let (i, o) = w.lengths();
                println!(
                    "\n#### sweep point: {} | {} ({i}/{o}) | concurrency {c} | {} prompts",
                    ep.name,
                    w.name(),
                    serve_args.num_prompts
                );
                let run_plan = Arc::new(plan(&serve_args, t, model.clone(), tokenizer.clone())?);
                let result = execute_and_report(&t.client, run_plan).await?;
                if result.metrics.completed == 0 {
                    eprintln!(
                        "WARNING: every request of this point failed: {}",
                        error_summary(&result.error_counts)
                    );
                }
                points.push(Point {
                    endpoint: ep.clone(),
                    workload: w,
                    concurrency: c,
                    num_prompts: serve_args.num_prompts,
                    result,
                });
            }
        }
    }
    write_outputs(&args.result_dir, &points)?;
    println!("\nSweep results written to {}", args.result_dir.display());
    if points.iter().all(|p| p.result.metrics.completed == 0) {
        let counts: Vec<(String, usize)> = points
            .iter()
            .flat_map(|p| p.result.error_counts.clone())
            .collect();
        return Err(BenchError::SweepFailed(error_summary(&counts)));
    }
    Ok(())
}

/// The table columns (before the per-percentile ones).
const BASE_COLUMNS: &[&str] = &[
    "endpoint",
    "url",
    "workload",
    "input_len",
    "output_len",
    "concurrency",
    "num_prompts",
    "completed",
    "failed",
    "duration_s",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
];

fn point_row(p: &Point) -> Vec<(String, Value)> {
    let m = &p.result.metrics;
    let (i, o) = p.workload.lengths();
    let mut row: Vec<(String, Value)> = vec![
        ("endpoint".into(), json!(p.endpoint.name)),
        ("url".into(), json!(p.endpoint.url)),
        ("workload".into(), json!(p.workload.name())),
        ("input_len".into(), json!(i)),
        ("output_len".into(), json!(o)),
        ("concurrency".into(), json!(p.concurrency)),
        ("num_prompts".into(), json!(p.num_prompts)),
        ("completed".into(), json!(m.completed)),
        ("failed".into(), json!(m.failed)),
        ("duration_s".into(), json!(p.result.duration)),
        ("request_throughput".into(), json!(m.request_throughput)),
        ("output_throughput".into(), json!(m.output_throughput)),
        (
            "total_token_throughput".into(),
            json!(m.total_token_throughput),
        ),
        (
            "max_output_tokens_per_s".into(),
            json!(m.max_output_tokens_per_s),
        ),
        (
            "max_concurrent_requests".into(),
            json!(m.max_concurrent_requests),
        ),
    ];
    debug_assert_eq!(row.len(), BASE_COLUMNS.len());
    for name in [
        MetricName::Ttft,
        MetricName::Tpot,
        MetricName::Itl,
        MetricName::E2el,
    ] {
        row.extend(stat_fields(name.key(), name.stats(m)));
    }
    row.push((
        "errors".into(),
        json!(error_summary(&p.result.error_counts)),
    ));
    row
}

fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn write_outputs(dir: &Path, points: &[Point]) -> Result<(), BenchError> {
    let rows: Vec<Vec<(String, Value)>> = points.iter().map(point_row).collect();
    let mut csv = String::new();
    if let Some(first) = rows.first() {
        let header: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
        let _ = writeln!(csv, "{}", header.join(","));
    }
    for row in &rows {
        let fields: Vec<String> = row.iter().map(|(_, v)| csv_field(v)).collect();
        let _ = writeln!(csv, "{}", fields.join(","));
    }
    let csv_path = dir.join("sweep.csv");
    std::fs::write(&csv_path, csv).map_err(|e| BenchError::io(&csv_path, e))?;

    let json_points: Vec<Value> = rows
        .iter()
        .map(|row| Value::Object(row.iter().cloned().collect::<Map<String, Value>>()))
        .collect();
    let doc = json!({
        "backend": points.first().map(|p| p.result.backend.name()),
        "model_id": points.first().map(|p| p.result.model_id.clone()),
        "date": points.first().map(|p| p.result.date.clone()),
        "points": json_points,
    });
    let json_path = dir.join("sweep.json");
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    std::fs::write(&json_path, text).map_err(|e| BenchError::io(&json_path, e))?;

    let series = |value: &dyn Fn(&Point) -> f64| -> Vec<Series> {
        let mut out: Vec<Series> = Vec::new();
        for p in points.iter().filter(|p| p.result.metrics.completed > 0) {
            let name = format!("{} ({})", p.endpoint.name, p.workload.name());
            let point = (p.concurrency as f64, value(p));
            match out.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push(point),
                None => out.push(Series {
                    name,
                    points: vec![point],
                }),
            }
        }
        out
    };
    line_chart(
        &dir.join("output_throughput.png"),
        "Output token throughput vs concurrency",
        "output tokens/s",
        &series(&|p| p.result.metrics.output_throughput),
    )?;
    line_chart(
        &dir.join("tpot.png"),
        "Mean TPOT vs concurrency",
        "TPOT (ms)",
        &series(&|p| p.result.metrics.tpot.mean),
    )?;
    line_chart(
        &dir.join("ttft.png"),
        "Mean TTFT vs concurrency",
        "TTFT (ms)",
        &series(&|p| p.result.metrics.ttft.mean),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> SweepArgs {
        parse_flags(&[&["sweep"], extra].concat()).unwrap()
    }

    #[test]
    fn defaults_are_the_guides_grid() {
        let a = parse(&[]);
        assert_eq!(
            a.workloads,
            vec![
                Workload::PromptHeavy,
                Workload::DecodeHeavy,
                Workload::Balanced
            ]
        );
        assert_eq!(a.concurrency, vec![1, 16, 32, 64, 128, 256, 512]);
        assert_eq!(a.base_urls, vec!["http://127.0.0.1:8000"]);
        assert_eq!(a.prompts_for(1), 16);
        assert_eq!(a.prompts_for(64), 256);
        assert_eq!(a.prompts_for(512), 2048);
        assert_eq!(a.prompts_for(100_000), 2048);
        let b = parse(&[
            "--workloads",
            "balanced",
            "--concurrency",
            "1,16",
            "--num-prompts",
            "5",
        ]);
        assert_eq!(b.workloads, vec![Workload::Balanced]);
        assert_eq!(b.concurrency, vec![1, 16]);
        assert_eq!(b.prompts_for(16), 5);
        let s = b.serve_args(
            &parse_endpoint("x=http://h:1").unwrap(),
            Workload::Balanced,
            16,
            false,
        );
        assert_eq!(
            (s.random_input_len, s.random_output_len, s.max_concurrency),
            (1000, 1000, Some(16))
        );
        assert_eq!(s.label.as_deref(), Some("x"));
    }

    #[test]
    fn endpoints_parse_with_and_without_names() {
        assert_eq!(
            parse_endpoint("router=http://127.0.0.1:9000").unwrap(),
            Endpoint {
                name: "router".into(),
                url: "http://127.0.0.1:9000".into()
            }
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:8000/").unwrap().name,
            "127.0.0.1:8000"
        );
        assert_eq!(
            parse_endpoint("http://h:1/?a=b").unwrap().url,
            "http://h:1/?a=b"
        );
        assert!(parse_endpoint("=http://x").is_err());
    }

    #[test]
    fn csv_quotes_when_needed() {
        assert_eq!(csv_field(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_field(&json!("say \"x\"")), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field(&json!(1.5)), "1.5");
    }
}
