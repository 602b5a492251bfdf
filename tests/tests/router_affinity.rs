//! The router on real replicas (three `glmfleet serve demo` processes behind `glmfleet router`):
//! prefix affinity while loads are under the bound, the bounded-load guarantee while a hot
//! prefix holds many concurrent streams, and the spread of distinct prefixes.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::http::{self, chat, ignoring_eos, Event, SseStream};
use e2e::{wait_until, Fleet};

const REPLICAS: usize = 3;
/// The router's `--load-bound` (c), given explicitly so the test does not lean on the default.
const LOAD_BOUND: f64 = 1.25;

/// About `len` bytes of deterministic text that starts with `seed` (so two seeds differ from the
/// first routing block on).
fn long_text(seed: &str, len: usize) -> String {
    const WORDS: [&str; 12] = [
        "kv", "cache", "prefix", "router", "replica", "token", "expert", "batch", "stream",
        "bound", "ring", "hash",
    ];
    let mut s = format!("{seed}: you are a careful assistant.");
    let mut x: u64 = seed.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(' ');
        s.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    s
}

fn start_fleet() -> Fleet {
    Fleet::start(
        REPLICAS,
        "demo",
        &[],
        &[
            "--policy",
            "prefix-hash",
            "--load-bound",
            &LOAD_BOUND.to_string(),
        ],
    )
}

/// Sends `n` requests one after another (`send(i)` returns the replica that answered) and counts
/// them by fleet index.
fn tally(fleet: &Fleet, n: usize, mut send: impl FnMut(usize) -> String) -> BTreeMap<usize, usize> {
    let mut by_replica = BTreeMap::new();
    for i in 0..n {
        let replica = send(i);
        *by_replica
            .entry(fleet.index_of(&replica).expect("a fleet member"))
            .or_default() += 1;
    }
    by_replica
}

/// At least 95% of the requests counted in `by_replica` landed on one replica.
fn assert_sticks(what: &str, by_replica: &BTreeMap<usize, usize>) {
    let sent: usize = by_replica.values().sum();
    let top = by_replica.values().copied().max().unwrap_or(0);
    let affinity = top as f64 / sent as f64;
    eprintln!(
        "{what}: {sent} requests by replica {by_replica:?}: affinity {:.1}%",
        affinity * 100.0
    );
    assert!(
        affinity >= 0.95,
        "{what} requests spread over {by_replica:?} (affinity {affinity:.3} < 0.95)"
    );
}

#[test]
fn shared_prefix_sticks_and_distinct_prefixes_spread() {
    let fleet = start_fleet();
    let url = format!("{}/v1/chat/completions", fleet.router_url());

    // One long shared system prompt (8 routing blocks of 256 bytes), distinct questions, sent one
    // after another: every arrival sees loads far under the bound.
    let prefix = long_text("shared-system-prompt", 2048);
    let by_replica = tally(&fleet, 60, |i| {
        let reply = http::post_json(
            &url,
            &chat(
                &prefix,
                &format!("Question {i}: what is {i} squared?"),
                4,
                false,
            ),
        )
        .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        reply.replica.expect("x-glmfleet-replica header")
    });
    assert_sticks("shared-prefix", &by_replica);

    // The same, streamed, each stream read to its `[DONE]` and the next sent at once (an agent's
    // loop): the stream just answered must not count against its prefix owner.
    let prefix = long_text("streamed-system-prompt", 2048);
    let by_replica = tally(&fleet, 40, |i| {
        let body = chat(&prefix, &format!("Step {i}: what next?"), 4, true);
        let mut s = SseStream::open(&url, &body).unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert_eq!(s.status, 200, "stream {i}");
        loop {
            match s.next_event().unwrap_or_else(|e| panic!("stream {i}: {e}")) {
                Some(Event::Done) => break,
                Some(Event::Data(_)) => {}
                None => panic!("stream {i} ended without [DONE]"),
            }
        }
        s.replica.expect("x-glmfleet-replica header")
    });
    assert_sticks("streamed shared-prefix", &by_replica);

    // Distinct prefixes (each differs in its first block) are placed by the ring: all replicas get some.
    let distinct = 30;
    let spread = tally(&fleet, distinct, |i| {
        let system = long_text(&format!("tenant-{i}"), 1024);
        let reply = http::post_json(&url, &chat(&system, "Hello", 4, false))
            .expect("distinct-prefix request");
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.replica.expect("replica header")
    });
    eprintln!("distinct prefixes: {distinct} requests by replica {spread:?}");
    assert_eq!(
        spread.len(),
        REPLICAS,
        "distinct prefixes did not reach every replica: {spread:?}"
    );
}

#[test]
fn hot_prefix_load_stays_within_bound() {
    let fleet = start_fleet();
    let url = format!("{}/v1/chat/completions", fleet.router_url());
    let hot = long_text("hot-prefix", 2048);
    // Streams long enough (3000 tokens, EOS ignored) that none ends while the test holds them
    // unread; the router counts them in flight until they end or the client goes away.
    let streams_wanted = 12;
    let mut held: Vec<SseStream> = Vec::new();
    let mut worst_excess = i64::MIN;
    let check = |inflight: &[u64], opened: usize, worst: &mut i64| {
        let total: u64 = inflight.iter().sum();
        assert_eq!(
            total as usize, opened,
            "router in-flight {inflight:?} != {opened} held streams"
        );
        let avg = total as f64 / REPLICAS as f64;
        let bound = (LOAD_BOUND * avg).ceil() as u64 + 1;
        let max = *inflight.iter().max().unwrap_or(&0);
        *worst = (*worst).max(max as i64 - bound as i64);
        assert!(
            max <= bound,
            "in-flight {inflight:?}: max {max} > ceil({LOAD_BOUND} x {avg:.2}) + 1 = {bound}"
        );
    };
    for i in 0..streams_wanted {
        let body = ignoring_eos(chat(&hot, &format!("Tell story number {i}."), 3000, true));
        let mut s = SseStream::open(&url, &body).unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert_eq!(s.status, 200);
        assert_eq!(
            s.read_events(1).expect("first event"),
            1,
            "stream {i} ended at once"
        );
        held.push(s);
        check(&fleet.inflight(), held.len(), &mut worst_excess);
    }
    // And while they are all held.
    for _ in 0..10 {
        check(&fleet.inflight(), held.len(), &mut worst_excess);
        std::thread::sleep(Duration::from_millis(50));
    }
    let inflight = fleet.inflight();
    let mut per: BTreeMap<usize, usize> = BTreeMap::new();
    for s in &held {
        *per.entry(
            fleet
                .index_of(s.replica.as_deref().expect("replica header"))
                .expect("member"),
        )
        .or_default() += 1;
    }
    eprintln!(
        "hot prefix: {streams_wanted} held streams by replica {per:?}, router in-flight {inflight:?}, \
         bound ceil({LOAD_BOUND} x avg) + 1, worst max - bound = {worst_excess}"
    );
    assert!(
        per.len() > 1,
        "the load bound never spilled the hot prefix: {per:?}"
    );

    // Dropping the clients releases every in-flight count.
    drop(held);
    let released = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        fleet.inflight().iter().all(|&n| n == 0)
    });
    assert!(
        released,
        "in-flight counts stuck after clients left: {:?}",
        fleet.inflight()
    );
}
