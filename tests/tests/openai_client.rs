//! The official `openai` Python client against real `glmfleet serve` processes: chat and
//! completions (streaming and not), `n`, stop strings, logprobs, seeds, usage, prefix-cache
//! counts, tool calls and reasoning through the GLM-4.5 parsers, and the SDK's typed errors.
//! The assertions live in `tests/openai/test_openai_client.py` (stdlib `unittest` + `openai`);
//! this test starts the servers, runs the script with their addresses and requires exit 0.
//!
//! Servers: the demo model behind `--api-key` for free-running generation and errors, and two
//! scripted servers (`--load-format scripted:FILE`) whose every answer is the same tool call /
//! reasoning block, so the Python tests are independent of their order.
//!
//! Without `python3` or the `openai` package (`ops/ci/install-deps.sh` installs it) the test
//! prints SKIP and passes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const API_KEY: &str = "sk-glmfleet-openai-test";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

// The scripted answers; tests/openai/test_openai_client.py asserts on their parts
// (TOOL_ARGS, REASONING, ANSWER). `<|observation|>` and `<|user|>` are GLM stop tokens.
const TOOL_CALL: &str =
    "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n\
<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call><|observation|>";
const THINK_THEN_ANSWER: &str = "\n<think>The user greets me.</think>\nHello there!<|user|>";

fn python_client_available() -> Result<String, String> {
    let out = Command::new("python3")
        .args(["-c", "import openai; print(openai.__version__)"])
        .output()
        .map_err(|e| format!("python3 is not available ({e})"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(
            "the `openai` Python package is not installed (ops/ci/install-deps.sh installs it)"
                .into(),
        )
    }
}

/// A fresh directory for this test's script files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("glmfleet-openai-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn script(&self, name: &str, response: &str) -> String {
        let path = self.0.join(name);
        let body = serde_json::json!({ "responses": [response] });
        std::fs::write(&path, body.to_string()).expect("write script");
        format!("scripted:{}", path.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a child's pipe on a thread so a chatty child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn run_script(script: &Path, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .current_dir(e2e::repo_root())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The SDK must talk to loopback directly, whatever the environment's proxy settings.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn python3");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (code, text)
}

#[test]
fn openai_python_client_against_serve() {
    let version = match python_client_available() {
        Ok(v) => v,
        Err(why) => {
            println!("SKIP openai_python_client_against_serve: {why}");
            return;
        }
    };
    println!("openai Python client {version}");
    let tmp = TempDir::new();
    let tools_format = tmp.script("tool_call.json", TOOL_CALL);
    let reasoning_format = tmp.script("reasoning.json", THINK_THEN_ANSWER);

    let started = Instant::now();
    let demo = e2e::serve(
        "demo",
        &[
            "--api-key",
            API_KEY,
            "--max-model-len",
            "2048",
            "--num-gpu-blocks-override",
            "512",
            "--seed",
            "0",
        ],
    );
    let tools = e2e::serve(
        "demo",
        &[
            "--load-format",
            &tools_format,
            "--tool-call-parser",
            "glm45",
            "--enable-auto-tool-choice",
        ],
    );
    let reasoning = e2e::serve(
        "demo",
        &[
            "--load-format",
            &reasoning_format,
            "--reasoning-parser",
            "glm45",
        ],
    );
    println!("3 servers up in {:?}", started.elapsed());

    let script = e2e::repo_root().join("tests/openai/test_openai_client.py");
    let started = Instant::now();
    let (code, output) = run_script(
        &script,
        &[
            ("GLMFLEET_OPENAI_URL", demo.url()),
            ("GLMFLEET_OPENAI_KEY", API_KEY.to_owned()),
            ("GLMFLEET_OPENAI_TOOLS_URL", tools.url()),
            ("GLMFLEET_OPENAI_REASONING_URL", reasoning.url()),
            ("GLMFLEET_OPENAI_MODEL", "demo".to_owned()),
        ],
    );
    println!("{output}");
    println!("python tests took {:?}", started.elapsed());
    assert_eq!(
        code,
        Some(0),
        "tests/openai/test_openai_client.py failed (exit {code:?}; None = killed after {SCRIPT_TIMEOUT:?})"
    );
    // unittest reports "OK" only when every test ran and passed; a skipped test is not a pass here.
    assert!(
        output.contains("\nOK\n") || output.trim_end().ends_with("OK"),
        "no OK line"
    );
    assert!(!output.contains("skipped"), "a Python test was skipped");
}
