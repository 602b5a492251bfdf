//! The benchmark's arithmetic, as pure functions over recorded per-request timings, so every
//! formula can be checked exactly. Formulas follow `vllm bench serve` (`calculate_metrics`):
//! TTFT = first token event − send; TPOT = (latency − TTFT) / (output_tokens − 1) for outputs of
//! more than one token; ITL = every gap between token events; E2EL = latency (send → last token
//! event). Statistics are numpy's: mean, median, population std and linear-interpolated
//! percentiles; an empty sample reports zeros.

use serde::Serialize;

/// What one request produced, as the client timed it. All times are in seconds; `start_time` is
/// relative to the start of the benchmark run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    /// A 200 answer with at least one token event and no error event.
    pub success: bool,
    /// Prompt tokens: the dataset's count, replaced by the server's `usage.prompt_tokens`.
    pub prompt_len: usize,
    /// `usage.completion_tokens` when the server sent a usage object.
    pub usage_output_tokens: Option<usize>,
    /// The concatenated streamed text.
    pub generated_text: String,
    /// Time to the first token event.
    pub ttft: f64,
    /// Gaps between consecutive token events (one per event after the first).
    pub itl: Vec<f64>,
    /// Send → last token event.
    pub latency: f64,
    /// When the request was sent, relative to the benchmark start.
    pub start_time: f64,
    /// Time spent waiting for the client-side concurrency limit.
    pub client_queue_time: f64,
    /// Why the request failed (empty on success).
    pub error: String,
}

impl RequestRecord {
    /// Number of SSE events that carried a non-empty `choices` array.
    pub fn token_events(&self) -> usize {
        if self.success {
            1 + self.itl.len()
        } else {
            0
        }
    }
}

/// The output length used for a record: the server's `usage.completion_tokens` when given
/// (and non-zero), else the tokenizer's count of the generated text (vLLM's fallback), else,
/// without a tokenizer, the number of token events. Failed requests count 0.
pub fn resolve_output_len(
    record: &RequestRecord,
    count_tokens: Option<&dyn Fn(&str) -> usize>,
) -> usize {
    if !record.success {
        return 0;
    }
    match record.usage_output_tokens {
        Some(n) if n > 0 => n,
        _ => match count_tokens {
            Some(count) => count(&record.generated_text),
            None => record.token_events(),
        },
    }
}

/// Mean, median, population standard deviation and selected percentiles of one metric, in ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    /// `(percentile, value)` pairs in the order requested.
    pub percentiles: Vec<(f64, f64)>,
}

/// numpy's `mean`, with `mean([]) == 0` as `np.mean(x or 0)` gives.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// numpy's population standard deviation (`ddof = 0`).
pub fn std_dev(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let m = mean(values);
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64;
    var.sqrt()
}

/// numpy's `median`: the middle value, or the mean of the two middle values.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let sorted = sorted(values);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// numpy's `percentile(values, p)` with the default "linear" method.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    percentile_sorted(&sorted(values), p)
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let q = p / 100.0;
    // numpy's virtual index for the linear method (alpha = beta = 1):
    // n*q + (alpha + q*(1 - alpha - beta)) - 1, i.e. n*q + (1 - q) - 1.
    let (alpha, beta) = (1.0, 1.0);
    let virtual_index =
        (n as f64 * q + (alpha + q * (1.0 - alpha - beta)) - 1.0).clamp(0.0, (n - 1) as f64);
    let lower = virtual_index.floor();
    let gamma = virtual_index - lower;
    let lo = lower as usize;
    let hi = (lo + 1).min(n - 1);
    let (a, b) = (sorted[lo], sorted[hi]);
    // numpy's _lerp: a + (b-a)*t, computed from the upper end when t >= 0.5.
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

/// Statistics of `values_s` (seconds), reported in milliseconds.
pub fn stats_ms(values_s: &[f64], percentiles: &[f64]) -> Stats {
    let sorted_values = sorted(values_s);
    Stats {
        mean: mean(values_s) * 1000.0,
        median: median(values_s) * 1000.0,
        std: std_dev(values_s) * 1000.0,
        percentiles: percentiles
            .iter()
            .map(|&p| {
                let v = if sorted_values.is_empty() {
                    0.0
                } else {
                    percentile_sorted(&sorted_values, p)
                };
                (p, v * 1000.0)
            })
            .collect(),
    }
}

/// Service-level objectives for goodput (`--goodput ttft:MS tpot:MS e2el:MS`), in ms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Goodput {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Goodput {
    /// Whether any objective is set.
    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some() || self.e2el_ms.is_some()
    }
}

/// Everything `vllm bench serve` computes from a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BenchmarkMetrics {
    pub completed: usize,
    pub failed: usize,
    pub total_input: usize,
    pub total_output: usize,
    pub request_throughput: f64,
    pub request_goodput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft: Stats,
    pub tpot: Stats,
    pub itl: Stats,
    pub e2el: Stats,
    /// Client-side wait for the concurrency limit (successful requests).
    pub client_queue_time: Stats,
    /// E2EL plus client queue time (successful requests).
    pub e2el_including_client_queue: Stats,
    /// Most token events in any one-second bucket.
    pub max_output_tokens_per_s: f64,
    /// Exact peak of concurrently running (successful) requests.
    pub max_concurrent_requests: usize,
}

/// Computes the run's metrics. `output_lens[i]` is the resolved output length of `records[i]`
/// (see [`resolve_output_len`]); `dur_s` is the benchmark duration.
pub fn calculate_metrics(
    records: &[RequestRecord],
    output_lens: &[usize],
    dur_s: f64,
    percentiles: &[f64],
    goodput: &Goodput,
) -> BenchmarkMetrics {
    let mut total_input = 0usize;
    let mut completed = 0usize;
    let mut itls = Vec::new();
    let mut tpots = Vec::new();
    let mut all_tpots = Vec::new();
    let mut ttfts = Vec::new();
    let mut e2els = Vec::new();
    let mut queue = Vec::new();
    let mut e2el_queue = Vec::new();
    for (record, &output_len) in records.iter().zip(output_lens) {
        if !record.success {
            continue;
        }
        total_input += record.prompt_len;
        let mut tpot = 0.0;
        if output_len > 1 {
            tpot = (record.latency - record.ttft) / (output_len - 1) as f64;
            tpots.push(tpot);
        }
        all_tpots.push(tpot);
        itls.extend_from_slice(&record.itl);
        ttfts.push(record.ttft);
        e2els.push(record.latency);
        queue.push(record.client_queue_time);
        e2el_queue.push(record.latency + record.client_queue_time);
        completed += 1;
    }
    let total_output: usize = output_lens.iter().sum();
    let failed = records.iter().filter(|r| !r.success).count();

    let good_completed = if goodput.is_set() {
        (0..ttfts.len())
            .filter(|&i| {
                let ok = |slo: Option<f64>, v: f64| slo.is_none_or(|ms| ms / 1000.0 >= v);
                ok(goodput.ttft_ms, ttfts[i])
                    && ok(goodput.tpot_ms, all_tpots[i])
                    && ok(goodput.e2el_ms, e2els[i])
            })
            .count()
    } else {
        0
    };

    let (max_output_tokens_per_s, max_concurrent_requests) = peaks(records);

    BenchmarkMetrics {
        completed,
        failed,
        total_input,
        total_output,
        request_throughput: completed as f64 / dur_s,
        request_goodput: good_completed as f64 / dur_s,
        output_throughput: total_output as f64 / dur_s,
        total_token_throughput: (total_input + total_output) as f64 / dur_s,
        ttft: stats_ms(&ttfts, percentiles),
        tpot: stats_ms(&tpots, percentiles),
        itl: stats_ms(&itls, percentiles),
        e2el: stats_ms(&e2els, percentiles),
        client_queue_time: stats_ms(&queue, percentiles),
        e2el_including_client_queue: stats_ms(&e2el_queue, percentiles),
        max_output_tokens_per_s,
        max_concurrent_requests,
    }
}

/// Peak token events per one-second bucket (buckets start at the earliest successful send)
/// and the exact peak concurrency of successful requests over half-open `[start, end)`
/// intervals, as vLLM computes them.
pub fn peaks(records: &[RequestRecord]) -> (f64, usize) {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.success).collect();
    if ok.is_empty() {
        return (0.0, 0);
    }
    let min_start = ok
        .iter()
        .map(|r| r.start_time)
        .fold(f64::INFINITY, f64::min);
    let max_end = ok
        .iter()
        .map(|r| r.start_time + r.latency)
        .fold(f64::NEG_INFINITY, f64::max);
    let buckets = (max_end - min_start).ceil() as usize + 1;
    let mut tokens_per_second = vec![0u64; buckets];
    for r in &ok {
        let mut t = r.start_time + r.ttft;
        let mut add = |t: f64| {
            let b = (t - min_start).trunc();
            if b >= 0.0 && (b as usize) < buckets {
                tokens_per_second[b as usize] += 1;
            }
        };
        add(t);
        for gap in &r.itl {
            t += gap;
            add(t);
        }
    }
    let max_tokens = tokens_per_second.iter().copied().max().unwrap_or(0) as f64;

    let mut events: Vec<(f64, i32)> = Vec::with_capacity(ok.len() * 2);
    for r in &ok {
        events.push((r.start_time, 1));
        events.push((r.start_time + r.latency, -1));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut current, mut peak) = (0i64, 0i64);
    for (_, delta) in events {
        current += i64::from(delta);
        peak = peak.max(current);
    }
    (max_tokens, peak as usize)
}

/// Error messages of failed requests with their counts, most frequent first (ties by text).
pub fn error_counts(records: &[RequestRecord]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in records.iter().filter(|r| !r.success) {
        match counts.iter_mut().find(|(e, _)| *e == r.error) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.error.clone(), 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    fn ok_record(
        start: f64,
        ttft: f64,
        itl: &[f64],
        usage: Option<usize>,
        prompt_len: usize,
    ) -> RequestRecord {
        RequestRecord {
            success: true,
            prompt_len,
            usage_output_tokens: usage,
            generated_text: String::new(),
            ttft,
            itl: itl.to_vec(),
            latency: ttft + itl.iter().sum::<f64>(),
            start_time: start,
            client_queue_time: 0.0,
            error: String::new(),
        }
    }

    fn failed(error: &str) -> RequestRecord {
        RequestRecord {
            error: error.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn numpy_statistics() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(mean(&v), 2.5);
        assert_eq!(median(&v), 2.5);
        assert!(close(std_dev(&v), 1.25f64.sqrt()));
        // np.percentile([1,2,3,4], 99) = 3 + 0.97 = 3.97; 50 -> 2.5; 0 -> 1; 100 -> 4.
        assert!(close(percentile(&v, 99.0), 3.97));
        assert!(close(percentile(&v, 50.0), 2.5));
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        // np.percentile([10, 20, 30], 25) = 15.
        assert!(close(percentile(&[30.0, 10.0, 20.0], 25.0), 15.0));
        assert_eq!(median(&[5.0, 1.0, 9.0]), 5.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        let empty = stats_ms(&[], &[50.0, 99.0]);
        assert_eq!(empty.mean, 0.0);
        assert_eq!(empty.percentiles, vec![(50.0, 0.0), (99.0, 0.0)]);
    }

    #[test]
    fn metrics_from_known_timings() {
        // Request A: sent at 0.0, first token at 0.100, then 4 gaps of 0.020 → 5 token events,
        // usage says 5 tokens. Request B: sent at 0.050, TTFT 0.200, 2 gaps of 0.030 and
        // 0.050, usage 3 tokens. Request C failed.
        let a = ok_record(0.0, 0.100, &[0.020; 4], Some(5), 100);
        let b = ok_record(0.050, 0.200, &[0.030, 0.050], Some(3), 50);
        let c = failed("HTTP 500 Internal Server Error");
        let records = vec![a.clone(), b.clone(), c];
        let lens: Vec<usize> = records
            .iter()
            .map(|r| resolve_output_len(r, None))
            .collect();
        assert_eq!(lens, vec![5, 3, 0]);
        let m = calculate_metrics(&records, &lens, 2.0, &[50.0, 99.0], &Goodput::default());
        assert_eq!((m.completed, m.failed), (2, 1));
        assert_eq!((m.total_input, m.total_output), (150, 8));
        assert!(close(m.request_throughput, 1.0));
        assert!(close(m.output_throughput, 4.0));
        assert!(close(m.total_token_throughput, 79.0));
        // TTFT: 100 and 200 ms.
        assert!(close(m.ttft.mean, 150.0));
        assert!(close(m.ttft.median, 150.0));
        assert!(close(m.ttft.std, 50.0));
        assert!(close(m.ttft.percentiles[1].1, 100.0 + 0.99 * 100.0));
        // TPOT: A = 0.080/4 = 20 ms, B = 0.080/2 = 40 ms.
        assert!(close(m.tpot.mean, 30.0));
        assert!(close(m.tpot.percentiles[0].1, 30.0));
        // ITL: [20,20,20,20,30,50] ms → mean 26.6667, median 20, p99 = 30 + 0.95*20 = 49.
        assert!(close(m.itl.mean, 160.0 / 6.0));
        assert!(close(m.itl.median, 20.0));
        assert!(close(m.itl.percentiles[1].1, 49.0));
        // E2EL: 180 and 280 ms.
        assert!(close(m.e2el.mean, 230.0));
        // Token events: A at 0.1,0.12,...,0.18; B at 0.25,0.28,0.33 → all in bucket 0.
        assert_eq!(m.max_output_tokens_per_s, 8.0);
        // A runs [0, 0.18), B runs [0.05, 0.33): overlap → 2.
        assert_eq!(m.max_concurrent_requests, 2);
    }

    #[test]
    fn tpot_skips_single_token_outputs_and_output_len_fallbacks() {
        let one = ok_record(0.0, 0.5, &[], Some(1), 10);
        let counted = ok_record(0.0, 0.1, &[0.1, 0.1], None, 10);
        assert_eq!(resolve_output_len(&counted, None), 3);
        let by_tokenizer = |s: &str| s.len();
        let mut with_text = counted.clone();
        with_text.generated_text = "abcdefg".into();
        assert_eq!(resolve_output_len(&with_text, Some(&by_tokenizer)), 7);
        // usage 0 falls back like vLLM's `if not output_len`.
        let mut zero_usage = counted.clone();
        zero_usage.usage_output_tokens = Some(0);
        assert_eq!(resolve_output_len(&zero_usage, None), 3);
        let records = vec![one, counted];
        let lens = vec![1, 3];
        let m = calculate_metrics(&records, &lens, 1.0, &[99.0], &Goodput::default());
        // Only the 3-token request has a TPOT: (0.3-0.1)/2 = 100 ms.
        assert!(close(m.tpot.mean, 100.0));
        assert!(close(m.tpot.median, 100.0));
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let fast = ok_record(0.0, 0.1, &[0.01; 9], Some(10), 1);
        let slow_ttft = ok_record(0.0, 0.9, &[0.01; 9], Some(10), 1);
        let slow_tpot = ok_record(0.0, 0.1, &[0.2; 9], Some(10), 1);
        let records = vec![fast, slow_ttft, slow_tpot];
        let lens = vec![10, 10, 10];
        let g = Goodput {
            ttft_ms: Some(500.0),
            tpot_ms: Some(50.0),
            e2el_ms: None,
        };
        let m = calculate_metrics(&records, &lens, 2.0, &[99.0], &g);
        assert!(close(m.request_goodput, 0.5));
    }

    #[test]
    fn peak_buckets_and_concurrency() {
        // Three back-to-back requests: [0,1), [1,2) touching → peak concurrency 1.
        let r1 = ok_record(0.0, 0.5, &[0.25, 0.25], Some(3), 1); // events at 0.5, 0.75, 1.0
        let r2 = ok_record(1.0, 0.25, &[0.25, 0.5], Some(3), 1); // events at 1.25, 1.5, 2.0
        let (tok, conc) = peaks(&[r1.clone(), r2.clone()]);
        // bucket 0: 0.5, 0.75; bucket 1: 1.0, 1.25, 1.5; bucket 2: 2.0.
        assert_eq!(tok, 3.0);
        assert_eq!(conc, 1);
        let r3 = ok_record(0.5, 0.1, &[], Some(1), 1);
        let (_, conc) = peaks(&[r1, r2, r3]);
        assert_eq!(conc, 2);
        assert_eq!(peaks(&[failed("x")]), (0.0, 0));
    }

    #[test]
    fn error_counts_group_and_sort() {
        let records = vec![
            failed("b"),
            ok_record(0.0, 0.1, &[], None, 1),
            failed("a"),
            failed("b"),
        ];
        assert_eq!(
            error_counts(&records),
            vec![("b".to_string(), 2), ("a".to_string(), 1)]
        );
    }
}
