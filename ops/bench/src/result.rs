//! A finished run: the printed report, line for line as `vllm bench serve` prints it (labels
//! left-aligned to 40 columns, values `{:<10}` / `{:<10.2f}`), and the result JSON with vLLM's
//! field names and order.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::client::Backend;
use crate::metrics::{BenchmarkMetrics, Goodput, RequestRecord, Stats};

/// A metric whose statistics can be printed (`--percentile-metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricName {
    Ttft,
    Tpot,
    Itl,
    E2el,
    ClientQueueTime,
    E2elIncludingClientQueue,
}

impl MetricName {
    /// Parses one `--percentile-metrics` entry.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "ttft" => MetricName::Ttft,
            "tpot" => MetricName::Tpot,
            "itl" => MetricName::Itl,
            "e2el" => MetricName::E2el,
            "client_queue_time" => MetricName::ClientQueueTime,
            "e2el_including_client_queue" => MetricName::E2elIncludingClientQueue,
            _ => return None,
        })
    }

    /// The JSON key stem (`mean_<key>_ms`).
    pub fn key(self) -> &'static str {
        match self {
            MetricName::Ttft => "ttft",
            MetricName::Tpot => "tpot",
            MetricName::Itl => "itl",
            MetricName::E2el => "e2el",
            MetricName::ClientQueueTime => "client_queue_time",
            MetricName::E2elIncludingClientQueue => "e2el_including_client_queue",
        }
    }

    fn label(self) -> &'static str {
        match self {
            MetricName::Ttft => "TTFT",
            MetricName::Tpot => "TPOT",
            MetricName::Itl => "ITL",
            MetricName::E2el => "E2EL",
            MetricName::ClientQueueTime => "Client Queue Time",
            MetricName::E2elIncludingClientQueue => "E2EL incl. Client Queue",
        }
    }

    fn header(self) -> &'static str {
        match self {
            MetricName::Ttft => "Time to First Token",
            MetricName::Tpot => "Time per Output Token (excl. 1st token)",
            MetricName::Itl => "Inter-token Latency",
            MetricName::E2el => "End-to-end Latency",
            MetricName::ClientQueueTime => "Client-side Queueing",
            MetricName::E2elIncludingClientQueue => "Queue-inclusive End-to-end Latency",
        }
    }

    pub(crate) fn stats(self, m: &BenchmarkMetrics) -> &Stats {
        match self {
            MetricName::Ttft => &m.ttft,
            MetricName::Tpot => &m.tpot,
            MetricName::Itl => &m.itl,
            MetricName::E2el => &m.e2el,
            MetricName::ClientQueueTime => &m.client_queue_time,
            MetricName::E2elIncludingClientQueue => &m.e2el_including_client_queue,
        }
    }
}

/// vLLM's JSON fields for one metric's statistics, in its order: `mean_<key>_ms`,
/// `median_<key>_ms`, `std_<key>_ms`, then `p<P>_<key>_ms` per percentile.
pub(crate) fn stat_fields(key: &str, st: &Stats) -> Vec<(String, Value)> {
    let mut fields = vec![
        (format!("mean_{key}_ms"), json!(st.mean)),
        (format!("median_{key}_ms"), json!(st.median)),
        (format!("std_{key}_ms"), json!(st.std)),
    ];
    for (p, v) in &st.percentiles {
        fields.push((format!("p{}_{key}_ms", percentile_word(*p)), json!(v)));
    }
    fields
}

/// Parses `--percentile-metrics` (comma separated).
pub fn parse_metric_names(s: &str) -> Result<Vec<MetricName>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            MetricName::parse(p).ok_or_else(|| {
                format!(
                    "unknown metric {:?} in --percentile-metrics (allowed: ttft, tpot, itl, e2el, \
                     client_queue_time, e2el_including_client_queue)",
                    p.trim()
                )
            })
        })
        .collect()
}

/// Parses `--metric-percentiles` (comma separated, each in [0, 100]).
pub fn parse_percentiles(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim().parse::<f64>() {
            Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
            _ => Err(format!(
                "invalid percentile {:?} in --metric-percentiles",
                p.trim()
            )),
        })
        .collect()
}

/// Python's `str(float)` for the values vLLM prints (`inf`, `10.0`, `0.5`).
pub fn py_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if v.is_nan() {
        "nan".to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// vLLM's `P{p}` word: `99`, `99.9`.
fn percentile_word(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

/// Everything a finished `bench serve` run produced.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// `YYYYmmdd-HHMMSS` (UTC) of the run.
    pub date: String,
    pub backend: Backend,
    pub label: Option<String>,
    pub model_id: String,
    pub tokenizer_id: Option<String>,
    pub num_prompts: usize,
    pub request_rate: f64,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    /// Benchmark duration in seconds.
    pub duration: f64,
    pub metrics: BenchmarkMetrics,
    /// One record per request, in dataset order.
    pub records: Vec<RequestRecord>,
    /// Resolved output length per request (0 for failures).
    pub output_lens: Vec<usize>,
    pub percentile_metrics: Vec<MetricName>,
    pub percentiles: Vec<f64>,
    pub goodput: Goodput,
    /// Failed-request messages with counts, most frequent first.
    pub error_counts: Vec<(String, usize)>,
}

impl BenchResult {
    /// Metrics whose sections are printed, in vLLM's order and under vLLM's conditions (client
    /// queue sections only with `--max-concurrency`, the queue-inclusive E2EL only with a finite
    /// request rate too).
    fn printed_metrics(&self) -> Vec<MetricName> {
        use MetricName::*;
        let mut out = Vec::new();
        for name in [
            Ttft,
            Tpot,
            Itl,
            E2el,
            ClientQueueTime,
            E2elIncludingClientQueue,
        ] {
            if !self.percentile_metrics.contains(&name) {
                continue;
            }
            let shown = match name {
                ClientQueueTime => self.max_concurrency.is_some(),
                E2elIncludingClientQueue => {
                    self.max_concurrency.is_some() && self.request_rate.is_finite()
                }
                _ => true,
            };
            if shown {
                out.push(name);
            }
        }
        out
    }

    /// The result block exactly as vLLM prints it.
    pub fn report_text(&self) -> String {
        let m = &self.metrics;
        let mut s = String::new();
        let int_line = |s: &mut String, label: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(s, "{:<40} {:<10}", label, v.to_string());
        };
        let float_line = |s: &mut String, label: &str, v: f64| {
            let _ = writeln!(s, "{:<40} {:<10.2}", label, v);
        };
        let _ = writeln!(s, "{:=^50}", " Serving Benchmark Result ");
        int_line(&mut s, "Successful requests:", &m.completed);
        int_line(&mut s, "Failed requests:", &m.failed);
        if let Some(c) = self.max_concurrency {
            int_line(&mut s, "Maximum request concurrency:", &c);
        }
        if self.request_rate.is_finite() {
            float_line(&mut s, "Request rate configured (RPS):", self.request_rate);
        }
        float_line(&mut s, "Benchmark duration (s):", self.duration);
        int_line(&mut s, "Total input tokens:", &m.total_input);
        int_line(&mut s, "Total generated tokens:", &m.total_output);
        float_line(&mut s, "Request throughput (req/s):", m.request_throughput);
        if self.goodput.is_set() {
            float_line(&mut s, "Request goodput (req/s):", m.request_goodput);
        }
        float_line(
            &mut s,
            "Output token throughput (tok/s):",
            m.output_throughput,
        );
        float_line(
            &mut s,
            "Peak output token throughput (tok/s):",
            m.max_output_tokens_per_s,
        );
        float_line(
            &mut s,
            "Peak concurrent requests:",
            m.max_concurrent_requests as f64,
        );
        float_line(
            &mut s,
            "Total token throughput (tok/s):",
            m.total_token_throughput,
        );
        for name in self.printed_metrics() {
            let st = name.stats(m);
            let _ = writeln!(s, "{:-^50}", name.header());
            float_line(&mut s, &format!("Mean {} (ms):", name.label()), st.mean);
            float_line(&mut s, &format!("Median {} (ms):", name.label()), st.median);
            for (p, v) in &st.percentiles {
                float_line(
                    &mut s,
                    &format!("P{} {} (ms):", percentile_word(*p), name.label()),
                    *v,
                );
            }
        }
        let _ = writeln!(s, "{}", "=".repeat(50));
        s
    }

    /// The lines vLLM prints about failed requests (first 10), plus our per-error counts.
    pub fn failure_text(&self) -> String {
        let mut s = String::new();
        let failed: Vec<&RequestRecord> = self.records.iter().filter(|r| !r.success).collect();
        if failed.is_empty() {
            return s;
        }
        let _ = writeln!(
            s,
            "Failed requests during benchmark run detected (capping to 10):"
        );
        for (i, r) in failed.iter().take(10).enumerate() {
            let _ = writeln!(s, "Error {i}: {}", r.error);
        }
        let _ = writeln!(s, "Failed requests by error:");
        for (e, n) in &self.error_counts {
            let _ = writeln!(s, "{n:>8}  {e}");
        }
        s
    }

    /// The result JSON vLLM writes with `--save-result`; `detailed` adds the per-request arrays
    /// (`--save-detailed`).
    pub fn to_json(&self, detailed: bool) -> Value {
        let m = &self.metrics;
        let mut o = Map::new();
        o.insert("date".into(), json!(self.date));
        o.insert("endpoint_type".into(), json!(self.backend.name()));
        o.insert("backend".into(), json!(self.backend.name()));
        o.insert("label".into(), json!(self.label));
        o.insert("model_id".into(), json!(self.model_id));
        o.insert("tokenizer_id".into(), json!(self.tokenizer_id));
        o.insert("num_prompts".into(), json!(self.num_prompts));
        o.insert(
            "request_rate".into(),
            if self.request_rate.is_finite() {
                json!(self.request_rate)
            } else {
                json!("inf")
            },
        );
        o.insert("burstiness".into(), finite(self.burstiness));
        o.insert("max_concurrency".into(), json!(self.max_concurrency));
        o.insert("duration".into(), json!(self.duration));
        o.insert("completed".into(), json!(m.completed));
        o.insert("failed".into(), json!(m.failed));
        o.insert("total_input_tokens".into(), json!(m.total_input));
        o.insert("total_output_tokens".into(), json!(m.total_output));
        o.insert("request_throughput".into(), json!(m.request_throughput));
        o.insert(
            "request_goodput".into(),
            if self.goodput.is_set() {
                json!(m.request_goodput)
            } else {
                Value::Null
            },
        );
        o.insert("output_throughput".into(), json!(m.output_throughput));
        o.insert(
            "total_token_throughput".into(),
            json!(m.total_token_throughput),
        );
        let r = &self.records;
        if detailed {
            o.insert(
                "input_lens".into(),
                json!(r.iter().map(|x| x.prompt_len).collect::<Vec<_>>()),
            );
            o.insert("output_lens".into(), json!(self.output_lens));
            o.insert(
                "ttfts".into(),
                json!(r.iter().map(|x| x.ttft).collect::<Vec<_>>()),
            );
            o.insert(
                "itls".into(),
                json!(r.iter().map(|x| x.itl.clone()).collect::<Vec<_>>()),
            );
        }
        o.insert(
            "latencies".into(),
            json!(r.iter().map(|x| x.latency).collect::<Vec<_>>()),
        );
        if detailed {
            o.insert(
                "start_times".into(),
                json!(r.iter().map(|x| x.start_time).collect::<Vec<_>>()),
            );
        }
        o.insert(
            "queue_times".into(),
            json!(r.iter().map(|x| x.client_queue_time).collect::<Vec<_>>()),
        );
        if detailed {
            o.insert(
                "generated_texts".into(),
                json!(r
                    .iter()
                    .map(|x| x.generated_text.as_str())
                    .collect::<Vec<_>>()),
            );
            o.insert(
                "errors".into(),
                json!(r.iter().map(|x| x.error.as_str()).collect::<Vec<_>>()),
            );
        }
        o.insert(
            "max_output_tokens_per_s".into(),
            json!(m.max_output_tokens_per_s),
        );
        o.insert(
            "max_concurrent_requests".into(),
            json!(m.max_concurrent_requests),
        );
        o.insert("rtfx".into(), json!(0.0));
        for name in self.printed_metrics() {
            o.extend(stat_fields(name.key(), name.stats(m)));
        }
        Value::Object(o)
    }

    /// vLLM's default result file name:
    /// `{label}-{rate}qps[-concurrency{N}]-{model basename}-{date}.json`.
    pub fn default_filename(&self) -> String {
        let label = self
            .label
            .clone()
            .unwrap_or_else(|| self.backend.name().to_string());
        let conc = self
            .max_concurrency
            .map(|c| format!("-concurrency{c}"))
            .unwrap_or_default();
        let base_model = self.model_id.rsplit('/').next().unwrap_or(&self.model_id);
        format!(
            "{label}-{}qps{conc}-{base_model}-{}.json",
            py_float(self.request_rate),
            self.date
        )
    }
}

/// JSON cannot hold infinity: vLLM's Python writes `Infinity`; we write the string "inf".
fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(py_float(v))
    }
}

/// `YYYYmmdd-HHMMSS` in UTC for a Unix time.
pub fn format_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{calculate_metrics, Stats};

    fn stats(mean: f64, median: f64, p99: f64) -> Stats {
        Stats {
            mean,
            median,
            std: 1.0,
            percentiles: vec![(99.0, p99)],
        }
    }

    /// The GLM-4.5-FP8 recipe's numbers (glm.md §8.1) in a result.
    fn recipe_result() -> BenchResult {
        let metrics = BenchmarkMetrics {
            completed: 16,
            failed: 0,
            total_input: 128_000,
            total_output: 16_000,
            request_throughput: 16.0 / 24.56,
            request_goodput: 0.0,
            output_throughput: 16_000.0 / 24.56,
            total_token_throughput: 144_000.0 / 24.56,
            ttft: stats(2100.95, 2063.87, 4284.97),
            tpot: stats(22.35, 22.39, 24.19),
            itl: stats(22.35, 20.23, 37.17),
            e2el: stats(24_400.0, 24_410.0, 24_550.0),
            client_queue_time: Stats::default(),
            e2el_including_client_queue: Stats::default(),
            max_output_tokens_per_s: 720.0,
            max_concurrent_requests: 16,
        };
        BenchResult {
            date: "20250813-120000".into(),
            backend: Backend::Openai,
            label: None,
            model_id: "zai-org/GLM-4.5-FP8".into(),
            tokenizer_id: None,
            num_prompts: 16,
            request_rate: 10000.0,
            burstiness: 1.0,
            max_concurrency: None,
            duration: 24.56,
            metrics,
            records: Vec::new(),
            output_lens: Vec::new(),
            percentile_metrics: vec![MetricName::Ttft, MetricName::Tpot, MetricName::Itl],
            percentiles: vec![99.0],
            goodput: Goodput::default(),
            error_counts: Vec::new(),
        }
    }

    #[test]
    fn report_matches_golden() {
        let got = recipe_result().report_text();
        let want = include_str!("../tests/golden/report_recipe.txt");
        assert_eq!(got, want);
    }

    #[test]
    fn report_with_e2el_concurrency_and_goodput() {
        let mut r = recipe_result();
        r.request_rate = f64::INFINITY;
        r.max_concurrency = Some(16);
        r.goodput.ttft_ms = Some(3000.0);
        r.metrics.request_goodput = 0.5;
        r.percentile_metrics.push(MetricName::E2el);
        r.percentile_metrics.push(MetricName::ClientQueueTime);
        r.percentile_metrics
            .push(MetricName::E2elIncludingClientQueue);
        r.percentiles = vec![50.0, 99.9];
        r.metrics.ttft.percentiles = vec![(50.0, 1.0), (99.9, 2.0)];
        let text = r.report_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[3],
            "Maximum request concurrency:             16        "
        );
        assert!(!text.contains("Request rate configured"));
        assert!(text.contains("Request goodput (req/s):                 0.50      \n"));
        assert!(text.contains("P99.9 TTFT (ms):                         2.00      \n"));
        assert!(text.contains("----------------End-to-end Latency----------------\n"));
        assert!(text.contains("---------------Client-side Queueing---------------\n"));
        // The queue-inclusive E2EL needs a finite rate.
        assert!(!text.contains("Queue-inclusive"));
        let json = r.to_json(false);
        assert_eq!(json["request_rate"], "inf");
        assert_eq!(json["max_concurrency"], 16);
        assert!(json.get("p99.9_ttft_ms").is_some());
        assert!(json.get("mean_e2el_ms").is_some());
        assert!(json.get("ttfts").is_none());
        assert!(r.to_json(true).get("ttfts").is_some());
        assert_eq!(
            r.default_filename(),
            "openai-infqps-concurrency16-GLM-4.5-FP8-20250813-120000.json"
        );
    }

    #[test]
    fn json_field_order_follows_vllm() {
        let json = recipe_result().to_json(false);
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "date",
                "endpoint_type",
                "backend",
                "label",
                "model_id",
                "tokenizer_id",
                "num_prompts",
                "request_rate",
                "burstiness",
                "max_concurrency",
                "duration",
                "completed",
                "failed",
                "total_input_tokens",
                "total_output_tokens",
                "request_throughput",
                "request_goodput",
                "output_throughput",
                "total_token_throughput",
                "latencies",
                "queue_times",
                "max_output_tokens_per_s",
                "max_concurrent_requests",
                "rtfx",
                "mean_ttft_ms",
                "median_ttft_ms",
                "std_ttft_ms",
                "p99_ttft_ms",
                "mean_tpot_ms",
                "median_tpot_ms",
                "std_tpot_ms",
                "p99_tpot_ms",
                "mean_itl_ms",
                "median_itl_ms",
                "std_itl_ms",
                "p99_itl_ms",
            ]
        );
        assert_eq!(
            recipe_result().default_filename(),
            "openai-10000.0qps-GLM-4.5-FP8-20250813-120000.json"
        );
    }

    #[test]
    fn failure_text_lists_errors_and_counts() {
        let mut r = recipe_result();
        r.records = vec![
            RequestRecord {
                error: "HTTP 500 Internal Server Error".into(),
                ..Default::default()
            },
            RequestRecord {
                error: "HTTP 500 Internal Server Error".into(),
                ..Default::default()
            },
        ];
        r.error_counts = crate::metrics::error_counts(&r.records);
        let t = r.failure_text();
        assert!(t.starts_with(
            "Failed requests during benchmark run detected (capping to 10):\nError 0: HTTP 500"
        ));
        assert!(t.ends_with("       2  HTTP 500 Internal Server Error\n"));
        // No failures, no text.
        r.records.clear();
        assert_eq!(r.failure_text(), "");
        let _ = calculate_metrics(&[], &[], 1.0, &[99.0], &Goodput::default());
    }

    #[test]
    fn helpers() {
        assert_eq!(py_float(f64::INFINITY), "inf");
        assert_eq!(py_float(10.0), "10.0");
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(format_date(0), "19700101-000000");
        assert_eq!(format_date(1_755_086_400), "20250813-120000");
        assert_eq!(format_date(951_782_400), "20000229-000000");
        assert_eq!(
            parse_percentiles("25, 50,99.9").unwrap(),
            vec![25.0, 50.0, 99.9]
        );
        assert!(parse_percentiles("101").is_err());
        assert_eq!(
            parse_metric_names("ttft,tpot,itl,e2el").unwrap(),
            vec![
                MetricName::Ttft,
                MetricName::Tpot,
                MetricName::Itl,
                MetricName::E2el
            ]
        );
        assert!(parse_metric_names("ttft,foo").is_err());
    }
}
