//! Unit tests of speculative decoding in the scheduler: drafts scheduled with the decode token,
//! rollback of rejected drafts, stop conditions inside an accepted run, caps, preemption and
//! block accounting. The randomized end-to-end check is in `tests/scheduling/speculative.rs`.

use super::tests::req;
use super::*;
use crate::{RequestUpdate, SchedulerOutput};

fn cfg(block_size: usize, num_blocks: usize, k: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: 64,
        max_num_seqs: 8,
        max_model_len: 256,
        block_size,
        num_blocks,
        num_speculative_tokens: k,
        ..Default::default()
    }
}

/// Schedules, applies `sampled` for request 1 and checks the invariants.
fn step(s: &mut Scheduler, sampled: &[u32]) -> (SchedulerOutput, Vec<RequestUpdate>) {
    let out = s.schedule();
    let up = s.update_from_output(&out, &[(1, sampled.to_vec())]);
    s.check_invariants().unwrap();
    (out, up)
}

fn computed(s: &Scheduler, id: RequestId) -> usize {
    s.num_computed_tokens(id).unwrap()
}

#[test]
fn drafts_ride_with_the_decode_token_and_count_in_the_budget() {
    let mut s = Scheduler::new(cfg(4, 16, 2)).unwrap();
    s.add_request(req(1, vec![5, 6, 7, 8, 9], 10)).unwrap();
    // Drafts of a waiting request are not kept.
    assert_eq!(s.set_draft_tokens(1, &[1, 2]), 0);
    step(&mut s, &[11]);
    assert_eq!(s.set_draft_tokens(1, &[12, 13, 14]), 2, "capped at k");
    s.check_invariants().unwrap();
    let (out, up) = step(&mut s, &[12, 13, 20]);
    let seq = &out.seqs[0];
    assert_eq!(
        (seq.token_ids.clone(), seq.start_pos, seq.num_draft_tokens),
        (vec![11, 12, 13], 5, 2)
    );
    assert_eq!(
        (seq.known_tokens(), seq.draft_tokens()),
        (&[11][..], &[12, 13][..])
    );
    assert_eq!(out.num_batched_tokens, 3);
    assert_eq!(out.num_draft_tokens(), 2);
    // 8 positions computed: two blocks of 4.
    assert_eq!(seq.block_table.len(), 2);
    // Both drafts accepted plus the bonus token: the KV of 11, 12 and 13 is valid.
    assert_eq!(up[0].new_token_ids, vec![12, 13, 20]);
    assert_eq!(computed(&s, 1), 8);
    let st = s.stats();
    assert_eq!(
        (
            st.spec_num_drafts,
            st.spec_num_draft_tokens,
            st.spec_num_accepted_tokens
        ),
        (1, 2, 2)
    );
    assert_eq!(st.spec_accepted_per_pos, vec![1, 1]);
    // Drafts are consumed: the next step without new ones is a plain decode step.
    let (out, _) = step(&mut s, &[21]);
    assert_eq!(
        (out.seqs[0].token_ids.clone(), out.seqs[0].num_draft_tokens),
        (vec![20], 0)
    );
}

#[test]
fn rejected_drafts_roll_back_the_computed_tokens() {
    let mut s = Scheduler::new(cfg(4, 16, 3)).unwrap();
    s.add_request(req(1, vec![5, 6, 7], 20)).unwrap();
    step(&mut s, &[11]);
    assert_eq!(computed(&s, 1), 3);
    // The first draft is accepted, the second rejected (the model said 99 there).
    s.set_draft_tokens(1, &[12, 13, 14]);
    let (_, up) = step(&mut s, &[12, 99]);
    assert_eq!(up[0].new_token_ids, vec![12, 99]);
    // 11 and 12 are computed; 99 (and the KV written for 13, 14) is not.
    assert_eq!(computed(&s, 1), 5);
    let info = s.request_info(1).unwrap();
    assert_eq!(info.num_output_tokens, 3);
    let (out, _) = step(&mut s, &[30]);
    assert_eq!(
        (out.seqs[0].token_ids.clone(), out.seqs[0].start_pos),
        (vec![99], 5)
    );
    // Everything rejected: only the decode token's KV stays.
    s.set_draft_tokens(1, &[40, 41]);
    let (_, up) = step(&mut s, &[42]);
    assert_eq!(up[0].new_token_ids, vec![42]);
    assert_eq!(computed(&s, 1), 7);
    let st = s.stats();
    assert_eq!(
        (
            st.spec_num_drafts,
            st.spec_num_draft_tokens,
            st.spec_num_accepted_tokens
        ),
        (2, 5, 1)
    );
    assert_eq!(st.spec_accepted_per_pos, vec![1, 0, 0]);
    // An engine that returns tokens diverging from the drafts can never mark them computed,
    // nor the last returned token.
    s.set_draft_tokens(1, &[50, 51]);
    let (_, up) = step(&mut s, &[50, 51]);
    assert_eq!(up[0].new_token_ids, vec![50, 51]);
    assert_eq!(computed(&s, 1), 9, "the last token is recomputed");
    let (out, _) = step(&mut s, &[52]);
    assert_eq!(
        (out.seqs[0].token_ids.clone(), out.seqs[0].start_pos),
        (vec![51], 9)
    );
}

#[test]
fn stop_token_inside_an_accepted_run_drops_the_rest() {
    let mut s = Scheduler::new(cfg(4, 16, 3)).unwrap();
    s.add_request(req(1, vec![5, 6, 7], 20)).unwrap();
    step(&mut s, &[11]);
    // EOS (0) is the first accepted draft: what follows is dropped, the request finishes.
    s.set_draft_tokens(1, &[0, 13, 14]);
    let (_, up) = step(&mut s, &[0, 13, 14, 15]);
    assert_eq!(up[0].new_token_ids, vec![0]);
    assert_eq!(
        (up[0].finished, up[0].stop_token),
        (Some(FinishReason::Stop), Some(0))
    );
    assert!(!s.has_unfinished());
    assert_eq!(s.stats().free_blocks, 16);
    // Acceptance counts the verification, whatever the stop conditions cut afterwards.
    assert_eq!(s.stats().spec_num_accepted_tokens, 3);
}

#[test]
fn drafts_never_exceed_max_tokens() {
    let mut s = Scheduler::new(cfg(4, 16, 4)).unwrap();
    s.add_request(req(1, vec![5, 6, 7], 4)).unwrap();
    step(&mut s, &[11]);
    // 1 generated, 3 to go: the verifying step adds one token of its own, so 2 drafts.
    assert_eq!(s.set_draft_tokens(1, &[12, 13, 14, 15]), 2);
    let (_, up) = step(&mut s, &[12, 13, 16]);
    assert_eq!(up[0].new_token_ids, vec![12, 13, 16]);
    assert_eq!(up[0].finished, Some(FinishReason::Length));
    assert!(!s.has_unfinished());

    // The last token never gets drafts; an unknown id neither.
    s.add_request(req(2, vec![5, 6, 7], 2)).unwrap();
    let out = s.schedule();
    s.update_from_output(&out, &[(2, vec![11])]);
    assert_eq!(s.set_draft_tokens(2, &[12]), 0);
    assert_eq!(s.set_draft_tokens(77, &[12]), 0);
    s.check_invariants().unwrap();
}

#[test]
fn budget_truncates_drafts() {
    let mut c = cfg(4, 16, 3);
    c.max_num_batched_tokens = 4;
    c.max_num_seqs = 2;
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(req(1, vec![5, 6], 20)).unwrap();
    s.add_request(req(2, vec![7, 8], 20)).unwrap();
    let out = s.schedule();
    s.update_from_output(&out, &[(1, vec![11]), (2, vec![21])]);
    assert_eq!(s.set_draft_tokens(1, &[12, 13, 14]), 3);
    assert_eq!(s.set_draft_tokens(2, &[22, 23, 24]), 3);
    let out = s.schedule();
    // Request 1 takes its decode token and all 3 drafts: the budget is spent.
    assert_eq!(out.seqs.len(), 1);
    assert_eq!(out.seqs[0].num_draft_tokens, 3);
    s.update_from_output(&out, &[(1, vec![12, 30])]);
    s.check_invariants().unwrap();
    // Request 2 kept its drafts; after request 1's decode token 3 tokens are left for it.
    let out = s.schedule();
    assert_eq!(out.seqs[1].id, 2);
    assert_eq!(out.seqs[1].token_ids, vec![21, 22, 23]);
    assert_eq!(out.seqs[1].num_draft_tokens, 2);
    assert_eq!(out.num_batched_tokens, 4);
}

#[test]
fn drafts_are_dropped_before_anyone_is_preempted() {
    // 2 blocks of 4: request 1 (3 prompt tokens) fits one block until its 4th token.
    let mut s = Scheduler::new(cfg(4, 2, 3)).unwrap();
    s.add_request(req(1, vec![5, 6, 7], 5)).unwrap();
    s.add_request(req(2, vec![8, 9, 10], 5)).unwrap();
    let out = s.schedule();
    s.update_from_output(&out, &[(1, vec![11]), (2, vec![21])]);
    assert_eq!(s.stats().free_blocks, 0);
    // Drafts would need a second block each: both requests decode without them instead.
    s.set_draft_tokens(1, &[12, 13]);
    s.set_draft_tokens(2, &[22, 23]);
    let out = s.schedule();
    assert!(out.preempted.is_empty());
    assert_eq!(out.num_draft_tokens(), 0);
    assert_eq!(out.seqs.len(), 2);
    let up = s.update_from_output(&out, &[(1, vec![12]), (2, vec![22])]);
    assert_eq!(up.len(), 2);
    s.check_invariants().unwrap();
    assert_eq!(s.stats().spec_num_drafts, 0);
}

#[test]
fn preempted_request_loses_its_drafts_and_recomputes_plainly() {
    let mut c = cfg(4, 4, 2);
    c.max_num_batched_tokens = 32;
    c.enable_prefix_caching = false;
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(req(1, vec![1; 8], 8)).unwrap();
    s.add_request(req(2, vec![2; 8], 8)).unwrap();
    let out = s.schedule();
    assert_eq!(s.stats().free_blocks, 0);
    s.update_from_output(&out, &[(1, vec![11]), (2, vec![21])]);
    s.set_draft_tokens(1, &[12, 13]);
    s.set_draft_tokens(2, &[22, 23]);
    // Request 1 needs a third block even without drafts: request 2 is preempted, and its
    // blocks make room for request 1's drafts too.
    let out = s.schedule();
    assert_eq!(out.preempted, vec![2]);
    assert_eq!(out.seqs.len(), 1);
    assert_eq!(out.seqs[0].token_ids, vec![11, 12, 13]);
    s.check_invariants().unwrap();
    // Drafts for a preempted request are refused.
    assert_eq!(s.set_draft_tokens(2, &[22]), 0);
    let up = s.update_from_output(&out, &[(1, vec![12, 13, 14])]);
    assert_eq!(up[0].new_token_ids, vec![12, 13, 14]);
    assert_eq!(computed(&s, 1), 11);
    s.check_invariants().unwrap();
    assert!(s.abort(1));
    // Request 2 is readmitted: prompt and output recomputed, without drafts.
    let out = s.schedule();
    assert_eq!(out.seqs[0].id, 2);
    assert_eq!(out.seqs[0].token_ids, vec![2, 2, 2, 2, 2, 2, 2, 2, 21]);
    assert_eq!(out.seqs[0].num_draft_tokens, 0);
    s.update_from_output(&out, &[(2, vec![22])]);
    s.check_invariants().unwrap();
    assert_eq!(s.request_info(2).unwrap().num_preemptions, 1);
}

#[test]
fn only_blocks_of_known_tokens_are_cached() {
    let mut s = Scheduler::new(cfg(4, 16, 3)).unwrap();
    s.add_request(req(1, vec![1, 2, 3], 20)).unwrap();
    step(&mut s, &[4]);
    assert_eq!(s.block_pool().num_cached(), 0);
    // Drafts 5, 6, 7 would fill block 1 but are rejected after 5: only block 0 (all known,
    // computed this step) is cached.
    s.set_draft_tokens(1, &[5, 6, 7]);
    let (out, _) = step(&mut s, &[5, 9]);
    assert_eq!(out.seqs[0].block_table.len(), 2);
    assert_eq!(s.block_pool().num_cached(), 1);
    assert_eq!(computed(&s, 1), 5);
    // Tokens are now 1 2 3 4 | 5 9: a sibling whose prompt continues like the rejected
    // drafts (5 6 7 8) reuses block 0 only.
    s.add_request(req(2, vec![1, 2, 3, 4, 5, 6, 7, 8, 1], 4))
        .unwrap();
    let out = s.schedule();
    let sib = out.seqs.iter().find(|q| q.id == 2).unwrap();
    assert_eq!(sib.start_pos, 4);
    s.update_from_output(&out, &[(1, vec![10]), (2, vec![30])]);
    s.check_invariants().unwrap();
    // Block 1 of the sibling (5 6 7 8) is cached now, request 1's block 1 is not full.
    assert_eq!(s.block_pool().num_cached(), 2);
    assert_eq!(s.request_info(2).unwrap().num_cached_tokens, 4);
}
