//! A replica SIGKILLed under load (three `serve demo` replicas behind `glmfleet router`, the
//! test owning every pid): requests that had not started streaming are retried elsewhere, so
//! every non-stream request gets 200; streams that had started end with an SSE error event (or
//! finish); the replica restarted on its old port is re-admitted and receives traffic again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::http::{self, chat, ignoring_eos, SseStream, StreamEnd};
use e2e::prom::Exposition;
use e2e::{wait_until, Fleet};

const VICTIM: usize = 0;
const WORKERS: usize = 6;
/// Most requests one worker sends (the load is bounded in count as well as in time).
const MAX_PER_WORKER: usize = 200;

#[derive(Debug)]
enum Outcome {
    Whole {
        status: u16,
        replica: Option<String>,
    },
    Stream {
        status: u16,
        replica: Option<String>,
        end: StreamEnd,
    },
    Lost {
        stream: bool,
        error: String,
    },
}

fn filler(tag: &str) -> String {
    let mut s = format!("{tag}. ");
    while s.len() < 400 {
        s.push_str("context words for the cache ");
    }
    s
}

fn one_request(url: &str, worker: usize, k: usize) -> Outcome {
    let system = filler(&format!("worker {worker} request {k}"));
    if k.is_multiple_of(2) {
        let body = ignoring_eos(chat(&system, "Say something.", 24, false));
        match http::post_json(url, &body) {
            Ok(r) => Outcome::Whole {
                status: r.status,
                replica: r.replica,
            },
            Err(e) => Outcome::Lost {
                stream: false,
                error: e.0,
            },
        }
    } else {
        let body = ignoring_eos(chat(&system, "Stream something.", 48, true));
        match SseStream::open(url, &body) {
            Ok(s) => {
                let (status, replica) = (s.status, s.replica.clone());
                Outcome::Stream {
                    status,
                    replica,
                    end: s.finish(Duration::ZERO),
                }
            }
            Err(e) => Outcome::Lost {
                stream: true,
                error: e.0,
            },
        }
    }
}

fn retries(fleet: &Fleet) -> f64 {
    let text = http::get_text(&format!("{}/metrics", fleet.router_url()));
    Exposition::parse(&text).sum("glmfleet_router_retries_total", &[])
}

#[test]
fn killed_replica_loses_no_request_and_rejoins() {
    // A generous load bound, so a second request with the victim's prefix stays on the victim.
    let mut fleet = Fleet::start(3, "demo", &[], &["--max-retries", "2", "--load-bound", "4"]);
    let url = format!("{}/v1/chat/completions", fleet.router_url());
    let victim_url = fleet.replica_url(VICTIM);

    // A prefix the router places on the victim (remembered from then on).
    let pinned = (0..60)
        .map(|i| filler(&format!("pinned {i}")))
        .find(|system| {
            let reply = http::post_json(&url, &chat(system, "Hi", 2, false)).expect("probe");
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.replica.as_deref() == Some(victim_url.as_str())
        })
        .expect("no prefix of 60 landed on the victim");
    // A long stream that has started on the victim, and a long non-stream request in flight there.
    let mut started = SseStream::open(
        &url,
        &ignoring_eos(chat(&pinned, "A long story.", 4000, true)),
    )
    .expect("stream");
    assert_eq!(started.replica.as_deref(), Some(victim_url.as_str()));
    assert_eq!(started.read_events(2).expect("first events"), 2);
    let retries_before = retries(&fleet);

    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let (pending, victim_inflight_at_kill, readmitted_after) = std::thread::scope(|scope| {
        let pending = scope.spawn(|| {
            http::post_json(
                &url,
                &ignoring_eos(chat(&pinned, "A long answer.", 1500, false)),
            )
            .expect("no answer")
        });
        let both = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
            fleet.inflight()[VICTIM] >= 2
        });
        assert!(
            both,
            "the pinned non-stream request did not reach the victim: {}",
            fleet.state()
        );
        for w in 0..WORKERS {
            let (url, stop, sent, outcomes) = (&url, &stop, &sent, &outcomes);
            scope.spawn(move || {
                for k in 0..MAX_PER_WORKER {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    let o = one_request(url, w, k);
                    outcomes.lock().unwrap().push(o);
                }
            });
        }
        // Kill the victim while the background load is running too.
        std::thread::sleep(Duration::from_millis(300));
        let at_kill = fleet.inflight()[VICTIM];
        fleet.kill_replica(VICTIM);
        let killed_at = Instant::now();
        // Load goes on against the survivors for a while.
        std::thread::sleep(Duration::from_millis(1500));
        fleet.restart_replica(VICTIM);
        let back = wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
            fleet.is_healthy(VICTIM)
        });
        let readmitted = killed_at.elapsed();
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::SeqCst);
        assert!(
            back,
            "the restarted replica was not re-admitted: {}",
            fleet.state()
        );
        (
            pending.join().expect("pending request thread"),
            at_kill,
            readmitted,
        )
    });

    // The request in flight on the victim had sent nothing: retried elsewhere, complete.
    assert_eq!(pending.status, 200, "{}", pending.body);
    assert_ne!(
        pending.replica.as_deref(),
        Some(victim_url.as_str()),
        "answered by the killed replica?"
    );
    assert_eq!(
        pending.json()["usage"]["completion_tokens"],
        1500,
        "retried answer is incomplete"
    );
    // The started stream ends with an error event naming what happened, not a silent cut.
    let cut = started.finish(Duration::ZERO);
    assert!(
        cut.transport_error.is_none() && cut.error.is_some(),
        "started stream: {cut:?}"
    );
    assert!(
        cut.finish_reason.is_none(),
        "the cut stream claims to have finished: {cut:?}"
    );
    eprintln!(
        "started stream after SIGKILL: error event {}",
        cut.error.as_ref().unwrap()
    );

    let outcomes = outcomes.into_inner().unwrap();
    let sent = sent.load(Ordering::SeqCst);
    assert_eq!(outcomes.len(), sent);
    let (mut whole, mut streams, mut finished, mut error_events) = (0, 0, 0, 0);
    for o in &outcomes {
        match o {
            Outcome::Lost { stream, error } => panic!("request lost (stream: {stream}): {error}"),
            Outcome::Whole { status, replica } => {
                whole += 1;
                assert_eq!(
                    *status, 200,
                    "non-stream request answered {status} by {replica:?}"
                );
            }
            Outcome::Stream {
                status,
                replica,
                end,
            } => {
                streams += 1;
                assert_eq!(*status, 200, "stream answered {status} by {replica:?}");
                assert!(
                    end.ended_clearly(),
                    "stream from {replica:?} ended without [DONE] or an error event: {end:?}"
                );
                if let Some(error) = &end.error {
                    error_events += 1;
                    assert_eq!(
                        replica.as_deref(),
                        Some(victim_url.as_str()),
                        "error event from a live replica: {error}"
                    );
                } else {
                    finished += 1;
                    assert_eq!(end.finish_reason.as_deref(), Some("length"), "{end:?}");
                }
            }
        }
    }
    let retried = retries(&fleet) - retries_before;
    eprintln!(
        "background load: sent {sent} ({whole} non-stream, {streams} streams), lost 0; victim held \
         {victim_inflight_at_kill} at SIGKILL; {retried} retries in all; {error_events} background streams ended \
         with an error event, {finished} finished; re-admitted {readmitted_after:?} after the kill"
    );
    assert!(
        retried >= 1.0,
        "the in-flight request on the victim was not retried"
    );

    // The restarted replica receives traffic again: distinct prefixes reach it within a few tries.
    let mut reached = None;
    for i in 0..60 {
        let reply = http::post_json(
            &url,
            &chat(&filler(&format!("after restart {i}")), "Hi", 2, false),
        )
        .expect("request");
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.replica.as_deref() == Some(victim_url.as_str()) {
            reached = Some(i + 1);
            break;
        }
    }
    eprintln!("restarted replica served probe {reached:?} after re-admission");
    assert!(
        reached.is_some(),
        "the restarted replica got none of 60 distinct-prefix requests"
    );
}
