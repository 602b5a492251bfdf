//! Test support: mock replicas (small hyper servers on 127.0.0.1 ephemeral ports), a router
//! started on a socket, and a client.
//!
//! A mock speaks the replica surface the router uses: `GET /health`, `GET /load`,
//! `GET /v1/models`, and `POST` on `/v1/*` answering a chat completion (JSON, or SSE when the
//! body has `"stream": true`). Its [`Behavior`] can be switched at run time; it can be killed
//! (listener closed, every connection aborted) and restarted on the same port.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use router::{App, RouterConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// How a mock answers completion requests.
#[derive(Clone, Debug, PartialEq)]
pub enum Behavior {
    /// Answer at once; streams send `events` events `gap` apart, then `[DONE]`.
    Normal { events: usize, gap: Duration },
    /// Wait until the hold gate opens, then answer like `Normal` with one event.
    Hold,
    /// Answer 500 to completions; probes stay green.
    Fail500,
    /// Never answer completions; probes stay green.
    HangRequests,
    /// Never answer anything, probes included.
    HangAll,
    /// Streams: send one event, then abort the connection.
    DieMidStream,
    /// Streams: send one event, wait for the step gate, send a second, then `[DONE]`.
    Gated,
}

/// Shared state of one mock replica.
pub struct MockState {
    pub name: String,
    behavior: Mutex<Behavior>,
    pub inflight: AtomicU64,
    pub max_inflight: AtomicU64,
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub last_authorization: Mutex<Option<String>>,
    hold: watch::Sender<bool>,
    step: watch::Sender<u64>,
}

impl MockState {
    pub fn behavior(&self) -> Behavior {
        self.behavior.lock().unwrap().clone()
    }
}

/// Decrements the mock's in-flight count when dropped (the response body ends or is dropped).
struct MockInflight(Arc<MockState>);

impl MockInflight {
    fn new(state: &Arc<MockState>) -> Self {
        let now = state.inflight.fetch_add(1, SeqCst) + 1;
        state.max_inflight.fetch_max(now, SeqCst);
        state.requests.fetch_add(1, SeqCst);
        Self(state.clone())
    }
}

impl Drop for MockInflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, SeqCst);
    }
}

/// A body fed by a channel; an `Err` item aborts the connection mid-body.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    _inflight: Option<MockInflight>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self._inflight = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn full(status: StatusCode, body: String, content_type: &str) -> Response<ChannelBody> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(Bytes::from(body)));
    let mut response = Response::new(ChannelBody {
        rx,
        _inflight: None,
    });
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    response
}

fn chunk_event(name: &str, i: usize) -> Bytes {
    let chunk = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!("{name}#{i} ")}}]});
    Bytes::from(format!("data: {chunk}\n\n"))
}

async fn handle(state: Arc<MockState>, req: Request<Incoming>) -> Response<ChannelBody> {
    let behavior = state.behavior();
    let path = req.uri().path().to_owned();
    if behavior == Behavior::HangAll {
        std::future::pending::<()>().await;
    }
    match path.as_str() {
        "/health" => return full(StatusCode::OK, "{}".into(), "application/json"),
        "/load" => {
            let running = state.inflight.load(SeqCst);
            let body = json!({"running": running, "waiting": 0, "kv_usage": 0.1,
                "free_blocks": 900, "num_blocks": 1000, "extra_field": "ignored"});
            return full(StatusCode::OK, body.to_string(), "application/json");
        }
        "/v1/models" => {
            let body = json!({"object": "list", "data": [{"id": "glm-test", "object": "model"}]});
            return full(StatusCode::OK, body.to_string(), "application/json");
        }
        _ => {}
    }
    if let Some(auth) = req.headers().get("authorization") {
        *state.last_authorization.lock().unwrap() = auth.to_str().ok().map(str::to_owned);
    }
    let inflight = MockInflight::new(&state);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream = parsed["stream"].as_bool().unwrap_or(false);
    let (events, gap) = match &behavior {
        Behavior::Normal { events, gap } => (*events, *gap),
        Behavior::Hold => {
            let mut hold = state.hold.subscribe();
            let _ = hold.wait_for(|open| *open).await;
            (1, Duration::ZERO)
        }
        Behavior::Fail500 => {
            let err = json!({"error": {"message": "boom", "type": "server_error", "code": 500}});
            return full(
                StatusCode::INTERNAL_SERVER_ERROR,
                err.to_string(),
                "application/json",
            );
        }
        Behavior::HangRequests | Behavior::HangAll => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behavior::DieMidStream | Behavior::Gated => (2, Duration::ZERO),
    };
    if !stream {
        let answer = json!({"id": "cmpl-1", "object": "chat.completion", "model": "glm-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("from {}", state.name)}, "finish_reason": "stop"}]});
        let mut response = full(StatusCode::OK, answer.to_string(), "application/json");
        response.body_mut()._inflight = Some(inflight);
        return response;
    }
    let (tx, rx) = mpsc::channel(4);
    let name = state.name.clone();
    let mut step = state.step.subscribe();
    tokio::spawn(async move {
        match behavior {
            Behavior::DieMidStream => {
                let _ = tx.send(Ok(chunk_event(&name, 0))).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Err(std::io::Error::other("replica crashed"))).await;
                return;
            }
            Behavior::Gated => {
                let _ = tx.send(Ok(chunk_event(&name, 0))).await;
                let start = *step.borrow_and_update();
                let _ = step.wait_for(|s| *s > start).await;
                let _ = tx.send(Ok(chunk_event(&name, 1))).await;
            }
            _ => {
                for i in 0..events {
                    if tx.send(Ok(chunk_event(&name, i))).await.is_err() {
                        return;
                    }
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                }
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let mut response = Response::new(ChannelBody {
        rx,
        _inflight: Some(inflight),
    });
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
}

/// A mock replica.
pub struct MockReplica {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    server: Option<JoinHandle<()>>,
}

impl MockReplica {
    pub async fn start(name: &str, behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState {
            name: name.to_owned(),
            behavior: Mutex::new(behavior),
            inflight: AtomicU64::new(0),
            max_inflight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            last_authorization: Mutex::new(None),
            hold: watch::Sender::new(false),
            step: watch::Sender::new(0),
        });
        let server = Some(tokio::spawn(serve_mock(listener, state.clone())));
        Self {
            addr,
            state,
            server,
        }
    }

    pub async fn normal(name: &str) -> Self {
        Self::start(
            name,
            Behavior::Normal {
                events: 3,
                gap: Duration::ZERO,
            },
        )
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    pub fn open_hold(&self) {
        self.state.hold.send_replace(true);
    }

    pub fn step(&self) {
        self.state.step.send_modify(|s| *s += 1);
    }

    pub fn inflight(&self) -> u64 {
        self.state.inflight.load(SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(SeqCst)
    }

    /// Close the listener and abort every connection (like a crashed process).
    pub async fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&mut self) {
        let mut listener = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("rebind mock port");
        self.server = Some(tokio::spawn(serve_mock(listener, self.state.clone())));
    }
}

impl Drop for MockReplica {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn serve_mock(listener: TcpListener, state: Arc<MockState>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Router settings fast enough for tests.
pub fn test_config(replicas: &[&MockReplica]) -> RouterConfig {
    RouterConfig {
        replicas: replicas.iter().map(|m| m.url()).collect(),
        health_interval_ms: 50,
        health_timeout_ms: 250,
        load_poll_interval_ms: 25,
        connect_timeout_ms: 250,
        first_byte_timeout_ms: 5_000,
        shutdown_timeout_secs: 5,
        ..RouterConfig::default()
    }
}

/// A router serving on an ephemeral port.
pub struct TestRouter {
    pub url: String,
    pub app: App,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), router::RouterError>>>,
}

impl TestRouter {
    pub async fn start(cfg: RouterConfig) -> Self {
        let app = App::new(cfg).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(router::serve_app(app.clone(), listener, shutdown));
        app.ready().await;
        Self {
            url,
            app,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Trigger graceful shutdown and wait for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), router::RouterError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }

    pub async fn replicas(&self, client: &TestClient) -> Value {
        let (status, _, body) = client.get(&format!("{}/replicas", self.url)).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }

    pub async fn metrics(&self, client: &TestClient) -> String {
        let (_, _, body) = client.get(&format!("{}/metrics", self.url)).await;
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Wait (bounded) until `check` holds on `/replicas`.
    pub async fn wait_replicas(
        &self,
        client: &TestClient,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) {
        for _ in 0..200 {
            if check(&self.replicas(client).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "timed out waiting for {what}: {}",
            self.replicas(client).await
        );
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The value of `key` for the replica named `name` in a `/replicas` document.
pub fn replica_field<'a>(doc: &'a Value, name: &str, key: &str) -> &'a Value {
    doc["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| &r[key])
        .unwrap_or(&Value::Null)
}

/// A plain HTTP/1 client.
#[derive(Clone)]
pub struct TestClient {
    pub client: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new() -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(HttpConnector::new());
        Self { client }
    }

    pub async fn get(&self, url: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        self.send(req).await
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> (StatusCode, http::HeaderMap, Bytes) {
        let req = Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("response in time")
            .expect("response");
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
            .await
            .expect("body in time")
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (parts.status, parts.headers, body)
    }

    /// Start a request and return the response head with the unread body.
    pub async fn open(&self, url: &str, body: &Value) -> Response<Incoming> {
        let req = Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("response in time")
            .expect("response")
    }
}

/// The replica named in a response's `x-glmfleet-replica` header.
pub fn served_by(headers: &http::HeaderMap) -> String {
    headers
        .get(router::REPLICA_HEADER)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A chat request whose rendered prompt starts with `prefix`.
pub fn chat(prefix: &str, question: &str, stream: bool) -> Value {
    json!({
        "model": "glm-test",
        "stream": stream,
        "messages": [
            {"role": "system", "content": prefix},
            {"role": "user", "content": question},
        ]
    })
}

/// A deterministic pseudo-random text of `len` characters.
pub fn text(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

/// Read a whole body as text (bounded in time).
pub async fn read_text(body: Incoming) -> String {
    let bytes = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body in time")
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}
