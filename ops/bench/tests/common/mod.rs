//! A scripted OpenAI-style streaming server on 127.0.0.1 for the benchmark's tests: after a fixed
//! delay it streams one SSE event per output token at a fixed gap, then (optionally) a usage
//! event with `choices: []`, then `[DONE]`; it can fail chosen requests and records every request
//! it received.

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The stub's script.
#[derive(Debug, Clone)]
pub struct Script {
    /// Delay before the first token event.
    pub ttft: Duration,
    /// Gap between token events.
    pub itl: Duration,
    /// Text of every token event.
    pub token_text: String,
    /// Send the usage event.
    pub send_usage: bool,
    /// Answer every n-th request (1-based count) with HTTP 500.
    pub fail_every: Option<usize>,
    /// Answer 200 with only `[DONE]` (no token event).
    pub no_tokens: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            ttft: Duration::from_millis(40),
            itl: Duration::from_millis(10),
            token_text: "x".into(),
            send_usage: true,
            fail_every: None,
            no_tokens: false,
        }
    }
}

/// One request as the stub saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub request_id: Option<String>,
    pub authorization: Option<String>,
    pub body: Value,
}

pub struct Stub {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// Output tokens asked for by a request body.
fn max_tokens(body: &Value) -> usize {
    body.get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(16) as usize
}

/// Prompt tokens the stub reports: the id count, or the word count of text prompts.
fn prompt_tokens(body: &Value) -> usize {
    if let Some(p) = body.get("prompt") {
        return match p {
            Value::Array(ids) => ids.len(),
            Value::String(s) => s.split_whitespace().count(),
            _ => 0,
        };
    }
    body.pointer("/messages/0/content/0/text")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().count())
        .unwrap_or(0)
}

async fn handle(
    req: Request<Incoming>,
    script: Arc<Script>,
    seen: Arc<Mutex<Vec<Seen>>>,
    counter: Arc<AtomicUsize>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let path = req.uri().path().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (request_id, authorization) = (header("x-request-id"), header("authorization"));
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let full = |status: StatusCode, v: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())).boxed())
            .unwrap()
    };
    if path == "/v1/models" {
        return Ok(full(
            StatusCode::OK,
            json!({"object": "list", "data": [{"id": "stub-model", "root": "stub-root", "object": "model"}]}),
        ));
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        request_id,
        authorization,
        body: body.clone(),
    });
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    if script.fail_every.is_some_and(|k| n.is_multiple_of(k)) {
        return Ok(full(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": "stub failure", "type": "server_error", "code": 500}}),
        ));
    }
    let chat = path.ends_with("/chat/completions");
    let (out, prompt) = (max_tokens(&body), prompt_tokens(&body));
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let script2 = script.clone();
    tokio::spawn(async move {
        let send = |s: String| {
            let tx = tx.clone();
            async move { tx.send(Bytes::from(s)).await.is_ok() }
        };
        // A comment line first, as servers send keep-alives.
        if !send(": stub\n\n".into()).await {
            return;
        }
        if !script2.no_tokens {
            if !script2.ttft.is_zero() {
                tokio::time::sleep(script2.ttft).await;
            }
            for i in 0..out {
                // (A zero sleep would still wait for the next timer tick.)
                if i > 0 && !script2.itl.is_zero() {
                    tokio::time::sleep(script2.itl).await;
                }
                let event = if chat {
                    json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": script2.token_text}}]})
                } else {
                    json!({"object": "text_completion", "choices": [{"index": 0, "text": script2.token_text}]})
                };
                if !send(format!("data: {event}\n\n")).await {
                    return;
                }
            }
            if script2.send_usage {
                let usage = json!({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": out,
                                   "total_tokens": prompt + out}});
                send(format!("data: {usage}\n\n")).await;
            }
        }
        send("data: [DONE]\n\n".into()).await;
    });
    let body = StreamBody::new(stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(body))
        .unwrap())
}

/// Starts the stub on an ephemeral loopback port; it runs until the test's runtime ends.
pub async fn start(script: Script) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (script, seen2, counter) = (
        Arc::new(script),
        seen.clone(),
        Arc::new(AtomicUsize::new(0)),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            // Without TCP_NODELAY, Nagle + delayed ACKs hold small SSE writes back ~40 ms.
            let _ = stream.set_nodelay(true);
            let (script, seen, counter) = (script.clone(), seen2.clone(), counter.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    handle(req, script.clone(), seen.clone(), counter.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Stub { url, seen }
}

/// An address where nothing listens (a port bound and released).
pub async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
