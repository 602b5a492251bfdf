//! Preemption by recompute: under a tiny KV cache every request still completes with exactly
//! the token stream of an unconstrained run; the newest (or lowest-priority) request is the
//! victim; a preempted request keeps its output and resumes transparently.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scheduler::{NewRequest, QueuePolicy, RequestStatus, SchedulerConfig};

use crate::fake_model::{request, Harness};

const VOCAB: u32 = 64;

fn workload(seed: u64) -> Vec<NewRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    let shared: Vec<u32> = (0..12).map(|_| rng.gen_range(1..VOCAB)).collect();
    (0..10)
        .map(|id| {
            let mut prompt = if id % 3 == 0 {
                shared.clone()
            } else {
                Vec::new()
            };
            prompt.extend((0..rng.gen_range(4..24)).map(|_| rng.gen_range(1..VOCAB)));
            NewRequest {
                id,
                prompt_token_ids: prompt,
                max_tokens: rng.gen_range(16..40),
                priority: rng.gen_range(0..3),
                eos_token_ids: vec![0],
                ignore_eos: id % 2 == 0,
                ..Default::default()
            }
        })
        .collect()
}

/// Runs the workload (all submitted up front) and returns outputs and the preemption count.
fn run(cfg: SchedulerConfig, reqs: &[NewRequest]) -> (HashMap<u64, Vec<u32>>, u64) {
    let mut h = Harness::new(cfg, VOCAB);
    for r in reqs {
        h.add(r.clone()).unwrap();
    }
    h.run_to_completion(5_000);
    h.assert_matches_reference();
    h.assert_all_free();
    (h.outputs, h.sched.stats().preemptions)
}

#[test]
fn tiny_kv_cache_gives_identical_streams_with_preemptions() {
    let reqs = workload(7);
    // The largest request needs ceil((35 + 39 - 1) / 4) = 19 blocks at most; 20 are given.
    for policy in [QueuePolicy::Fcfs, QueuePolicy::Priority] {
        for caching in [true, false] {
            let base = SchedulerConfig {
                max_num_batched_tokens: 64,
                max_num_seqs: 8,
                max_model_len: 128,
                block_size: 4,
                enable_prefix_caching: caching,
                policy,
                ..Default::default()
            };
            let (free_run, free_preemptions) = run(
                SchedulerConfig {
                    num_blocks: 1000,
                    ..base.clone()
                },
                &reqs,
            );
            let (tight_run, tight_preemptions) = run(
                SchedulerConfig {
                    num_blocks: 20,
                    ..base
                },
                &reqs,
            );
            assert_eq!(free_preemptions, 0);
            assert!(tight_preemptions > 0, "{policy:?}/{caching}: no preemption");
            assert_eq!(tight_run, free_run, "{policy:?}/{caching}: streams differ");
        }
    }
}

/// A cache of 6 blocks of 4 tokens: three 7-token prompts fill it.
fn six_blocks(policy: QueuePolicy) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: 64,
        max_num_seqs: 8,
        max_model_len: 64,
        block_size: 4,
        num_blocks: 6,
        policy,
        ..Default::default()
    }
}

/// Three requests of 7 prompt tokens fill 6 blocks of 4; the first growth preempts a victim.
fn crowded(policy: QueuePolicy, priorities: [i32; 3]) -> Harness {
    let mut h = Harness::new(six_blocks(policy), VOCAB);
    for (id, priority) in (1..=3).zip(priorities) {
        let prompt = (0..7).map(|i| 1 + (i + id as u32 * 3) % 60).collect();
        h.add(NewRequest {
            priority,
            ..request(id, prompt, 9)
        })
        .unwrap();
    }
    let (out, _) = h.step();
    assert_eq!((out.seqs.len(), h.sched.stats().free_blocks), (3, 0));
    let (out, _) = h.step(); // 8 tokens: still 2 blocks each
    assert!(out.preempted.is_empty());
    h
}

#[test]
fn fcfs_preempts_the_newest_and_resumes_it_transparently() {
    let mut h = crowded(QueuePolicy::Fcfs, [0, 0, 0]);
    let (out, _) = h.step();
    assert_eq!(out.preempted, vec![3]);
    assert_eq!(
        out.seqs.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let info = h.sched.request_info(3).unwrap();
    assert_eq!(info.status, RequestStatus::Preempted);
    assert_eq!(
        (
            info.num_computed_tokens,
            info.num_output_tokens,
            info.num_preemptions
        ),
        (0, 2, 1)
    );
    assert!(info.block_table.is_empty());
    assert_eq!(h.sched.stats().preemptions, 1);
    h.run_to_completion(200);
    h.assert_matches_reference();
    h.assert_all_free();
}

#[test]
fn priority_preempts_the_lowest_priority() {
    let mut h = crowded(QueuePolicy::Priority, [0, 5, 1]);
    let (out, _) = h.step();
    assert_eq!(out.preempted, vec![2]);
    h.run_to_completion(200);
    h.assert_matches_reference();
    h.assert_all_free();
}

#[test]
fn priority_takes_back_a_chunk_already_scheduled_this_step() {
    let mut h = Harness::new(six_blocks(QueuePolicy::Priority), VOCAB);
    // Low priority, admitted first: index 0 of the running list, 2 blocks with room to grow.
    h.add(NewRequest {
        priority: 5,
        ..request(1, vec![3; 5], 9)
    })
    .unwrap();
    h.step();
    for id in [2, 3] {
        h.add(NewRequest {
            priority: 0,
            ..request(id, vec![id as u32 + 10; 7], 9)
        })
        .unwrap();
    }
    h.step();
    h.step();
    assert_eq!(h.sched.stats().free_blocks, 0);
    // Request 1 fits its next token, then request 2 needs a block: 1 is taken back.
    let (out, _) = h.step();
    assert_eq!(out.preempted, vec![1]);
    assert_eq!(
        out.seqs.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(out.num_batched_tokens, 2);
    let info = h.sched.request_info(1).unwrap();
    assert_eq!(
        (info.status, info.num_computed_tokens),
        (RequestStatus::Preempted, 0)
    );
    h.run_to_completion(200);
    h.assert_matches_reference();
    h.assert_all_free();
}

#[test]
fn no_admission_in_a_step_with_preemption() {
    let mut h = crowded(QueuePolicy::Fcfs, [0, 0, 0]);
    h.add(request(9, vec![1, 2], 2)).unwrap();
    let (out, _) = h.step();
    assert_eq!(out.preempted, vec![3]);
    assert!(out.seqs.iter().all(|s| s.id != 9 && s.id != 3));
    h.run_to_completion(200);
    h.assert_matches_reference();
}
