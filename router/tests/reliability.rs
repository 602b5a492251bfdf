//! Failure handling end to end: killed, hung and failing replicas, cut streams, disconnecting
//! clients, stalled request bodies, chunk-by-chunk streaming and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use router::RouterConfig;
use serde_json::Value;

fn healthy(doc: &Value, name: &str) -> bool {
    replica_field(doc, name, "healthy") == &Value::Bool(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_loses_no_unstarted_request_and_rejoins_after_restart() {
    let slow = Behavior::Normal {
        events: 8,
        gap: Duration::from_millis(40),
    };
    let mut victim = MockReplica::start("victim", slow.clone()).await;
    let others = [
        MockReplica::start("b", slow.clone()).await,
        MockReplica::start("c", slow.clone()).await,
    ];
    let router = TestRouter::start(test_config(&[&victim, &others[0], &others[1]])).await;
    let client = TestClient::new();
    let url = format!("{}/v1/chat/completions", router.url);

    // Streams in flight everywhere, then the victim dies; more requests keep arriving.
    let mut tasks = Vec::new();
    for i in 0..45u64 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let response = client
                .open(&url, &chat(&text(1_000 + i, 800), "q", true))
                .await;
            let status = response.status();
            let replica = served_by(response.headers());
            (status, replica, read_text(response.into_body()).await)
        }));
        if i == 20 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            victim.kill().await;
        }
    }
    let (mut completed, mut cut) = (0, 0);
    for task in tasks {
        let (status, replica, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "request lost: {body}");
        if body.ends_with("data: [DONE]\n\n") {
            completed += 1;
            continue;
        }
        // Only streams already running on the victim may end early, with one clear error event.
        assert_eq!(
            replica,
            victim.url(),
            "cut stream from a live replica: {body}"
        );
        let last = body.trim_end().rsplit("\n\n").next().unwrap();
        let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(event["error"]["code"], "upstream_disconnected");
        assert!(
            body.starts_with("data: {\"object\""),
            "started before the cut: {body}"
        );
        cut += 1;
    }
    eprintln!("kill under load: {completed} completed, {cut} cut mid-stream");
    assert!(completed >= 30, "completed {completed}, cut {cut}");
    assert!(cut >= 1, "the victim had streams running when it died");
    router
        .wait_replicas(&client, "victim ejected", |d| !healthy(d, &victim.url()))
        .await;

    victim.restart().await;
    router
        .wait_replicas(&client, "victim re-admitted", |d| healthy(d, &victim.url()))
        .await;
    let mut served_by_victim = 0;
    for i in 0..60u64 {
        let (status, headers, _) = client
            .post_json(&url, &chat(&text(5_000 + i, 800), "q", false))
            .await;
        assert_eq!(status, StatusCode::OK);
        served_by_victim += usize::from(served_by(&headers) == victim.url());
    }
    assert!(
        served_by_victim > 0,
        "restarted replica takes traffic again"
    );
    let metrics = router.metrics(&client).await;
    assert!(
        metrics.contains("glmfleet_router_ejections_total"),
        "{metrics}"
    );
    router
        .wait_replicas(&client, "no leaked in-flight", |d| {
            d["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["inflight"] == 0)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_replica_times_out_is_retried_and_ejected() {
    let hung = MockReplica::normal("hung").await;
    let good = [
        MockReplica::normal("b").await,
        MockReplica::normal("c").await,
    ];
    let cfg = RouterConfig {
        first_byte_timeout_ms: 300,
        eject_after_failures: 2,
        ..test_config(&[&hung, &good[0], &good[1]])
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();
    let url = format!("{}/v1/chat/completions", router.url);
    // Probes stay green: only the first-byte timeout can catch it.
    hung.set_behavior(Behavior::HangRequests);

    let mut slow = 0;
    for i in 0..24u64 {
        let started = Instant::now();
        let (status, headers, _) = client
            .post_json(&url, &chat(&text(9_000 + i, 600), "q", i % 2 == 0))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(served_by(&headers), hung.url());
        if started.elapsed() >= Duration::from_millis(300) {
            slow += 1;
        }
    }
    assert!(
        slow >= 2,
        "some requests must have waited out the timeout ({slow})"
    );
    let doc = router.replicas(&client).await;
    assert!(
        replica_field(&doc, &hung.url(), "ejections")
            .as_u64()
            .unwrap()
            >= 1,
        "{doc}"
    );
    let metrics = router.metrics(&client).await;
    assert!(
        metrics.contains("glmfleet_router_retries_total{reason=\"timeout\"}"),
        "{metrics}"
    );

    // A replica that hangs completely (probes too) is ejected by probes.
    hung.set_behavior(Behavior::HangAll);
    router
        .wait_replicas(&client, "probe ejection", |d| !healthy(d, &hung.url()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_answering_500s_is_ejected_after_n() {
    let bad = MockReplica::normal("bad").await;
    let good = [
        MockReplica::normal("b").await,
        MockReplica::normal("c").await,
    ];
    let cfg = RouterConfig {
        eject_after_failures: 3,
        health_interval_ms: 2_000,
        ..test_config(&[&bad, &good[0], &good[1]])
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();
    let url = format!("{}/v1/completions", router.url);
    bad.set_behavior(Behavior::Fail500);
    for i in 0..40u64 {
        let (status, headers, _) = client
            .post_json(&url, &serde_json::json!({"prompt": text(20_000 + i, 700)}))
            .await;
        assert_eq!(status, StatusCode::OK, "retried on a good replica");
        assert_ne!(served_by(&headers), bad.url());
    }
    // Ejected after exactly 3 failures; the long probe interval keeps it out for the test.
    assert_eq!(bad.requests(), 3);
    let doc = router.replicas(&client).await;
    assert!(!healthy(&doc, &bad.url()));
    assert_eq!(replica_field(&doc, &bad.url(), "ejections"), 1);
    let metrics = router.metrics(&client).await;
    assert!(
        metrics.contains("glmfleet_router_retries_total{reason=\"status\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_stream_ends_with_an_sse_error_event() {
    let mock = MockReplica::start("dies", Behavior::DieMidStream).await;
    let router = TestRouter::start(test_config(&[&mock])).await;
    let client = TestClient::new();
    let response = client
        .open(
            &format!("{}/v1/chat/completions", router.url),
            &chat("s", "q", true),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = read_text(response.into_body()).await;
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 2, "{body}");
    assert!(events[0].contains("chat.completion.chunk"));
    let error: Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("mid-stream"));

    // A non-stream request to a replica that dies before answering gets a 502 JSON error.
    let mut mock = mock;
    mock.kill().await;
    let (status, _, body) = client
        .post_json(
            &format!("{}/v1/chat/completions", router.url),
            &chat("s", "q", false),
        )
        .await;
    assert!(
        matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        ),
        "{status}"
    );
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_forwarded_chunk_by_chunk() {
    let mock = MockReplica::start("gated", Behavior::Gated).await;
    let router = TestRouter::start(test_config(&[&mock])).await;
    let client = TestClient::new();
    let response = client
        .open(
            &format!("{}/v1/chat/completions", router.url),
            &chat("s", "q", true),
        )
        .await;
    let mut body = response.into_body();
    // The first event arrives while the replica still holds the second one back.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event must arrive before the second is sent")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("gated#0"));
    mock.step();
    let rest = read_text(body).await;
    assert!(
        rest.contains("gated#1") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
}

fn all_idle(doc: &Value) -> bool {
    doc["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["inflight"] == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_disconnecting_clients_do_not_leak_inflight() {
    let streaming = Behavior::Normal {
        events: 20,
        gap: Duration::from_millis(20),
    };
    let a = MockReplica::start("a", streaming).await;
    let b = MockReplica::start("b", Behavior::Hold).await;
    let router = TestRouter::start(test_config(&[&a, &b])).await;
    let client = TestClient::new();
    let url = format!("{}/v1/chat/completions", router.url);

    // Phase 1: clients that give up after 150 ms, mid-stream (on a) or while the replica has
    // not answered yet (on b, which holds every request: a long prefill).
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let req = chat(&text(40_000 + i, 600), "q", true);
            let fut = async {
                let response = client.open(&url, &req).await;
                let mut body = response.into_body();
                while let Some(Ok(_)) = body.frame().await {}
            };
            let _ = tokio::time::timeout(Duration::from_millis(150), fut).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        a.requests() > 0 && b.requests() > 0,
        "both kinds of disconnect happened"
    );
    // The router releases its counts and closes upstream, so the replicas stop working: all
    // while b still holds its gate shut.
    router
        .wait_replicas(&client, "in-flight released", all_idle)
        .await;
    for _ in 0..100 {
        if a.inflight() == 0 && b.inflight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (a.inflight(), b.inflight()),
        (0, 0),
        "replicas saw the disconnects"
    );

    // Phase 2: slow readers (one frame every 30 ms) finish normally and release too.
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let response = client
                .open(&url, &chat(&text(50_000 + i, 600), "q", true))
                .await;
            let mut body = response.into_body();
            let mut text = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                text.extend_from_slice(&frame.into_data().unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            String::from_utf8(text).unwrap()
        }));
    }
    b.open_hold();
    for task in tasks {
        let body = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    router
        .wait_replicas(&client, "in-flight released", all_idle)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_streams_finish() {
    let mock = MockReplica::start(
        "a",
        Behavior::Normal {
            events: 10,
            gap: Duration::from_millis(30),
        },
    )
    .await;
    let router = TestRouter::start(test_config(&[&mock])).await;
    let client = TestClient::new();
    let response = client
        .open(
            &format!("{}/v1/chat/completions", router.url),
            &chat("s", "q", true),
        )
        .await;
    let reader = tokio::spawn(read_text(response.into_body()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    router.shutdown().await.unwrap();
    let body = reader.await.unwrap();
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "stream completed during drain: {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answer_is_a_502_without_retry() {
    let mocks = [
        MockReplica::normal("a").await,
        MockReplica::normal("b").await,
    ];
    let cfg = RouterConfig {
        max_response_bytes: 64,
        ..test_config(&[&mocks[0], &mocks[1]])
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();
    let (status, headers, body) = client
        .post_json(
            &format!("{}/v1/chat/completions", router.url),
            &chat("s", "q", false),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(!served_by(&headers).is_empty());
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_response_bytes"));
    assert_eq!(mocks[0].requests() + mocks[1].requests(), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_gets_408_and_is_never_proxied() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockReplica::normal("a").await;
    let cfg = RouterConfig {
        request_body_timeout_ms: 300,
        ..test_config(&[&mock])
    };
    let router = TestRouter::start(cfg).await;
    let client = TestClient::new();
    let addr = router.url.trim_start_matches("http://").to_owned();
    let before = mock.requests();

    // Head complete, 100 bytes announced, 12 sent, then nothing.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\
              content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"messages\"",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    // the router answers and closes: read_to_end returns; only the guard means "left open"
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "408 after {waited:?}"
    );
    assert_eq!(
        mock.requests(),
        before,
        "a partial body reached the replica"
    );
    assert!(router
        .metrics(&client)
        .await
        .contains("glmfleet_router_rejected_total{reason=\"body_timeout\"} 1"));

    // The router still serves.
    let (status, _, _) = client
        .post_json(
            &format!("{}/v1/chat/completions", router.url),
            &chat("s", "q", false),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.requests(), before + 1);
    router.shutdown().await.unwrap();
}
