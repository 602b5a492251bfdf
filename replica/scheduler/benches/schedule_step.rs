//! One scheduler step (`schedule` + `update_from_output`) with 512 running and 1,000 waiting
//! requests. Only those two calls are timed; building the sampled tokens, refilling the queue
//! and resetting the state are not.
//!
//! * `decode_512_running_1000_waiting`: every running request decodes one token (the queue is
//!   blocked by `max_num_seqs`); the state is reset every 1,024 steps to keep lengths bounded
//!   (prompt 512 + up to 1,024 output tokens).
//! * `mixed_512_running_1000_waiting`: requests finish after 64..192 tokens and waiting ones
//!   are admitted (prefix lookup on a shared 256-token system prompt, chunked prefill), with the
//!   queue refilled to 1,000 after each step.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use scheduler::{NewRequest, RequestId, Scheduler, SchedulerConfig, SchedulerOutput};

const RUNNING: usize = 512;
const WAITING: usize = 1000;
const PROMPT: usize = 512;
const SYSTEM: usize = 256;

fn config(num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: 8192,
        max_num_seqs: RUNNING,
        max_model_len: 8192,
        block_size: 16,
        num_blocks,
        ..Default::default()
    }
}

/// A 512-token prompt: a shared system prompt, then tokens unique to `id`.
fn prompt(id: RequestId) -> Vec<u32> {
    let mut p: Vec<u32> = (0..SYSTEM as u32).map(|i| 1000 + i).collect();
    p.extend(
        (0..(PROMPT - SYSTEM) as u32)
            .map(|i| (id as u32).wrapping_mul(7919).wrapping_add(i * 31) % 150_000),
    );
    p
}

fn new_request(id: RequestId, max_tokens: usize) -> NewRequest {
    NewRequest {
        id,
        prompt_token_ids: prompt(id),
        max_tokens,
        ..Default::default()
    }
}

fn sampled(out: &SchedulerOutput) -> Vec<(RequestId, Vec<u32>)> {
    out.seqs
        .iter()
        .filter(|s| s.sample)
        .map(|s| (s.id, vec![(s.id as u32) % 151_000 + 1]))
        .collect()
}

fn step(s: &mut Scheduler) {
    let out = s.schedule();
    let sampled = sampled(&out);
    s.update_from_output(&out, &sampled);
}

/// One timed step; returns its duration.
fn timed_step(s: &mut Scheduler) -> Duration {
    let t0 = Instant::now();
    let out = s.schedule();
    let schedule_time = t0.elapsed();
    let sampled = sampled(&out);
    let t1 = Instant::now();
    black_box(s.update_from_output(&out, &sampled));
    schedule_time + t1.elapsed()
}

fn decode_state() -> Scheduler {
    // 512 requests of up to 512 + 1,024 tokens = 96 blocks each.
    let mut s = Scheduler::new(config(RUNNING * 100)).expect("config");
    for id in 0..(RUNNING + WAITING) as u64 {
        s.add_request(new_request(id, 4096)).expect("request");
    }
    // Until every running request is past its prompt: one decode token each per step.
    loop {
        step(&mut s);
        let stats = s.stats();
        if stats.running == RUNNING && stats.last_step_tokens == RUNNING {
            return s;
        }
    }
}

fn mixed_state(next_id: &mut u64) -> Scheduler {
    let mut s = Scheduler::new(config(32 * 1024)).expect("config");
    refill(&mut s, next_id);
    let mut prefill_steps = 0;
    for _ in 0..400 {
        step(&mut s);
        refill(&mut s, next_id);
        prefill_steps += usize::from(s.stats().last_step_tokens > s.stats().last_step_seqs);
    }
    // Steady state: a (nearly, right after finishes) full batch, and most steps admit new
    // requests (prefill chunks).
    assert!(
        s.num_running() > RUNNING * 9 / 10,
        "{} running",
        s.num_running()
    );
    assert!(
        prefill_steps > 200,
        "only {prefill_steps} steps with prefill"
    );
    s
}

fn refill(s: &mut Scheduler, next_id: &mut u64) {
    while s.num_waiting() < WAITING || s.num_running() + s.num_waiting() < RUNNING + WAITING {
        let max_tokens = 64 + (next_id.wrapping_mul(2_654_435_761) % 128) as usize;
        s.add_request(new_request(*next_id, max_tokens))
            .expect("request");
        *next_id += 1;
    }
}

fn bench_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_step");

    let fresh = decode_state();
    let mut state = fresh.clone();
    let mut since_reset = 0;
    group.bench_function("decode_512_running_1000_waiting", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if since_reset == 1024 {
                    state = fresh.clone();
                    since_reset = 0;
                }
                total += timed_step(&mut state);
                since_reset += 1;
            }
            total
        })
    });

    let mut next_id = 0;
    let mut state = mixed_state(&mut next_id);
    group.bench_function("mixed_512_running_1000_waiting", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += timed_step(&mut state);
                refill(&mut state, &mut next_id);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
