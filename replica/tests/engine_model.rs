//! The engine on the real GLM model: the embedded demo checkpoint (`model/demo`, a tiny random
//! GLM-4.5-architecture model with its tokenizer) on the CPU backend, behind
//! `ModelRunner<CpuBackend>`, driven through [`Replica::start`] and the [`EngineHandle`].
//!
//! The fake runners of `tests/http` cannot catch KV mistakes (wrong slots, stale blocks after
//! preemption, a prefix hit that skips tokens it should compute): their logits ignore the KV
//! cache. Here every scheduling feature is checked against the model itself, token for token:
//! batching with chunked prefill, prefix caching, preemption by recompute, and seeded sampling.
//! A recording wrapper around the runner counts the tokens each request really computed.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use model::generate::{generate, GenerateOptions, TokenPicker};
use model::{CpuBackend, Glm4Moe, LoadOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica::engine::EngineRequest;
use replica::runner::{ModelRunner, SchedulerOutput};
use replica::sampler::SamplingParams;
use replica::{
    GenerationDefaults, Logits, ModelFamily, Replica, ReplicaParts, Runner, RunnerError,
    ServeConfig,
};
use scheduler::FinishReason;
use tokenizers::Tokenizer;

use common::*;

/// First added (special) token of the demo tokenizer; prompts use ordinary tokens below it.
const FIRST_SPECIAL: u32 = 609;

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/demo")
}

fn load_model() -> Glm4Moe<CpuBackend> {
    Glm4Moe::load(&demo_dir(), &Default::default(), &LoadOptions::default())
        .expect("load the demo model")
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_file(demo_dir().join("tokenizer.json")).expect("demo tokenizer"))
}

/// What the runner computed, shared between the engine thread and the test.
#[derive(Debug, Default)]
struct RunLog {
    /// Tokens computed per scheduler id (prefill chunks, decode tokens and recomputation).
    computed: HashMap<u64, usize>,
    /// Largest number of sequences in one step.
    max_seqs_per_step: usize,
    /// Steps that mixed a prefill chunk (> 1 token) with decode tokens.
    mixed_steps: usize,
}

/// `ModelRunner` plus a [`RunLog`].
struct Recording {
    inner: ModelRunner<CpuBackend>,
    log: Arc<Mutex<RunLog>>,
}

impl Runner for Recording {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        {
            let mut log = self.log.lock().unwrap();
            for s in &batch.seqs {
                *log.computed.entry(s.id).or_default() += s.token_ids.len();
            }
            log.max_seqs_per_step = log.max_seqs_per_step.max(batch.seqs.len());
            let prefill = batch.seqs.iter().any(|s| s.token_ids.len() > 1);
            let decode = batch.seqs.iter().any(|s| s.token_ids.len() == 1);
            if prefill && decode {
                log.mixed_steps += 1;
            }
        }
        self.inner.execute(batch)
    }

    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn release(&mut self, ids: &[u64]) {
        self.inner.release(ids)
    }
}

fn config(max_num_seqs: usize, max_num_batched_tokens: usize, max_model_len: usize) -> ServeConfig {
    ServeConfig {
        model: Some("demo".into()),
        max_model_len: Some(max_model_len),
        max_num_seqs,
        max_num_batched_tokens,
        block_size: BLOCK_SIZE,
        ..ServeConfig::default()
    }
}

/// A replica on the demo model with `num_blocks` KV blocks.
fn start(cfg: ServeConfig, num_blocks: usize) -> (Replica, Arc<Mutex<RunLog>>) {
    let model = load_model();
    let eos = model.config.eos_token_ids.clone();
    let max_position_embeddings = model.config.max_position_embeddings;
    let log = Arc::new(Mutex::new(RunLog::default()));
    let runner = Recording {
        inner: ModelRunner::new(model, num_blocks, cfg.block_size).expect("KV cache"),
        log: log.clone(),
    };
    let parts = ReplicaParts {
        runner: Box::new(runner),
        tokenizer: tokenizer(),
        num_blocks,
        eos_token_ids: eos,
        chat_template: None,
        model_family_hint: Some(ModelFamily::Glm45),
        max_position_embeddings,
        default_served_name: "demo".into(),
        generation_defaults: GenerationDefaults::default(),
    };
    (Replica::start(&cfg, parts).expect("start replica"), log)
}

fn seeded(prompt: Vec<u32>, max_tokens: usize, seed: u64) -> EngineRequest {
    request(
        prompt,
        max_tokens,
        SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
    )
}

fn random_prompt(rng: &mut StdRng, len: usize) -> Vec<u32> {
    (0..len).map(|_| rng.gen_range(0..FIRST_SPECIAL)).collect()
}

fn assert_same_tokens(got: &[Choice], want: &[Choice], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.tokens, w.tokens, "{what}: request {i} differs");
    }
}

/// Greedy over the tokenizer's ids only, as the engine's sampler (the model's logits rows are
/// padded past the tokenizer).
struct GreedyIn(usize);

impl TokenPicker for GreedyIn {
    fn pick(&mut self, logits: &[f32]) -> u32 {
        model::generate::argmax(&logits[..self.0])
    }
}

#[tokio::test]
async fn batched_greedy_equals_each_request_alone() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let max_tokens = 32;
    // 36 prompts of 1..=300 tokens, including the extremes; every fourth one shares a 64-token
    // head with its predecessor so prefix hits happen inside the batch too.
    let mut lens: Vec<usize> = vec![1, 2, 300, 299, 17, 16, 15, 33];
    lens.extend((0..28).map(|_| rng.gen_range(1..=300)));
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let mut p = random_prompt(&mut rng, len);
        if i % 4 == 3 && len > 64 && prompts[i - 1].len() > 64 {
            p[..64].copy_from_slice(&prompts[i - 1][..64]);
        }
        prompts.push(p);
    }
    let reqs: Vec<EngineRequest> = prompts
        .iter()
        .map(|p| greedy(p.clone(), max_tokens))
        .collect();

    // Batched: a 256-token budget forces chunked prefill mixed with decode steps.
    let (batched, log) = start(config(64, 256, 1024), 1024);
    let together = run_together(batched.engine(), &reqs).await;
    // Alone: a fresh engine without prefix caching, one request at a time.
    let alone_cfg = ServeConfig {
        enable_prefix_caching: false,
        ..config(64, 256, 1024)
    };
    let (single, _) = start(alone_cfg, 1024);
    let alone = run_alone(single.engine(), &reqs).await;

    for c in together.iter().chain(&alone) {
        assert_eq!(c.finish, FinishReason::Length);
        assert_eq!(c.tokens.len(), max_tokens);
    }
    assert_same_tokens(&together, &alone, "batched vs alone");
    let (max_seqs, mixed) = {
        let log = log.lock().unwrap();
        (log.max_seqs_per_step, log.mixed_steps)
    };
    assert!(
        max_seqs >= 32,
        "the requests were not batched: at most {max_seqs} seqs per step"
    );
    assert!(mixed > 0, "no step mixed prefill chunks with decodes");
    assert!(
        batched.engine().stats().prefix_hits_tokens >= 64,
        "the shared heads never hit the prefix cache"
    );

    // Anchor: the engine's greedy output is the plain single-sequence loop's.
    let model = load_model();
    let vocab = tokenizer().get_vocab_size(true);
    for i in [0, 2, 5, 9] {
        let opts = GenerateOptions {
            max_new_tokens: max_tokens,
            block_size: BLOCK_SIZE,
            ..GenerateOptions::default()
        };
        let want = generate(&model, &prompts[i], &opts, &mut GreedyIn(vocab)).unwrap();
        assert_eq!(
            alone[i].tokens, want,
            "engine vs model::generate, prompt {i}"
        );
    }
    batched.shutdown().await;
    single.shutdown().await;
}

#[tokio::test]
async fn shared_prefix_is_computed_once() {
    let mut rng = StdRng::seed_from_u64(7);
    let max_tokens = 8;
    let prefix = random_prompt(&mut rng, 200);
    let with_tail = |tail: Vec<u32>| -> Vec<u32> { prefix.iter().copied().chain(tail).collect() };
    let first = with_tail(random_prompt(&mut rng, 23));
    let second = with_tail(random_prompt(&mut rng, 41));

    let (r, log) = start(config(16, 512, 1024), 256);
    let engine = r.engine();
    let a = run_alone(engine, &[greedy(first.clone(), max_tokens)]).await;
    let before = engine.stats();
    let b = run_alone(engine, &[greedy(second.clone(), max_tokens)]).await;
    let after = engine.stats();

    // Only whole blocks are shared: 200 / 16 = 12 blocks.
    let cached = 200 / BLOCK_SIZE * BLOCK_SIZE;
    assert_eq!(a[0].num_cached_tokens, 0);
    assert_eq!(b[0].num_cached_tokens, cached);
    assert_eq!(
        after.prefix_hits_tokens - before.prefix_hits_tokens,
        cached as u64
    );
    assert_eq!(
        after.prefix_queries_tokens - before.prefix_queries_tokens,
        second.len() as u64
    );
    {
        let log = log.lock().unwrap();
        // Every prompt token once, and each generated token but the last fed back once.
        assert_eq!(log.computed[&a[0].id], first.len() + max_tokens - 1);
        assert_eq!(
            log.computed[&b[0].id],
            second.len() - cached + max_tokens - 1,
            "the second request recomputed cached tokens"
        );
    }

    // Same outputs as engines that cannot reuse anything.
    let (fresh, _) = start(
        ServeConfig {
            enable_prefix_caching: false,
            ..config(16, 512, 1024)
        },
        256,
    );
    let want = run_alone(
        fresh.engine(),
        &[greedy(first, max_tokens), greedy(second, max_tokens)],
    )
    .await;
    assert_same_tokens(&[a[0].clone(), b[0].clone()], &want, "cached vs uncached");
    r.shutdown().await;
    fresh.shutdown().await;
}

#[tokio::test]
async fn preemption_under_tiny_kv_keeps_outputs() {
    let mut rng = StdRng::seed_from_u64(11);
    let max_tokens = 24;
    // 12 requests of up to 100 + 24 tokens (8 blocks each) over 24 blocks: about 3 fit. A third
    // of them sample with a seed: recomputation must not disturb their random streams.
    let reqs: Vec<EngineRequest> = (0..12u64)
        .map(|i| {
            let len = rng.gen_range(40..=100);
            let prompt = random_prompt(&mut rng, len);
            if i % 3 == 2 {
                seeded(prompt, max_tokens, 1000 + i)
            } else {
                greedy(prompt, max_tokens)
            }
        })
        .collect();
    let num_blocks = 24;
    let (tight, log) = start(config(12, 256, 128), num_blocks);
    let together = run_together(tight.engine(), &reqs).await;
    let stats = tight.engine().stats();
    assert!(stats.preemptions > 0, "no preemption: {stats:?}");
    assert_eq!(stats.running + stats.waiting, 0);
    assert_eq!(stats.free_blocks, num_blocks, "blocks leaked: {stats:?}");
    // Preempted requests were recomputed: more tokens than prompts plus decodes.
    let computed: usize = log.lock().unwrap().computed.values().sum();
    let minimal: usize = reqs
        .iter()
        .map(|r| r.prompt_token_ids.len() + max_tokens - 1)
        .sum();
    assert!(computed > minimal, "{computed} <= {minimal}");

    let (roomy, _) = start(config(12, 256, 128), 512);
    let alone = run_alone(roomy.engine(), &reqs).await;
    for c in &together {
        assert_eq!(c.finish, FinishReason::Length);
    }
    assert_same_tokens(&together, &alone, "preempted vs alone");
    tight.shutdown().await;
    roomy.shutdown().await;
}

#[tokio::test]
async fn seeded_sampling_is_reproducible() {
    let mut rng = StdRng::seed_from_u64(3);
    let prompt = random_prompt(&mut rng, 50);
    let other = random_prompt(&mut rng, 120);
    let max_tokens = 16;
    let (r, _) = start(config(16, 256, 1024), 256);
    let engine = r.engine();
    // Concurrently, next to an unrelated request: the batch must not change a seeded stream.
    let out = run_together(
        engine,
        &[
            seeded(prompt.clone(), max_tokens, 1234),
            seeded(other.clone(), max_tokens, 99),
            seeded(prompt.clone(), max_tokens, 1234),
            seeded(prompt.clone(), max_tokens, 1235),
        ],
    )
    .await;
    let again = run_alone(engine, &[seeded(prompt.clone(), max_tokens, 1234)]).await;
    assert_eq!(out[0].tokens, out[2].tokens, "same seed, same batch");
    assert_eq!(out[0].tokens, again[0].tokens, "same seed, alone");
    assert_ne!(
        out[0].tokens, out[3].tokens,
        "different seeds gave the same sample"
    );
    // Temperature 1 really samples: it leaves the greedy path.
    let greedy_out = run_alone(engine, &[greedy(prompt, max_tokens)]).await;
    assert_ne!(out[0].tokens, greedy_out[0].tokens);
    r.shutdown().await;
}
