//! Randomized, seeded sequences of add / step / abort / finish over several configurations.
//! After every operation the scheduler's invariants hold (reference counts equal block-table
//! holders, so no block is both free and in use); the fake model checks every block table
//! against its KV store; at the end every block is free with reference count zero, and every
//! request that finished on its own produced exactly the tokens of an unscheduled reference run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scheduler::{AddError, FinishReason, NewRequest, QueuePolicy, SchedulerConfig};

use crate::fake_model::Harness;

const VOCAB: u32 = 40;

struct Totals {
    preemptions: u64,
    prefix_hits: u64,
    finished: usize,
    aborted: usize,
}

fn random_request(rng: &mut StdRng, id: u64, prefixes: &[Vec<u32>]) -> NewRequest {
    let mut prompt = if rng.gen_bool(0.6) {
        prefixes[rng.gen_range(0..prefixes.len())].clone()
    } else {
        Vec::new()
    };
    let extra = rng.gen_range(0..24);
    prompt.extend((0..extra).map(|_| rng.gen_range(1..VOCAB)));
    if prompt.is_empty() {
        prompt.push(rng.gen_range(1..VOCAB));
    }
    NewRequest {
        id,
        prompt_token_ids: prompt,
        max_tokens: rng.gen_range(1..40),
        min_tokens: rng.gen_range(0..4),
        priority: rng.gen_range(-2..3),
        cache_salt: match rng.gen_range(0..6) {
            0 => Some("tenant-a".to_owned()),
            1 => Some("tenant-b".to_owned()),
            _ => None,
        },
        eos_token_ids: vec![0],
        stop_token_ids: if rng.gen_bool(0.3) {
            vec![rng.gen_range(1..VOCAB)]
        } else {
            Vec::new()
        },
        ignore_eos: rng.gen_bool(0.1),
    }
}

fn pick_live(rng: &mut StdRng, h: &Harness) -> Option<u64> {
    let mut ids: Vec<u64> = h.histories.keys().copied().collect();
    ids.sort_unstable();
    (!ids.is_empty()).then(|| ids[rng.gen_range(0..ids.len())])
}

fn run(cfg: SchedulerConfig, seed: u64, ops: usize) -> Totals {
    let mut rng = StdRng::seed_from_u64(seed);
    let prefixes: Vec<Vec<u32>> = (0..4)
        .map(|_| {
            (0..rng.gen_range(8..48))
                .map(|_| rng.gen_range(1..VOCAB))
                .collect()
        })
        .collect();
    let mut h = Harness::new(cfg.clone(), VOCAB);
    let mut next_id = 0u64;
    for _ in 0..ops {
        match rng.gen_range(0..100) {
            0..=29 if h.histories.len() < 40 => {
                let r = random_request(&mut rng, next_id, &prefixes);
                next_id += 1;
                match h.add(r) {
                    Ok(()) | Err(AddError::TooLargeForCache { .. }) => {}
                    Err(e) => panic!("unexpected rejection: {e}"),
                }
            }
            85..=91 => {
                if let Some(id) = pick_live(&mut rng, &h) {
                    assert!(h.abort(id));
                }
                assert!(!h.abort(u64::MAX), "unknown ids are not aborted");
            }
            92..=94 => {
                if let Some(id) = pick_live(&mut rng, &h) {
                    assert!(h.finish(id, FinishReason::Stop));
                }
            }
            _ => {
                h.step();
            }
        }
    }
    h.run_to_completion(20_000);
    h.assert_all_free();
    h.assert_matches_reference();
    let stats = h.sched.stats();
    assert!(stats.prefix_hits_tokens <= stats.prefix_queries_tokens);
    Totals {
        preemptions: stats.preemptions,
        prefix_hits: stats.prefix_hits_tokens,
        finished: h.finished.len() - h.cut_short.len(),
        aborted: h.cut_short.len(),
    }
}

fn cfg(block_size: usize, num_blocks: usize, budget: usize, seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs: seqs,
        max_model_len: 128,
        block_size,
        num_blocks,
        ..Default::default()
    }
}

#[test]
fn random_operations_keep_invariants_and_free_everything() {
    let priority = QueuePolicy::Priority;
    let scenarios = [
        cfg(4, 40, 32, 8),
        SchedulerConfig {
            enable_prefix_caching: false,
            ..cfg(4, 40, 32, 8)
        },
        SchedulerConfig {
            policy: priority,
            num_lookahead_tokens: 2,
            ..cfg(4, 48, 32, 8)
        },
        cfg(1, 130, 16, 6),
        SchedulerConfig {
            policy: priority,
            ..cfg(16, 10, 64, 16)
        },
        SchedulerConfig {
            num_lookahead_tokens: 1,
            ..cfg(8, 1000, 256, 32)
        },
    ];
    let mut totals = Totals {
        preemptions: 0,
        prefix_hits: 0,
        finished: 0,
        aborted: 0,
    };
    for (i, c) in scenarios.into_iter().enumerate() {
        let t = run(c, 0x5eed + i as u64, 4000);
        totals.preemptions += t.preemptions;
        totals.prefix_hits += t.prefix_hits;
        totals.finished += t.finished;
        totals.aborted += t.aborted;
    }
    // The scenarios must actually exercise the interesting paths.
    assert!(totals.preemptions > 0, "no preemption happened");
    assert!(totals.prefix_hits > 0, "no prefix-cache hit happened");
    assert!(
        totals.finished > 500 && totals.aborted > 50,
        "{} finished, {} aborted",
        totals.finished,
        totals.aborted
    );
}
