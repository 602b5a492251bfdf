//! KV bookkeeping micro-benchmarks: block-pool allocate/free and the prefix lookup of an
//! 8,000-token prompt (hashing, index lookup, and a whole admission through the scheduler).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use scheduler::kv_cache::{BlockHash, BlockHasher, BlockPool};
use scheduler::{NewRequest, Scheduler, SchedulerConfig};

const NUM_BLOCKS: usize = 32 * 1024;
const PROMPT: usize = 8000;

/// A pool whose free list holds cached blocks, so allocation also evicts hashes.
fn cached_pool() -> BlockPool {
    let mut pool = BlockPool::new(NUM_BLOCKS).expect("pool");
    let mut ids = Vec::new();
    assert!(pool.allocate_many(NUM_BLOCKS, &mut ids));
    for &id in &ids {
        pool.cache_block(id, BlockHash(u128::from(id) * 0x9e37_79b9_7f4a_7c15 + 1));
    }
    for &id in ids.iter().rev() {
        pool.free(id);
    }
    pool
}

fn bench_block_pool(c: &mut Criterion) {
    let mut group = c.benchmark_group("block_pool");
    let mut pool = cached_pool();
    let mut ids = Vec::with_capacity(64);
    group.bench_function("allocate_free_64_blocks", |b| {
        b.iter(|| {
            ids.clear();
            assert!(pool.allocate_many(64, &mut ids));
            for &id in ids.iter().rev() {
                black_box(pool.free(id));
            }
        })
    });
    let mut pool = BlockPool::new(NUM_BLOCKS).expect("pool");
    group.bench_function("allocate_free_1_block", |b| {
        b.iter(|| {
            let id = pool.allocate().expect("free block");
            black_box(pool.free(id));
        })
    });
    group.finish();
}

fn prompt() -> Vec<u32> {
    (0..PROMPT as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 151_000)
        .collect()
}

fn bench_prefix_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("prefix_lookup_8000_tokens");
    let tokens = prompt();
    let mut hasher = BlockHasher::new(16).expect("hasher");
    group.bench_function("hash_blocks", |b| {
        b.iter(|| black_box(hasher.hash_prefix(black_box(&tokens), None)))
    });

    // Index lookup of 500 chained hashes, all cached.
    let hashes = hasher.hash_prefix(&tokens, None);
    let mut pool = BlockPool::new(NUM_BLOCKS).expect("pool");
    for h in &hashes {
        let id = pool.allocate().expect("block");
        pool.cache_block(id, *h);
    }
    let mut found = Vec::with_capacity(hashes.len());
    group.bench_function("find_cached_prefix", |b| {
        b.iter(|| {
            found.clear();
            black_box(pool.find_cached_prefix(black_box(&hashes), &mut found))
        })
    });

    // Whole admission: add (hash) + schedule (lookup, take 499 cached blocks, allocate one) +
    // abort (free), with the prefix cached by an earlier request.
    let cfg = SchedulerConfig {
        max_model_len: 16 * 1024,
        num_blocks: 2048,
        ..Default::default()
    };
    let mut s = Scheduler::new(cfg).expect("config");
    let request = |id| NewRequest {
        id,
        prompt_token_ids: tokens.clone(),
        max_tokens: 1,
        ..Default::default()
    };
    s.add_request(request(0)).expect("request");
    let out = s.schedule();
    s.update_from_output(&out, &[(0, vec![1])]);
    let mut id = 1;
    group.bench_function("admit_cached_prompt", |b| {
        b.iter(|| {
            s.add_request(request(id)).expect("request");
            let out = s.schedule();
            assert_eq!(out.seqs[0].start_pos, PROMPT - 16);
            s.abort(id);
            id += 1;
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_block_pool, bench_prefix_lookup);
criterion_main!(benches);
