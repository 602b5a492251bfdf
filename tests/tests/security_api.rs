//! API keys on real processes: a replica started with `--api-key` (and a router in front of it)
//! answers 401 on every OpenAI and tokenizer route without the right key, in whatever form a
//! wrong key comes (missing, another scheme, a prefix or extension of the key, in the query),
//! serves probes and scrapes (`/health`, `/metrics`, `/version`, `/load`) without one, and never
//! writes the key to its logs or its metrics. A key given through the environment stays out of
//! the process's command line. The key comparison is constant-time (checked in the source).

mod reliability_support;

use std::net::SocketAddr;

use reliability_support::{assert_error, get, post_json, request, scratch, LoggedProc};
use serde_json::{json, Value};

const SECRET: &str = "sk-glmfleet-7b1e0c9d4a5f-SECRET";

/// Every protected route with a body that is valid for it (so the right key gets a 200).
fn protected() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        (
            "POST",
            "/v1/chat/completions",
            Some(json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})),
        ),
        (
            "POST",
            "/v1/completions",
            Some(json!({"prompt": "hi", "max_tokens": 2})),
        ),
        ("GET", "/v1/models", None),
        ("POST", "/tokenize", Some(json!({"prompt": "hi"}))),
        ("POST", "/detokenize", Some(json!({"tokens": [1, 2, 3]}))),
    ]
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &Option<Value>,
) -> reliability_support::RawReply {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    match body {
        Some(b) => post_json(addr, path, &headers, b),
        None => request(addr, method, path, &headers, b"").expect("request"),
    }
}

fn wrong_keys() -> Vec<String> {
    vec![
        "Bearer wrong-key".into(),
        format!("Bearer {}", &SECRET[..SECRET.len() - 1]),
        format!("Bearer {SECRET}x"),
        format!("Basic {SECRET}"),
        SECRET.into(),
        format!("Bearer{SECRET}"),
        "Bearer ".into(),
    ]
}

#[test]
fn api_key_guards_every_api_route_and_stays_out_of_logs() {
    let dir = scratch("security-api");
    let replica = LoggedProc::start(
        &[
            "serve",
            "demo",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--api-key",
            SECRET,
        ],
        &[("RUST_LOG", "debug")],
        "replica",
        &dir.join("replica.log"),
    );
    let replica_url = replica.url();
    let router = LoggedProc::router(
        &dir,
        &[&replica_url],
        &["--health-interval-ms", "100"],
        &[("RUST_LOG", "debug")],
    );
    let bearer = format!("Bearer {SECRET}");
    for (name, addr) in [("replica", replica.addr), ("router", router.addr)] {
        for (method, path, body) in protected() {
            let r = call(addr, method, path, None, &body);
            assert_error(&r, 401);
            for key in wrong_keys() {
                let r = call(addr, method, path, Some(&key), &body);
                assert_eq!(r.status, 401, "{name} {path} with {key:?}: {}", r.text());
                assert!(!r.text().contains(SECRET), "{name} {path} echoed the key");
            }
            let in_query = format!("{path}?api_key={SECRET}");
            assert_eq!(call(addr, method, &in_query, None, &body).status, 401);
            let r = call(addr, method, path, Some(&bearer), &body);
            assert_eq!(r.status, 200, "{name} {path} with the key: {}", r.text());
        }
        // an unknown API path is refused before anything else is revealed
        assert_eq!(get(addr, "/v1/nope", &[]).status, 401, "{name}");
    }
    for path in ["/health", "/metrics", "/version", "/load"] {
        let r = get(replica.addr, path, &[]);
        assert_eq!(r.status, 200, "replica {path} must not need the key");
        assert!(!r.text().contains(SECRET), "replica {path} shows the key");
    }
    for path in ["/health", "/metrics", "/replicas"] {
        let r = get(router.addr, path, &[]);
        assert_eq!(r.status, 200, "router {path} must not need the key");
        assert!(!r.text().contains(SECRET), "router {path} shows the key");
    }
    // give the loggers a moment, then read everything both processes wrote
    std::thread::sleep(std::time::Duration::from_millis(300));
    for p in [&replica, &router] {
        let log = p.stderr();
        assert!(!log.is_empty(), "debug logging produced nothing to check");
        assert!(
            !log.contains(SECRET) && !log.contains(&SECRET[3..20]),
            "the API key appears in the logs of {}:\n{log}",
            p.url()
        );
    }
}

#[test]
fn api_key_from_the_environment_is_not_on_the_command_line() {
    let dir = scratch("security-env-key");
    let key = "sk-env-only-3c0ffee";
    let p = LoggedProc::demo_replica(&dir, &[], &[("GLMFLEET_API_KEY", key)]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid())).expect("cmdline");
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(key),
        "the key is visible in the process list"
    );
    let body = Some(json!({"prompt": "x", "max_tokens": 1}));
    assert_error(&call(p.addr, "POST", "/v1/completions", None, &body), 401);
    let ok = call(
        p.addr,
        "POST",
        "/v1/completions",
        Some(&format!("Bearer {key}")),
        &body,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(!p.stderr().contains(key));
}

/// The key check is the only place a key is compared, and it compares in constant time.
#[test]
fn key_comparison_is_constant_time() {
    let root = e2e::repo_root();
    let auth = std::fs::read_to_string(root.join("replica/src/api/auth.rs")).expect("auth.rs");
    assert!(
        auth.contains("use subtle::ConstantTimeEq") && auth.contains(".ct_eq("),
        "replica/src/api/auth.rs must compare keys with subtle's ct_eq"
    );
    // no other comparison of a key anywhere in the servers' sources
    let mut offenders = Vec::new();
    for dir in ["replica/src", "router/src", "ops/cli/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("source dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (i, line) in text.lines().enumerate() {
                    let l = line.trim();
                    let compares = l.contains("==") || l.contains("!=") || l.contains(".eq(");
                    let about_key = l.contains("api_key") || l.contains("token ==");
                    // `== Some("")` is the empty-key config check, not a key comparison
                    if compares && about_key && !l.contains("Some(\"\")") && !l.starts_with("//") {
                        offenders.push(format!("{}:{}: {l}", path.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "non-constant-time key comparisons: {offenders:#?}"
    );
}
