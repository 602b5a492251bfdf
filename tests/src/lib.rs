//! Harness for end-to-end tests: runs the real `glmfleet` binary (built by `cargo test --workspace`,
//! which builds it for `ops/cli`'s own integration tests) on loopback with ephemeral ports, finds the
//! ports from the `{"event":"listening",...}` line each server prints on stdout, and stops processes on
//! drop. Everything here is bounded in time.
//!
//! [`http`] is the client (whole replies and SSE streams), [`prom`] reads `/metrics`, [`Fleet`]
//! is N `glmfleet serve` replicas behind a `glmfleet router`, all owned by the test.

pub mod http;
pub mod prom;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// The `glmfleet` binary: `$GLMFLEET_BIN`, else `target/<profile>/glmfleet` next to this test binary.
pub fn glmfleet_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GLMFLEET_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/glmfleet
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("glmfleet");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p glmfleet` (cargo test --workspace builds it) or set GLMFLEET_BIN",
        bin.display()
    );
    bin
}

/// The repository root (for fixtures and the demo model).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// A running glmfleet process; SIGKILLed on drop unless already stopped.
pub struct Proc {
    pub child: Child,
    /// Address from its listening announcement.
    pub addr: SocketAddr,
    /// Further stdout lines (announcements of other components, e.g. `up`'s router after replicas).
    pub lines: Mutex<mpsc::Receiver<String>>,
}

impl Proc {
    /// Starts `glmfleet ARGS` and waits (up to `timeout`) for `component` to announce its address.
    pub fn start(args: &[&str], component: &str, timeout: Duration) -> Proc {
        let mut cmd = Command::new(glmfleet_bin());
        no_inherited_fds(&mut cmd);
        let mut child = cmd
            .args(args)
            .env(
                "GLMFLEET_CACHE",
                std::env::temp_dir().join("glmfleet-e2e-cache"),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn glmfleet");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_announce(&line, component) {
                        return Proc {
                            child,
                            addr,
                            lines: Mutex::new(rx),
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("glmfleet {args:?}: no `{component}` listening line within {timeout:?}");
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (graceful drain).
    pub fn terminate(&self) {
        // SAFETY: a pid this harness spawned and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for exit; returns the exit code (None if killed by a signal or still running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    /// SIGKILLs the process and then its children (`up`'s replicas), so that no test leaves a
    /// process behind, whatever it did; the children are listed first because a SIGKILLed `up`
    /// cannot stop them itself.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let children = child_pids(self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in children {
                // SAFETY: a child of the process this harness spawned, listed while its parent
                // was alive; it is not reaped by anyone until it exits, so the pid is still its.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

/// Makes every descriptor above stderr close-on-exec in the child before it execs, so a server
/// a test starts inherits nothing from the test process but stdio. Rust opens its own files
/// close-on-exec; the problem is what the test process itself inherited, such as the lock file
/// `flock /tmp/cargo.lock cargo test` holds: a server that outlived its test (or a replica that
/// `up` left behind) would keep that lock, and every later cargo command, waiting.
///
/// The descriptors are marked, not closed, so std's own exec-error pipe keeps working (a failed
/// exec is still reported by `spawn`).
pub fn no_inherited_fds(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec and only makes raw syscalls
    // (close_range, fcntl), which are async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            mark_cloexec_from(3);
            Ok(())
        })
    }
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11+), else `FD_CLOEXEC` on each
/// descriptor below [`FALLBACK_FD_LIMIT`] one by one. Async-signal-safe.
fn mark_cloexec_from(first: libc::c_uint) {
    /// `CLOSE_RANGE_CLOEXEC` from linux/close_range.h.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain syscalls on this process's descriptor table; an fd that is not open makes
    // fcntl fail with EBADF, which is ignored.
    unsafe {
        let r = libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        );
        if r == 0 {
            return;
        }
        for fd in first as libc::c_int..FALLBACK_FD_LIMIT {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Descriptors checked one by one where `close_range` is missing (kernels before 5.11).
const FALLBACK_FD_LIMIT: libc::c_int = 4096;

/// Parses `{"event":"listening","component":C,"addr":A}`.
pub fn parse_announce(line: &str, component: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["event"] != "listening" || v["component"] != component {
        return None;
    }
    v["addr"].as_str()?.parse().ok()
}

/// `glmfleet serve MODEL --port 0 EXTRA...`
pub fn serve(model: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["serve", model, "--host", "127.0.0.1", "--port", "0"];
    args.extend_from_slice(extra);
    Proc::start(&args, "replica", Duration::from_secs(120))
}

/// `glmfleet serve MODEL --port PORT EXTRA...` on a given port (a restart on the same address).
pub fn serve_on(model: &str, port: u16, extra: &[&str]) -> Proc {
    let port = port.to_string();
    let mut args = vec!["serve", model, "--host", "127.0.0.1", "--port", &port];
    args.extend_from_slice(extra);
    Proc::start(&args, "replica", Duration::from_secs(120))
}

/// Polls `f` every `every` until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Router flags that make health and load tracking fast enough for tests (defaults are 1 s / 200 ms).
pub const FAST_ROUTER_FLAGS: [&str; 6] = [
    "--health-interval-ms",
    "100",
    "--load-poll-interval-ms",
    "50",
    "--health-timeout-ms",
    "1000",
];

/// N replicas started with `serve` and a router in front of them, every process owned by the
/// test (so a test can kill, stop and restart replicas by pid).
pub struct Fleet {
    pub model: String,
    pub serve_flags: Vec<String>,
    /// `None` while a replica is down (killed or stopped by the test).
    pub replicas: Vec<Option<Proc>>,
    /// The replicas' addresses (stable across restarts).
    pub addrs: Vec<SocketAddr>,
    pub router: Proc,
    /// Extra router flags (after [`FAST_ROUTER_FLAGS`]), kept for [`Fleet::restart_router`].
    pub router_flags: Vec<String>,
}

/// `glmfleet router` on `port` (0: any) in front of `replicas`, with [`FAST_ROUTER_FLAGS`] and
/// `flags`.
fn start_router(replicas: &[SocketAddr], port: u16, flags: &[String]) -> Proc {
    let port = port.to_string();
    let urls: Vec<String> = replicas.iter().map(|a| format!("http://{a}")).collect();
    let mut args: Vec<&str> = vec!["router", "--host", "127.0.0.1", "--port", &port];
    for u in &urls {
        args.extend(["--replica", u.as_str()]);
    }
    args.extend(FAST_ROUTER_FLAGS);
    args.extend(flags.iter().map(String::as_str));
    Proc::start(&args, "router", Duration::from_secs(30))
}

impl Fleet {
    /// Starts `n` replicas of `model` with `serve_flags` (in parallel), then the router with
    /// [`FAST_ROUTER_FLAGS`] and `router_flags`, and waits until the router sees all healthy.
    pub fn start(n: usize, model: &str, serve_flags: &[&str], router_flags: &[&str]) -> Fleet {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let model = model.to_owned();
                let flags: Vec<String> = serve_flags.iter().map(|s| s.to_string()).collect();
                std::thread::spawn(move || {
                    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                    serve(&model, &flags)
                })
            })
            .collect();
        let replicas: Vec<Proc> = handles
            .into_iter()
            .map(|h| h.join().expect("replica start"))
            .collect();
        let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
        let router_flags: Vec<String> = router_flags.iter().map(|s| s.to_string()).collect();
        let router = start_router(&addrs, 0, &router_flags);
        let fleet = Fleet {
            model: model.to_owned(),
            serve_flags: serve_flags.iter().map(|s| s.to_string()).collect(),
            replicas: replicas.into_iter().map(Some).collect(),
            addrs,
            router,
            router_flags,
        };
        fleet.wait_healthy(n, Duration::from_secs(20));
        fleet
    }

    pub fn router_url(&self) -> String {
        self.router.url()
    }

    /// Requests the replicas counted as finished by abort (`vllm:request_success_total`).
    pub fn aborted_requests(&self) -> f64 {
        (0..self.addrs.len())
            .map(|i| {
                let text = http::get_text(&format!("{}/metrics", self.replica_url(i)));
                prom::Exposition::parse(&text).sum(
                    "vllm:request_success_total",
                    &[("finished_reason", "abort")],
                )
            })
            .sum()
    }

    /// `http://ADDR` of replica `i`, as the router names it (and in `x-glmfleet-replica`).
    pub fn replica_url(&self, i: usize) -> String {
        format!("http://{}", self.addrs[i])
    }

    /// Which replica index a `x-glmfleet-replica` value names.
    pub fn index_of(&self, replica_header: &str) -> Option<usize> {
        (0..self.addrs.len()).find(|&i| self.replica_url(i) == replica_header)
    }

    /// The router's `GET /replicas`.
    pub fn state(&self) -> serde_json::Value {
        http::get_json(&format!("{}/replicas", self.router_url()))
    }

    /// The router's in-flight count for each replica, in [`Fleet::addrs`] order.
    pub fn inflight(&self) -> Vec<u64> {
        let state = self.state();
        (0..self.addrs.len())
            .map(|i| {
                let url = self.replica_url(i);
                state["replicas"]
                    .as_array()
                    .and_then(|list| list.iter().find(|r| r["name"] == url.as_str()))
                    .and_then(|r| r["inflight"].as_u64())
                    .unwrap_or_else(|| panic!("{url} missing from /replicas: {state}"))
            })
            .collect()
    }

    /// Whether the router has replica `i` in rotation.
    pub fn is_healthy(&self, i: usize) -> bool {
        let url = self.replica_url(i);
        self.state()["replicas"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|r| r["name"] == url.as_str())
                    .map(|r| r["healthy"] == true)
            })
            .unwrap_or(false)
    }

    /// Waits until the router counts `n` healthy replicas (panics after `timeout`).
    pub fn wait_healthy(&self, n: usize, timeout: Duration) {
        let ok = wait_until(timeout, Duration::from_millis(50), || {
            self.state()["healthy"].as_u64() == Some(n as u64)
        });
        assert!(
            ok,
            "router did not see {n} healthy replicas within {timeout:?}: {}",
            self.state()
        );
    }

    /// SIGKILLs replica `i`.
    pub fn kill_replica(&mut self, i: usize) {
        if let Some(mut p) = self.replicas[i].take() {
            p.kill();
        }
    }

    /// Starts a new router on the old router's port, with the same replicas and flags, once the
    /// test has killed or stopped the old one; waits until it sees the running replicas healthy.
    pub fn restart_router(&mut self) {
        assert!(
            matches!(self.router.child.try_wait(), Ok(Some(_))),
            "the router is still running"
        );
        self.router = start_router(&self.addrs, self.router.addr.port(), &self.router_flags);
        let running = self.replicas.iter().flatten().count();
        self.wait_healthy(running, Duration::from_secs(20));
    }

    /// Starts replica `i` again on its old port.
    pub fn restart_replica(&mut self, i: usize) {
        assert!(self.replicas[i].is_none(), "replica {i} is still running");
        let flags: Vec<&str> = self.serve_flags.iter().map(String::as_str).collect();
        self.replicas[i] = Some(serve_on(&self.model, self.addrs[i].port(), &flags));
    }
}

/// Pids whose parent is `pid` (from `/proc/*/stat`).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if proc_stat(child).is_some_and(|(_, ppid)| ppid == pid) {
            out.push(child);
        }
    }
    out
}

/// `(state, ppid)` of a live or zombie process, `None` once it is gone.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may contain spaces and parentheses
    let after = &stat[stat.rfind(')')? + 1..];
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// A loopback port nothing listens on (bound, then released).
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a child started by `cmd` (a shell) sees descriptor `fd` open.
    fn child_sees(cmd: &mut Command, fd: libc::c_int) -> bool {
        let status = cmd
            .args(["-c", &format!("[ -e /proc/self/fd/{fd} ]")])
            .stdin(Stdio::null())
            .status()
            .expect("run sh");
        status.success()
    }

    #[test]
    fn children_do_not_inherit_descriptors_of_the_test_process() {
        // An inheritable descriptor, as a `flock` lock file is for `cargo test`: dup() does not
        // set close-on-exec.
        let file = std::fs::File::open(repo_root().join("Cargo.toml")).expect("open");
        // SAFETY: dup of a descriptor we own; the copy is closed below.
        let fd = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&file)) };
        assert!(fd > 2, "dup failed");
        // control: without the hook the child has it
        assert!(child_sees(&mut Command::new("sh"), fd));
        assert!(!child_sees(no_inherited_fds(&mut Command::new("sh")), fd));
        // stdio is untouched, and the parent's descriptor stays open
        assert!(child_sees(no_inherited_fds(&mut Command::new("sh")), 2));
        // SAFETY: F_GETFD on our own descriptor
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
        // SAFETY: closing the descriptor dup'ed above, once
        unsafe { libc::close(fd) };
        // a failed exec is still reported (std's error pipe survived the hook)
        let missing = no_inherited_fds(&mut Command::new("/nonexistent/glmfleet")).spawn();
        assert!(missing.is_err());
    }
}
