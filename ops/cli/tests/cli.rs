//! The `glmfleet` binary as a user meets it: bad flags and missing files give one clear line and a
//! non-zero exit; `generate` prints the documented JSON.

use std::path::PathBuf;
use std::process::{Command, Output};

fn glmfleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glmfleet"))
        .args(args)
        .env(
            "GLMFLEET_CACHE",
            std::env::temp_dir().join("glmfleet-cli-test-cache"),
        )
        .output()
        .expect("run glmfleet")
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn generate_json_matches_transformers_greedy() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(fixture("tiny-a")).join("reference.json")).unwrap(),
    )
    .unwrap();
    let p = &reference["prompts"][1];
    let ids: Vec<String> = p["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let o = glmfleet(&[
        "generate",
        "--model",
        &fixture("tiny-a"),
        "--token-ids",
        &ids.join(","),
        "--max-new-tokens",
        "24",
        "--json",
        "--ignore-eos",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["token_ids"], p["greedy"]);
}

#[test]
fn generate_prompt_on_demo_model() {
    let o = glmfleet(&[
        "generate",
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(out["token_ids"].as_array().unwrap().len() <= 4);
    assert!(out["text"].is_string());
}

#[test]
fn seeded_sampling_is_reproducible() {
    let args = [
        "generate",
        "--token-ids",
        "5,6,7",
        "--max-new-tokens",
        "12",
        "--json",
        "--temperature",
        "1.0",
        "--seed",
        "42",
        "--ignore-eos",
    ];
    let a = glmfleet(&args);
    let b = glmfleet(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn bad_input_gives_one_line_errors() {
    for (args, needle) in [
        (
            vec![
                "generate",
                "--model",
                "/nonexistent/glm",
                "--token-ids",
                "1",
            ],
            "not found",
        ),
        (
            vec!["generate", "--token-ids", "1,999999"],
            "outside the vocabulary",
        ),
        (vec!["generate", "--prompt", ""], "empty"),
        (vec!["generate", "--token-ids", "1,x"], "not a token id"),
        (vec!["generate"], "--token-ids or --prompt"),
        (
            vec!["generate", "--token-ids", "1", "--device", "tpu"],
            "unknown device",
        ),
    ] {
        let o = glmfleet(&args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(e.contains(needle), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: not one line: {e}");
    }
    let o = glmfleet(&["no-such-command"]);
    assert!(!o.status.success());
}
