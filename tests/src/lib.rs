//! Harness for end-to-end tests: runs the real `glmfleet` binary (built by `cargo test --workspace`,
//! which builds it for `ops/cli`'s own integration tests) on loopback with ephemeral ports, finds the
//! ports from the `{"event":"listening",...}` line each server prints on stdout, and stops processes on
//! drop. Everything here is bounded in time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `glmfleet` binary: `$GLMFLEET_BIN`, else `target/<profile>/glmfleet` next to this test binary.
pub fn glmfleet_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GLMFLEET_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/glmfleet
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("glmfleet");
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
    pub lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `glmfleet ARGS` and waits (up to `timeout`) for `component` to announce its address.
    pub fn start(args: &[&str], component: &str, timeout: Duration) -> Proc {
        let mut child = Command::new(glmfleet_bin())
            .args(args)
            .env("GLMFLEET_CACHE", std::env::temp_dir().join("glmfleet-e2e-cache"))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
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
                        return Proc { child, addr, lines: rx };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
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
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

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
