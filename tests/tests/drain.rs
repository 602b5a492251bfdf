//! Graceful shutdown. A replica SIGTERMed under load lets its in-flight requests finish (200,
//! complete answers, streams to `[DONE]`), answers new requests and `/health` with 503 while it
//! drains, and exits 0. `glmfleet up` SIGTERMed with a request in flight finishes it, exits 0
//! and leaves no replica process behind.

use std::time::{Duration, Instant};

use e2e::http::{self, chat, ignoring_eos, SseStream};
use e2e::{child_pids, proc_stat, serve, wait_until, Proc};

const TOKENS: u32 = 800;

fn running(base: &str) -> u64 {
    http::get_json(&format!("{base}/load"))["running"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn sigterm_drains_a_replica_under_load() {
    let mut replica = serve("demo", &["--shutdown-timeout", "30"]);
    let base = replica.url();
    let url = format!("{base}/v1/chat/completions");
    let (whole, stream, probes, exit) = std::thread::scope(|scope| {
        let whole: Vec<_> = (0..3)
            .map(|i| {
                let url = &url;
                scope.spawn(move || {
                    http::post_json(
                        url,
                        &ignoring_eos(chat("", &format!("Long answer {i}."), TOKENS, false)),
                    )
                })
            })
            .collect();
        let stream = scope.spawn(|| {
            let s = SseStream::open(&url, &ignoring_eos(chat("", "Long stream.", TOKENS, true)))
                .expect("stream");
            (s.status, s.finish(Duration::ZERO))
        });
        let all_running = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
            running(&base) == 4
        });
        assert!(
            all_running,
            "the 4 requests never ran together: {}",
            http::get_json(&format!("{base}/load"))
        );
        replica.terminate();
        // New work is refused while the old finishes (a probe racing the signal may still be served).
        let mut probes: Vec<u16> = Vec::new();
        let refused = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            let r = http::post_json(&url, &chat("", "New request.", 1, false)).expect("probe");
            probes.push(r.status);
            r.status == 503
        });
        assert!(
            refused,
            "no 503 for new requests during the drain: {probes:?}"
        );
        let health = http::get(&format!("{base}/health")).expect("health while draining");
        assert_eq!(
            health.status, 503,
            "/health while draining: {}",
            health.body
        );
        assert!(
            running(&base) > 0,
            "the in-flight requests were gone before the 503 checks"
        );
        let whole: Vec<_> = whole
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect();
        let stream = stream.join().expect("stream client");
        (
            whole,
            stream,
            probes,
            replica.wait_exit(Duration::from_secs(40)),
        )
    });
    for (i, r) in whole.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("in-flight request {i} lost: {e}"));
        assert_eq!(r.status, 200, "in-flight request {i}: {}", r.body);
        let v = r.json();
        assert_eq!(
            v["usage"]["completion_tokens"], TOKENS,
            "request {i} cut short: {}",
            v["usage"]
        );
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
    let (status, end) = stream;
    assert_eq!(status, 200);
    assert!(
        end.done && end.error.is_none() && end.transport_error.is_none(),
        "stream during drain: {end:?}"
    );
    assert_eq!(end.finish_reason.as_deref(), Some("length"));
    eprintln!("drain: 4 in-flight requests completed ({TOKENS} tokens each); new requests during drain: {probes:?}");
    assert_eq!(exit, Some(Some(0)), "replica exit after SIGTERM");
}

#[test]
fn sigterm_stops_up_cleanly() {
    let mut up = Proc::start(
        &[
            "up",
            "--port",
            "0",
            "--replicas",
            "2",
            "--shutdown-timeout",
            "20",
        ],
        "router",
        Duration::from_secs(120),
    );
    let router = up.url();
    let children = child_pids(up.pid());
    assert_eq!(
        children.len(),
        2,
        "expected 2 replica children of up, found {children:?}"
    );
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || { http::get_json(&format!("{router}/replicas"))["healthy"] == 2 }
    ));
    let inflight = |router: &str| -> u64 {
        http::get_json(&format!("{router}/replicas"))["replicas"]
            .as_array()
            .map(|l| l.iter().filter_map(|r| r["inflight"].as_u64()).sum())
            .unwrap_or(0)
    };
    let (reply, exit, stopped_in) = std::thread::scope(|scope| {
        let url = format!("{router}/v1/chat/completions");
        let pending = scope.spawn(move || {
            http::post_json(&url, &ignoring_eos(chat("", "Keep going.", 600, false)))
        });
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_millis(5),
            || inflight(&router) >= 1
        ));
        let t = Instant::now();
        up.terminate();
        let reply = pending.join().expect("client");
        let exit = up.wait_exit(Duration::from_secs(60));
        (reply, exit, t.elapsed())
    });
    let reply = reply.expect("in-flight request through up lost at SIGTERM");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["usage"]["completion_tokens"], 600);
    assert_eq!(exit, Some(Some(0)), "up exit after SIGTERM");
    let gone = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        children.iter().all(|&pid| proc_stat(pid).is_none())
    });
    let left: Vec<_> = children
        .iter()
        .filter_map(|&p| proc_stat(p).map(|s| (p, s)))
        .collect();
    eprintln!("up: stopped in {stopped_in:?} with its in-flight request completed; replica pids {children:?}, left {left:?}");
    assert!(gone, "replica processes left behind by up: {left:?}");
}
