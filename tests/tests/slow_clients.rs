//! Slow and disconnecting clients leak nothing: after clients that read slowly, drop streams
//! mid-way, hold streams unread and then go, or give up on non-stream requests, the router's
//! in-flight counts (`/replicas` and `glmfleet_router_inflight`) return to 0, and every replica's
//! `/load` shows nothing running or waiting with all KV blocks free. Slow readers still get
//! their complete answers.

use std::time::{Duration, Instant};

use e2e::http::{self, chat, ignoring_eos, SseStream};
use e2e::prom::Exposition;
use e2e::{wait_until, Fleet};

const LONG: u32 = 3000;

fn settled(fleet: &Fleet) -> Result<(), String> {
    let inflight = fleet.inflight();
    if inflight.iter().any(|&n| n != 0) {
        return Err(format!("router /replicas in-flight {inflight:?}"));
    }
    let metrics = Exposition::parse(&http::get_text(&format!("{}/metrics", fleet.router_url())));
    let gauge = metrics.sum("glmfleet_router_inflight", &[]);
    if metrics.select("glmfleet_router_inflight", &[]).count() == 0 || gauge != 0.0 {
        return Err(format!("router glmfleet_router_inflight sums to {gauge}"));
    }
    for i in 0..fleet.addrs.len() {
        let load = http::get_json(&format!("{}/load", fleet.replica_url(i)));
        let ok = load["running"] == 0
            && load["waiting"] == 0
            && load["free_blocks"] == load["num_blocks"];
        if !ok {
            return Err(format!("replica {i} /load {load}"));
        }
    }
    Ok(())
}

#[test]
fn slow_and_vanishing_clients_leak_nothing() {
    let fleet = Fleet::start(2, "demo", &[], &[]);
    let url = format!("{}/v1/chat/completions", fleet.router_url());
    let aborted_before = fleet.aborted_requests();
    let peak = std::sync::atomic::AtomicU64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);

    std::thread::scope(|scope| {
        let url = &url;
        // Watch the in-flight total while the clients run (they must really have been in flight).
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let total: u64 = fleet.inflight().iter().sum();
                peak.fetch_max(total, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut clients = Vec::new();
        // Slow readers: 40 tokens, 25 ms per event; they must get everything.
        for i in 0..3 {
            clients.push(scope.spawn(move || {
                let body =
                    ignoring_eos(chat(&format!("slow reader {i}"), "Count slowly.", 40, true));
                let s = SseStream::open(url, &body).expect("slow stream");
                assert_eq!(s.status, 200);
                let end = s.finish(Duration::from_millis(25));
                assert!(
                    end.done && end.error.is_none() && end.transport_error.is_none(),
                    "slow reader {i}: {end:?}"
                );
                assert_eq!(end.finish_reason.as_deref(), Some("length"));
                let content_events = end
                    .events
                    .iter()
                    .filter(|e| e["choices"][0]["delta"]["content"].is_string())
                    .count();
                assert!(
                    content_events >= 2,
                    "slow reader {i} got {content_events} content events"
                );
            }));
        }
        // Droppers: read three events of a long stream, then disconnect.
        for i in 0..3 {
            clients.push(scope.spawn(move || {
                let body = ignoring_eos(chat(&format!("dropper {i}"), "Talk forever.", LONG, true));
                let mut s = SseStream::open(url, &body).expect("dropper stream");
                assert_eq!(s.status, 200);
                assert_eq!(s.read_events(3).expect("events"), 3);
                drop(s);
            }));
        }
        // Holders: open a long stream, read nothing more for a while, then disconnect.
        for i in 0..2 {
            clients.push(scope.spawn(move || {
                let body = ignoring_eos(chat(&format!("holder {i}"), "Talk forever.", LONG, true));
                let s = SseStream::open(url, &body).expect("holder stream");
                assert_eq!(s.status, 200);
                std::thread::sleep(Duration::from_millis(600));
                drop(s);
            }));
        }
        // Impatient non-stream clients: give up after 300 ms.
        for i in 0..2 {
            clients.push(scope.spawn(move || {
                let body = ignoring_eos(chat(
                    &format!("impatient {i}"),
                    "Write a book.",
                    LONG,
                    false,
                ));
                let r = http::post_json_timeout(url, &body, Duration::from_millis(300));
                assert!(
                    r.is_err(),
                    "impatient client {i} got an answer within 300 ms: {r:?}"
                );
            }));
        }
        for c in clients {
            c.join().expect("client thread");
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let gone = Instant::now();
    let mut last = Ok(());
    let clean = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        last = settled(&fleet);
        last.is_ok()
    });
    let took = gone.elapsed();
    let aborts = fleet.aborted_requests() - aborted_before;
    let peak = peak.into_inner();
    eprintln!(
        "10 clients (3 slow, 3 dropped mid-stream, 2 held then dropped, 2 impatient non-stream): \
         peak router in-flight {peak}; settled {took:?} after the last client left; {aborts} requests aborted by replicas"
    );
    assert!(
        clean,
        "not settled 15 s after the clients left: {}",
        last.unwrap_err()
    );
    assert!(
        peak >= 5,
        "the clients were never really in flight together (peak {peak})"
    );
    // The 7 vanished clients' 3000-token requests were aborted, not generated to the end.
    assert!(
        aborts >= 7.0,
        "only {aborts} of 7 abandoned requests were aborted"
    );
}
