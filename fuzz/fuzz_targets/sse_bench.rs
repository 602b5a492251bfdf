//! The bench client's SSE reader: events do not depend on how the byte stream was chunked
//! (multi-byte characters and `\r\n` pairs cut anywhere), and every payload goes through the
//! token-timing state without a panic.
#![no_main]

use bench::sse::{SseDecoder, StreamKind, StreamState};
use glmfleet_fuzz::{header, split_bytes};
use libfuzzer_sys::fuzz_target;

fn decode(pieces: &[&[u8]]) -> Vec<String> {
    let mut d = SseDecoder::new();
    let mut events = Vec::new();
    for p in pieces {
        events.extend(d.push(p));
    }
    events.extend(d.finish());
    assert_eq!(d.finish(), None, "finish twice yields nothing");
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, seed, rest)) = header(data) else {
        return;
    };
    let whole = decode(&[rest]);
    let split = decode(&split_bytes(
        rest,
        u64::from(seed),
        1 + (flags as usize & 0x3f),
    ));
    assert_eq!(whole, split, "chunking changed the events of {rest:?}");
    let kind = if flags & 0x80 != 0 {
        StreamKind::Chat
    } else {
        StreamKind::Completions
    };
    let mut state = StreamState::new(kind);
    for (i, event) in whole.iter().enumerate() {
        if state.on_event(event, i as f64 * 0.01) == bench::sse::Flow::Stop {
            break;
        }
    }
    assert!(state.itl.iter().all(|x| x.is_finite()));
});
