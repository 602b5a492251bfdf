//! Request bodies that stall: a client that sends a complete request head and then only part of
//! its body (declared by `content-length` or chunked), or nothing more, gets an OpenAI-shaped 408
//! once the body deadline passes, and the connection is closed, on the replica as on the router.
//! The router proxies nothing of such a request; both servers keep serving, and the stalled
//! connections leave no descriptors behind.

mod reliability_support;

use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::prom::Exposition;
use reliability_support::{
    assert_error, connect, fd_count, post_json, read_response, scratch, LoggedProc,
};
use serde_json::json;

/// The body deadline both servers run with here (the default is 30 s).
const DEADLINE: Duration = Duration::from_millis(1000);
/// Stalled connections opened at once against each server.
const STALLED: usize = 12;

/// What a stalled request got: status, error message, time from the last byte sent to the
/// answer, and whether the server then closed the connection.
struct Stalled {
    status: u16,
    message: String,
    waited: Duration,
    closed: bool,
}

/// Sends `head` and `partial` (then nothing) to `addr` and reads the answer.
fn stall(addr: SocketAddr, head: &str, partial: &[u8]) -> Stalled {
    let mut s = connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(partial).unwrap();
    let sent = Instant::now();
    let mut r = BufReader::new(s);
    let reply = read_response(&mut r).expect("an answer to the stalled request");
    let waited = sent.elapsed();
    let message = assert_error(&reply, 408);
    // the server closes the connection after the 408: EOF (or a reset), not our read timeout
    let mut rest = [0u8; 64];
    let closed = match r.read(&mut rest) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    Stalled {
        status: reply.status,
        message,
        waited,
        closed,
    }
}

fn declared_head(addr: SocketAddr, path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n"
    )
}

fn chunked_head(addr: SocketAddr, path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
}

/// Stalls `STALLED` requests at once (declared-length and chunked, on both generation
/// endpoints, some with no body byte at all) and checks every answer.
fn stalled_requests_get_408(addr: SocketAddr, who: &str) -> Vec<Duration> {
    let handles: Vec<_> = (0..STALLED)
        .map(|i| {
            std::thread::spawn(move || {
                let path = if i % 2 == 0 {
                    "/v1/chat/completions"
                } else {
                    "/v1/completions"
                };
                match i % 3 {
                    0 => stall(addr, &declared_head(addr, path), b"{\"model\": \"demo\", "),
                    1 => stall(addr, &declared_head(addr, path), b""),
                    // one whole chunk, then no further chunk and no terminator
                    _ => stall(addr, &chunked_head(addr, path), b"a\r\n{\"prompt\":\r\n"),
                }
            })
        })
        .collect();
    let mut waits = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let s = h.join().expect("stalled client");
        assert_eq!(s.status, 408, "{who}: stalled request {i}");
        assert!(
            s.message.contains(&DEADLINE.as_millis().to_string()),
            "{who}: the message should name the deadline: {}",
            s.message
        );
        assert!(
            s.waited >= DEADLINE - Duration::from_millis(100)
                && s.waited < DEADLINE + Duration::from_secs(4),
            "{who}: stalled request {i} answered after {:?} (deadline {DEADLINE:?})",
            s.waited
        );
        assert!(s.closed, "{who}: connection {i} left open after the 408");
        waits.push(s.waited);
    }
    waits
}

fn still_serving(addr: SocketAddr, who: &str) {
    let r = post_json(
        addr,
        "/v1/completions",
        &[],
        &json!({"model": "demo", "prompt": "still there?", "max_tokens": 3}),
    );
    assert_eq!(r.status, 200, "{who}: {}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
}

/// Waits (bounded) until `pid` has at most `baseline + slack` open descriptors.
fn fds_settle(pid: u32, baseline: usize, slack: usize, who: &str) {
    let mut now = usize::MAX;
    let ok = e2e::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        now = fd_count(pid).unwrap_or(usize::MAX);
        now <= baseline + slack
    });
    assert!(
        ok,
        "{who}: {now} descriptors open after the stalled requests, {baseline} before"
    );
}

#[test]
fn stalled_request_bodies_get_408_and_servers_keep_serving() {
    let dir = scratch("body-timeout");
    let ms = DEADLINE.as_millis().to_string();
    let replica = LoggedProc::demo_replica(
        &dir,
        &[],
        &[("GLMFLEET_SERVE_REQUEST_BODY_TIMEOUT_MS", &ms)],
    );
    let replica_url = replica.url();
    let router = LoggedProc::router(
        &dir,
        &[&replica_url],
        &[
            "--health-interval-ms",
            "100",
            "--request-body-timeout-ms",
            &ms,
        ],
        &[],
    );
    still_serving(router.addr, "router");
    let metrics = |url: &str| Exposition::parse(&e2e::http::get_text(&format!("{url}/metrics")));
    let served_before = metrics(&replica_url).sum("vllm:request_success_total", &[]);
    let fds_before = [
        fd_count(replica.pid()).expect("replica fds"),
        fd_count(router.pid()).expect("router fds"),
    ];
    let mut report = Vec::new();
    for (who, proc) in [("replica", &replica), ("router", &router)] {
        let waits = stalled_requests_get_408(proc.addr, who);
        let max = waits.iter().max().copied().unwrap_or_default();
        let min = waits.iter().min().copied().unwrap_or_default();
        report.push(format!(
            "{who}: {STALLED} stalled bodies, 408 after {min:?}..{max:?}"
        ));
        still_serving(proc.addr, who);
    }
    // Nothing of a stalled request reached the engine: only the two `still_serving` requests
    // were served meanwhile.
    let served = metrics(&replica_url).sum("vllm:request_success_total", &[]) - served_before;
    assert_eq!(served, 2.0, "requests served by the replica");
    let rejected = metrics(&router.url()).sum(
        "glmfleet_router_rejected_total",
        &[("reason", "body_timeout")],
    );
    assert_eq!(rejected, STALLED as f64, "router body_timeout rejections");
    // The stalled connections are gone (slack for the router's pooled upstream connections).
    fds_settle(replica.pid(), fds_before[0], 2, "replica");
    fds_settle(router.pid(), fds_before[1], 2, "router");
    eprintln!("body deadline {DEADLINE:?}: {}", report.join("; "));
}
