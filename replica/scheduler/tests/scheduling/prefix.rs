//! Prefix caching: a request sharing a prefix computes only the uncached tokens and reuses the
//! same block ids; siblings (n > 1) admitted in the same step share the prompt; salts isolate;
//! freed blocks stay reusable until evicted; chunked prefill results are shareable.

use scheduler::{NewRequest, ScheduledSeq, SchedulerConfig, SchedulerOutput};

use crate::fake_model::{request, Harness};

const VOCAB: u32 = 50;

fn cfg(block_size: usize, num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        block_size,
        num_blocks,
        max_model_len: 1024,
        ..Default::default()
    }
}

fn seq(out: &SchedulerOutput, id: u64) -> &ScheduledSeq {
    out.seqs.iter().find(|s| s.id == id).expect("scheduled")
}

fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 1 + (i * 7 + salt) % (VOCAB - 1))
        .collect()
}

#[test]
fn second_request_computes_only_uncached_tokens_with_same_blocks() {
    let mut h = Harness::new(cfg(16, 256), VOCAB);
    let shared = tokens(160, 0);
    let p1 = [shared.clone(), vec![7; 40]].concat();
    let p2 = [shared, vec![9; 40]].concat();
    h.add(request(1, p1, 4)).unwrap();
    let (out1, _) = h.step();
    let table1 = seq(&out1, 1).block_table.clone();
    assert_eq!(table1.len(), 13);

    h.add(request(2, p2, 4)).unwrap();
    let (out2, updates) = h.step();
    let s2 = seq(&out2, 2);
    assert_eq!((s2.start_pos, s2.token_ids.len()), (160, 40));
    assert_eq!(&s2.block_table[..10], &table1[..10]);
    assert!(!table1.contains(&s2.block_table[10]));
    assert_eq!(
        out2.num_batched_tokens,
        1 + 40,
        "one decode token + the uncached suffix"
    );
    let up2 = updates.iter().find(|u| u.id == 2).unwrap();
    assert_eq!((up2.num_prompt_tokens, up2.num_cached_tokens), (200, 160));
    let stats = h.sched.stats();
    assert_eq!(
        (stats.prefix_queries_tokens, stats.prefix_hits_tokens),
        (400, 160)
    );

    h.run_to_completion(100);
    h.assert_matches_reference();
    h.assert_all_free();
}

#[test]
fn siblings_added_in_the_same_step_share_the_prompt() {
    let mut h = Harness::new(cfg(16, 64), VOCAB);
    let prompt = tokens(100, 3);
    for id in 1..=3 {
        h.add(NewRequest {
            id,
            prompt_token_ids: prompt.clone(),
            max_tokens: 12,
            ..Default::default()
        })
        .unwrap();
    }
    let (out, _) = h.step();
    let first = seq(&out, 1);
    assert_eq!((first.start_pos, first.token_ids.len()), (0, 100));
    for id in [2, 3] {
        let s = seq(&out, id);
        // Six full blocks (96 tokens) come from the first sibling, computed in the same batch.
        assert_eq!((s.start_pos, s.token_ids.len()), (96, 4));
        assert_eq!(&s.block_table[..6], &first.block_table[..6]);
        assert_ne!(s.block_table[6], first.block_table[6]);
    }
    assert_eq!(out.num_batched_tokens, 108);
    assert_eq!(h.sched.stats().prefix_hits_tokens, 192);
    h.run_to_completion(100);
    h.assert_matches_reference();
    assert_eq!(h.outputs[&1], h.outputs[&2]);
    assert_eq!(h.outputs[&1], h.outputs[&3]);
    h.assert_all_free();
}

#[test]
fn identical_prompt_recomputes_its_last_block() {
    let mut h = Harness::new(cfg(16, 64), VOCAB);
    let prompt = tokens(64, 5);
    h.add(request(1, prompt.clone(), 1)).unwrap();
    h.run_to_completion(10);
    h.add(request(2, prompt, 1)).unwrap();
    let (out, _) = h.step();
    assert_eq!(
        (seq(&out, 2).start_pos, seq(&out, 2).token_ids.len()),
        (48, 16)
    );
    h.assert_matches_reference();
}

#[test]
fn cache_salt_isolates_namespaces() {
    let mut h = Harness::new(cfg(4, 64), VOCAB);
    let prompt = tokens(20, 1);
    let salted = |id, salt: &str| NewRequest {
        id,
        prompt_token_ids: prompt.clone(),
        max_tokens: 2,
        cache_salt: Some(salt.to_owned()),
        ..Default::default()
    };
    h.add(salted(1, "a")).unwrap();
    h.run_to_completion(10);
    h.add(salted(2, "b")).unwrap();
    assert_eq!(
        seq(&h.step().0, 2).start_pos,
        0,
        "another salt must not hit"
    );
    h.add(request(3, prompt.clone(), 2)).unwrap();
    assert_eq!(
        seq(&h.step().0, 3).start_pos,
        0,
        "no salt must not hit a salted prefix"
    );
    h.add(salted(4, "a")).unwrap();
    assert_eq!(seq(&h.step().0, 4).start_pos, 16, "same salt hits");
    h.run_to_completion(20);
    h.assert_matches_reference();
}

#[test]
fn caching_can_be_turned_off() {
    let mut h = Harness::new(
        SchedulerConfig {
            enable_prefix_caching: false,
            ..cfg(4, 64)
        },
        VOCAB,
    );
    let prompt = tokens(20, 2);
    h.add(request(1, prompt.clone(), 2)).unwrap();
    h.run_to_completion(10);
    h.add(request(2, prompt, 2)).unwrap();
    assert_eq!(seq(&h.step().0, 2).start_pos, 0);
    let stats = h.sched.stats();
    assert_eq!(
        (
            stats.prefix_queries_tokens,
            stats.prefix_hits_tokens,
            stats.cached_free_blocks
        ),
        (0, 0, 0)
    );
    h.run_to_completion(10);
    h.assert_matches_reference();
}

#[test]
fn freed_blocks_stay_cached_until_reused() {
    let mut h = Harness::new(cfg(4, 8), VOCAB);
    let prompt = tokens(12, 4);
    h.add(request(1, prompt.clone(), 1)).unwrap();
    h.run_to_completion(10);
    assert_eq!(h.sched.stats().cached_free_blocks, 3);
    assert_eq!(h.sched.stats().kv_usage, 0.0);

    // Revived from the free list (touch): 3 cached blocks for a 13-token prompt.
    h.add(request(2, [prompt.clone(), vec![5]].concat(), 1))
        .unwrap();
    assert_eq!(seq(&h.step().0, 2).start_pos, 12);
    assert!(!h.sched.has_unfinished());

    // A request that needs every block evicts the cached ones.
    h.add(request(3, tokens(29, 9), 1)).unwrap();
    h.run_to_completion(10);
    h.add(request(4, [prompt, vec![5]].concat(), 1)).unwrap();
    assert_eq!(
        seq(&h.step().0, 4).start_pos,
        0,
        "evicted prefix must be recomputed"
    );
    h.assert_matches_reference();
    h.assert_all_free();
}

#[test]
fn chunked_prefill_blocks_are_shareable() {
    let c = SchedulerConfig {
        max_num_batched_tokens: 48,
        max_num_seqs: 4,
        ..cfg(16, 64)
    };
    let mut h = Harness::new(c, VOCAB);
    let prompt = tokens(100, 6);
    h.add(request(1, prompt.clone(), 3)).unwrap();
    h.step(); // positions 0..48 of request 1
    h.add(request(2, prompt, 3)).unwrap();
    let (out, _) = h.step(); // 48..96 of request 1 take the whole budget
    assert_eq!(out.seqs.len(), 1);
    let (out, _) = h.step();
    assert_eq!(
        (seq(&out, 1).start_pos, seq(&out, 1).token_ids.len()),
        (96, 4)
    );
    assert_eq!(
        (seq(&out, 2).start_pos, seq(&out, 2).token_ids.len()),
        (96, 4)
    );
    assert_eq!(
        &seq(&out, 2).block_table[..6],
        &seq(&out, 1).block_table[..6]
    );
    h.run_to_completion(20);
    h.assert_matches_reference();
    h.assert_all_free();
}
