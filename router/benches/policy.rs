//! Cost of one routing decision at 64 replicas, per policy, and of extracting a routing key.
//!
//! Run: `cargo bench -p router --bench policy`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use router::policy::{build, Candidate, FleetView, PolicyConfig, PolicyKind, ReplicaId};
use router::routing_key::{extract, KeyConfig, RoutingKey};
use serde_json::json;

const REPLICAS: usize = 64;

fn fleet() -> Vec<Candidate> {
    (0..REPLICAS)
        .map(|i| Candidate {
            id: ReplicaId::from_name(&format!("http://10.0.{}.{}:8001", i / 250, i % 250)),
            load: (i as u64 * 7919) % 40,
            healthy: true,
            available: true,
            saturated: false,
        })
        .collect()
}

/// 1,024 keys of 32 blocks: 16 system prompts, each followed by 64 different conversations.
fn keys() -> Vec<RoutingKey> {
    let cfg = KeyConfig {
        block_bytes: 256,
        max_blocks: 512,
    };
    (0..1024u64)
        .map(|i| {
            let mut prompt = format!("system prompt {} ", i % 16).repeat(300);
            prompt.push_str(&format!("conversation {i} ").repeat(300));
            RoutingKey::from_bytes(&prompt.as_bytes()[..8192], 0, &cfg)
        })
        .collect()
}

fn bench_policies(c: &mut Criterion) {
    let replicas = fleet();
    let view = FleetView {
        epoch: 1,
        replicas: &replicas,
    };
    let keys = keys();
    let mut group = c.benchmark_group("pick_64_replicas");
    for kind in [
        PolicyKind::PrefixHash,
        PolicyKind::RoundRobin,
        PolicyKind::LeastLoaded,
        PolicyKind::PowerOfTwo,
    ] {
        let cfg = PolicyConfig {
            load_bound: 1.25,
            affinity_capacity: 1 << 20,
            seed: 1,
        };
        let mut policy = build(kind, &cfg);
        for key in &keys {
            policy.pick(key, &view);
        }
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(kind.as_str()), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(policy.pick(black_box(&keys[i]), &view))
            })
        });
    }
    group.finish();
}

fn bench_extract(c: &mut Criterion) {
    let cfg = KeyConfig {
        block_bytes: 256,
        max_blocks: 512,
    };
    let mut group = c.benchmark_group("extract_key");
    for size in [4_096usize, 65_536] {
        let body = json!({
            "model": "glm-4.6",
            "stream": true,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. ".repeat(size / 60)},
                {"role": "user", "content": "Please summarise the following text. ".repeat(size / 74)},
            ]
        })
        .to_string();
        group.bench_function(
            BenchmarkId::from_parameter(format!("chat_{}k", size / 1024)),
            |b| b.iter(|| black_box(extract(black_box(body.as_bytes()), &cfg))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_policies, bench_extract);
criterion_main!(benches);
