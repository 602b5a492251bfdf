//! The router's SSE relay alignment (`router::proxy::EventAligner`): for any chunking of an
//! upstream byte stream, what it forwards is exactly what came in (nothing lost, duplicated or
//! reordered), every forwarded piece ends at an event boundary unless the held tail outgrew its
//! bound, and the held tail stays within that bound.
#![no_main]

use bytes::Bytes;
use glmfleet_fuzz::{header, split_bytes};
use libfuzzer_sys::fuzz_target;
use router::proxy::{EventAligner, MAX_HELD_BYTES};

fn ends_at_boundary(b: &[u8]) -> bool {
    b.ends_with(b"\n\n") || b.ends_with(b"\n\r\n")
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, seed, rest)) = header(data) else {
        return;
    };
    let mut aligner = EventAligner::new();
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in split_bytes(rest, u64::from(seed), 1 + (flags as usize)) {
        consumed += piece.len();
        if let Some(b) = aligner.push(Bytes::copy_from_slice(piece)) {
            assert!(!b.is_empty());
            // forced flushes only happen past the bound
            assert!(
                ends_at_boundary(&b) || b.len() > MAX_HELD_BYTES,
                "cut mid-event: {b:?}"
            );
            out.extend_from_slice(&b);
        }
        assert!(aligner.held_len() <= MAX_HELD_BYTES);
        assert_eq!(out.len() + aligner.held_len(), consumed);
        // the held tail never contains a whole event: it would have been forwarded
        let held = &rest[out.len()..consumed];
        let whole_event =
            held.windows(2).any(|w| w == b"\n\n") || held.windows(3).any(|w| w == b"\n\r\n");
        assert!(!whole_event, "held back a complete event: {held:?}");
    }
    if let Some(tail) = aligner.finish() {
        out.extend_from_slice(&tail);
    }
    assert_eq!(out, rest, "relay changed the byte stream");
    assert_eq!(aligner.held_len(), 0);
    // The same stream in one piece is cut at the last boundary only.
    let mut one = EventAligner::new();
    let first = one.push(Bytes::copy_from_slice(rest));
    let mut joined = first.map(|b| b.to_vec()).unwrap_or_default();
    if let Some(t) = one.finish() {
        joined.extend_from_slice(&t);
    }
    assert_eq!(joined, rest);
});
