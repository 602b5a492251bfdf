//! Routing behaviour end to end: affinity, the load bound, spread, overload, and the router's own
//! endpoints, against mock replicas on loopback.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use router::{App, RouterConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

fn count_by(names: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for n in names {
        *counts.entry(n.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefix_sticks_to_one_replica_and_distinct_prefixes_spread() {
    let mocks = [
        MockReplica::normal("a").await,
        MockReplica::normal("b").await,
        MockReplica::normal("c").await,
    ];
    let router = TestRouter::start(test_config(&[&mocks[0], &mocks[1], &mocks[2]])).await;
    let client = TestClient::new();
    let url = format!("{}/v1/chat/completions", router.url);

    // 60 conversations behind one long system prompt, one at a time (loads under the bound).
    let system = text(1, 4_000);
    let mut served = Vec::new();
    for i in 0..60 {
        let (status, headers, _) = client
            .post_json(&url, &chat(&system, &format!("question {i}"), false))
            .await;
        assert_eq!(status, StatusCode::OK);
        served.push(served_by(&headers));
    }
    let counts = count_by(&served);
    let top = counts.values().max().copied().unwrap_or(0);
    assert!(
        top * 100 >= 95 * served.len(),
        "shared prefix spread: {counts:?}"
    );

    // 90 distinct prefixes spread over all replicas.
    let mut served = Vec::new();
    for i in 0..90 {
        let (status, headers, _) = client
            .post_json(&url, &chat(&text(100 + i, 1_000), "q", false))
            .await;
        assert_eq!(status, StatusCode::OK);
        served.push(served_by(&headers));
    }
    let counts = count_by(&served);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&c| c >= 12),
        "distinct prefixes: {counts:?}"
    );

    let metrics = router.metrics(&client).await;
    assert!(metrics.contains("glmfleet_router_decisions_total{outcome=\"affinity\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_bound_holds_for_a_hot_prefix() {
    let mocks = [
        MockReplica::start("a", Behavior::Hold).await,
        MockReplica::start("b", Behavior::Hold).await,
        MockReplica::start("c", Behavior::Hold).await,
    ];
    let cfg = RouterConfig {
        load_bound: 1.25,
        ..test_config(&[&mocks[0], &mocks[1], &mocks[2]])
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();
    let url = format!("{}/v1/chat/completions", router.url);

    // 30 requests sharing one prefix, all held open at the replicas.
    let hot = text(7, 3_000);
    let total = 30usize;
    let mut tasks = Vec::new();
    for i in 0..total {
        let client = client.clone();
        let url = url.clone();
        let body = chat(&hot, &format!("q{i}"), false);
        tasks.push(tokio::spawn(
            async move { client.post_json(&url, &body).await },
        ));
    }
    let mut arrived = 0;
    for _ in 0..400 {
        arrived = mocks.iter().map(|m| m.inflight()).sum::<u64>();
        if arrived as usize == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(arrived as usize, total);
    let bound = (1.25 * total as f64 / 3.0).ceil() as u64 + 1;
    let loads: Vec<u64> = mocks.iter().map(|m| m.inflight()).collect();
    assert!(
        loads.iter().all(|&l| l <= bound),
        "loads {loads:?} exceed {bound}"
    );
    // The hot prefix is not spread at random: the owner is full, the spill is ordered.
    let mut sorted = loads.clone();
    sorted.sort_unstable();
    assert!(
        sorted[2] >= 12,
        "owner should be filled to the bound: {loads:?}"
    );

    for m in &mocks {
        m.open_hold();
    }
    for task in tasks {
        let (status, _, _) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    router
        .wait_replicas(&client, "in-flight back to 0", |doc| {
            doc["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["inflight"] == 0)
        })
        .await;
    let metrics = router.metrics(&client).await;
    assert!(
        metrics.contains("glmfleet_router_decisions_total{outcome=\"spill\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_at_the_cap_answers_429() {
    let mocks = [
        MockReplica::start("a", Behavior::Hold).await,
        MockReplica::start("b", Behavior::Hold).await,
    ];
    let cfg = RouterConfig {
        max_inflight_per_replica: 1,
        ..test_config(&[&mocks[0], &mocks[1]])
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();
    let url = format!("{}/v1/completions", router.url);
    let held: Vec<_> = (0..2)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .post_json(&url, &json!({"prompt": text(i, 600)}))
                    .await
            })
        })
        .collect();
    for _ in 0..200 {
        if mocks.iter().all(|m| m.inflight() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, headers, body) = client.post_json(&url, &json!({"prompt": "one more"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"]["code"], "overloaded");
    for m in &mocks {
        m.open_hold();
    }
    for t in held {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    assert!(router
        .metrics(&client)
        .await
        .contains("glmfleet_router_rejected_total{reason=\"overloaded\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_endpoints_and_pass_through() {
    let mocks = [
        MockReplica::normal("a").await,
        MockReplica::normal("b").await,
    ];
    let cfg = RouterConfig {
        max_body_bytes: 4_096,
        ..test_config(&[&mocks[0], &mocks[1]])
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();

    let (status, _, body) = client.get(&format!("{}/health", router.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["healthy_replicas"],
        2
    );

    let doc = router.replicas(&client).await;
    assert_eq!(doc["policy"], "prefix-hash");
    assert_eq!(doc["healthy"], 2);
    router
        .wait_replicas(&client, "load reports", |d| {
            d["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["load_report"]["num_blocks"] == 1000)
        })
        .await;

    let (status, headers, body) = client.get(&format!("{}/v1/models", router.url)).await;
    assert_eq!(status, StatusCode::OK);
    let models: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "merged by id");
    assert!(served_by(&headers).contains(&mocks[0].url()));

    // Authorization passes through; the serving replica is named.
    let req = Request::post(format!("{}/v1/chat/completions", router.url))
        .header("authorization", "Bearer sk-test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("sys", "hi", false).to_string())))
        .unwrap();
    let (status, headers, body) = client.send(req).await;
    assert_eq!(status, StatusCode::OK);
    let replica = served_by(&headers);
    let mock = mocks
        .iter()
        .find(|m| m.url() == replica)
        .expect("header names a replica");
    assert_eq!(
        mock.state.last_authorization.lock().unwrap().as_deref(),
        Some("Bearer sk-test")
    );
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("from "));

    // /tokenize is proxied; unknown paths are 404; wrong methods 405; big bodies 413.
    let (status, headers, _) = client
        .post_json(&format!("{}/tokenize", router.url), &json!({"prompt": "x"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!served_by(&headers).is_empty());
    let (status, _, body) = client.get(&format!("{}/admin/secret", router.url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "not_found"
    );
    let (status, _, _) = client
        .post_json(&format!("{}/health", router.url), &json!({}))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let big = json!({"prompt": "x".repeat(10_000)});
    let (status, _, body) = client
        .post_json(&format!("{}/v1/completions", router.url), &big)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "request_too_large"
    );

    let metrics = router.metrics(&client).await;
    for name in [
        "glmfleet_router_requests_total",
        "glmfleet_router_decisions_total",
        "glmfleet_router_added_latency_seconds_bucket",
        "glmfleet_router_inflight",
        "glmfleet_router_replica_healthy",
        "glmfleet_router_rejected_total{reason=\"too_large\"} 1",
        "glmfleet_router_affinity_entries",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_replica_answers_503() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cfg = RouterConfig {
        replicas: vec![url],
        health_interval_ms: 50,
        health_timeout_ms: 100,
        ..RouterConfig::default()
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();
    let (status, _, _) = client.get(&format!("{}/health", router.url)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, headers, body) = client
        .post_json(
            &format!("{}/v1/chat/completions", router.url),
            &chat("s", "q", false),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        "no_healthy_replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_serves_without_a_listening_socket() {
    let mock = MockReplica::normal("a").await;
    let app = App::new(test_config(&[&mock])).unwrap();
    app.ready().await;
    let health = app
        .clone()
        .oneshot(
            Request::get("/health")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let request = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from(chat("s", "q", true).to_string())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(response.headers()), mock.url());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("data: ").count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_finds_replicas() {
    let mock = MockReplica::normal("a").await;
    let cfg = RouterConfig {
        replicas: Vec::new(),
        discover: Some(format!("dns:localhost:{}", mock.addr.port())),
        discover_interval_ms: 100,
        ..test_config(&[])
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();
    let name = format!("http://127.0.0.1:{}", mock.addr.port());
    router
        .wait_replicas(&client, "discovered replica healthy", |d| {
            replica_field(d, &name, "healthy") == &Value::Bool(true)
        })
        .await;
    let (status, headers, _) = client
        .post_json(
            &format!("{}/v1/chat/completions", router.url),
            &chat("s", "q", false),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served_by(&headers), name);
}
