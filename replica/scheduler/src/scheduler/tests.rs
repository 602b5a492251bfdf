//! Focused unit tests of the step protocol. The randomized and end-to-end scenarios live in
//! `tests/scheduler_tests.rs`.

use super::*;
use crate::{AddError, RequestUpdate, ScheduledSeq, SchedulerOutput};

fn cfg(block_size: usize, num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: 64,
        max_num_seqs: 8,
        max_model_len: 256,
        block_size,
        num_blocks,
        ..Default::default()
    }
}

/// A request with EOS 0 (shared with `spec_tests`).
pub(super) fn req(id: RequestId, prompt: Vec<u32>, max_tokens: usize) -> NewRequest {
    NewRequest {
        id,
        prompt_token_ids: prompt,
        max_tokens,
        eos_token_ids: vec![0],
        ..Default::default()
    }
}

/// Samples `token` for every seq that needs one.
fn sample_all(out: &SchedulerOutput, token: u32) -> Vec<(RequestId, Vec<u32>)> {
    out.seqs
        .iter()
        .filter(|s| s.sample)
        .map(|s| (s.id, vec![token]))
        .collect()
}

fn step(s: &mut Scheduler, token: u32) -> (SchedulerOutput, Vec<RequestUpdate>) {
    let out = s.schedule();
    let sampled = sample_all(&out, token);
    let updates = s.update_from_output(&out, &sampled);
    s.check_invariants().unwrap();
    (out, updates)
}

#[test]
fn prefill_then_decode_until_length() {
    let mut s = Scheduler::new(cfg(4, 16)).unwrap();
    s.add_request(req(1, vec![5, 6, 7, 8, 9], 3)).unwrap();
    let (out, up) = step(&mut s, 11);
    assert_eq!(
        out.seqs,
        vec![ScheduledSeq {
            id: 1,
            token_ids: vec![5, 6, 7, 8, 9],
            start_pos: 0,
            block_table: vec![0, 1],
            sample: true,
            num_draft_tokens: 0,
        }]
    );
    assert_eq!(out.num_batched_tokens, 5);
    assert_eq!(up[0].new_token_ids, vec![11]);
    assert_eq!(up[0].finished, None);
    let (out, _) = step(&mut s, 12);
    assert_eq!(
        (out.seqs[0].token_ids.clone(), out.seqs[0].start_pos),
        (vec![11], 5)
    );
    let (_, up) = step(&mut s, 13);
    assert_eq!(up[0].finished, Some(FinishReason::Length));
    assert!(!s.has_unfinished());
    assert_eq!(s.stats().free_blocks, 16);
}

#[test]
fn eos_finishes_with_stop_token_included() {
    let mut s = Scheduler::new(cfg(4, 16)).unwrap();
    s.add_request(req(1, vec![5, 6], 10)).unwrap();
    step(&mut s, 3);
    let (_, up) = step(&mut s, 0);
    assert_eq!(up[0].new_token_ids, vec![0]);
    assert_eq!(
        (up[0].finished, up[0].stop_token),
        (Some(FinishReason::Stop), Some(0))
    );
    assert!(!s.has_unfinished());
}

#[test]
fn tokens_after_a_stop_token_are_dropped() {
    let mut s = Scheduler::new(cfg(4, 16)).unwrap();
    s.add_request(req(1, vec![5, 6], 10)).unwrap();
    let out = s.schedule();
    let up = s.update_from_output(&out, &[(1, vec![4, 0, 7])]);
    assert_eq!(up[0].new_token_ids, vec![4, 0]);
    assert_eq!(up[0].finished, Some(FinishReason::Stop));
}

#[test]
fn rejections_are_typed_and_nothing_is_queued() {
    let mut s = Scheduler::new(cfg(4, 4)).unwrap();
    assert_eq!(s.add_request(req(1, vec![], 4)), Err(AddError::EmptyPrompt));
    assert_eq!(
        s.add_request(req(1, vec![1], 0)),
        Err(AddError::ZeroMaxTokens)
    );
    assert_eq!(
        s.add_request(req(1, vec![1; 200], 57)),
        Err(AddError::TooLong {
            prompt: 200,
            max_tokens: 57,
            max_model_len: 256
        })
    );
    // 4 blocks of 4 = 16 slots; 10 + 7 tokens need 16 slots (the last token is never cached).
    assert!(s.add_request(req(1, vec![1; 10], 7)).is_ok());
    assert_eq!(
        s.add_request(req(2, vec![1; 10], 8)),
        Err(AddError::TooLargeForCache {
            kv_tokens: 17,
            blocks_needed: 5,
            num_blocks: 4
        })
    );
    assert_eq!(
        s.add_request(req(1, vec![1], 1)),
        Err(AddError::DuplicateId(1))
    );
    assert_eq!(s.num_waiting(), 1);
}

#[test]
fn abort_running_and_waiting_frees_everything() {
    let mut c = cfg(4, 16);
    c.max_num_seqs = 1;
    c.max_num_batched_tokens = 8;
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(req(1, vec![1; 6], 4)).unwrap();
    s.add_request(req(2, vec![2; 6], 4)).unwrap();
    step(&mut s, 9);
    assert_eq!((s.num_running(), s.num_waiting()), (1, 1));
    assert!(s.stats().free_blocks < 16);
    assert!(s.abort(2));
    assert!(s.finish(1, FinishReason::Stop));
    assert!(!s.abort(1));
    s.check_invariants().unwrap();
    assert_eq!(s.stats().free_blocks, 16);
    assert!(!s.has_unfinished());
}

#[test]
fn seqs_aborted_after_schedule_are_skipped() {
    let mut s = Scheduler::new(cfg(4, 16)).unwrap();
    s.add_request(req(1, vec![1; 6], 4)).unwrap();
    s.add_request(req(2, vec![2; 6], 4)).unwrap();
    let out = s.schedule();
    assert!(s.abort(1));
    // Re-added with the same id before the update: the old seq must not touch it.
    s.add_request(req(1, vec![3; 5], 4)).unwrap();
    let up = s.update_from_output(&out, &sample_all(&out, 9));
    assert_eq!(up.iter().map(|u| u.id).collect::<Vec<_>>(), vec![2]);
    assert_eq!(s.request_info(1).unwrap().num_computed_tokens, 0);
    s.check_invariants().unwrap();
    // Applying the same output twice is a no-op.
    assert!(s.update_from_output(&out, &sample_all(&out, 9)).is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn missing_sampled_token_recomputes_last_token() {
    let mut s = Scheduler::new(cfg(4, 16)).unwrap();
    s.add_request(req(1, vec![1, 2, 3], 4)).unwrap();
    let out = s.schedule();
    assert!(s.update_from_output(&out, &[]).is_empty());
    s.check_invariants().unwrap();
    let out = s.schedule();
    assert_eq!(
        (out.seqs[0].start_pos, out.seqs[0].token_ids.clone()),
        (2, vec![3])
    );
    assert!(out.seqs[0].sample);
}

#[test]
fn sampled_tokens_found_out_of_order() {
    let mut s = Scheduler::new(cfg(4, 16)).unwrap();
    s.add_request(req(1, vec![1, 2], 4)).unwrap();
    s.add_request(req(2, vec![3, 4], 4)).unwrap();
    let out = s.schedule();
    let up = s.update_from_output(&out, &[(2, vec![7]), (1, vec![8])]);
    assert_eq!(up.len(), 2);
    assert_eq!(
        up.iter().find(|u| u.id == 1).unwrap().new_token_ids,
        vec![8]
    );
    assert_eq!(
        up.iter().find(|u| u.id == 2).unwrap().new_token_ids,
        vec![7]
    );
}

#[test]
fn lookahead_slots_are_reserved_for_sampling_seqs() {
    let mut c = cfg(4, 16);
    c.num_lookahead_tokens = 3;
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(req(1, vec![1; 4], 8)).unwrap();
    let (out, _) = step(&mut s, 5);
    // 4 tokens + 3 lookahead slots = 7 slots = 2 blocks.
    assert_eq!(out.seqs[0].block_table.len(), 2);
    let (out, _) = step(&mut s, 5);
    assert_eq!(out.seqs[0].start_pos, 4);
    // 5 computed + 3 lookahead = 8 slots: still 2 blocks.
    assert_eq!(out.seqs[0].block_table.len(), 2);
    let (out, _) = step(&mut s, 5);
    assert_eq!(out.seqs[0].block_table.len(), 3);
}

#[test]
fn max_num_seqs_caps_admission() {
    let mut c = cfg(4, 64);
    c.max_num_seqs = 2;
    let mut s = Scheduler::new(c).unwrap();
    for id in 0..5 {
        s.add_request(req(id, vec![1, 2, 3], 4)).unwrap();
    }
    let (out, _) = step(&mut s, 5);
    assert_eq!(out.seqs.len(), 2);
    assert_eq!((s.stats().running, s.stats().waiting), (2, 3));
    assert_eq!(s.stats().last_step_seqs, 2);
}

#[test]
fn reset_prefix_cache_drops_hashes() {
    let mut s = Scheduler::new(cfg(4, 16)).unwrap();
    s.add_request(req(1, (1..=9).collect(), 1)).unwrap();
    step(&mut s, 5);
    assert!(!s.has_unfinished());
    assert_eq!(s.stats().cached_free_blocks, 2);
    assert_eq!(s.reset_prefix_cache(), 2);
    assert_eq!(s.stats().cached_free_blocks, 0);
    s.check_invariants().unwrap();
}
