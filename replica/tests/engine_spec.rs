//! Speculative decoding with the MTP layer, on real models: the demo checkpoint (`model/demo`) and
//! the parity fixture `tests/fixtures/tiny-a`, both tiny random GLM-4.5-architecture models with an
//! MTP layer, behind `ModelRunner<CpuBackend>`.
//!
//! The key property: greedy output with speculation is token for token the output without it,
//! for every draft length, batched with chunked prefill, alone, and under preemption. The
//! acceptance counters must add up: every step yields its accepted drafts plus one token.
//! (With random weights the acceptance rate itself means little; it is printed for the record.)

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use model::{CpuBackend, Glm4Moe, LoadOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica::engine::{EngineHandle, EngineRequest};
use replica::runner::device_twin::CpuDeviceEngine;
use replica::runner::{DeviceRunner, DeviceSampling, DraftSeq, ModelRunner, SchedulerOutput};
use replica::sampler::SamplingParams;
use replica::{
    GenerationDefaults, Logits, ModelFamily, Replica, ReplicaParts, Runner, RunnerError,
    ServeConfig,
};
use scheduler::FinishReason;
use tokenizers::Tokenizer;

use common::*;

/// A model with its tokenizer and the ids prompts may use.
#[derive(Debug, Clone, Copy)]
enum Fixture {
    /// `model/demo`: its own tokenizer, ordinary tokens below 609.
    Demo,
    /// `tests/fixtures/tiny-a`: the byte-level test tokenizer (ids below 256).
    TinyA,
}

impl Fixture {
    fn dir(self) -> PathBuf {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        match self {
            Self::Demo => root.join("../model/demo"),
            Self::TinyA => root.join("../tests/fixtures/tiny-a"),
        }
    }

    fn load(self, load_mtp: bool) -> Glm4Moe<CpuBackend> {
        let opts = LoadOptions {
            load_mtp,
            progress: false,
            ..LoadOptions::default()
        };
        Glm4Moe::load(&self.dir(), &Default::default(), &opts).expect("load the model")
    }

    fn tokenizer(self) -> Arc<Tokenizer> {
        Arc::new(match self {
            Self::Demo => {
                Tokenizer::from_file(self.dir().join("tokenizer.json")).expect("demo tokenizer")
            }
            Self::TinyA => replica::testing::byte_tokenizer(),
        })
    }

    fn prompt_vocab(self) -> u32 {
        match self {
            Self::Demo => 609,
            Self::TinyA => 256,
        }
    }
}

/// What the runner was asked to do.
#[derive(Debug, Default)]
struct RunLog {
    /// Steps that computed at least one token.
    steps: usize,
    /// Steps in which some sequence carried draft tokens.
    steps_with_drafts: usize,
    /// Verify steps that asked for greedy ids rather than logits (the device path).
    greedy_verifies: usize,
    /// Per step: (sequences, draft tokens carried).
    batches: Vec<(usize, usize)>,
    /// Logits buffers with rows handed to the engine, and handed back ([`Runner::recycle`]).
    logits_out: usize,
    logits_back: usize,
}

/// `ModelRunner` plus a [`RunLog`], forwarding the drafting methods. With `device` it claims to
/// sample on the device, so the engine takes its device paths (plain steps through
/// `execute_sampled`, all-greedy speculative steps through the `*_greedy` methods), served by the
/// trait's host twins of the device draws.
struct Recording {
    inner: ModelRunner<CpuBackend>,
    log: Arc<Mutex<RunLog>>,
    device: bool,
}

impl Recording {
    fn record(&self, batch: &SchedulerOutput) {
        let mut log = self.log.lock().unwrap();
        log.steps += usize::from(!batch.seqs.is_empty());
        log.steps_with_drafts += usize::from(batch.num_draft_tokens() > 0);
        if !batch.seqs.is_empty() {
            log.batches
                .push((batch.seqs.len(), batch.num_draft_tokens()));
        }
    }

    fn hand_out(&self, logits: Result<Logits, RunnerError>) -> Result<Logits, RunnerError> {
        if logits.as_ref().is_ok_and(|l| l.rows > 0) {
            self.log.lock().unwrap().logits_out += 1;
        }
        logits
    }
}

impl Runner for Recording {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.record(batch);
        let logits = self.inner.execute(batch);
        self.hand_out(logits)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn release(&mut self, ids: &[u64]) {
        self.inner.release(ids)
    }
    fn recycle(&mut self, logits: Logits) {
        if logits.rows > 0 {
            self.log.lock().unwrap().logits_back += 1;
        }
    }
    fn samples_on_device(&self) -> bool {
        self.device
    }
    fn supports_drafting(&self) -> bool {
        self.inner.supports_drafting()
    }
    fn execute_verify(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.record(batch);
        let logits = self.inner.execute_verify(batch);
        self.hand_out(logits)
    }
    fn execute_verify_greedy(
        &mut self,
        batch: &SchedulerOutput,
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        self.log.lock().unwrap().greedy_verifies += 1;
        self.record(batch);
        self.inner.execute_verify_greedy(batch, valid_vocab)
    }
    fn draft(&mut self, batch: &SchedulerOutput, seqs: &[DraftSeq]) -> Result<Logits, RunnerError> {
        let logits = self.inner.draft(batch, seqs);
        self.hand_out(logits)
    }
    fn draft_next(&mut self, tokens: &[(u64, u32)]) -> Result<Logits, RunnerError> {
        let logits = self.inner.draft_next(tokens);
        self.hand_out(logits)
    }
}

fn config(k: usize, budget: usize, max_model_len: usize) -> ServeConfig {
    ServeConfig {
        model: Some("fixture".into()),
        max_model_len: Some(max_model_len),
        max_num_seqs: 32,
        max_num_batched_tokens: budget,
        block_size: BLOCK_SIZE,
        speculative_config: (k > 0).then(|| {
            format!(r#"{{"method": "mtp", "num_speculative_tokens": {k}}}"#)
                .parse()
                .unwrap()
        }),
        ..ServeConfig::default()
    }
}

fn parts(
    f: Fixture,
    model: Glm4Moe<CpuBackend>,
    num_blocks: usize,
    device: bool,
) -> (ReplicaParts, Arc<Mutex<RunLog>>) {
    let eos = model.config.eos_token_ids.clone();
    let max_position_embeddings = model.config.max_position_embeddings;
    let log = Arc::new(Mutex::new(RunLog::default()));
    let runner = Recording {
        inner: ModelRunner::new(model, num_blocks, BLOCK_SIZE).expect("KV cache"),
        log: log.clone(),
        device,
    };
    let parts = ReplicaParts {
        runner: Box::new(runner),
        tokenizer: f.tokenizer(),
        num_blocks,
        eos_token_ids: eos,
        chat_template: None,
        model_family_hint: Some(ModelFamily::Glm45),
        max_position_embeddings,
        default_served_name: "fixture".into(),
        generation_defaults: GenerationDefaults::default(),
    };
    (parts, log)
}

fn start(f: Fixture, cfg: ServeConfig, num_blocks: usize) -> (Replica, Arc<Mutex<RunLog>>) {
    start_on(f, cfg, num_blocks, false)
}

/// As [`start`], with a runner that claims device sampling when `device`.
fn start_on(
    f: Fixture,
    cfg: ServeConfig,
    num_blocks: usize,
    device: bool,
) -> (Replica, Arc<Mutex<RunLog>>) {
    let (parts, log) = parts(f, f.load(true), num_blocks, device);
    (Replica::start(&cfg, parts).expect("start replica"), log)
}

/// A replica whose runner is the device runner (the GPU runner's logic) over the CPU twin of the
/// device engine, with a KV cache of `num_blocks` blocks.
fn start_twin(f: Fixture, cfg: ServeConfig, num_blocks: usize) -> Replica {
    let (p, _) = parts(f, f.load(false), num_blocks, false);
    let engine = CpuDeviceEngine::new(f.load(true), num_blocks, BLOCK_SIZE, cfg.max_num_seqs)
        .expect("KV cache");
    let runner = DeviceRunner::new(engine);
    assert!(runner.supports_drafting() && runner.samples_on_device());
    Replica::start(
        &cfg,
        ReplicaParts {
            runner: Box::new(runner),
            ..p
        },
    )
    .expect("start replica")
}

fn seeded(prompt: Vec<u32>, max_tokens: usize, seed: u64) -> EngineRequest {
    request(
        prompt,
        max_tokens,
        SamplingParams {
            temperature: 0.8,
            top_k: 20,
            seed: Some(seed),
            ..SamplingParams::default()
        },
    )
}

fn prompts(f: Fixture, seed: u64, lens: &[usize]) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    lens.iter()
        .map(|&n| (0..n).map(|_| rng.gen_range(0..f.prompt_vocab())).collect())
        .collect()
}

fn assert_same(got: &[Choice], want: &[Choice], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.tokens, w.tokens, "{what}: request {i} differs");
        assert_eq!(g.finish, w.finish, "{what}: finish of request {i}");
    }
}

/// Every step of a choice yields its accepted drafts plus one token (no stop token cuts a
/// run short here), and nothing is accepted that was not drafted.
fn assert_counters_add_up(engine: &EngineHandle, out: &[Choice], what: &str) -> (u64, u64) {
    let st = engine.stats();
    let tokens: usize = out.iter().map(|c| c.tokens.len()).sum();
    let steps: usize = out.iter().map(|c| c.token_steps).sum();
    assert!(
        st.spec_num_accepted_tokens <= st.spec_num_draft_tokens,
        "{what}: {st:?}"
    );
    assert_eq!(
        tokens as u64,
        st.spec_num_accepted_tokens + steps as u64,
        "{what}: tokens = accepted + steps"
    );
    assert_eq!(
        st.spec_accepted_per_pos.iter().sum::<u64>(),
        st.spec_num_accepted_tokens
    );
    (st.spec_num_draft_tokens, st.spec_num_accepted_tokens)
}

/// Greedy with MTP speculation (1, 2 and 3 draft tokens) equals greedy without, batched with a
/// small budget (chunked prefill mixed with decode and draft tokens) and one request at a time.
async fn greedy_equivalence(f: Fixture) {
    let lens = [1, 2, 15, 16, 17, 40, 100, 150, 33, 64, 5, 90];
    let max_tokens = [1, 2, 5, 16, 31, 40];
    let reqs: Vec<EngineRequest> = prompts(f, 0x5bec, &lens)
        .into_iter()
        .enumerate()
        .map(|(i, p)| greedy(p, max_tokens[i % max_tokens.len()]))
        .collect();
    let (plain, plain_log) = start(f, config(0, 128, 512), 512);
    let want = run_together(plain.engine(), &reqs).await;
    let plain_steps = plain_log.lock().unwrap().steps;
    assert_eq!(plain.engine().stats().spec_num_drafts, 0);
    plain.shutdown().await;
    for k in [1, 2, 3] {
        let (spec, log) = start(f, config(k, 128, 512), 512);
        let got = run_together(spec.engine(), &reqs).await;
        assert_same(&got, &want, &format!("k = {k}, batched"));
        let (drafted, accepted) = assert_counters_add_up(spec.engine(), &got, "batched");
        let (steps, steps_with_drafts) = {
            let log = log.lock().unwrap();
            (log.steps, log.steps_with_drafts)
        };
        assert!(steps_with_drafts > 0, "k = {k}: no step verified drafts");
        eprintln!(
            "{f:?} k={k} batched: {accepted}/{drafted} drafts accepted ({:.1}%), {steps} steps vs \
             {plain_steps} without speculation",
            100.0 * accepted as f64 / drafted.max(1) as f64,
        );
        spec.shutdown().await;
    }
    // The device paths (plain steps drawn by `execute_sampled`, speculative steps verified and
    // drafted by greedy draws) give the same tokens.
    let (dev, log) = start_on(f, config(2, 128, 512), 512, true);
    let got = run_together(dev.engine(), &reqs).await;
    assert_same(&got, &want, "k = 2, batched, device draws");
    assert_counters_add_up(dev.engine(), &got, "device draws");
    let (greedy_verifies, steps) = {
        let log = log.lock().unwrap();
        (log.greedy_verifies, log.steps)
    };
    assert_eq!(
        greedy_verifies, steps,
        "every step verified on the device path"
    );
    dev.shutdown().await;
    // One at a time: every decode step is a speculative step of a single sequence.
    let (spec, log) = start(f, config(1, 128, 512), 512);
    let alone = run_alone(spec.engine(), &reqs[..6]).await;
    assert_same(&alone, &want[..6], "k = 1, alone");
    let (drafted, accepted) = assert_counters_add_up(spec.engine(), &alone, "alone");
    eprintln!(
        "{f:?} k=1 alone: {accepted}/{drafted} accepted, {} steps",
        log.lock().unwrap().steps
    );
    spec.shutdown().await;
}

#[tokio::test]
async fn greedy_with_mtp_speculation_equals_plain_greedy_demo() {
    greedy_equivalence(Fixture::Demo).await;
}

#[tokio::test]
async fn greedy_with_mtp_speculation_equals_plain_greedy_tiny_a() {
    greedy_equivalence(Fixture::TinyA).await;
}

/// The device runner (the GPU runner's bookkeeping: draft plans, kept slots, draft chains,
/// greedy draws on the device) over the device engine's CPU twin: greedy output with drafts
/// equals plain greedy output, and a batch mixing greedy and seeded sampled requests (drafts and
/// verification through host logits) gives exactly the CPU runner's tokens.
#[tokio::test]
async fn device_runner_over_the_cpu_twin_matches_the_cpu_runner() {
    for f in [Fixture::Demo, Fixture::TinyA] {
        let lens = [1, 2, 15, 16, 17, 40, 100, 150, 33, 64, 5, 90];
        let prompts = prompts(f, 0xd0e5, &lens);
        let greedy_reqs: Vec<EngineRequest> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| greedy(p.clone(), [1, 2, 5, 16, 31, 40][i % 6]))
            .collect();
        let mixed: Vec<EngineRequest> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let n = [3, 9, 24, 40][i % 4];
                if i % 2 == 0 {
                    greedy(p.clone(), n)
                } else {
                    seeded(p.clone(), n, 7 + i as u64)
                }
            })
            .collect();
        let (plain, _) = start(f, config(0, 128, 512), 512);
        let want = run_together(plain.engine(), &greedy_reqs).await;
        plain.shutdown().await;
        let (cpu_spec, _) = start(f, config(2, 128, 512), 512);
        let want_mixed = run_together(cpu_spec.engine(), &mixed).await;
        cpu_spec.shutdown().await;
        for k in [1, 2, 3] {
            let dev = start_twin(f, config(k, 128, 512), 512);
            let got = run_together(dev.engine(), &greedy_reqs).await;
            assert_same(
                &got,
                &want,
                &format!("{f:?} device runner, k = {k}, greedy"),
            );
            let (drafted, accepted) = assert_counters_add_up(dev.engine(), &got, "device");
            assert!(drafted > 0, "{f:?} k = {k}: nothing drafted");
            eprintln!("{f:?} device runner k={k}: {accepted}/{drafted} drafts accepted");
            dev.shutdown().await;
            if k == 2 {
                let dev = start_twin(f, config(k, 128, 512), 512);
                let got = run_together(dev.engine(), &mixed).await;
                assert_same(&got, &want_mixed, &format!("{f:?} device runner, mixed"));
                dev.shutdown().await;
            }
        }
    }
}

/// Drafts that are mostly right: the MTP layer still runs (its rows are replaced), but the
/// proposed tokens come from a reference greedy run, wrong at every third position. With random
/// weights the MTP layer itself is almost never right, so this is what exercises multi-token
/// acceptance and KV rollback on the real model.
struct Oracle {
    inner: Box<dyn Runner>,
    /// Reference sequences (prompt + greedy output).
    reference: Vec<Vec<u32>>,
    /// Known tokens of each sequence, then its draft chain.
    history: std::collections::HashMap<u64, Vec<u32>>,
}

impl Oracle {
    fn row(&self, id: u64, out: &mut [f32]) {
        let hist = &self.history[&id];
        let next = self
            .reference
            .iter()
            .find(|r| r.len() > hist.len() && r.starts_with(hist))
            .map(|r| r[hist.len()]);
        out.fill(0.0);
        if let Some(t) = next {
            let wrong = (id as usize + hist.len()).is_multiple_of(3);
            out[if wrong {
                (t as usize + 1) % 600
            } else {
                t as usize
            }] = 10.0;
        }
    }
}

impl Runner for Oracle {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.inner.execute(batch)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn release(&mut self, ids: &[u64]) {
        for id in ids {
            self.history.remove(id);
        }
        self.inner.release(ids)
    }
    fn samples_on_device(&self) -> bool {
        self.inner.samples_on_device()
    }
    fn supports_drafting(&self) -> bool {
        true
    }
    fn execute_verify(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        for s in &batch.seqs {
            let h = self.history.entry(s.id).or_default();
            h.truncate(s.start_pos);
            h.extend_from_slice(s.known_tokens());
        }
        self.inner.execute_verify(batch)
    }
    fn draft(&mut self, batch: &SchedulerOutput, seqs: &[DraftSeq]) -> Result<Logits, RunnerError> {
        let mut logits = self.inner.draft(batch, seqs)?;
        for (i, d) in seqs.iter().enumerate() {
            let s = batch
                .seqs
                .iter()
                .find(|s| s.id == d.id)
                .expect("drafting seq");
            let h = self.history.get_mut(&d.id).expect("history");
            h.truncate(s.start_pos);
            h.extend_from_slice(&s.token_ids[..d.num_verified]);
            h.push(d.next_token);
            self.row(d.id, logits.row_mut(i));
        }
        Ok(logits)
    }
    fn draft_next(&mut self, tokens: &[(u64, u32)]) -> Result<Logits, RunnerError> {
        let mut logits = self.inner.draft_next(tokens)?;
        for (i, &(id, t)) in tokens.iter().enumerate() {
            self.history.get_mut(&id).expect("history").push(t);
            self.row(id, logits.row_mut(i));
        }
        Ok(logits)
    }
}

/// With mostly-right drafts, greedy output is still unchanged, most drafts are accepted, and
/// the requests need far fewer steps.
#[tokio::test]
async fn accepted_drafts_keep_greedy_output_and_save_steps() {
    let f = Fixture::Demo;
    let lens = [3, 17, 40, 64, 90, 31];
    let reqs: Vec<EngineRequest> = prompts(f, 0x0a11, &lens)
        .into_iter()
        .enumerate()
        .map(|(i, p)| greedy(p, [32, 7, 40, 19, 40, 2][i]))
        .collect();
    let (plain, plain_log) = start(f, config(0, 128, 512), 512);
    let want = run_alone(plain.engine(), &reqs).await;
    let plain_steps = plain_log.lock().unwrap().steps;
    plain.shutdown().await;
    let reference: Vec<Vec<u32>> = reqs
        .iter()
        .zip(&want)
        .map(|(r, c)| {
            r.prompt_token_ids
                .iter()
                .chain(&c.tokens)
                .copied()
                .collect()
        })
        .collect();
    // `device`: all-greedy steps verify and draft with the device-side greedy draws. `twin`: the
    // oracle wraps the device runner over the CPU twin of the device engine (its kept rows and
    // draft chains then see accepted drafts and rollbacks).
    for (k, together, device, twin) in [
        (3, false, false, false),
        (2, true, false, false),
        (3, true, true, false),
        (2, true, true, true),
    ] {
        let (p, log) = parts(f, f.load(true), 512, device);
        let inner: Box<dyn Runner> = if twin {
            let engine = CpuDeviceEngine::new(f.load(true), 512, BLOCK_SIZE, 32).unwrap();
            Box::new(DeviceRunner::new(engine))
        } else {
            Box::new(Recording {
                inner: ModelRunner::new(f.load(true), 512, BLOCK_SIZE).unwrap(),
                log: log.clone(),
                device,
            })
        };
        let oracle = Oracle {
            inner,
            reference: reference.clone(),
            history: Default::default(),
        };
        let spec = Replica::start(
            &config(k, 128, 512),
            ReplicaParts {
                runner: Box::new(oracle),
                ..p
            },
        )
        .unwrap();
        let got = if together {
            run_together(spec.engine(), &reqs).await
        } else {
            run_alone(spec.engine(), &reqs).await
        };
        assert_same(
            &got,
            &want,
            &format!("oracle drafts, k = {k}, device draws {device}, twin {twin}"),
        );
        let (drafted, accepted) = assert_counters_add_up(spec.engine(), &got, "oracle");
        let steps = log.lock().unwrap().steps;
        eprintln!(
            "oracle drafts k={k} together={together} device={device} twin={twin}: \
             {accepted}/{drafted} accepted, {steps} steps recorded (alone without speculation: \
             {plain_steps})"
        );
        assert!(accepted * 2 > drafted, "{accepted} of {drafted} accepted");
        if !together {
            assert!(
                steps * 3 < plain_steps * 2,
                "{steps} vs {plain_steps} steps"
            );
        }
        spec.shutdown().await;
    }
}

/// A batch mixing greedy and seeded sampled requests: the greedy ones are unchanged by
/// speculation, the sampled ones run to their length and are reproducible by seed.
#[tokio::test]
async fn sampled_and_greedy_requests_speculate_together() {
    let f = Fixture::Demo;
    let ps = prompts(f, 9, &[30, 45, 30, 12]);
    let max_tokens = 24;
    let reqs = vec![
        greedy(ps[0].clone(), max_tokens),
        seeded(ps[1].clone(), max_tokens, 7),
        seeded(ps[1].clone(), max_tokens, 7),
        greedy(ps[2].clone(), max_tokens),
        seeded(ps[3].clone(), max_tokens, 8),
    ];
    let (plain, _) = start(f, config(0, 256, 512), 256);
    let want = run_alone(plain.engine(), &[reqs[0].clone(), reqs[3].clone()]).await;
    plain.shutdown().await;
    let (spec, _) = start(f, config(2, 256, 512), 256);
    let got = run_together(spec.engine(), &reqs).await;
    assert_same(
        &[got[0].clone(), got[3].clone()],
        &want,
        "greedy next to sampled",
    );
    for c in &got {
        assert_eq!(
            (c.finish, c.tokens.len()),
            (FinishReason::Length, max_tokens)
        );
    }
    assert_eq!(got[1].tokens, got[2].tokens, "same seed, same batch");
    let again = run_alone(spec.engine(), &reqs[1..2]).await;
    assert_eq!(again[0].tokens.len(), max_tokens);
    let st = spec.engine().stats();
    assert!(st.spec_num_drafts > 0 && st.spec_num_accepted_tokens <= st.spec_num_draft_tokens);
    spec.shutdown().await;
}

/// The engine hands every logits buffer back to the runner once it is done with it (plain,
/// verify and draft steps), so the GPU runner can reuse the host pages of its logits copies.
#[tokio::test]
async fn every_logits_buffer_goes_back_to_the_runner() {
    let f = Fixture::Demo;
    let ps = prompts(f, 11, &[20, 33, 9]);
    let reqs = vec![
        greedy(ps[0].clone(), 12),
        seeded(ps[1].clone(), 12, 3),
        seeded(ps[2].clone(), 12, 4),
    ];
    let (spec, log) = start(f, config(2, 256, 512), 256);
    let got = run_together(spec.engine(), &reqs).await;
    assert!(got.iter().all(|c| c.tokens.len() == 12));
    spec.shutdown().await;
    let log = log.lock().unwrap();
    assert!(log.steps_with_drafts > 0, "the run speculated");
    assert!(
        log.logits_out > log.steps,
        "verify and draft logits were handed out too"
    );
    assert_eq!(
        log.logits_back, log.logits_out,
        "logits buffers handed back"
    );
}

/// Speculating requests preempted under a tiny KV cache recompute and still produce the greedy
/// output; every block is free afterwards.
#[tokio::test]
async fn preemption_with_speculation_keeps_greedy_outputs() {
    let f = Fixture::Demo;
    let mut rng = StdRng::seed_from_u64(11);
    let lens: Vec<usize> = (0..10).map(|_| rng.gen_range(40..=90)).collect();
    let reqs: Vec<EngineRequest> = prompts(f, 12, &lens)
        .into_iter()
        .map(|p| greedy(p, 24))
        .collect();
    let (plain, _) = start(f, config(0, 256, 128), 256);
    let want = run_alone(plain.engine(), &reqs).await;
    plain.shutdown().await;
    let num_blocks = 24;
    let (tight, _) = start(f, config(2, 256, 128), num_blocks);
    let got = run_together(tight.engine(), &reqs).await;
    let st = tight.engine().stats();
    assert!(st.preemptions > 0, "no preemption: {st:?}");
    assert_eq!(st.free_blocks, num_blocks, "blocks leaked: {st:?}");
    assert_same(&got, &want, "preempted with speculation");
    tight.shutdown().await;
    // The device runner (its kept rows of preempted and resumed prefill chunks) over the twin.
    let twin = start_twin(f, config(2, 256, 128), num_blocks);
    let got = run_together(twin.engine(), &reqs).await;
    let st = twin.engine().stats();
    assert!(st.preemptions > 0, "no preemption: {st:?}");
    assert_eq!(st.free_blocks, num_blocks, "blocks leaked: {st:?}");
    assert_same(&got, &want, "preempted with speculation, device runner");
    twin.shutdown().await;
}

/// With `disable_by_batch_size`, a step after one of more sequences than the limit carries no
/// drafts, drafting resumes once the batch has shrunk to the limit, and greedy output is
/// unchanged throughout (the draft model's KV stays whole while nobody drafts).
#[tokio::test]
async fn speculation_stops_above_the_batch_size_limit() {
    let f = Fixture::Demo;
    let lens = [12, 30, 7, 50, 21, 40, 9, 33];
    let reqs: Vec<EngineRequest> = prompts(f, 0xba7c, &lens)
        .into_iter()
        .enumerate()
        .map(|(i, p)| greedy(p, 4 + 5 * i))
        .collect();
    let (plain, _) = start(f, config(0, 256, 512), 512);
    let want = run_together(plain.engine(), &reqs).await;
    plain.shutdown().await;
    let limit = 3;
    let mut cfg = config(1, 256, 512);
    cfg.speculative_config
        .as_mut()
        .unwrap()
        .disable_by_batch_size = Some(limit);
    let (spec, log) = start(f, cfg.clone(), 512);
    let got = run_together(spec.engine(), &reqs).await;
    assert_same(&got, &want, "speculation limited by batch size");
    assert_counters_add_up(spec.engine(), &got, "limited");
    let batches = log.lock().unwrap().batches.clone();
    for (i, pair) in batches.windows(2).enumerate() {
        let ((prev_seqs, _), (_, drafts)) = (pair[0], pair[1]);
        assert!(
            prev_seqs <= limit || drafts == 0,
            "step {} carried {drafts} drafts after a step of {prev_seqs} sequences: {batches:?}",
            i + 1
        );
    }
    assert!(
        batches.iter().any(|&(seqs, _)| seqs > limit),
        "the batch never exceeded the limit: {batches:?}"
    );
    assert!(
        batches.iter().any(|&(_, drafts)| drafts > 0),
        "no step drafted once the batch shrank: {batches:?}"
    );
    spec.shutdown().await;
    // The device runner over the twin: its kept rows with nobody drafting.
    let twin = start_twin(f, cfg, 512);
    let got = run_together(twin.engine(), &reqs).await;
    assert_same(
        &got,
        &want,
        "speculation limited by batch size, device runner",
    );
    twin.shutdown().await;
}

/// The engine's limit for speculative batches verified through host logits on a device runner.
const HOST_VERIFY_LIMIT: usize = 32;

/// [`config`] with room for more than [`HOST_VERIFY_LIMIT`] sequences at once.
fn wide_config(k: usize) -> ServeConfig {
    ServeConfig {
        max_num_seqs: 48,
        ..config(k, 512, 512)
    }
}

/// On a runner that samples on the device, sampled requests verify through host logits: a step
/// after one of more than 32 such sequences carries no drafts, smaller ones do, and every request
/// runs to its length.
#[tokio::test]
async fn sampled_speculation_on_a_device_runner_stops_above_32_sequences() {
    let f = Fixture::Demo;
    let lens: Vec<usize> = (0..44).map(|i| 5 + 2 * i).collect();
    let reqs: Vec<EngineRequest> = prompts(f, 0x5a3d, &lens)
        .into_iter()
        .enumerate()
        .map(|(i, p)| seeded(p, 10 + i, 100 + i as u64))
        .collect();
    let (spec, log) = start_on(f, wide_config(1), 512, true);
    let got = run_together(spec.engine(), &reqs).await;
    // Long enough that more than 32 share steps however the submissions interleave with steps.
    for (c, want) in got.iter().zip(10..) {
        assert_eq!((c.finish, c.tokens.len()), (FinishReason::Length, want));
    }
    let batches = log.lock().unwrap().batches.clone();
    for pair in batches.windows(2) {
        let ((prev_seqs, _), (_, drafts)) = (pair[0], pair[1]);
        assert!(
            prev_seqs <= HOST_VERIFY_LIMIT || drafts == 0,
            "drafts after a step of {prev_seqs} sampled sequences: {batches:?}"
        );
    }
    assert!(
        batches.iter().any(|&(seqs, _)| seqs > HOST_VERIFY_LIMIT),
        "{batches:?}"
    );
    // and drafts up to the limit: steps after ones of 17 to 32 sequences (as requests finish)
    assert!(
        batches
            .windows(2)
            .any(|p| (17..=HOST_VERIFY_LIMIT).contains(&p[0].0) && p[1].1 > 0),
        "no drafts after a step of 17 to {HOST_VERIFY_LIMIT} sequences: {batches:?}"
    );
    let st = spec.engine().stats();
    assert!(
        st.spec_num_accepted_tokens <= st.spec_num_draft_tokens,
        "{st:?}"
    );
    spec.shutdown().await;
}

/// The 32-sequence rule is for batches verified through host logits only: greedy requests on a
/// device runner keep drafting above 32 sequences, also in the steps after one where some of them
/// finished.
#[tokio::test]
async fn greedy_speculation_on_a_device_runner_is_not_limited() {
    let f = Fixture::Demo;
    let lens: Vec<usize> = (0..44).map(|i| 5 + 2 * i).collect();
    let reqs: Vec<EngineRequest> = prompts(f, 0x6a3d, &lens)
        .into_iter()
        .enumerate()
        .map(|(i, p)| greedy(p, 8 + i / 4))
        .collect();
    let (spec, log) = start_on(f, wide_config(1), 512, true);
    let got = run_together(spec.engine(), &reqs).await;
    assert_counters_add_up(spec.engine(), &got, "greedy on the device runner");
    let batches = log.lock().unwrap().batches.clone();
    // A step right after a large one has decoding sequences (requests arrive over time, so a
    // step of only fresh prefills carries no drafts and says nothing about the rule).
    let large = |seqs: usize| seqs > HOST_VERIFY_LIMIT;
    let mut judged = 0;
    for pair in batches.windows(2) {
        let ((prev_seqs, _), (seqs, drafts)) = (pair[0], pair[1]);
        if large(prev_seqs) && large(seqs) {
            judged += 1;
            assert!(
                drafts > 0,
                "a step of {seqs} greedy sequences without drafts: {batches:?}"
            );
        }
    }
    assert!(judged > 0, "no two large steps in a row: {batches:?}");
    spec.shutdown().await;
}

/// Steps by how the engine asked for them: (all rows drawn on the device, mixed device and host
/// rows, all rows on the host).
type Calls = Arc<Mutex<(usize, usize, usize)>>;

/// The device runner over the CPU twin, counting how the engine asked for each step.
struct Counted {
    inner: DeviceRunner<CpuDeviceEngine>,
    calls: Calls,
}

impl Runner for Counted {
    fn execute(&mut self, batch: &SchedulerOutput) -> Result<Logits, RunnerError> {
        self.calls.lock().unwrap().2 += 1;
        self.inner.execute(batch)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn release(&mut self, ids: &[u64]) {
        self.inner.release(ids)
    }
    fn samples_on_device(&self) -> bool {
        true
    }
    fn truncates_on_device(&self) -> bool {
        self.inner.truncates_on_device()
    }
    fn execute_sampled(
        &mut self,
        batch: &SchedulerOutput,
        specs: &[DeviceSampling],
        valid_vocab: usize,
    ) -> Result<Vec<u32>, RunnerError> {
        self.calls.lock().unwrap().0 += 1;
        self.inner.execute_sampled(batch, specs, valid_vocab)
    }
    fn execute_mixed(
        &mut self,
        batch: &SchedulerOutput,
        specs: &[Option<DeviceSampling>],
        valid_vocab: usize,
    ) -> Result<(Vec<u32>, Logits), RunnerError> {
        self.calls.lock().unwrap().1 += 1;
        self.inner.execute_mixed(batch, specs, valid_vocab)
    }
}

/// A replica (no speculation) on the device runner over the CPU twin, drawing truncated rows
/// on the device when `truncation`, with the runner's call counts.
fn counted_twin(f: Fixture, truncation: bool) -> (Replica, Calls) {
    let calls = Arc::new(Mutex::new((0, 0, 0)));
    let (p, _) = parts(f, f.load(false), 512, false);
    let mut engine = CpuDeviceEngine::new(f.load(false), 512, BLOCK_SIZE, 32).expect("KV cache");
    engine.set_truncation(truncation);
    let runner = Counted {
        inner: DeviceRunner::new(engine),
        calls: calls.clone(),
    };
    let replica = Replica::start(
        &config(0, 256, 512),
        ReplicaParts {
            runner: Box::new(runner),
            ..p
        },
    )
    .expect("start replica");
    (replica, calls)
}

/// Without speculation, a batch that mixes rows the device can draw (greedy, plain temperature)
/// with rows only the host sampler can (logprobs, top-k) draws the former on the device and
/// brings only the latter's logits back: every request gets exactly the tokens it gets when its
/// batch is all of its own kind (device rows on the device runner, host rows on the CPU runner).
#[tokio::test]
async fn mixed_batches_sample_each_row_where_it_can_be() {
    let f = Fixture::Demo;
    let lens: Vec<usize> = (0..12).map(|i| 4 + 7 * i).collect();
    let prompts = prompts(f, 0x313d, &lens);
    let kind = |i: usize, p: Vec<u32>| -> EngineRequest {
        let n = 6 + i;
        match i % 4 {
            0 => greedy(p, n),
            1 => request(
                p,
                n,
                SamplingParams {
                    temperature: 0.9,
                    seed: Some(40 + i as u64),
                    ..SamplingParams::default()
                },
            ),
            2 => request(
                p,
                n,
                SamplingParams {
                    temperature: 0.0,
                    logprobs: Some(3),
                    ..SamplingParams::default()
                },
            ),
            _ => seeded(p, n, 50 + i as u64),
        }
    };
    let reqs: Vec<EngineRequest> = prompts
        .into_iter()
        .enumerate()
        .map(|(i, p)| kind(i, p))
        .collect();
    let on_device = |i: usize| i % 4 < 2;
    let pick = |dev: bool| -> Vec<EngineRequest> {
        (0..reqs.len())
            .filter(|&i| on_device(i) == dev)
            .map(|i| reqs[i].clone())
            .collect()
    };
    let twin = start_twin(f, config(0, 256, 512), 512);
    let want_device = run_together(twin.engine(), &pick(true)).await;
    twin.shutdown().await;
    let (cpu, _) = start(f, config(0, 256, 512), 512);
    let want_host = run_together(cpu.engine(), &pick(false)).await;
    cpu.shutdown().await;

    let (mixed, calls) = counted_twin(f, false);
    let got = run_together(mixed.engine(), &reqs).await;
    mixed.shutdown().await;
    let (mut dev, mut host) = (want_device.iter(), want_host.iter());
    for (i, g) in got.iter().enumerate() {
        let want = if on_device(i) {
            dev.next()
        } else {
            host.next()
        }
        .unwrap();
        assert_eq!(g.tokens, want.tokens, "request {i} (kind {})", i % 4);
        assert_eq!(g.finish, want.finish, "request {i}");
    }
    let (_, mixed_steps, _) = *calls.lock().unwrap();
    assert!(
        mixed_steps > 0,
        "no mixed step: {:?}",
        calls.lock().unwrap()
    );
}

/// A device that truncates draws top-k, top-p and min-p rows itself: every step goes through
/// `execute_sampled`, and a seeded request gets the same tokens alone and batched. Without device
/// truncation the same requests are host rows.
#[tokio::test]
async fn truncated_rows_draw_on_a_truncating_device() {
    let f = Fixture::Demo;
    let lens: Vec<usize> = (0..9).map(|i| 3 + 11 * i).collect();
    let reqs: Vec<EngineRequest> = prompts(f, 0x7c0d, &lens)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let (top_k, top_p, min_p) = [(20, 1.0, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.1)][i % 3];
            request(
                p,
                8 + i,
                SamplingParams {
                    temperature: 1.1,
                    top_k,
                    top_p,
                    min_p,
                    seed: Some(90 + i as u64),
                    ..SamplingParams::default()
                },
            )
        })
        .collect();
    let (alone, _) = counted_twin(f, true);
    let want = run_alone(alone.engine(), &reqs).await;
    alone.shutdown().await;
    let (dev, calls) = counted_twin(f, true);
    let got = run_together(dev.engine(), &reqs).await;
    dev.shutdown().await;
    assert_same(&got, &want, "truncated rows, batched against alone");
    let (sampled, mixed, host) = *calls.lock().unwrap();
    assert!(
        sampled > 0 && mixed == 0 && host == 0,
        "{:?}",
        (sampled, mixed, host)
    );
    let (plain, calls) = counted_twin(f, false);
    run_together(plain.engine(), &reqs).await;
    plain.shutdown().await;
    let (_, mixed, host) = *calls.lock().unwrap();
    assert!(mixed + host > 0, "no host rows without device truncation");
}

/// `--speculative-config` on a model without an MTP layer fails at startup, clearly.
#[tokio::test]
async fn speculation_needs_an_mtp_layer() {
    let f = Fixture::Demo;
    let (p, _) = parts(f, f.load(false), 64, false);
    let err = Replica::start(&config(1, 256, 512), p)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--speculative-config") && err.contains("MTP"),
        "{err}"
    );
    // Without speculation the same model serves.
    let (p, _) = parts(f, f.load(false), 64, false);
    let r = Replica::start(&config(0, 256, 512), p).expect("plain replica");
    let out = run_alone(r.engine(), &[greedy(vec![1, 2, 3], 4)]).await;
    assert_eq!(out[0].tokens.len(), 4);
    r.shutdown().await;
}
