//! Router overhead on loopback: added latency (p50/p99), peak throughput, and memory per
//! in-flight stream, against a stub upstream that answers at once.
//!
//! ```text
//! cargo run --release -p router --example overhead -- [--requests 2000] [--seconds 3]
//!     [--concurrency 32] [--streams 5000]
//! ```
//!
//! The router runs in a child process (this binary with `--serve-router`), so its RSS is read
//! from `/proc/<pid>/status` alone and its file descriptors do not share the client's limit.
//! Added latency is the difference between the same percentile through the router and straight
//! to the stub (sequential requests on one keep-alive connection each way); the router's own
//! `glmfleet_router_added_latency_seconds` histogram is reported next to it. Memory per 10,000
//! streams is extrapolated linearly from `--streams` held-open streams (each holds two sockets
//! in the router; the default stays under a 20,000 descriptor limit).

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use router::RouterConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const CHAT: &str = r#"{"model":"glm","stream":false,"messages":[{"role":"system","content":"You are a helpful assistant that answers briefly and precisely, citing sources when it can."},{"role":"user","content":"What is the capital of France?"}]}"#;
const ANSWER: &str = r#"{"id":"cmpl-1","object":"chat.completion","model":"glm","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":2,"total_tokens":32}}"#;
const EVENT: &[u8] = b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Paris\"}}]}\n\n";

struct Args {
    requests: usize,
    seconds: u64,
    concurrency: usize,
    streams: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        requests: 2_000,
        seconds: 3,
        concurrency: 32,
        streams: 5_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().context("flag without value")?;
        match flag.as_str() {
            "--requests" => args.requests = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--concurrency" => args.concurrency = value.parse()?,
            "--streams" => args.streams = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--serve-router") {
        return serve_router(&argv[2]);
    }
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// Child mode: serve a router in front of `replica` on an ephemeral port; print the port.
fn serve_router(replica: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("PORT {}", listener.local_addr()?.port());
        let cfg = RouterConfig {
            replicas: vec![replica.to_owned()],
            max_inflight_per_replica: 1_000_000,
            ..RouterConfig::default()
        };
        router::serve(cfg, listener, std::future::pending()).await?;
        Ok(())
    })
}

/// Stub upstream: `/health`, `/load`, JSON answers, short SSE streams, and held streams.
struct Stub {
    release: watch::Sender<u64>,
    held: AtomicU64,
}

struct StubBody {
    rx: mpsc::Receiver<Bytes>,
    stub: Option<Arc<Stub>>,
}

impl Body for StubBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

impl Drop for StubBody {
    fn drop(&mut self) {
        if let Some(stub) = &self.stub {
            stub.held.fetch_sub(1, Relaxed);
        }
    }
}

fn stub_body(chunks: &[&'static [u8]]) -> StubBody {
    let (tx, rx) = mpsc::channel(chunks.len().max(1));
    for chunk in chunks {
        let _ = tx.try_send(Bytes::from_static(chunk));
    }
    StubBody { rx, stub: None }
}

async fn stub_handle(stub: Arc<Stub>, req: Request<Incoming>) -> Response<StubBody> {
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (content_type, body) = match path.as_str() {
        "/health" => ("application/json", stub_body(&[b"{}"])),
        "/load" => (
            "application/json",
            stub_body(&[
                br#"{"running":0,"waiting":0,"kv_usage":0.0,"free_blocks":1,"num_blocks":1}"#,
            ]),
        ),
        _ if body.windows(6).any(|w| w == b"\"hold\"") => {
            let (tx, rx) = mpsc::channel(2);
            let _ = tx.try_send(Bytes::from_static(EVENT));
            stub.held.fetch_add(1, Relaxed);
            let mut release = stub.release.subscribe();
            tokio::spawn(async move {
                let _ = release.wait_for(|r| *r > 0).await;
                let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            });
            (
                "text/event-stream",
                StubBody {
                    rx,
                    stub: Some(stub),
                },
            )
        }
        _ if body.windows(13).any(|w| w == b"\"stream\":true") => (
            "text/event-stream",
            stub_body(&[EVENT, EVENT, EVENT, EVENT, b"data: [DONE]\n\n"]),
        ),
        _ => ("application/json", stub_body(&[ANSWER.as_bytes()])),
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", http::HeaderValue::from_static(content_type));
    response
}

async fn start_stub() -> Result<(SocketAddr, Arc<Stub>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stub = Arc::new(Stub {
        release: watch::Sender::new(0),
        held: AtomicU64::new(0),
    });
    let shared = stub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let stub = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let stub = stub.clone();
                    async move { Ok::<_, Infallible>(stub_handle(stub, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, stub))
}

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(100_000)
        .build(connector)
}

async fn request(client: &HttpClient, base: &str, path: &str, body: &str) -> Result<usize> {
    let req = Request::post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let response = client.request(req).await?;
    if !response.status().is_success() {
        bail!("status {}", response.status());
    }
    Ok(response.into_body().collect().await?.to_bytes().len())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Time to the first body chunk and to the end of the body.
async fn timed(client: &HttpClient, base: &str, body: &str) -> Result<(Duration, Duration)> {
    let req = Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let started = Instant::now();
    let mut response = client.request(req).await?;
    if !response.status().is_success() {
        bail!("status {}", response.status());
    }
    let _ = response.body_mut().frame().await;
    let first = started.elapsed();
    while let Some(frame) = response.body_mut().frame().await {
        frame?;
    }
    Ok((first, started.elapsed()))
}

/// Sorted (first-byte, total) latencies, direct and routed, measured interleaved so that noise
/// from other processes hits both alike.
struct Latencies {
    direct: [Vec<Duration>; 2],
    routed: [Vec<Duration>; 2],
}

async fn latencies(direct: &str, routed: &str, body: &str, n: usize) -> Result<Latencies> {
    let (dc, rc) = (client(), client());
    for _ in 0..n / 10 {
        timed(&dc, direct, body).await?;
        timed(&rc, routed, body).await?;
    }
    let mut out = Latencies {
        direct: [Vec::with_capacity(n), Vec::with_capacity(n)],
        routed: [Vec::with_capacity(n), Vec::with_capacity(n)],
    };
    for i in 0..n {
        let (d, r) = if i % 2 == 0 {
            let d = timed(&dc, direct, body).await?;
            (d, timed(&rc, routed, body).await?)
        } else {
            let r = timed(&rc, routed, body).await?;
            (timed(&dc, direct, body).await?, r)
        };
        out.direct[0].push(d.0);
        out.direct[1].push(d.1);
        out.routed[0].push(r.0);
        out.routed[1].push(r.1);
    }
    for v in out.direct.iter_mut().chain(out.routed.iter_mut()) {
        v.sort_unstable();
    }
    Ok(out)
}

async fn throughput(base: &str, body: &str, concurrency: usize, seconds: u64) -> Result<f64> {
    let client = client();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, done, base, body) = (
            client.clone(),
            done.clone(),
            base.to_owned(),
            body.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if request(&client, &base, "/v1/chat/completions", &body)
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

async fn router_gauge(client: &HttpClient, base: &str, name: &str) -> Result<f64> {
    let response = client
        .request(Request::get(format!("{base}/metrics")).body(Full::new(Bytes::new()))?)
        .await?;
    let text = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    let sum: f64 = text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Ok(sum)
}

/// Open `n` held streams through the router, measure the router's RSS, release them.
async fn memory_round(base: &str, stub: &Stub, child: u32, n: usize) -> Result<(u64, u64, u64)> {
    let client = client();
    let before = rss_kib(child)?;
    let hold = r#"{"model":"glm","stream":true,"hold":"hold","messages":[{"role":"user","content":"hi"}]}"#;
    let mut tasks = Vec::with_capacity(n);
    let started = Instant::now();
    // Streams accumulate in batches, as in-flight load does, rather than in one SYN flood.
    for batch in (0..n).collect::<Vec<_>>().chunks(250) {
        for _ in batch {
            let (client, base) = (client.clone(), base.to_owned());
            tasks.push(tokio::spawn(async move {
                request(&client, &base, "/v1/chat/completions", hold).await
            }));
        }
        while (stub.held.load(Relaxed) as usize) < tasks.len() {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("only {} of {n} streams opened", stub.held.load(Relaxed));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = rss_kib(child)?;
    stub.release.send_modify(|r| *r += 1);
    for t in tasks {
        t.await??;
    }
    stub.release.send_replace(0);
    let monitor = client.clone();
    while router_gauge(&monitor, base, "glmfleet_router_inflight").await? > 0.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((before, during, rss_kib(child)?))
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(args: Args) -> Result<()> {
    let (stub_addr, stub) = start_stub().await?;
    let stub_url = format!("http://{stub_addr}");
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve-router", &stub_url])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let child = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .context("child did not report a port")?
        .parse()?;
    let router_url = format!("http://127.0.0.1:{port}");
    let client = client();
    for _ in 0..100 {
        let health = client
            .request(Request::get(format!("{router_url}/health")).body(Full::new(Bytes::new()))?)
            .await;
        if health.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "router pid {} in front of stub {stub_url}; {} cores",
        child.0.id(),
        std::thread::available_parallelism()?
    );

    let stream_body = CHAT.replace("\"stream\":false", "\"stream\":true");
    for (label, body) in [("non-stream", CHAT), ("stream", stream_body.as_str())] {
        let l = latencies(&stub_url, &router_url, body, args.requests).await?;
        for (i, what) in ["first byte", "full body"].iter().enumerate() {
            let (d50, d99) = (
                percentile(&l.direct[i], 0.5),
                percentile(&l.direct[i], 0.99),
            );
            let (r50, r99) = (
                percentile(&l.routed[i], 0.5),
                percentile(&l.routed[i], 0.99),
            );
            println!(
                "{label:>10} {what:>10}: direct p50 {:>6.1} p99 {:>7.1} | routed p50 {:>6.1} p99 {:>7.1} | added p50 {:>6.1} p99 {:>6.1} (µs)",
                us(d50),
                us(d99),
                us(r50),
                us(r99),
                us(r50) - us(d50),
                us(r99) - us(d99),
            );
        }
    }
    let sum = router_gauge(
        &client,
        &router_url,
        "glmfleet_router_added_latency_seconds_sum",
    )
    .await?;
    let count = router_gauge(
        &client,
        &router_url,
        "glmfleet_router_added_latency_seconds_count",
    )
    .await?;
    println!(
        "router's own histogram: mean added {:.1} µs over {count} requests",
        sum / count.max(1.0) * 1e6
    );

    for (label, body) in [("non-stream", CHAT), ("stream", stream_body.as_str())] {
        let direct = throughput(&stub_url, body, args.concurrency, args.seconds).await?;
        let routed = throughput(&router_url, body, args.concurrency, args.seconds).await?;
        println!(
            "{label:>10} throughput at concurrency {}: direct {direct:>8.0} req/s, routed {routed:>8.0} req/s",
            args.concurrency
        );
    }

    let pid = child.0.id();
    let idle = rss_kib(pid)?;
    println!("router RSS idle: {:.1} MiB", idle as f64 / 1024.0);
    for round in 1..=2 {
        let (before, during, after) = memory_round(&router_url, &stub, pid, args.streams).await?;
        let per_stream = (during.saturating_sub(before)) as f64 / args.streams as f64;
        println!(
            "round {round}: {} streams held: RSS {:.1} → {:.1} MiB ({:.2} KiB/stream, {:.1} MiB per 10,000); after release {:.1} MiB",
            args.streams,
            before as f64 / 1024.0,
            during as f64 / 1024.0,
            per_stream,
            per_stream * 10_000.0 / 1024.0,
            after as f64 / 1024.0,
        );
    }
    drop(child);
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
