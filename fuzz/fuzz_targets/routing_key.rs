//! The router's request-body reader (`router::routing_key::extract`): any body gives a key (an
//! empty one for unreadable bodies) without a panic, deterministically, and within the block
//! bound that caps the work one request can cause.
#![no_main]

use glmfleet_fuzz::header;
use libfuzzer_sys::fuzz_target;
use router::routing_key::{extract, KeyConfig};

fuzz_target!(|data: &[u8]| {
    let Some((flags, seed, body)) = header(data) else {
        return;
    };
    let cfg = KeyConfig {
        block_bytes: 1 + usize::from(seed % 64),
        max_blocks: usize::from(flags % 16),
    };
    let key = extract(body, &cfg);
    assert!(key.blocks().len() <= cfg.max_blocks);
    assert_eq!(
        key,
        extract(body, &cfg),
        "routing keys must be deterministic"
    );
    // (`IgnoredAny`, like the router's skipped fields, does not validate UTF-8 inside strings)
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        assert!(key.is_empty(), "a body that is not JSON gives an empty key");
    }
});
