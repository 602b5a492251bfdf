//! Every `glmfleet` subcommand given bad flags, bad values or missing files exits non-zero with
//! one `error:` line that names the problem (clap adds its usage hint below a flag error), never
//! a panic and never a server left running. `generate` is covered in `ops/cli/tests/cli.rs`.

mod reliability_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reliability_support::{scratch, LoggedProc};

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

fn run(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(e2e::glmfleet_bin());
    reliability_support::no_inherited_fds(&mut cmd);
    let mut child = cmd
        .args(args)
        .env("RUST_LOG", "warn")
        .env(
            "GLMFLEET_CACHE",
            std::env::temp_dir().join("glmfleet-e2e-cache"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn glmfleet");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("glmfleet {args:?} was still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn assert_fails(args: &[&str], needle: &str) {
    let o = run(args);
    assert!(
        matches!(o.code, Some(c) if c != 0),
        "{args:?} should fail, exit {:?}: {}",
        o.code,
        o.stderr
    );
    assert!(
        !o.stderr.contains("panicked"),
        "{args:?} panicked: {}",
        o.stderr
    );
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:") || l.contains(" ERROR "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{args:?}: want one error line, got: {}",
        o.stderr
    );
    assert!(
        errors[0].contains(needle),
        "{args:?}: error line does not mention {needle:?}: {}",
        o.stderr
    );
}

#[test]
fn bad_flags_are_one_clear_error() {
    for sub in [
        vec!["serve", "demo"],
        vec!["router", "--replica", "http://127.0.0.1:1"],
        vec!["up"],
        vec!["bench", "serve"],
        vec!["bench", "sweep"],
    ] {
        let mut args = sub.clone();
        args.push("--no-such-flag");
        assert_fails(&args, "--no-such-flag");
    }
    assert_fails(&["serve", "demo", "--port", "notaport"], "notaport");
    assert_fails(&["serve", "demo", "--port", "70000"], "70000");
    assert_fails(&["serve", "demo", "--max-model-len", "-3"], "-3");
    assert_fails(&["serve", "demo", "--tool-call-parser", "gpt"], "gpt");
    assert_fails(
        &[
            "router",
            "--replica",
            "http://127.0.0.1:1",
            "--policy",
            "random",
        ],
        "random",
    );
    assert_fails(&["up", "--replicas", "many"], "many");
    assert_fails(&["bench", "serve", "--num-prompts", "-1"], "-1");
    assert_fails(
        &["bench", "serve", "--dataset-name", "imagenet"],
        "imagenet",
    );
    assert_fails(&["no-such-command"], "no-such-command");
}

#[test]
fn bad_values_and_missing_files_are_one_clear_error() {
    let dir = scratch("cli-bad");
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "max_num_seqs = [unclosed").unwrap();
    let unknown_key = dir.join("unknown.toml");
    std::fs::write(&unknown_key, "no_such_setting = 1\n").unwrap();
    let missing = dir.join("missing.toml");
    let missing = missing.to_str().unwrap();
    let bad_toml = bad_toml.to_str().unwrap();
    let unknown_key = unknown_key.to_str().unwrap();
    let dead = format!("http://127.0.0.1:{}", e2e::dead_port());

    // serve
    assert_fails(&["serve", "/nonexistent/glm-model"], "not found");
    assert_fails(&["serve", "demo", "--config", missing], "missing.toml");
    assert_fails(&["serve", "demo", "--config", bad_toml], "bad.toml");
    assert_fails(
        &["serve", "demo", "--config", unknown_key],
        "no_such_setting",
    );
    assert_fails(
        &[
            "serve",
            "demo",
            "--chat-template",
            "/nonexistent/template.jinja",
        ],
        "chat-template",
    );
    assert_fails(&["serve", "demo", "--max-model-len", "0"], "max-model-len");
    assert_fails(
        &["serve", "demo", "--tensor-parallel-size", "2"],
        "tensor-parallel-size",
    );
    assert_fails(&["serve", "demo", "--block-size", "3"], "block-size");
    assert_fails(
        &["serve", "demo", "--host", "999.1.1.1", "--port", "0"],
        "999.1.1.1",
    );
    // a checkpoint whose config.json describes absurd dimensions
    let huge = dir.join("huge-model");
    std::fs::create_dir_all(&huge).unwrap();
    let demo = e2e::repo_root().join("model/demo");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(demo.join(f), huge.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo.join("config.json")).unwrap()).unwrap();
    for k in ["num_attention_heads", "num_key_value_heads", "head_dim"] {
        cfg[k] = serde_json::json!(1u64 << 40);
    }
    std::fs::write(huge.join("config.json"), cfg.to_string()).unwrap();
    assert_fails(&["serve", huge.to_str().unwrap()], "parameters");
    let empty_model = dir.join("empty-model");
    std::fs::create_dir_all(&empty_model).unwrap();
    assert_fails(&["serve", empty_model.to_str().unwrap()], "config.json");

    // router
    assert_fails(&["router"], "--replica");
    assert_fails(&["router", "--replica", "not a url"], "not a url");
    assert_fails(
        &["router", "--replica", &dead, "--config", missing],
        "missing.toml",
    );
    assert_fails(
        &["router", "--replica", &dead, "--config", bad_toml],
        "bad.toml",
    );
    assert_fails(
        &["router", "--replica", &dead, "--load-bound", "0.5"],
        "load",
    );
    assert_fails(
        &["router", "--replica", &dead, "--discover", "dns:"],
        "discover",
    );

    // up
    assert_fails(&["up", "--replicas", "0"], "--replicas");
    assert_fails(
        &["up", "--replicas", "3", "--gpus", "0,1", "--port", "0"],
        "each replica needs its own",
    );
    assert_fails(
        &["up", "--model", "/nonexistent/glm-model", "--port", "0"],
        "not found",
    );

    // bench (against a live replica, so that the error is about the input, not the server)
    assert_fails(
        &["bench", "serve", "--base-url", &dead, "--num-prompts", "1"],
        "unreachable",
    );
    let replica = LoggedProc::demo_replica(&dir, &[], &[]);
    let live = replica.url();
    let demo_tokenizer = e2e::repo_root().join("model/demo/tokenizer.json");
    let demo_tokenizer = demo_tokenizer.to_str().unwrap();
    assert_fails(
        &[
            "bench",
            "serve",
            "--base-url",
            &live,
            "--dataset-name",
            "sharegpt",
            "--dataset-path",
            "/nonexistent/sharegpt.json",
            "--tokenizer",
            demo_tokenizer,
            "--num-prompts",
            "1",
        ],
        "sharegpt.json",
    );
    assert_fails(
        &[
            "bench",
            "serve",
            "--base-url",
            "::not a url",
            "--num-prompts",
            "1",
        ],
        "not a url",
    );
    assert_fails(
        &[
            "bench",
            "serve",
            "--base-url",
            &live,
            "--tokenizer",
            "/nonexistent/tokenizer.json",
            "--num-prompts",
            "1",
        ],
        "tokenizer",
    );
    assert_fails(
        &[
            "bench",
            "sweep",
            "--base-url",
            &dead,
            "--workloads",
            "nonsense",
        ],
        "nonsense",
    );
}

/// `up` killed outright (SIGKILL, as the OOM killer would) must not leave its replicas running
/// as orphans that hold their ports.
#[test]
fn a_killed_up_takes_its_replicas_down() {
    let dir = scratch("cli-up-kill");
    let mut up = LoggedProc::start(
        &[
            "up",
            "--replicas",
            "2",
            "--port",
            "0",
            "--shutdown-timeout",
            "1",
        ],
        &[],
        "router",
        &dir.join("up.log"),
    );
    let replicas = e2e::child_pids(up.pid());
    assert_eq!(
        replicas.len(),
        2,
        "up should run two replicas: {replicas:?}"
    );
    let _ = up.child.kill();
    let _ = up.child.wait();
    let gone = e2e::wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        replicas.iter().all(|&p| e2e::proc_stat(p).is_none())
    });
    if !gone {
        for &p in &replicas {
            // SAFETY: plain syscall on the pids of replicas this test's `up` started.
            unsafe {
                libc::kill(p as libc::pid_t, libc::SIGKILL);
            }
        }
    }
    assert!(gone, "replicas {replicas:?} outlived their killed `up`");
}
