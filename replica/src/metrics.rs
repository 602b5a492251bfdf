//! Prometheus metrics with vLLM's names, so vLLM dashboards, alerts and autoscalers work
//! unchanged against a glmfleet replica.
//!
//! Every series carries the `model_name` label (the served model name). Counters are exported
//! with the `_total` suffix, as vLLM's Python client does (`vllm:prompt_tokens_total`).
//! Speculative-decoding counters (`vllm:spec_decode_*`) exist only when speculation is on, as in
//! vLLM.
//! Gauges and counters derived from the scheduler are refreshed by the engine thread after
//! every loop turn; request latencies are observed once per finished request.
//!
//! `promtool check metrics` reports two lint warnings that are inherent to vLLM's naming and
//! kept on purpose: metric names contain `:`, and the histogram `vllm:iteration_tokens_total`
//! ends in `_total`.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use scheduler::{FinishReason, SchedulerStats};

/// Static cache facts exported as `vllm:cache_config_info` labels.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfigInfo {
    /// Tokens per block.
    pub block_size: usize,
    /// KV blocks on the device.
    pub num_gpu_blocks: usize,
    /// Prefix caching on/off.
    pub enable_prefix_caching: bool,
    /// KV-cache dtype flag value.
    pub cache_dtype: String,
    /// `--gpu-memory-utilization`.
    pub gpu_memory_utilization: f64,
}

/// Latency facts of one finished request, measured by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestTimings {
    /// Arrival → first scheduled.
    pub queue: Duration,
    /// First scheduled → first token.
    pub prefill: Duration,
    /// First token → last token.
    pub decode: Duration,
    /// Arrival → finish.
    pub e2e: Duration,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub generation_tokens: usize,
}

/// The replica's metric families and the registry that renders them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: prometheus::Gauge,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    preemptions: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    request_success: IntCounterVec,
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    request_tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
    prefill: Histogram,
    decode: Histogram,
    iteration_tokens: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    spec: Option<SpecMetrics>,
    model_name: String,
}

/// vLLM's speculative-decoding counters.
#[derive(Clone)]
struct SpecMetrics {
    drafts: IntCounter,
    draft_tokens: IntCounter,
    accepted_tokens: IntCounter,
    accepted_per_pos: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const TOKEN_COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    50000.0, 100000.0, 200000.0,
];
const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// Registration failed (a programming error: duplicate or invalid names).
#[derive(Debug, thiserror::Error)]
#[error("metrics registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

struct Builder<'a> {
    registry: &'a Registry,
    model: &'a str,
}

impl Builder<'_> {
    fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(name, help).const_label("model_name", self.model)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        let g = IntGauge::with_opts(self.opts(name, help))?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        let c = IntCounter::with_opts(self.opts(&format!("{name}_total"), help))?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, MetricsError> {
        let opts = HistogramOpts::new(name, help)
            .const_label("model_name", self.model)
            .buckets(buckets.to_vec());
        let h = Histogram::with_opts(opts)?;
        self.registry.register(Box::new(h.clone()))?;
        Ok(h)
    }
}

impl Metrics {
    /// Registers every family for `model_name`.
    pub fn new(model_name: &str, cache: &CacheConfigInfo) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let b = Builder {
            registry: &registry,
            model: model_name,
        };
        let kv_usage = prometheus::Gauge::with_opts(b.opts(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
        ))?;
        registry.register(Box::new(kv_usage.clone()))?;
        let request_success = IntCounterVec::new(
            b.opts(
                "vllm:request_success_total",
                "Count of successfully processed requests.",
            ),
            &["finished_reason"],
        )?;
        registry.register(Box::new(request_success.clone()))?;
        let info = IntGauge::with_opts(
            b.opts(
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
            )
            .const_label("block_size", cache.block_size.to_string())
            .const_label("num_gpu_blocks", cache.num_gpu_blocks.to_string())
            .const_label(
                "enable_prefix_caching",
                cache.enable_prefix_caching.to_string(),
            )
            .const_label("cache_dtype", cache.cache_dtype.clone())
            .const_label(
                "gpu_memory_utilization",
                cache.gpu_memory_utilization.to_string(),
            ),
        )?;
        info.set(1);
        registry.register(Box::new(info))?;
        Ok(Self {
            running: b.gauge(
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
            )?,
            waiting: b.gauge(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
            )?,
            kv_usage,
            prefix_queries: b.counter(
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
            )?,
            prefix_hits: b.counter(
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
            )?,
            preemptions: b.counter("vllm:num_preemptions", "Cumulative number of preemptions.")?,
            prompt_tokens: b
                .counter("vllm:prompt_tokens", "Number of prefill tokens processed.")?,
            generation_tokens: b.counter(
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
            )?,
            request_success,
            ttft: b.histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS,
            )?,
            itl: b.histogram(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                ITL_BUCKETS,
            )?,
            tpot: b.histogram(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds (per token, as vLLM).",
                ITL_BUCKETS,
            )?,
            request_tpot: b.histogram(
                "vllm:request_time_per_output_token_seconds",
                "Histogram of mean time per output token of each request in seconds.",
                ITL_BUCKETS,
            )?,
            e2e: b.histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                REQUEST_LATENCY_BUCKETS,
            )?,
            queue: b.histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                REQUEST_LATENCY_BUCKETS,
            )?,
            prefill: b.histogram(
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                REQUEST_LATENCY_BUCKETS,
            )?,
            decode: b.histogram(
                "vllm:request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
                REQUEST_LATENCY_BUCKETS,
            )?,
            iteration_tokens: b.histogram(
                "vllm:iteration_tokens_total",
                "Histogram of number of tokens per engine_step.",
                ITERATION_TOKEN_BUCKETS,
            )?,
            request_prompt_tokens: b.histogram(
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                TOKEN_COUNT_BUCKETS,
            )?,
            request_generation_tokens: b.histogram(
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                TOKEN_COUNT_BUCKETS,
            )?,
            registry,
            spec: None,
            model_name: model_name.to_owned(),
        })
    }

    /// Registers the speculative-decoding counters when `num_speculative_tokens > 0` (one
    /// `position` series per draft position, from 0).
    pub fn with_spec_decode(mut self, num_speculative_tokens: usize) -> Result<Self, MetricsError> {
        if num_speculative_tokens == 0 || self.spec.is_some() {
            return Ok(self);
        }
        let b = Builder {
            registry: &self.registry,
            model: &self.model_name,
        };
        let accepted_per_pos = IntCounterVec::new(
            b.opts(
                "vllm:spec_decode_num_accepted_tokens_per_pos_total",
                "Accepted tokens per draft position.",
            ),
            &["position"],
        )?;
        self.registry.register(Box::new(accepted_per_pos.clone()))?;
        for pos in 0..num_speculative_tokens {
            accepted_per_pos.with_label_values(&[&pos.to_string()]);
        }
        self.spec = Some(SpecMetrics {
            drafts: b.counter(
                "vllm:spec_decode_num_drafts",
                "Number of spec decoding drafts.",
            )?,
            draft_tokens: b.counter(
                "vllm:spec_decode_num_draft_tokens",
                "Number of draft tokens.",
            )?,
            accepted_tokens: b.counter(
                "vllm:spec_decode_num_accepted_tokens",
                "Number of accepted tokens.",
            )?,
            accepted_per_pos,
        });
        Ok(self)
    }

    /// Refreshes scheduler gauges and advances cumulative counters by the change since `prev`.
    pub fn record_scheduler(&self, now: &SchedulerStats, prev: &SchedulerStats) {
        self.running.set(now.running as i64);
        self.waiting.set(now.waiting as i64);
        self.kv_usage.set(now.kv_usage);
        self.prefix_queries.inc_by(
            now.prefix_queries_tokens
                .saturating_sub(prev.prefix_queries_tokens),
        );
        self.prefix_hits.inc_by(
            now.prefix_hits_tokens
                .saturating_sub(prev.prefix_hits_tokens),
        );
        self.preemptions
            .inc_by(now.preemptions.saturating_sub(prev.preemptions));
        if let Some(spec) = &self.spec {
            spec.drafts
                .inc_by(now.spec_num_drafts.saturating_sub(prev.spec_num_drafts));
            spec.draft_tokens.inc_by(
                now.spec_num_draft_tokens
                    .saturating_sub(prev.spec_num_draft_tokens),
            );
            spec.accepted_tokens.inc_by(
                now.spec_num_accepted_tokens
                    .saturating_sub(prev.spec_num_accepted_tokens),
            );
            for (pos, &n) in now.spec_accepted_per_pos.iter().enumerate() {
                let before = prev.spec_accepted_per_pos.get(pos).copied().unwrap_or(0);
                if n > before {
                    spec.accepted_per_pos
                        .with_label_values(&[&pos.to_string()])
                        .inc_by(n - before);
                }
            }
        }
    }

    /// One engine step computed `tokens` tokens.
    pub fn record_iteration(&self, tokens: usize) {
        self.iteration_tokens.observe(tokens as f64);
    }

    /// A request produced its first token after `ttft` (its prompt counts as processed).
    pub fn record_first_token(&self, ttft: Duration, prompt_tokens: usize) {
        self.ttft.observe(ttft.as_secs_f64());
        self.prompt_tokens.inc_by(prompt_tokens as u64);
    }

    /// `tokens` more generated tokens.
    pub fn record_generated(&self, tokens: usize) {
        self.generation_tokens.inc_by(tokens as u64);
    }

    /// A gap between two tokens of one request.
    pub fn record_inter_token(&self, gap: Duration) {
        self.itl.observe(gap.as_secs_f64());
        self.tpot.observe(gap.as_secs_f64());
    }

    /// A request finished.
    pub fn record_finished(&self, reason: FinishReason, t: &RequestTimings) {
        self.request_success
            .with_label_values(&[reason.as_str()])
            .inc();
        self.e2e.observe(t.e2e.as_secs_f64());
        self.queue.observe(t.queue.as_secs_f64());
        self.prefill.observe(t.prefill.as_secs_f64());
        self.decode.observe(t.decode.as_secs_f64());
        self.request_prompt_tokens.observe(t.prompt_tokens as f64);
        self.request_generation_tokens
            .observe(t.generation_tokens as f64);
        if t.generation_tokens > 1 {
            self.request_tpot
                .observe(t.decode.as_secs_f64() / (t.generation_tokens - 1) as f64);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!("metrics encoding failed: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The exposition content type.
    pub fn content_type(&self) -> String {
        TextEncoder::new().format_type().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(
            "glm",
            &CacheConfigInfo {
                block_size: 16,
                num_gpu_blocks: 100,
                enable_prefix_caching: true,
                cache_dtype: "auto".into(),
                gpu_memory_utilization: 0.9,
            },
        )
        .unwrap()
    }

    #[test]
    fn exposes_vllm_names_with_model_label() {
        let m = metrics();
        let prev = SchedulerStats::default();
        let now = SchedulerStats {
            running: 3,
            waiting: 2,
            kv_usage: 0.5,
            prefix_queries_tokens: 100,
            prefix_hits_tokens: 40,
            preemptions: 1,
            ..SchedulerStats::default()
        };
        m.record_scheduler(&now, &prev);
        m.record_scheduler(&now, &now);
        m.record_first_token(Duration::from_millis(20), 100);
        m.record_generated(5);
        m.record_finished(
            FinishReason::Length,
            &RequestTimings {
                generation_tokens: 5,
                decode: Duration::from_millis(40),
                ..Default::default()
            },
        );
        let text = m.render();
        for line in [
            "vllm:num_requests_running{model_name=\"glm\"} 3",
            "vllm:num_requests_waiting{model_name=\"glm\"} 2",
            "vllm:kv_cache_usage_perc{model_name=\"glm\"} 0.5",
            "vllm:prefix_cache_queries_total{model_name=\"glm\"} 100",
            "vllm:prefix_cache_hits_total{model_name=\"glm\"} 40",
            "vllm:num_preemptions_total{model_name=\"glm\"} 1",
            "vllm:prompt_tokens_total{model_name=\"glm\"} 100",
            "vllm:generation_tokens_total{model_name=\"glm\"} 5",
            "vllm:request_success_total{finished_reason=\"length\",model_name=\"glm\"} 1",
            "vllm:time_to_first_token_seconds_count{model_name=\"glm\"} 1",
            "vllm:request_time_per_output_token_seconds_sum{model_name=\"glm\"} 0.01",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("vllm:cache_config_info{block_size=\"16\""));
        assert!(text.contains("# TYPE vllm:iteration_tokens_total histogram"));
        assert!(
            !text.contains("spec_decode"),
            "no speculation, no spec series"
        );
    }

    #[test]
    fn spec_decode_counters_follow_the_scheduler() {
        let m = metrics().with_spec_decode(2).unwrap();
        let text = m.render();
        assert!(text.contains(
            "vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name=\"glm\",position=\"1\"} 0"
        ));
        let prev = SchedulerStats::default();
        let now = SchedulerStats {
            spec_num_drafts: 4,
            spec_num_draft_tokens: 8,
            spec_num_accepted_tokens: 5,
            spec_accepted_per_pos: vec![3, 2],
            ..SchedulerStats::default()
        };
        m.record_scheduler(&now, &prev);
        m.record_scheduler(&now, &now);
        let text = m.render();
        for line in [
            "vllm:spec_decode_num_drafts_total{model_name=\"glm\"} 4",
            "vllm:spec_decode_num_draft_tokens_total{model_name=\"glm\"} 8",
            "vllm:spec_decode_num_accepted_tokens_total{model_name=\"glm\"} 5",
            "vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name=\"glm\",position=\"0\"} 3",
            "vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name=\"glm\",position=\"1\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
