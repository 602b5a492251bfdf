//! Limits and boundaries of the real servers on loopback:
//! * request bodies over the limit get 413 (declared, chunked, and declared-but-never-sent),
//!   oversized or too many headers get 431, an oversized request target 414/431, and the
//!   server keeps serving afterwards (replica and router);
//! * the router only ever connects to the replicas it was given: a forged `Host`, an
//!   absolute-form request target or `CONNECT` naming another address never reach it;
//! * servers bind loopback unless told otherwise (`serve`, `router`, `up`);
//! * a request head that never completes is cut off by the header-read timeout.

mod reliability_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reliability_support::{
    assert_error, build, connect, exchange, get, post_json, read_response, scratch, LoggedProc,
    RawReply,
};
use serde_json::json;

const LIMIT: usize = 4096;

fn body_limits(addr: SocketAddr, who: &str) {
    // declared length over the limit
    let big = json!({"prompt": "z".repeat(2 * LIMIT), "max_tokens": 1});
    let r = post_json(addr, "/v1/completions", &[], &big);
    let msg = assert_error(&r, 413);
    assert!(msg.contains(&LIMIT.to_string()), "{who}: {msg}");

    // chunked, no length: the limit still holds
    let payload = format!("{{\"prompt\": \"{}\"}}", "c".repeat(2 * LIMIT));
    let mut raw = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in payload.as_bytes().chunks(1000) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_error(&exchange(addr, &raw).expect("chunked"), 413);

    // a huge declared length with (almost) nothing sent is refused at once, not waited for
    let mut s = connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 1000000000000\r\n\r\n{{\"prompt\"")
            .as_bytes(),
    )
    .unwrap();
    let mut r = std::io::BufReader::new(s);
    let reply = read_response(&mut r)
        .unwrap_or_else(|e| panic!("{who}: no answer to a 1 TB declared body within 10 s: {e}"));
    assert_error(&reply, 413);
}

fn header_limits(addr: SocketAddr, who: &str) {
    let huge = "h".repeat(512 * 1024);
    let raw = build(
        "GET",
        "/health",
        &addr.to_string(),
        &[("x-big", &huge)],
        b"",
    );
    let r = exchange(addr, &raw).expect("huge header");
    assert_eq!(r.status, 431, "{who}: a 512 KiB header");

    let names: Vec<String> = (0..200).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = exchange(
        addr,
        &build("GET", "/health", &addr.to_string(), &many, b""),
    )
    .expect("many headers");
    assert_eq!(r.status, 431, "{who}: 200 headers");

    let long_target = format!("/health?{}", "q".repeat(512 * 1024));
    let r = exchange(
        addr,
        &build("GET", &long_target, &addr.to_string(), &[], b""),
    )
    .expect("long target");
    assert!(
        matches!(r.status, 414 | 431),
        "{who}: a 512 KiB request target got {}",
        r.status
    );
}

fn still_serving(addr: SocketAddr, who: &str) {
    assert_eq!(
        get(addr, "/health", &[]).status,
        200,
        "{who} stopped serving"
    );
    let r = post_json(
        addr,
        "/v1/completions",
        &[],
        &json!({"prompt": "ok", "max_tokens": 2}),
    );
    assert_eq!(r.status, 200, "{who}: {}", r.text());
}

#[test]
fn oversized_bodies_and_headers_are_refused_and_servers_survive() {
    let dir = scratch("security-limits");
    let limit = LIMIT.to_string();
    let replica = LoggedProc::demo_replica(
        &dir,
        &[],
        &[("GLMFLEET_SERVE_MAX_REQUEST_BODY_BYTES", &limit)],
    );
    let replica_url = replica.url();
    let router = LoggedProc::router(
        &dir,
        &[&replica_url],
        &["--max-body-bytes", &limit, "--health-interval-ms", "100"],
        &[],
    );
    for (who, addr) in [("replica", replica.addr), ("router", router.addr)] {
        body_limits(addr, who);
        header_limits(addr, who);
        still_serving(addr, who);
    }
}

/// A client that sends half a request head and then nothing is cut off by the header-read
/// timeout (hyper's 30 s), on the replica as on the router: idle half-open requests cannot pile
/// up until the servers run out of descriptors (slowloris). Takes ~30 s, in parallel with the
/// other tests of this file.
#[test]
fn half_sent_request_heads_time_out() {
    let dir = scratch("security-slowloris");
    let replica = LoggedProc::demo_replica(&dir, &[], &[]);
    let replica_url = replica.url();
    let router = LoggedProc::router(&dir, &[&replica_url], &[], &[]);
    let probes: Vec<_> = [("replica", replica.addr), ("router", router.addr)]
        .into_iter()
        .map(|(who, addr)| {
            std::thread::spawn(move || {
                let mut s = connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(45))).unwrap();
                s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").unwrap();
                let started = std::time::Instant::now();
                let mut buf = [0u8; 256];
                // the server answers 408, closes or resets; only our own timeout means "open"
                let closed = match s.read(&mut buf) {
                    Ok(_) => true,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                };
                (who, closed, started.elapsed())
            })
        })
        .collect();
    for p in probes {
        let (who, closed, waited) = p.join().expect("probe");
        assert!(
            closed && waited < Duration::from_secs(40),
            "{who} kept a half-sent request open for {waited:?}"
        );
    }
}

/// A listener that counts every connection it accepts (it must get none).
struct Decoy {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Decoy {
    fn start() -> Decoy {
        let l = TcpListener::bind("127.0.0.1:0").expect("decoy bind");
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let mut buf = [0u8; 1024];
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\ndecoy",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Decoy { addr, hits }
    }
}

#[test]
fn router_only_connects_to_its_replicas() {
    let dir = scratch("security-hosts");
    let replica = LoggedProc::demo_replica(&dir, &[], &[]);
    let replica_url = replica.url();
    let router = LoggedProc::router(&dir, &[&replica_url], &["--health-interval-ms", "100"], &[]);
    let decoy = Decoy::start();
    let d = decoy.addr.to_string();
    let body = json!({"prompt": "hello", "max_tokens": 2}).to_string();
    let b = body.as_bytes();
    let ct = [("content-type", "application/json")];
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("forged Host", build("POST", "/v1/completions", &d, &ct, b)),
        (
            "absolute-form target",
            build("POST", &format!("http://{d}/v1/completions"), &d, &ct, b),
        ),
        (
            "absolute-form GET",
            build("GET", &format!("http://{d}/v1/models"), &d, &[], b""),
        ),
        (
            "absolute-form, other scheme",
            build("POST", &format!("https://{d}/v1/completions"), &d, &ct, b),
        ),
        (
            "authority in the path",
            build("POST", &format!("//{d}/v1/completions"), &d, &ct, b),
        ),
        (
            "userinfo trick",
            build(
                "POST",
                &format!("http://{}@{d}/v1/completions", router.addr),
                &d,
                &ct,
                b,
            ),
        ),
        ("CONNECT", build("CONNECT", &d, &d, &[], b"")),
        (
            "forwarding headers",
            build(
                "POST",
                "/v1/completions",
                &router.addr.to_string(),
                &[
                    ("content-type", "application/json"),
                    ("x-forwarded-host", &d),
                    ("forwarded", &format!("host={d}")),
                    ("x-glmfleet-replica", &format!("http://{d}")),
                ],
                b,
            ),
        ),
    ];
    for (what, raw) in requests {
        let r: RawReply = exchange(router.addr, &raw).expect(what);
        assert_ne!(r.text(), "decoy", "{what}: answered by the decoy");
        if r.status == 200 {
            assert_eq!(
                r.header("x-glmfleet-replica"),
                Some(replica_url.as_str()),
                "{what}: served by someone else"
            );
        } else {
            assert!(
                (400..500).contains(&r.status),
                "{what}: got {} {}",
                r.status,
                r.text()
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        decoy.hits.load(Ordering::SeqCst),
        0,
        "the router connected to an address it was not given"
    );
}

#[test]
fn servers_bind_loopback_by_default() {
    let dir = scratch("security-bind");
    let replica = LoggedProc::start(
        &["serve", "demo", "--port", "0"],
        &[],
        "replica",
        &dir.join("replica.log"),
    );
    assert!(
        replica.addr.ip().is_loopback(),
        "serve bound {}",
        replica.addr
    );
    let url = replica.url();
    let router = LoggedProc::start(
        &["router", "--port", "0", "--replica", &url],
        &[],
        "router",
        &dir.join("router.log"),
    );
    assert!(
        router.addr.ip().is_loopback(),
        "router bound {}",
        router.addr
    );
    drop(router);
    let mut up = LoggedProc::start(
        &[
            "up",
            "--replicas",
            "1",
            "--port",
            "0",
            "--shutdown-timeout",
            "1",
        ],
        &[],
        "router",
        &dir.join("up.log"),
    );
    assert!(up.addr.ip().is_loopback(), "up bound {}", up.addr);
    let children = e2e::child_pids(up.pid());
    assert_eq!(children.len(), 1, "up should run one replica: {children:?}");
    // SIGTERM stops the fleet: `up` exits and takes its replica with it
    assert_eq!(
        up.stop(Duration::from_secs(30)),
        Some(0),
        "up did not exit cleanly"
    );
    let gone = e2e::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        children.iter().all(|&c| e2e::proc_stat(c).is_none())
    });
    assert!(gone, "up left its replica {children:?} running");
}
