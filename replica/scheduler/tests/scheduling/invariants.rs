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
    draft_tokens: u64,
    accepted_tokens: u64,
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
    let h = Harness::new(cfg, VOCAB);
    run_harness(h, seed, ops)
}

fn run_harness(mut h: Harness, seed: u64, ops: usize) -> Totals {
    let mut rng = StdRng::seed_from_u64(seed);
    let prefixes: Vec<Vec<u32>> = (0..4)
        .map(|_| {
            (0..rng.gen_range(8..48))
                .map(|_| rng.gen_range(1..VOCAB))
                .collect()
        })
        .collect();
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
        draft_tokens: stats.spec_num_draft_tokens,
        accepted_tokens: stats.spec_num_accepted_tokens,
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
        draft_tokens: 0,
        accepted_tokens: 0,
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

/// The same random operations with speculative decoding: drafts (some wrong) ride with decode
/// steps, rejected ones leave wrong KV behind. Outputs still equal the reference generation
/// token for token, every block table reads only true KV, cached blocks hold their content and
/// everything is freed at the end.
#[test]
fn random_operations_with_draft_tokens_keep_outputs_exact() {
    let spec = |k: usize, c: SchedulerConfig| SchedulerConfig {
        num_speculative_tokens: k,
        ..c
    };
    let scenarios = [
        (spec(1, cfg(4, 40, 32, 8)), 0.2),
        (spec(3, cfg(4, 40, 32, 8)), 0.3),
        (
            SchedulerConfig {
                policy: QueuePolicy::Priority,
                num_lookahead_tokens: 2,
                ..spec(3, cfg(4, 48, 32, 8))
            },
            0.5,
        ),
        (spec(4, cfg(1, 130, 16, 6)), 0.1),
        (
            SchedulerConfig {
                enable_prefix_caching: false,
                ..spec(2, cfg(16, 10, 64, 16))
            },
            0.3,
        ),
    ];
    let mut preemptions = 0;
    let (mut drafts, mut accepted) = (0, 0);
    for (i, (c, p_wrong)) in scenarios.into_iter().enumerate() {
        let k = c.num_speculative_tokens;
        let h = Harness::new(c, VOCAB).with_drafts(k, p_wrong, 77 + i as u64);
        let t = run_harness(h, 0xd4af + i as u64, 3000);
        assert!(t.accepted_tokens <= t.draft_tokens);
        preemptions += t.preemptions;
        drafts += t.draft_tokens;
        accepted += t.accepted_tokens;
    }
    assert!(preemptions > 0, "no preemption happened");
    assert!(
        accepted > 1000 && accepted < drafts,
        "{accepted} of {drafts} draft tokens accepted"
    );
}

/// Without interference (no aborts, no stop tokens) every decode step yields its accepted
/// drafts plus one token: tokens = accepted + steps, exactly.
#[test]
fn produced_tokens_are_accepted_drafts_plus_steps() {
    let c = SchedulerConfig {
        num_speculative_tokens: 3,
        ..cfg(4, 200, 64, 8)
    };
    let mut h = Harness::new(c, VOCAB).with_drafts(3, 0.25, 5);
    let mut rng = StdRng::seed_from_u64(8);
    for id in 0..12 {
        let len = rng.gen_range(1..30);
        let prompt = (0..len).map(|_| rng.gen_range(1..VOCAB)).collect();
        h.add(NewRequest {
            id,
            prompt_token_ids: prompt,
            max_tokens: rng.gen_range(1..60),
            ..Default::default()
        })
        .unwrap();
    }
    h.run_to_completion(2000);
    h.assert_all_free();
    h.assert_matches_reference();
    let st = h.sched.stats();
    assert_eq!(
        h.tokens_produced as u64,
        st.spec_num_accepted_tokens + h.token_steps as u64
    );
    assert!(st.spec_num_accepted_tokens > 0);
    assert!(st.spec_accepted_per_pos.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(
        st.spec_accepted_per_pos.iter().sum::<u64>(),
        st.spec_num_accepted_tokens
    );
}
