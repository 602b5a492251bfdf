//! Support for the `reliability_*` and `security_*` tests: HTTP/1.1 over a raw loopback socket
//! (so a test controls every byte: invalid UTF-8, a forged `Host`, an absolute-form target,
//! oversized headers, chunked bodies), a streaming client that checks a whole SSE response, a
//! `glmfleet` process whose stderr is captured to a file (to grep it for secrets), and
//! `/proc` readings (RSS, open descriptors). Everything is bounded in time.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use e2e::no_inherited_fds;
use serde_json::Value;

/// Upper bound of any single socket read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

/// Connects with bounded timeouts.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends `raw` (a whole request, which should ask for `Connection: close`) and reads the
/// response to the end of its body.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> io::Result<RawReply> {
    let mut s = connect(addr)?;
    s.write_all(raw)?;
    let mut r = BufReader::new(s);
    read_response(&mut r)
}

/// `METHOD target` with `headers` (plus Host, Content-Length, Connection: close) and `body`.
pub fn build(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A request to `addr` with the usual framing.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<RawReply> {
    exchange(addr, &build(method, path, &addr.to_string(), headers, body))
}

/// `POST path` with a JSON body.
pub fn post_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> RawReply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    request(addr, "POST", path, &h, body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawReply {
    request(addr, "GET", path, headers, b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete response",
        ));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Status line and headers.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<(u16, Vec<(String, String)>)> {
    let status_line = read_line(r)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

/// Reads a body framed by `content-length`, chunked encoding, or the end of the connection.
pub struct BodyReader<R> {
    inner: R,
    mode: Framing,
}

enum Framing {
    Length(usize),
    Chunked { left: usize, done: bool },
    Eof,
}

impl<R: BufRead> BodyReader<R> {
    pub fn new(inner: R, headers: &[(String, String)]) -> Self {
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let mode = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked {
                left: 0,
                done: false,
            }
        } else if let Some(n) = find("content-length").and_then(|v| v.parse().ok()) {
            Framing::Length(n)
        } else {
            Framing::Eof
        };
        Self { inner, mode }
    }
}

impl<R: BufRead> Read for BodyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.mode {
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let n = (*left).min(buf.len());
                let got = self.inner.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body shorter than its content-length",
                    ));
                }
                *left -= got;
                Ok(got)
            }
            Framing::Eof => self.inner.read(buf),
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let line = read_line(&mut self.inner)?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk size {line:?}"),
                        )
                    })?;
                    if size == 0 {
                        // trailers, then the blank line
                        while !read_line(&mut self.inner)?.is_empty() {}
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let n = (*left).min(buf.len());
                let got = self.inner.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunk",
                    ));
                }
                *left -= got;
                if *left == 0 {
                    let crlf = read_line(&mut self.inner)?;
                    if !crlf.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk not followed by CRLF",
                        ));
                    }
                }
                Ok(got)
            }
        }
    }
}

/// Reads one whole response.
pub fn read_response<R: BufRead>(r: &mut R) -> io::Result<RawReply> {
    let (status, headers) = read_head(r)?;
    let mut body = Vec::new();
    BodyReader::new(r, &headers).read_to_end(&mut body)?;
    Ok(RawReply {
        status,
        headers,
        body,
    })
}

/// Asserts an OpenAI-shaped JSON error with `status`; returns its message.
#[track_caller]
pub fn assert_error(reply: &RawReply, status: u16) -> String {
    assert_eq!(reply.status, status, "body: {}", reply.text());
    let v = reply.json();
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message in {v}"))
        .to_owned();
    assert!(!message.is_empty(), "empty error message: {v}");
    message
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// What one streamed response amounted to.
#[derive(Debug, Default, Clone)]
pub struct StreamCheck {
    pub status: u16,
    pub events: usize,
    /// Tokens counted from per-event logprobs.
    pub tokens: usize,
    /// `usage.completion_tokens` of the final usage event.
    pub usage_tokens: Option<usize>,
    pub done: bool,
    pub finish_reason: Option<String>,
    /// Why the stream is not a clean, complete, consistent response (None when it is).
    pub problem: Option<String>,
}

/// Reads an SSE response from `r` (head already read) and checks it event by event: every
/// `data:` is JSON or `[DONE]`, nothing follows `[DONE]`, no error event, and the tokens counted
/// from logprobs equal the usage.
pub fn check_stream<R: BufRead>(r: R, headers: &[(String, String)], status: u16) -> StreamCheck {
    let mut c = StreamCheck {
        status,
        ..StreamCheck::default()
    };
    let ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let mut body = BufReader::new(BodyReader::new(r, headers));
    if status != 200 || !ct.starts_with("text/event-stream") {
        let mut rest = String::new();
        let _ = body.read_to_string(&mut rest);
        c.problem = Some(format!("status {status} ({ct}): {rest}"));
        return c;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match body.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                c.problem = Some(format!("stream cut: {e}"));
                return c;
            }
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() || l.starts_with(':') {
            continue;
        }
        let Some(data) = l.strip_prefix("data: ") else {
            c.problem = Some(format!("not a data line: {l:?}"));
            return c;
        };
        if c.done {
            c.problem = Some(format!("data after [DONE]: {data:?}"));
            return c;
        }
        c.events += 1;
        if data == "[DONE]" {
            c.done = true;
            continue;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                c.problem = Some(format!("event is not JSON ({e}): {data:?}"));
                return c;
            }
        };
        if v.get("error").is_some() {
            c.problem = Some(format!("error event: {v}"));
            return c;
        }
        if let Some(choice) = v["choices"].as_array().and_then(|a| a.first()) {
            let lp = &choice["logprobs"];
            // completions: logprobs.tokens; chat: logprobs.content
            let n = lp["tokens"]
                .as_array()
                .or_else(|| lp["content"].as_array())
                .map_or(0, Vec::len);
            c.tokens += n;
            if let Some(f) = choice["finish_reason"].as_str() {
                c.finish_reason = Some(f.to_owned());
            }
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            c.usage_tokens = Some(n as usize);
        }
    }
    if !c.done {
        c.problem = Some("stream ended without [DONE]".into());
    } else if c.usage_tokens != Some(c.tokens) {
        c.problem = Some(format!(
            "token count {} does not match usage {:?}",
            c.tokens, c.usage_tokens
        ));
    }
    c
}

/// POSTs a streaming JSON request on a fresh connection and checks the whole stream.
pub fn stream_request(addr: SocketAddr, path: &str, body: &Value) -> StreamCheck {
    let raw = build(
        "POST",
        path,
        &addr.to_string(),
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    let attempt = || -> io::Result<StreamCheck> {
        let mut s = connect(addr)?;
        s.write_all(&raw)?;
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r)?;
        Ok(check_stream(r, &headers, status))
    };
    attempt().unwrap_or_else(|e| StreamCheck {
        problem: Some(format!("transport: {e}")),
        ..StreamCheck::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `glmfleet` process whose stderr goes to a file; stopped on drop (SIGTERM, so that `up`
/// stops its replicas too, then SIGKILL after 10 s).
pub struct LoggedProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_path: PathBuf,
    pub lines: mpsc::Receiver<String>,
}

impl LoggedProc {
    /// `glmfleet serve demo` on an ephemeral loopback port with `flags` and `env`; stderr to
    /// `dir/replica.log`.
    pub fn demo_replica(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> LoggedProc {
        let mut args = vec!["serve", "demo", "--host", "127.0.0.1", "--port", "0"];
        args.extend_from_slice(flags);
        LoggedProc::start(&args, env, "replica", &dir.join("replica.log"))
    }

    /// `glmfleet router` on an ephemeral loopback port in front of `replicas`, with `flags` and
    /// `env`; stderr to `dir/router.log`.
    pub fn router(
        dir: &Path,
        replicas: &[&str],
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> LoggedProc {
        let mut args = vec!["router", "--host", "127.0.0.1", "--port", "0"];
        for r in replicas {
            args.extend(["--replica", r]);
        }
        args.extend_from_slice(flags);
        LoggedProc::start(&args, env, "router", &dir.join("router.log"))
    }

    /// Starts `glmfleet ARGS` with `env`, stderr to `stderr_path`, and waits for `component`'s
    /// listening line.
    pub fn start(
        args: &[&str],
        env: &[(&str, &str)],
        component: &str,
        stderr_path: &Path,
    ) -> LoggedProc {
        let err = File::create(stderr_path).expect("stderr file");
        let mut cmd = Command::new(e2e::glmfleet_bin());
        cmd.args(args)
            .env(
                "GLMFLEET_CACHE",
                std::env::temp_dir().join("glmfleet-e2e-cache"),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        no_inherited_fds(&mut cmd);
        let mut child = cmd.spawn().expect("spawn glmfleet");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = e2e::parse_announce(&line, component) {
                        return LoggedProc {
                            child,
                            addr,
                            stderr_path: stderr_path.to_path_buf(),
                            lines: rx,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(stderr_path).unwrap_or_default();
                    panic!("glmfleet {args:?}: no `{component}` listening line; stderr:\n{log}");
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Still running (not exited)?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl LoggedProc {
    /// SIGTERM, then waits up to `timeout` for the exit; SIGKILL if it is still running.
    /// Returns the exit code (None when killed by a signal).
    pub fn stop(&mut self, timeout: Duration) -> Option<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code();
        }
        // SAFETY: a pid this harness spawned and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for LoggedProc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// A fresh scratch folder under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glmfleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Threads of a process.
pub fn thread_count(pid: u32) -> Option<usize> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Raises this process's soft open-file limit to `want` (capped by the hard limit); returns the
/// soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let target = want.min(lim.rlim_max);
        if lim.rlim_cur < target {
            lim.rlim_cur = target;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}
