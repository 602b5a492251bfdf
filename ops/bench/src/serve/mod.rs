//! `glmfleet bench serve`: vLLM's `vllm bench serve` flags, run plan and driver. The flags keep
//! vLLM's names and defaults so that a command line moves between the two tools unchanged; the
//! few additions (`--api-key`, `--synthetic-vocab-size`, `--request-timeout-s`) are marked.

mod plan;
mod run;

use std::path::PathBuf;
use std::sync::Arc;

use crate::client::Backend;
use crate::result::BenchResult;
use crate::BenchError;

pub(crate) use plan::{load_tokenizer, plan, probe_server, target};
pub(crate) use run::execute_and_report;

/// The dataset to draw prompts from (`--dataset-name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetName {
    /// Synthetic prompts of exact token length.
    Random,
    /// Shared random prefixes with random suffixes (prefix-cache workloads).
    #[value(alias = "prefix_repetition")]
    PrefixRepetition,
    /// Conversations from a local ShareGPT JSON file (`--dataset-path`).
    Sharegpt,
}

/// Flags of `glmfleet bench serve` (vLLM's `vllm bench serve` flags and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// API flavour: `openai` (/v1/completions) or `openai-chat` (/v1/chat/completions).
    #[arg(long, value_enum, default_value = "openai")]
    pub backend: Backend,
    /// Label (prefix) of the result file name; defaults to the backend.
    #[arg(long)]
    pub label: Option<String>,
    /// Server base URL (http://host:port); overrides --host/--port.
    #[arg(long)]
    pub base_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// API path; defaults to the backend's (/v1/completions or /v1/chat/completions).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Extra request headers, KEY=VALUE.
    #[arg(long, num_args = 1..)]
    pub header: Vec<String>,
    /// Client-side limit on requests in flight.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Model name; defaults to the first entry of GET /v1/models.
    #[arg(long)]
    pub model: Option<String>,
    /// Model name sent in requests, when it differs from --model.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// A tokenizer.json, or a folder holding one (defaults to --model when that is a local folder).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Shorthand for --random-input-len.
    #[arg(long)]
    pub input_len: Option<usize>,
    /// Shorthand for the dataset's output length flag.
    #[arg(long)]
    pub output_len: Option<usize>,
    #[arg(long, value_enum, default_value = "random")]
    pub dataset_name: DatasetName,
    /// ShareGPT JSON file.
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    /// Lengths are drawn from [L(1-r), L(1+r)]; r in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Shared random prefix tokens before each random prompt.
    #[arg(long, default_value_t = 0)]
    pub random_prefix_len: usize,
    #[arg(long, default_value_t = 256)]
    pub prefix_repetition_prefix_len: usize,
    #[arg(long, default_value_t = 256)]
    pub prefix_repetition_suffix_len: usize,
    #[arg(long, default_value_t = 10)]
    pub prefix_repetition_num_prefixes: usize,
    #[arg(long, default_value_t = 128)]
    pub prefix_repetition_output_len: usize,
    /// Replaces the ShareGPT completion lengths.
    #[arg(long)]
    pub sharegpt_output_len: Option<usize>,
    /// Keep the dataset's order.
    #[arg(long)]
    pub disable_shuffle: bool,
    /// Do not repeat samples when the dataset has fewer than --num-prompts.
    #[arg(long)]
    pub no_oversample: bool,
    /// Requests per second: `inf` sends all at once, otherwise Poisson/gamma arrivals.
    #[arg(long, default_value = "inf")]
    pub request_rate: f64,
    /// Gamma shape of the arrival gaps (1 = Poisson; < 1 burstier).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    #[arg(long, default_value_t = 0)]
    pub num_warmups: usize,
    /// No progress bar.
    #[arg(long)]
    pub disable_tqdm: bool,
    /// Send `ignore_eos: true` (always on for the random dataset, as in vLLM).
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long)]
    pub logprobs: Option<u32>,
    /// Metrics with statistics printed: ttft,tpot,itl,e2el,client_queue_time,e2el_including_client_queue.
    #[arg(long)]
    pub percentile_metrics: Option<String>,
    /// Percentiles to report, comma separated.
    #[arg(long, default_value = "99")]
    pub metric_percentiles: String,
    /// Goodput objectives KEY:MS with KEY in ttft, tpot, e2el.
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Write the result JSON.
    #[arg(long)]
    pub save_result: bool,
    /// Include per-request arrays in the saved result JSON (with --save-result).
    #[arg(long)]
    pub save_detailed: bool,
    #[arg(long)]
    pub result_dir: Option<PathBuf>,
    #[arg(long)]
    pub result_filename: Option<String>,
    /// x-request-id prefix (default bench-<random>-).
    #[arg(long)]
    pub request_id_prefix: Option<String>,
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub top_k: Option<i64>,
    #[arg(long)]
    pub min_p: Option<f64>,
    #[arg(long)]
    pub frequency_penalty: Option<f64>,
    #[arg(long)]
    pub presence_penalty: Option<f64>,
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    /// JSON object merged into every request body.
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Bearer token (default: $OPENAI_API_KEY). [glmfleet addition]
    #[arg(long)]
    pub api_key: Option<String>,
    /// Wait up to this long for a first successful request before the run (0: no check).
    #[arg(long, default_value_t = 0)]
    pub ready_check_timeout_sec: u64,
    /// Token ids drawn for prompts without --tokenizer: 0..N (GLM-4.x regular tokens). [glmfleet addition]
    #[arg(long, default_value_t = 151_329)]
    pub synthetic_vocab_size: usize,
    /// Per-request time limit in seconds. [glmfleet addition]
    #[arg(long, default_value_t = 21_600)]
    pub request_timeout_s: u64,
}

/// Parses a flag struct from a command line whose `argv[0]` is the program name, as a parser
/// that flattens it would; gives `ServeArgs` and `SweepArgs` their `Default`.
pub(crate) fn parse_flags<A: clap::Args>(argv: &[&str]) -> Result<A, clap::Error> {
    let command = A::augment_args(clap::Command::new(env!("CARGO_PKG_NAME")));
    A::from_arg_matches(&command.try_get_matches_from(argv)?)
}

impl Default for ServeArgs {
    /// The flag defaults, as the command line gives them.
    fn default() -> Self {
        parse_flags(&["bench"]).expect("ServeArgs defaults parse")
    }
}

/// One line summing up the errors: `3× HTTP 500 …; 1× connection refused`.
pub(crate) fn error_summary(counts: &[(String, usize)]) -> String {
    let parts: Vec<String> = counts
        .iter()
        .take(5)
        .map(|(e, n)| format!("{n}× {}", e.lines().next().unwrap_or("")))
        .collect();
    let mut s = parts.join("; ");
    if counts.len() > 5 {
        s.push_str(&format!("; and {} more kinds", counts.len() - 5));
    }
    s
}

/// Writes the result JSON where vLLM would (`--result-dir`/`--result-filename`).
fn save_result(args: &ServeArgs, result: &BenchResult) -> Result<PathBuf, BenchError> {
    let name = args
        .result_filename
        .clone()
        .unwrap_or_else(|| result.default_filename());
    let path = match &args.result_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
            dir.join(name)
        }
        None => PathBuf::from(name),
    };
    let text = serde_json::to_string(&result.to_json(args.save_detailed))
        .map_err(|e| BenchError::Server(format!("cannot serialise the result: {e}")))?;
    std::fs::write(&path, text).map_err(|e| BenchError::io(&path, e))?;
    Ok(path)
}

/// `glmfleet bench serve`: runs the benchmark, prints vLLM's report to stdout (progress and
/// diagnostics to stderr), writes the result JSON with `--save-result`. Fails when the server is
/// unreachable or every request failed.
pub async fn run_serve(args: ServeArgs) -> Result<BenchResult, BenchError> {
    let target = target(&args)?;
    let server_model = probe_server(&target).await?;
    if args.model.is_none() {
        println!("Model not specified, fetching first model from server...");
        if let Some((id, root)) = &server_model {
            println!("First model name: {id}, first model id: {root}");
        }
    }
    let tokenizer = load_tokenizer(&args)?;
    let plan = Arc::new(plan(&args, &target, server_model, tokenizer)?);
    let result = execute_and_report(&target.client, plan).await?;
    if result.metrics.completed == 0 {
        return Err(BenchError::AllFailed {
            total: result.records.len(),
            summary: error_summary(&result.error_counts),
        });
    }
    if args.save_result {
        let path = save_result(&args, &result)?;
        eprintln!("Result saved to {}", path.display());
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn parse(extra: &[&str]) -> ServeArgs {
        parse_flags(&[&["bench"], extra].concat()).unwrap()
    }

    #[test]
    fn defaults_are_vllms() {
        let a = ServeArgs::default();
        assert_eq!(a.backend, Backend::Openai);
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 8000));
        assert_eq!(a.num_prompts, 1000);
        assert_eq!((a.random_input_len, a.random_output_len), (1024, 128));
        assert!(a.request_rate.is_infinite());
        assert_eq!(a.burstiness, 1.0);
        assert_eq!(a.metric_percentiles, "99");
        assert_eq!(a.dataset_name, DatasetName::Random);
        assert_eq!(a.prefix_repetition_num_prefixes, 10);
    }

    #[test]
    fn vllm_command_lines_parse() {
        let a = parse(&[
            "--backend",
            "openai-chat",
            "--dataset-name",
            "prefix_repetition",
            "--request-rate",
            "10000",
            "--goodput",
            "ttft:500",
            "tpot:50",
            "--percentile-metrics",
            "ttft,tpot,itl,e2el",
            "--ignore-eos",
        ]);
        assert_eq!(a.backend, Backend::OpenaiChat);
        assert_eq!(a.dataset_name, DatasetName::PrefixRepetition);
        assert_eq!(a.request_rate, 10000.0);
        assert_eq!(a.goodput, vec!["ttft:500", "tpot:50"]);
        assert_eq!(
            parse(&["--request-rate", "inf"]).request_rate,
            f64::INFINITY
        );
        assert_eq!(parse(&["--backend", "vllm"]).backend, Backend::Openai);
        assert_eq!(
            parse(&["--dataset-name", "prefix-repetition"]).dataset_name,
            DatasetName::PrefixRepetition
        );
    }

    #[test]
    fn error_summary_is_one_line() {
        let counts = vec![
            ("HTTP 500 x".to_string(), 3),
            ("conn\nrefused".to_string(), 1),
        ];
        assert_eq!(error_summary(&counts), "3× HTTP 500 x; 1× conn");
    }
}
