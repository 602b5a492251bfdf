//! Client disconnects, draining, and the real socket server with its shutdown sequence.

use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn disconnect_aborts_and_frees_blocks() {
    let r = start(config(), slow_fake(Duration::from_millis(2)));
    let app = r.app();
    let body =
        json!({"prompt": "x".repeat(64), "max_tokens": 400, "ignore_eos": true, "stream": true});
    let resp = app
        .handle(request(Method::POST, "/v1/completions", Some(&body)))
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Read a couple of events, so the request is running and holds blocks.
    for _ in 0..2 {
        body.frame().await.unwrap().unwrap();
    }
    let load = r.engine().load();
    assert_eq!(load.running, 1);
    assert!(load.kv_usage > 0.0);
    drop(body); // the client goes away
    wait_idle(&r).await;
    let stats = r.engine().stats();
    assert_eq!((stats.running, stats.waiting), (0, 0));
    assert_eq!(stats.kv_usage, 0.0);
    assert_eq!(stats.free_blocks, stats.num_blocks);
    let metrics = get(&app, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(
            "vllm:request_success_total{finished_reason=\"abort\",model_name=\"glm-test\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn non_streaming_cancel_aborts_too() {
    let r = start(config(), slow_fake(Duration::from_millis(2)));
    let app = r.app();
    let body = json!({"prompt": "y", "max_tokens": 400, "ignore_eos": true});
    let call = app.handle(request(Method::POST, "/v1/completions", Some(&body)));
    // The handler future is dropped mid-generation (client disconnect on a plain request).
    assert!(tokio::time::timeout(Duration::from_millis(50), call)
        .await
        .is_err());
    wait_idle(&r).await;
    assert_eq!(r.engine().stats().kv_usage, 0.0);
}

#[tokio::test]
async fn drain_returns_503_and_finishes_in_flight() {
    let r = start(config(), slow_fake(Duration::from_millis(2)));
    let app = r.app();
    let body = json!({"prompt": "z", "max_tokens": 300, "ignore_eos": true, "stream": true});
    let resp = app
        .handle(request(Method::POST, "/v1/completions", Some(&body)))
        .await;
    assert_eq!(resp.status(), 200);
    let collect = tokio::spawn(async move { resp.into_body().collect().await.unwrap().to_bytes() });
    let drained = {
        let drain = r.drain(Duration::from_secs(10));
        tokio::pin!(drain);
        // While draining: new work and health are refused.
        tokio::select! {
            _ = &mut drain => panic!("drain finished before the in-flight request"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let refused = post(&app, "/v1/completions", json!({"prompt": "late"})).await;
        assert_eq!(refused.status, 503);
        assert_eq!(refused.json()["error"]["type"], "ServiceUnavailableError");
        assert_eq!(get(&app, "/health").await.status, 503);
        assert_eq!(get(&app, "/live").await.status, 200);
        assert_eq!(get(&app, "/load").await.status, 200);
        drain.await
    };
    assert!(drained);
    let bytes = collect.await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    r.shutdown().await;
}

#[tokio::test]
async fn drain_timeout_aborts_the_rest() {
    let r = start(config(), slow_fake(Duration::from_millis(2)));
    let app = r.app();
    let body = json!({"prompt": "z", "max_tokens": 500, "ignore_eos": true, "stream": true});
    let resp = app
        .handle(request(Method::POST, "/v1/completions", Some(&body)))
        .await;
    let collect = tokio::spawn(async move { resp.into_body().collect().await.unwrap().to_bytes() });
    assert!(!r.drain(Duration::from_millis(30)).await);
    r.shutdown().await;
    let bytes = collect.await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\"finish_reason\":\"abort\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `replica::serve` on a loopback port with the fake runner, until [`TcpServer::shut_down`].
struct TcpServer {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), replica::ServeError>>,
}

impl TcpServer {
    async fn start(cfg: replica::ServeConfig) -> TcpServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(replica::serve(cfg, parts(fake()), listener, async {
            let _ = rx.await;
        }));
        TcpServer { addr, stop, task }
    }

    /// Signals shutdown and asserts that the server returns cleanly within 10 s.
    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

#[tokio::test]
async fn serve_over_tcp_and_shut_down_cleanly() {
    let server = TcpServer::start(replica::ServeConfig {
        shutdown_timeout: 5,
        ..config()
    })
    .await;
    let addr = server.addr;
    let (status, body) = http_get(addr, "/v1/models").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"id\":\"glm-test\""), "{body}");
    assert_eq!(http_get(addr, "/health").await.0, 200);
    server.shut_down().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Reads from `stream` until the peer closes it (or `limit` passes); returns what came.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let server = TcpServer::start(replica::ServeConfig {
        request_body_timeout_ms: 300,
        ..config()
    })
    .await;
    let addr = server.addr;
    // Head complete, 100 bytes announced, 10 sent, then nothing.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"prompt\":",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let reply = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let body = &text[text.find("\r\n\r\n").expect("head end") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON error body");
    assert_eq!(v["error"]["code"], 408);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("300 ms"),
        "{v}"
    );
    // The deadline, not the 10 s guard, ended it; and the server closed the connection.
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "408 after {waited:?}"
    );
    // A trickling body (a byte every 100 ms) is cut off by the same deadline.
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"POST /tokenize HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut writing = true;
    while started.elapsed() < Duration::from_secs(5) {
        // once the server has answered, a write may fail: what it sent is still read below
        writing = writing && trickle.write_all(b" ").await.is_ok();
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(
            Duration::from_millis(100),
            tokio::io::AsyncReadExt::read(&mut trickle, &mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) if !writing => break,
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "trickled body: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Still serving.
    assert_eq!(http_get(addr, "/health").await.0, 200);
    server.shut_down().await;
}

#[tokio::test]
async fn scripted_load_format_from_file() {
    let path = std::env::temp_dir().join(format!("replica-script-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"responses": ["from the file"]}"#).unwrap();
    let tok = replica::testing::byte_tokenizer();
    let format = replica::config::LoadFormat::Scripted(path.clone());
    let runner = replica::runner::fake::runner_for_load_format(
        &format,
        &tok,
        &replica::testing::glm_eos_ids(),
    )
    .unwrap()
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    let r = start(config(), runner);
    let v = post(
        &r.app(),
        "/v1/completions",
        json!({"prompt": "q", "max_tokens": 50}),
    )
    .await
    .json();
    assert_eq!(v["choices"][0]["text"], "from the file");
    let none = replica::runner::fake::runner_for_load_format(
        &replica::config::LoadFormat::Auto,
        &tok,
        &[],
    )
    .unwrap();
    assert!(none.is_none());
}

/// Fails its first step, then behaves like the fake; or panics on every step.
struct FlakyRunner {
    inner: replica::runner::FakeRunner,
    failures_left: usize,
    panic: bool,
}

impl replica::Runner for FlakyRunner {
    fn execute(
        &mut self,
        batch: &replica::runner::SchedulerOutput,
    ) -> Result<replica::Logits, replica::RunnerError> {
        assert!(!self.panic, "simulated fatal device error");
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(replica::RunnerError::Execution(
                "simulated step failure".into(),
            ));
        }
        self.inner.execute(batch)
    }

    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}

fn flaky(failures_left: usize, panic: bool) -> Box<dyn replica::Runner> {
    let inner = replica::runner::FakeRunner::for_tokenizer(&replica::testing::byte_tokenizer());
    Box::new(FlakyRunner {
        inner,
        failures_left,
        panic,
    })
}

#[tokio::test]
async fn failed_step_fails_its_requests_and_the_server_keeps_serving() {
    let r = start(config(), flaky(1, false));
    let app = r.app();
    let body = json!({"prompt": "a", "max_tokens": 3});
    let reply = post(&app, "/v1/completions", body.clone()).await;
    assert_eq!(reply.status, 500);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("simulated step failure"));
    wait_idle(&r).await;
    assert_eq!(r.engine().stats().kv_usage, 0.0);
    assert_eq!(post(&app, "/v1/completions", body).await.status, 200);
}

#[tokio::test]
async fn engine_death_is_reported() {
    let r = start(config(), flaky(0, true));
    let app = r.app();
    let reply = post(
        &app,
        "/v1/completions",
        json!({"prompt": "a", "max_tokens": 3}),
    )
    .await;
    assert_eq!(reply.status, 503);
    tokio::time::timeout(Duration::from_secs(5), r.engine().stopped())
        .await
        .unwrap();
    assert_eq!(get(&app, "/health").await.status, 503);
    assert_eq!(
        post(&app, "/v1/completions", json!({"prompt": "a"}))
            .await
            .status,
        503
    );
}
