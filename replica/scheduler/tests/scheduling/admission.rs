//! Admission and lifecycle: up-front rejection, abort at any stage, queue policies, chunked
//! prefill under the token budget, step statistics.

use scheduler::{AddError, NewRequest, QueuePolicy, Scheduler, SchedulerConfig};

use crate::fake_model::{request, Harness};

const VOCAB: u32 = 50;

fn cfg() -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: 32,
        max_num_seqs: 4,
        max_model_len: 256,
        block_size: 4,
        num_blocks: 64,
        ..Default::default()
    }
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 1 + (i * 13) % (VOCAB - 1)).collect()
}

#[test]
fn requests_that_can_never_fit_are_rejected_up_front() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 8,
        ..cfg()
    })
    .unwrap();
    let err = s.add_request(request(1, prompt(250), 10)).unwrap_err();
    assert_eq!(
        err,
        AddError::TooLong {
            prompt: 250,
            max_tokens: 10,
            max_model_len: 256
        }
    );
    assert!(err.to_string().contains("max_model_len (256)"), "{err}");
    let err = s.add_request(request(2, prompt(30), 10)).unwrap_err();
    assert!(
        matches!(
            err,
            AddError::TooLargeForCache {
                blocks_needed: 10,
                num_blocks: 8,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        s.add_request(request(3, vec![], 10)),
        Err(AddError::EmptyPrompt)
    );
    assert!(s.add_request(request(4, prompt(30), 3)).is_ok());
    assert_eq!(
        s.add_request(request(4, prompt(3), 3)),
        Err(AddError::DuplicateId(4))
    );
    assert_eq!((s.num_waiting(), s.stats().waiting), (1, 1));
}

#[test]
fn abort_frees_blocks_at_every_stage() {
    let mut h = Harness::new(cfg(), VOCAB);
    // 1: mid-prefill (chunked), 2: decoding, 3 and 4: waiting.
    h.add(request(2, vec![49; 6], 50)).unwrap();
    h.step();
    h.add(request(1, prompt(100), 5)).unwrap();
    h.add(request(3, prompt(10), 5)).unwrap();
    h.add(request(4, prompt(10), 5)).unwrap();
    h.step();
    let info = h.sched.request_info(1).unwrap();
    assert_eq!(
        (info.num_computed_tokens, info.num_output_tokens),
        (31, 0),
        "mid-prefill"
    );
    assert!(h.sched.stats().kv_usage > 0.0);
    for id in [1, 3, 2] {
        assert!(h.abort(id));
        assert!(!h.sched.contains(id));
    }
    assert!(!h.abort(1), "already gone");
    h.run_to_completion(50);
    h.assert_all_free();
    h.assert_matches_reference();
}

fn admission_order(policy: QueuePolicy) -> Vec<u64> {
    let c = SchedulerConfig {
        max_num_seqs: 1,
        policy,
        ..cfg()
    };
    let mut h = Harness::new(c, VOCAB);
    for (id, priority) in [(1, 3), (2, 1), (3, 2), (4, 1), (5, -1)] {
        h.add(NewRequest {
            priority,
            ..request(id, prompt(5), 3)
        })
        .unwrap();
    }
    let mut order = Vec::new();
    while h.sched.has_unfinished() {
        let (out, _) = h.step();
        for s in &out.seqs {
            if !order.contains(&s.id) {
                order.push(s.id);
            }
        }
    }
    h.assert_matches_reference();
    order
}

#[test]
fn queue_policies_order_admission() {
    assert_eq!(admission_order(QueuePolicy::Fcfs), vec![1, 2, 3, 4, 5]);
    // Lower value first, ties by arrival.
    assert_eq!(admission_order(QueuePolicy::Priority), vec![5, 2, 4, 3, 1]);
}

#[test]
fn chunked_prefill_splits_a_long_prompt_under_the_budget() {
    let mut h = Harness::new(cfg(), VOCAB);
    h.add(request(1, prompt(100), 2)).unwrap();
    let mut chunks = Vec::new();
    for _ in 0..4 {
        let (out, updates) = h.step();
        let s = &out.seqs[0];
        chunks.push((s.start_pos, s.token_ids.len(), s.sample));
        assert_eq!(
            updates.is_empty(),
            !s.sample,
            "tokens only after the last chunk"
        );
    }
    assert_eq!(
        chunks,
        vec![
            (0, 32, false),
            (32, 32, false),
            (64, 32, false),
            (96, 4, true)
        ]
    );
    let (out, _) = h.step();
    assert_eq!(
        (out.seqs[0].start_pos, out.seqs[0].token_ids.len()),
        (100, 1)
    );
    h.run_to_completion(10);
    h.assert_matches_reference();
}

#[test]
fn running_requests_are_served_before_waiting_ones() {
    let mut h = Harness::new(cfg(), VOCAB);
    h.add(request(1, prompt(5), 20)).unwrap();
    h.add(request(2, prompt(6), 20)).unwrap();
    h.step();
    h.add(request(3, prompt(100), 2)).unwrap();
    let (out, _) = h.step();
    let ids: Vec<_> = out.seqs.iter().map(|s| (s.id, s.token_ids.len())).collect();
    // Two decode tokens first, then the new prompt gets what is left of the 32-token budget.
    assert_eq!(ids, vec![(1, 1), (2, 1), (3, 30)]);
    assert_eq!(out.num_batched_tokens, 32);
    let stats = h.sched.stats();
    assert_eq!(
        (
            stats.running,
            stats.waiting,
            stats.last_step_tokens,
            stats.last_step_seqs
        ),
        (3, 0, 32, 3)
    );
    h.run_to_completion(100);
    h.assert_matches_reference();
    h.assert_all_free();
}

#[test]
fn stats_track_usage_and_steps() {
    let mut h = Harness::new(cfg(), VOCAB);
    assert_eq!(h.sched.stats().kv_usage, 0.0);
    h.add(request(1, prompt(16), 3)).unwrap();
    h.step();
    let stats = h.sched.stats();
    // 16 prompt tokens = 4 blocks of 64.
    assert_eq!(
        (stats.free_blocks, stats.num_blocks, stats.steps),
        (60, 64, 1)
    );
    assert!((stats.kv_usage - 4.0 / 64.0).abs() < 1e-12);
    h.run_to_completion(10);
    assert_eq!(h.sched.stats().steps, 3);
    assert!(h.sched.schedule().is_empty(), "nothing to run");
    assert_eq!(h.sched.stats().last_step_tokens, 0);
}
