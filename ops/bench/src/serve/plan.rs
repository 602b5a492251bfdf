//! Turning `bench serve` flags into a run plan: URLs and client, the model (asked from the
//! server when not given), the tokenizer, and the dataset.

use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use serde_json::{Map, Value};

use super::{DatasetName, ServeArgs};
use crate::client::{Backend, HttpClient};
use crate::dataset::{
    sample_prefix_repetition, sample_random, sample_sharegpt, PrefixRepetitionConfig, PromptSource,
    RandomConfig, SampleRequest, ShareGptConfig,
};
use crate::metrics::Goodput;
use crate::result::{parse_metric_names, parse_percentiles, MetricName};
use crate::tokenizer::BenchTokenizer;
use crate::BenchError;

/// Everything a run needs, resolved from the flags.
pub(crate) struct RunPlan {
    pub backend: Backend,
    pub api_uri: Uri,
    pub model_id: String,
    pub model_name: String,
    pub label: Option<String>,
    pub tokenizer: Option<Arc<BenchTokenizer>>,
    pub requests: Vec<SampleRequest>,
    pub num_prompts: usize,
    pub request_rate: f64,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub ignore_eos: bool,
    pub logprobs: Option<u32>,
    pub extra_body: Map<String, Value>,
    pub seed: u64,
    pub num_warmups: usize,
    pub show_progress: bool,
    pub percentile_metrics: Vec<MetricName>,
    pub percentiles: Vec<f64>,
    pub goodput: Goodput,
    pub ready_check_timeout: Duration,
}

/// The server half of a plan: URLs and the client.
pub(crate) struct Target {
    pub base_url: String,
    pub api_uri: Uri,
    pub client: HttpClient,
}

/// Builds the URLs and the HTTP client from the flags.
pub(crate) fn target(args: &ServeArgs) -> Result<Target, BenchError> {
    let base_url = match &args.base_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = if args.host.contains(':') && !args.host.starts_with('[') {
                format!("[{}]", args.host)
            } else {
                args.host.clone()
            };
            format!("http://{host}:{}", args.port)
        }
    };
    if base_url.starts_with("https://") {
        return Err(BenchError::InvalidArgs(format!(
            "{base_url}: only plain http:// is supported"
        )));
    }
    if !base_url.starts_with("http://") {
        return Err(BenchError::InvalidArgs(format!(
            "{base_url}: the base URL must start with http://"
        )));
    }
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| args.backend.default_endpoint().to_string());
    if !endpoint.starts_with('/') {
        return Err(BenchError::InvalidArgs(format!(
            "--endpoint {endpoint:?} must start with /"
        )));
    }
    let api_url = format!("{base_url}{endpoint}");
    let api_uri: Uri = api_url
        .parse()
        .map_err(|e| BenchError::InvalidArgs(format!("bad URL {api_url}: {e}")))?;
    let mut headers = Vec::new();
    for h in &args.header {
        let (k, v) = h
            .split_once('=')
            .ok_or_else(|| BenchError::InvalidArgs(format!("--header {h:?}: use KEY=VALUE")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("OPENAI_API_KEY").ok());
    let client = HttpClient::new(
        api_key.as_deref(),
        &headers,
        Duration::from_secs(args.request_timeout_s.max(1)),
    )?;
    Ok(Target {
        base_url,
        api_uri,
        client,
    })
}

/// Asks `GET /v1/models`: fails with [`BenchError::Unreachable`] when nothing answers, and
/// returns the first model's `(id, root)` when the server lists one.
pub(crate) async fn probe_server(t: &Target) -> Result<Option<(String, String)>, BenchError> {
    let uri: Uri = format!("{}/v1/models", t.base_url)
        .parse()
        .map_err(|e| BenchError::InvalidArgs(format!("bad base URL {}: {e}", t.base_url)))?;
    let (status, body) = t.client.get_json(&uri).await?;
    if !status.is_success() {
        return Ok(None);
    }
    let first = body
        .get("data")
        .and_then(Value::as_array)
        .and_then(|d| d.first());
    Ok(first.and_then(|m| {
        let id = m.get("id")?.as_str()?.to_string();
        let root = m
            .get("root")
            .and_then(Value::as_str)
            .unwrap_or(&id)
            .to_string();
        Some((id, root))
    }))
}

/// Loads `--tokenizer`, or `--model` when it names a local folder/file with a tokenizer.
pub(crate) fn load_tokenizer(args: &ServeArgs) -> Result<Option<Arc<BenchTokenizer>>, BenchError> {
    if let Some(p) = &args.tokenizer {
        return BenchTokenizer::load(p).map(|t| Some(Arc::new(t)));
    }
    if let Some(m) = &args.model {
        let p = Path::new(m);
        if p.join("tokenizer.json").is_file() || (p.is_file() && m.ends_with(".json")) {
            return BenchTokenizer::load(p).map(|t| Some(Arc::new(t)));
        }
    }
    Ok(None)
}

fn parse_goodput(items: &[String]) -> Result<Goodput, BenchError> {
    let mut g = Goodput::default();
    for item in items {
        let bad = || {
            BenchError::InvalidArgs(format!(
                "--goodput {item:?}: use KEY:MILLISECONDS with KEY in ttft, tpot, e2el"
            ))
        };
        let (k, v) = item.split_once(':').ok_or_else(bad)?;
        let v: f64 = v.trim().parse().map_err(|_| bad())?;
        if v.is_nan() || v < 0.0 {
            return Err(bad());
        }
        match k.trim() {
            "ttft" => g.ttft_ms = Some(v),
            "tpot" => g.tpot_ms = Some(v),
            "e2el" => g.e2el_ms = Some(v),
            _ => return Err(bad()),
        }
    }
    Ok(g)
}

fn extra_body(args: &ServeArgs) -> Result<Map<String, Value>, BenchError> {
    let mut body = Map::new();
    let sampling: [(&str, Option<Value>); 7] = [
        ("top_p", args.top_p.map(Value::from)),
        ("top_k", args.top_k.map(Value::from)),
        ("min_p", args.min_p.map(Value::from)),
        ("temperature", args.temperature.map(Value::from)),
        ("frequency_penalty", args.frequency_penalty.map(Value::from)),
        ("presence_penalty", args.presence_penalty.map(Value::from)),
        (
            "repetition_penalty",
            args.repetition_penalty.map(Value::from),
        ),
    ];
    for (k, v) in sampling {
        if let Some(v) = v {
            body.insert(k.to_string(), v);
        }
    }
    // As vLLM's bench: greedy unless a temperature is given (`--extra-body` may still set one).
    body.entry("temperature").or_insert(Value::from(0.0));
    if let Some(raw) = &args.extra_body {
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(o)) => body.extend(o),
            _ => {
                return Err(BenchError::InvalidArgs(
                    "--extra-body must be a JSON object".into(),
                ))
            }
        }
    }
    Ok(body)
}

/// Resolves flags into a plan: model, tokenizer and dataset. `tokenizer` overrides loading
/// (the sweep loads it once); `model` is the server's first model when `--model` is absent.
pub(crate) fn plan(
    args: &ServeArgs,
    target: &Target,
    server_model: Option<(String, String)>,
    tokenizer: Option<Arc<BenchTokenizer>>,
) -> Result<RunPlan, BenchError> {
    if args.num_prompts == 0 {
        return Err(BenchError::InvalidArgs(
            "--num-prompts must be at least 1".into(),
        ));
    }
    if args.max_concurrency == Some(0) {
        return Err(BenchError::InvalidArgs(
            "--max-concurrency must be greater than 0".into(),
        ));
    }
    if args.request_rate.is_nan() || args.request_rate <= 0.0 {
        return Err(BenchError::InvalidArgs(
            "--request-rate must be positive (or inf)".into(),
        ));
    }
    if args.burstiness.is_nan() || args.burstiness <= 0.0 {
        return Err(BenchError::InvalidArgs(
            "--burstiness must be positive".into(),
        ));
    }
    let (model_name, model_id) = match (&args.model, server_model) {
        (Some(m), _) => (
            args.served_model_name.clone().unwrap_or_else(|| m.clone()),
            m.clone(),
        ),
        (None, Some((id, root))) => (args.served_model_name.clone().unwrap_or(id), root),
        (None, None) => {
            return Err(BenchError::Server(format!(
                "no model listed at {}/v1/models; pass --model",
                target.base_url
            )))
        }
    };
    let percentile_metrics = parse_metric_names(
        args.percentile_metrics
            .as_deref()
            .unwrap_or("ttft,tpot,itl"),
    )
    .map_err(BenchError::InvalidArgs)?;
    let percentiles =
        parse_percentiles(&args.metric_percentiles).map_err(BenchError::InvalidArgs)?;
    let goodput = parse_goodput(&args.goodput)?;
    let extra_body = extra_body(args)?;

    let id_prefix = args
        .request_id_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{:08x}-", rand::random::<u32>()));
    let source = match (&tokenizer, args.backend) {
        (Some(t), _) => PromptSource::Tokenizer(t),
        (None, Backend::Openai) => {
            if args.synthetic_vocab_size == 0 {
                return Err(BenchError::InvalidArgs(
                    "--synthetic-vocab-size must be at least 1".into(),
                ));
            }
            PromptSource::TokenIds {
                vocab_size: args.synthetic_vocab_size,
            }
        }
        (None, Backend::OpenaiChat) => PromptSource::Words,
    };
    let mut ignore_eos = args.ignore_eos;
    let requests = match args.dataset_name {
        DatasetName::Random | DatasetName::PrefixRepetition if args.dataset_path.is_some() => {
            return Err(BenchError::InvalidArgs(
                "--dataset-path is only for --dataset-name sharegpt".into(),
            ))
        }
        DatasetName::Random => {
            // vLLM ignores EOS for the random dataset so outputs reach the requested length.
            ignore_eos = true;
            let cfg = RandomConfig {
                input_len: args.input_len.unwrap_or(args.random_input_len),
                output_len: args.output_len.unwrap_or(args.random_output_len),
                range_ratio: args.random_range_ratio,
                prefix_len: args.random_prefix_len,
            };
            sample_random(&cfg, args.num_prompts, source, args.seed, &id_prefix)?
        }
        DatasetName::PrefixRepetition => {
            let cfg = PrefixRepetitionConfig {
                prefix_len: args.prefix_repetition_prefix_len,
                suffix_len: args.prefix_repetition_suffix_len,
                num_prefixes: args.prefix_repetition_num_prefixes,
                output_len: args.output_len.unwrap_or(args.prefix_repetition_output_len),
            };
            sample_prefix_repetition(&cfg, args.num_prompts, source, args.seed, &id_prefix)?
        }
        DatasetName::Sharegpt => {
            let path = args.dataset_path.as_ref().ok_or_else(|| {
                BenchError::InvalidArgs("--dataset-name sharegpt needs --dataset-path".into())
            })?;
            let tok = tokenizer.as_ref().ok_or_else(|| {
                BenchError::InvalidArgs("--dataset-name sharegpt needs --tokenizer".into())
            })?;
            let cfg = ShareGptConfig {
                output_len: args.output_len.or(args.sharegpt_output_len),
                shuffle: !args.disable_shuffle,
                oversample: !args.no_oversample,
            };
            sample_sharegpt(path, &cfg, args.num_prompts, tok, args.seed, &id_prefix)?
        }
    };
    Ok(RunPlan {
        backend: args.backend,
        api_uri: target.api_uri.clone(),
        model_id,
        model_name,
        label: args.label.clone(),
        tokenizer,
        requests,
        num_prompts: args.num_prompts,
        request_rate: args.request_rate,
        burstiness: args.burstiness,
        max_concurrency: args.max_concurrency,
        ignore_eos,
        logprobs: args.logprobs,
        extra_body,
        seed: args.seed,
        num_warmups: args.num_warmups,
        show_progress: !args.disable_tqdm && std::io::stderr().is_terminal(),
        percentile_metrics,
        percentiles,
        goodput,
        ready_check_timeout: Duration::from_secs(args.ready_check_timeout_sec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::tests::parse;

    #[test]
    fn target_urls() {
        let t = target(&parse(&[])).unwrap();
        assert_eq!(
            t.api_uri.to_string(),
            "http://127.0.0.1:8000/v1/completions"
        );
        let t = target(&parse(&[
            "--backend",
            "openai-chat",
            "--base-url",
            "http://h:9/",
        ]))
        .unwrap();
        assert_eq!(t.api_uri.to_string(), "http://h:9/v1/chat/completions");
        assert_eq!(t.base_url, "http://h:9");
        assert!(target(&parse(&["--base-url", "https://x"])).is_err());
        assert!(target(&parse(&["--header", "novalue"])).is_err());
        assert!(target(&parse(&["--endpoint", "v1"])).is_err());
    }

    #[test]
    fn plan_validates_and_builds_datasets() {
        let a = parse(&[
            "--model",
            "m",
            "--num-prompts",
            "4",
            "--random-input-len",
            "8",
            "--random-output-len",
            "2",
        ]);
        let t = target(&a).unwrap();
        let p = plan(&a, &t, None, None).unwrap();
        assert_eq!(p.requests.len(), 4);
        assert!(p.ignore_eos, "random forces ignore_eos");
        assert_eq!(
            p.percentile_metrics,
            vec![MetricName::Ttft, MetricName::Tpot, MetricName::Itl]
        );
        assert!(matches!(
            p.requests[0].prompt,
            crate::dataset::Prompt::TokenIds(_)
        ));
        // Without --model, the server's first model: name = id, model_id = root.
        let b = parse(&["--num-prompts", "1"]);
        let p = plan(&b, &t, Some(("served".into(), "/models/glm".into())), None).unwrap();
        assert_eq!(
            (p.model_name.as_str(), p.model_id.as_str()),
            ("served", "/models/glm")
        );
        assert!(plan(&b, &t, None, None).is_err());
        for bad in [
            vec!["--model", "m", "--num-prompts", "0"],
            vec!["--model", "m", "--max-concurrency", "0"],
            vec!["--model", "m", "--request-rate", "0"],
            vec!["--model", "m", "--goodput", "ttft"],
            vec!["--model", "m", "--goodput", "foo:1"],
            vec!["--model", "m", "--extra-body", "[1]"],
            vec!["--model", "m", "--percentile-metrics", "ttft,xyz"],
            vec!["--model", "m", "--dataset-path", "x.json"],
            vec![
                "--model",
                "m",
                "--dataset-name",
                "sharegpt",
                "--dataset-path",
                "x.json",
            ],
        ] {
            assert!(plan(&parse(&bad), &t, None, None).is_err(), "{bad:?}");
        }
        let c = parse(&[
            "--model",
            "m",
            "--temperature",
            "0",
            "--extra-body",
            r#"{"top_k":5}"#,
        ]);
        let p = plan(&c, &t, None, None).unwrap();
        assert_eq!(
            Value::Object(p.extra_body.clone()).to_string(),
            r#"{"temperature":0.0,"top_k":5}"#
        );
        // greedy by default, as vLLM's bench; a flag or --extra-body sets another temperature
        for (args, want) in [
            (vec!["--model", "m"], r#"{"temperature":0.0}"#),
            (
                vec!["--model", "m", "--temperature", "0.7"],
                r#"{"temperature":0.7}"#,
            ),
            (
                vec!["--model", "m", "--extra-body", r#"{"temperature":1.0}"#],
                r#"{"temperature":1.0}"#,
            ),
        ] {
            let p = plan(&parse(&args), &t, None, None).unwrap();
            assert_eq!(Value::Object(p.extra_body.clone()).to_string(), want);
        }
    }
}
