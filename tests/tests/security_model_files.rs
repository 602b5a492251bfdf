//! A checkpoint folder cannot make the server read outside it: shard names in
//! `model.safetensors.index.json` that leave the folder (`../`, absolute, `a/../../`) stop
//! `serve` with a one-line error, and a chat template cannot read files (`include`, `import`,
//! `extends` of any path fail the request with a 400 that shows nothing of the file).

mod reliability_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reliability_support::{post_json, scratch, LoggedProc};
use serde_json::json;

/// A copy of the embedded demo checkpoint in `dir` (without its weights file).
fn demo_without_weights(dir: &Path) {
    let demo = e2e::repo_root().join("model/demo");
    std::fs::create_dir_all(dir).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(demo.join(f), dir.join(f)).unwrap();
    }
}

/// Runs `glmfleet serve DIR --port 0` expecting it to fail; returns (exit code, stderr).
fn serve_fails(dir: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(e2e::glmfleet_bin());
    reliability_support::no_inherited_fds(&mut cmd);
    let mut child = cmd
        .args([
            "serve",
            dir.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {} did not fail within 60 s", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shard_names_cannot_leave_the_model_folder() {
    let root = scratch("security-shards");
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(
        e2e::repo_root().join("model/demo/model.safetensors"),
        outside.join("model.safetensors"),
    )
    .unwrap();
    let abs = outside.join("model.safetensors");
    for (case, shard) in [
        ("parent", "../outside/model.safetensors".to_string()),
        ("absolute", abs.to_str().unwrap().to_string()),
        (
            "nested parent",
            "sub/../../outside/model.safetensors".to_string(),
        ),
    ] {
        let dir = root.join(format!("model-{}", case.replace(' ', "-")));
        demo_without_weights(&dir);
        let index = json!({
            "metadata": {"total_size": 1},
            "weight_map": {"model.embed_tokens.weight": shard}
        });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let (code, stderr) = serve_fails(&dir);
        assert!(matches!(code, Some(c) if c != 0), "{case}: exit {code:?}");
        assert!(
            stderr.contains("escapes the model folder"),
            "{case}: unexpected error: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{case}: not one error line: {stderr}");
    }
}

#[test]
fn chat_templates_cannot_read_files() {
    let root = scratch("security-template");
    let marker = root.join("marker.txt");
    std::fs::write(&marker, "MARKER-7731-FILE-CONTENT").unwrap();
    let m = marker.to_str().unwrap();
    let dir = root.join("model");
    demo_without_weights(&dir);
    std::fs::copy(
        e2e::repo_root().join("model/demo/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    // The template reads the file at render time (the first statement decides which form).
    let forms = [
        format!("{{% include \"{m}\" %}}"),
        "{% include \"../marker.txt\" %}".to_string(),
        format!("{{% import \"{m}\" as x %}}"),
        format!("{{% extends \"{m}\" %}}"),
        "{% include \"config.json\" %}".to_string(),
    ];
    let template = format!(
        "[gMASK]<sop>{{% if messages[0].content == 'a' %}}{}{{% elif messages[0].content == 'b' %}}{}{{% elif messages[0].content == 'c' %}}{}{{% elif messages[0].content == 'd' %}}{}{{% elif messages[0].content == 'e' %}}{}{{% endif %}}{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}<|assistant|>",
        forms[0], forms[1], forms[2], forms[3], forms[4]
    );
    std::fs::write(dir.join("chat_template.jinja"), template).unwrap();
    let p = LoggedProc::start(
        &[
            "serve",
            dir.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        &[],
        "replica",
        &root.join("replica.log"),
    );
    // the template itself works when it reads nothing
    let ok = post_json(
        p.addr,
        "/v1/chat/completions",
        &[],
        &json!({"messages": [{"role": "user", "content": "z"}], "max_tokens": 1}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    for which in ["a", "b", "c", "d", "e"] {
        for path in ["/v1/chat/completions", "/tokenize"] {
            let r = post_json(
                p.addr,
                path,
                &[],
                &json!({"messages": [{"role": "user", "content": which}], "max_tokens": 1}),
            );
            assert_eq!(r.status, 400, "{which} {path}: {}", r.text());
            let text = r.text();
            assert!(
                !text.contains("MARKER-7731") && !text.contains("Glm4MoeForCausalLM"),
                "{which} {path}: file content leaked: {text}"
            );
        }
    }
}
