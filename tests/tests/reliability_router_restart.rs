//! The router stopped with streams in flight, and started again on the same port:
//! * SIGKILL (a crash): every client stream ends without `[DONE]` (a cut connection, never a
//!   stream that looks complete); the replicas see the disconnects, abort the requests and free
//!   their KV blocks; a new router on the same port serves at once.
//! * SIGTERM: the router stops accepting and drains; the streams in flight run to `[DONE]` with
//!   every token; it exits 0 and a new router on the same port serves.
//! * SIGTERM with streams longer than `--shutdown-timeout`: the drain is bounded; what is still
//!   running then is cut (no `[DONE]`), the router exits 0, the replicas clean up.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::http::{self, chat, ignoring_eos, Event, SseStream, StreamEnd};
use e2e::prom::Exposition;
use e2e::{wait_until, Fleet};
use serde_json::Value;

/// Streams in flight when the router is stopped.
const STREAMS: usize = 6;
/// Events each client reads before the router is stopped.
const READ_BEFORE: usize = 10;

/// A streaming chat request of exactly `tokens` tokens that reports per-token logprobs and the
/// final usage (so a client can tell a complete stream from a cut one).
fn stream_body(i: usize, tokens: u32) -> Value {
    let mut body = ignoring_eos(chat(
        &format!("restart client {i}"),
        "Keep talking.",
        tokens,
        true,
    ));
    body["logprobs"] = Value::Bool(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    body
}

/// Tokens an event carries (its logprobs entries).
fn event_tokens(v: &Value) -> usize {
    v["choices"][0]["logprobs"]["content"]
        .as_array()
        .map_or(0, Vec::len)
}

/// What a client got.
#[derive(Debug)]
struct Got {
    /// The stream from the first event after `first`.
    end: StreamEnd,
    /// Tokens counted from the logprobs of every event.
    tokens: usize,
    /// `usage.completion_tokens` of the usage event, if it came.
    usage: Option<u64>,
}

impl Got {
    /// `first`: the events read before the rest was read to its end.
    fn new(first: &[Value], end: StreamEnd) -> Got {
        let all = || first.iter().chain(&end.events);
        let tokens = all().map(event_tokens).sum();
        let usage = all().find_map(|v| v["usage"]["completion_tokens"].as_u64());
        Got { end, tokens, usage }
    }

    /// `[DONE]` after all `want` tokens, consistent with the usage, no error.
    fn complete(&self, want: u32) -> bool {
        self.end.done
            && self.end.error.is_none()
            && self.end.transport_error.is_none()
            && self.end.finish_reason.as_deref() == Some("length")
            && self.tokens == want as usize
            && self.usage == Some(u64::from(want))
    }

    /// How it ended, in a few words.
    fn ending(&self) -> String {
        match (&self.end.transport_error, &self.end.error, self.end.done) {
            (_, _, true) => format!("[DONE] after {} tokens", self.tokens),
            (Some(e), _, _) => format!("cut after {} tokens ({e})", self.tokens),
            (None, Some(e), _) => format!("error event after {} tokens: {e}", self.tokens),
            (None, None, false) => format!("ended without [DONE] after {} tokens", self.tokens),
        }
    }
}

/// Opens `STREAMS` streams of `tokens` tokens through the router, each client reading
/// `READ_BEFORE` events and then the rest `pause` apart; returns once every client has read
/// its first events, with a handle per client.
fn open_streams<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    url: &'s str,
    tokens: u32,
    pause: Duration,
) -> Vec<std::thread::ScopedJoinHandle<'s, Got>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let clients: Vec<_> = (0..STREAMS)
        .map(|i| {
            let ready = ready_tx.clone();
            scope.spawn(move || {
                let mut s = SseStream::open(url, &stream_body(i, tokens)).expect("stream opens");
                assert_eq!(s.status, 200, "stream {i}");
                let mut first = Vec::new();
                while first.len() < READ_BEFORE {
                    match s.next_event().expect("first events") {
                        Some(Event::Data(d)) => {
                            first.push(serde_json::from_str(&d).expect("JSON event"))
                        }
                        other => panic!("stream {i} ended early: {other:?}"),
                    }
                }
                ready.send(i).expect("main thread waiting");
                Got::new(&first, s.finish(pause))
            })
        })
        .collect();
    for _ in 0..STREAMS {
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("every stream under way");
    }
    clients
}

/// Requests running or waiting on the replicas, and whether every KV block is free.
fn replicas_idle(fleet: &Fleet) -> Result<(), String> {
    for i in 0..fleet.addrs.len() {
        let base = fleet.replica_url(i);
        let load = http::get_json(&format!("{base}/load"));
        let metrics = Exposition::parse(&http::get_text(&format!("{base}/metrics")));
        let running = metrics.sum("vllm:num_requests_running", &[]);
        let idle = load["running"] == 0
            && load["waiting"] == 0
            && load["free_blocks"] == load["num_blocks"]
            && running == 0.0;
        if !idle {
            return Err(format!(
                "replica {i}: /load {load}, vllm:num_requests_running {running}"
            ));
        }
    }
    Ok(())
}

fn running_on_replicas(fleet: &Fleet) -> u64 {
    (0..fleet.addrs.len())
        .map(|i| {
            http::get_json(&format!("{}/load", fleet.replica_url(i)))["running"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

/// Waits (bounded) for the replicas to have nothing in flight; returns how long it took.
fn wait_replicas_idle(fleet: &Fleet, what: &str) -> Duration {
    let t = Instant::now();
    let mut last = Ok(());
    let idle = wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
        last = replicas_idle(fleet);
        last.is_ok()
    });
    assert!(idle, "{what}: replicas still busy after 15 s: {last:?}");
    t.elapsed()
}

/// The restarted router answers: streams complete and a whole answer comes back.
fn new_router_serves(fleet: &Fleet) {
    let url = format!("{}/v1/chat/completions", fleet.router_url());
    for i in 0..3 {
        let s = SseStream::open(&url, &stream_body(100 + i, 40)).expect("stream after restart");
        assert_eq!(s.status, 200);
        let got = Got::new(&[], s.finish(Duration::ZERO));
        assert!(
            got.complete(40),
            "stream {i} after restart: {}",
            got.ending()
        );
    }
    let r = http::post_json(&url, &ignoring_eos(chat("", "Hello again.", 20, false)))
        .expect("request after restart");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 20);
}

/// Whether a TCP connection to `addr` is refused (nobody accepting).
fn refused(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

#[test]
fn sigkill_cuts_streams_cleanly_and_a_new_router_takes_over() {
    const TOKENS: u32 = 12_000;
    let mut fleet = Fleet::start(2, "demo", &[], &[]);
    let url = format!("{}/v1/chat/completions", fleet.router_url());
    let aborted_before = fleet.aborted_requests();
    let (got, in_flight) = std::thread::scope(|scope| {
        let clients = open_streams(scope, &url, TOKENS, Duration::ZERO);
        let in_flight = running_on_replicas(&fleet);
        fleet.router.kill();
        let got: Vec<Got> = clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect();
        (got, in_flight)
    });
    assert_eq!(
        in_flight, STREAMS as u64,
        "the streams were not all running on the replicas when the router was killed"
    );
    for (i, g) in got.iter().enumerate() {
        // Cut: no [DONE], no usage, fewer tokens than asked; nothing that looks complete.
        assert!(
            !g.end.done && g.usage.is_none() && g.tokens < TOKENS as usize,
            "stream {i} after SIGKILL of the router: {}",
            g.ending()
        );
        assert!(g.tokens >= READ_BEFORE - 1, "stream {i}: {}", g.ending());
    }
    let cleaned_in = wait_replicas_idle(&fleet, "after SIGKILL of the router");
    let aborts = fleet.aborted_requests() - aborted_before;
    assert_eq!(
        aborts, STREAMS as f64,
        "the replicas should have aborted exactly the {STREAMS} orphaned requests"
    );
    let t = Instant::now();
    fleet.restart_router();
    let restarted_in = t.elapsed();
    new_router_serves(&fleet);
    let endings: Vec<String> = got.iter().map(Got::ending).collect();
    eprintln!(
        "SIGKILL: {STREAMS} streams in flight, endings {endings:?}; replicas idle {cleaned_in:?} \
         after the kill ({aborts} aborted); new router on the same port healthy in {restarted_in:?}"
    );
}

#[test]
fn sigterm_drains_streams_to_done_then_a_new_router_takes_over() {
    // Long enough that the replicas are still generating when the signal comes (checked),
    // short enough to finish well within the 30 s drain budget.
    const TOKENS: u32 = 800;
    let mut fleet = Fleet::start(2, "demo", &[], &["--shutdown-timeout", "30"]);
    let url = format!("{}/v1/chat/completions", fleet.router_url());
    let addr = fleet.router.addr;
    let (got, in_flight, routed, stopped_accepting, exit, drained_in) =
        std::thread::scope(|scope| {
            let clients = open_streams(scope, &url, TOKENS, Duration::ZERO);
            let in_flight = running_on_replicas(&fleet);
            let routed: u64 = fleet.inflight().iter().sum();
            let t = Instant::now();
            fleet.router.terminate();
            let stopped_accepting =
                wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
                    refused(addr)
                });
            let got: Vec<Got> = clients
                .into_iter()
                .map(|c| c.join().expect("client"))
                .collect();
            let exit = fleet.router.wait_exit(Duration::from_secs(40));
            (got, in_flight, routed, stopped_accepting, exit, t.elapsed())
        });
    assert_eq!(
        routed, STREAMS as u64,
        "the router did not have every stream in flight at SIGTERM"
    );
    assert!(
        in_flight > 0,
        "no stream was still generating on the replicas at SIGTERM"
    );
    assert!(stopped_accepting, "the router kept accepting after SIGTERM");
    for (i, g) in got.iter().enumerate() {
        assert!(
            g.complete(TOKENS),
            "stream {i} during the drain: {}",
            g.ending()
        );
    }
    assert_eq!(exit, Some(Some(0)), "router exit after SIGTERM");
    wait_replicas_idle(&fleet, "after the drain");
    fleet.restart_router();
    new_router_serves(&fleet);
    eprintln!(
        "SIGTERM: {STREAMS} streams ({in_flight} running on replicas at the signal) all completed \
         with [DONE] and {TOKENS} tokens; router exited 0 after {drained_in:?}"
    );
}

#[test]
fn sigterm_drain_is_bounded_by_the_shutdown_timeout() {
    const TOKENS: u32 = 12_000;
    let mut fleet = Fleet::start(2, "demo", &[], &["--shutdown-timeout", "1"]);
    let url = format!("{}/v1/chat/completions", fleet.router_url());
    let aborted_before = fleet.aborted_requests();
    let (got, exit, stopped_in) = std::thread::scope(|scope| {
        let clients = open_streams(scope, &url, TOKENS, Duration::ZERO);
        let t = Instant::now();
        fleet.router.terminate();
        let exit = fleet.router.wait_exit(Duration::from_secs(20));
        let stopped_in = t.elapsed();
        let got: Vec<Got> = clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect();
        (got, exit, stopped_in)
    });
    assert_eq!(exit, Some(Some(0)), "router exit after SIGTERM");
    assert!(
        stopped_in < Duration::from_secs(10),
        "a 1 s drain budget took {stopped_in:?}"
    );
    for (i, g) in got.iter().enumerate() {
        assert!(
            !g.end.done && g.usage.is_none() && g.tokens < TOKENS as usize,
            "stream {i} past the drain budget: {}",
            g.ending()
        );
    }
    wait_replicas_idle(&fleet, "after the bounded drain");
    let aborts = fleet.aborted_requests() - aborted_before;
    assert_eq!(aborts, STREAMS as f64, "orphaned requests aborted");
    fleet.restart_router();
    new_router_serves(&fleet);
    let endings: Vec<String> = got.iter().map(Got::ending).collect();
    eprintln!("bounded drain: router exited 0 {stopped_in:?} after SIGTERM (budget 1 s); endings {endings:?}");
}
