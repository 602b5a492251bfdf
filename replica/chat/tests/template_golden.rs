//! Byte-exact chat-template tests: glm.md §6.3 vectors A–D for both built-ins, and the corpus
//! rendered by Python Jinja2 (tests/gen_template_golden.py → tests/golden/*.json).

use std::path::{Path, PathBuf};

use chat::{builtin, resolve_chat_template, ChatTemplate, ModelFamily, TemplateKind};
use serde_json::{json, Map, Value};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_golden(name: &str) -> Vec<Value> {
    let path = crate_dir().join("tests/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn render_case(t: &ChatTemplate, case: &Value) -> String {
    let tools = case.get("tools").filter(|t| !t.is_null());
    let kwargs: Map<String, Value> = case["kwargs"].as_object().cloned().unwrap_or_default();
    let result = if case["continue_final_message"].as_bool().unwrap_or(false) {
        t.render_continuation(&case["messages"], tools, &kwargs)
    } else {
        t.render(
            &case["messages"],
            tools,
            case["add_generation_prompt"].as_bool().unwrap_or(false),
            &kwargs,
        )
    };
    result.unwrap_or_else(|e| panic!("case {}: {e}", case["name"]))
}

fn assert_corpus(t: &ChatTemplate, cases: &[Value], label: &str) {
    assert!(cases.len() >= 15, "corpus too small");
    let mut failures = Vec::new();
    for case in cases {
        let got = render_case(t, case);
        let want = case["expected"].as_str().unwrap();
        if got != want {
            failures.push(format!(
                "{label} / {}:\n  want {want:?}\n  got  {got:?}",
                case["name"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn builtin_glm45_matches_publisher_golden() {
    let t = ChatTemplate::new(builtin::GLM45).unwrap();
    assert_corpus(&t, &load_golden("glm46_publisher.json"), "builtin GLM45");
}

#[test]
fn publisher_template_under_minijinja_matches_jinja2() {
    let path = crate_dir().join("../../../shared/data/chat_templates/glm-4.6.jinja");
    let Ok(source) = std::fs::read_to_string(&path) else {
        eprintln!("skipping: publisher template not present at {path:?}");
        return;
    };
    let t = ChatTemplate::new(&source).unwrap();
    assert_corpus(
        &t,
        &load_golden("glm46_publisher.json"),
        "publisher GLM-4.6",
    );
}

#[test]
fn builtin_glm47_matches_its_jinja2_rendering() {
    let t = ChatTemplate::new(builtin::GLM47).unwrap();
    assert_corpus(&t, &load_golden("glm47_builtin.json"), "builtin GLM47");
}

// ---- glm.md §6.3 test vectors --------------------------------------------------------------

fn weather_tool() -> Value {
    json!({"type":"function","function":{"name":"get_weather","description":"Get weather",
        "parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},
        "required":["city"]}}})
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn vectors(t: &ChatTemplate) -> [String; 4] {
    let a = t
        .render(
            &json!([{"role": "user", "content": "Hi"}]),
            None,
            true,
            &Map::new(),
        )
        .unwrap();
    let b = t
        .render(
            &json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
            None,
            true,
            &kwargs(json!({"enable_thinking": false})),
        )
        .unwrap();
    let c = t
        .render(
            &json!([
                {"role": "user", "content": "Weather in Paris for 3 days?"},
                {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
                 "tool_calls": [{"id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 3}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 19}"}
            ]),
            Some(&json!([weather_tool()])),
            true,
            &Map::new(),
        )
        .unwrap();
    let d = t
        .render(
            &json!([
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                {"role": "user", "content": "Q2"}
            ]),
            None,
            true,
            &Map::new(),
        )
        .unwrap();
    [a, b, c, d]
}

const TOOLS_HEAD: &str = "<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\"}}, \"required\": [\"city\"]}}}\n</tools>\n\nFor each function call, output the function name and arguments within the following XML format:\n";

#[test]
fn glm45_test_vectors_a_to_d() {
    let t = ChatTemplate::new(builtin::GLM45).unwrap();
    let [a, b, c, d] = vectors(&t);
    assert_eq!(a, "[gMASK]<sop><|user|>\nHi<|assistant|>");
    assert_eq!(
        b,
        "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi/nothink<|assistant|>\n<think></think>"
    );
    let want_c = format!(
        "[gMASK]<sop>{TOOLS_HEAD}<tool_call>{{function-name}}\n<arg_key>{{arg-key-1}}</arg_key>\n<arg_value>{{arg-value-1}}</arg_value>\n<arg_key>{{arg-key-2}}</arg_key>\n<arg_value>{{arg-value-2}}</arg_value>\n...\n</tool_call><|user|>\nWeather in Paris for 3 days?<|assistant|>\n<think>Need the tool.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call><|observation|>\n<tool_response>\n{{\"temp\": 21}}\n</tool_response>\n<tool_response>\n{{\"temp\": 19}}\n</tool_response><|assistant|>"
    );
    assert_eq!(c, want_c);
    assert_eq!(
        d,
        "[gMASK]<sop><|user|>\nQ1<|assistant|>\n<think></think>\nA1<|user|>\nQ2<|assistant|>"
    );
}

#[test]
fn glm47_test_vectors_a_to_d() {
    let t = ChatTemplate::new(builtin::GLM47).unwrap();
    let [a, b, c, d] = vectors(&t);
    assert_eq!(a, "[gMASK]<sop><|user|>Hi<|assistant|><think>");
    assert_eq!(
        b,
        "[gMASK]<sop><|system|>Be brief.<|user|>Hi<|assistant|></think>"
    );
    let want_c = format!(
        "[gMASK]<sop>{TOOLS_HEAD}<tool_call>{{function-name}}<arg_key>{{arg-key-1}}</arg_key><arg_value>{{arg-value-1}}</arg_value><arg_key>{{arg-key-2}}</arg_key><arg_value>{{arg-value-2}}</arg_value>...</tool_call><|user|>Weather in Paris for 3 days?<|assistant|><think>Need the tool.</think><tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value><arg_key>days</arg_key><arg_value>3</arg_value></tool_call><|observation|><tool_response>{{\"temp\": 21}}</tool_response><tool_response>{{\"temp\": 19}}</tool_response><|assistant|><think>"
    );
    assert_eq!(c, want_c);
    assert_eq!(
        d,
        "[gMASK]<sop><|user|>Q1<|assistant|></think>A1<|user|>Q2<|assistant|><think>"
    );
}

#[test]
fn builtins_are_not_trim_sensitive_copies() {
    // our own text: not the publisher's file
    let path = crate_dir().join("../../../shared/data/chat_templates/glm-4.6.jinja");
    if let Ok(publisher) = std::fs::read_to_string(path) {
        assert_ne!(publisher.trim(), builtin::GLM45.trim());
        assert!(!builtin::GLM45.contains("visible_text"));
    }
}

#[test]
fn continue_final_message_errors_when_content_is_dropped() {
    let t = ChatTemplate::new(builtin::GLM45).unwrap();
    // the template drops unknown roles, so there is nothing to continue from
    let err = t
        .render_continuation(
            &json!([{"role": "user", "content": "x"}, {"role": "developer", "content": "never rendered"}]),
            None,
            &Map::new(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("continue_final_message"), "{err}");
}

// ---- template resolution ---------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "glmfleet-chat-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn resolution_order() {
    let dir = TempDir::new("resolve");
    // nothing → built-in by family
    let r = resolve_chat_template(Some(dir.path()), ModelFamily::Glm47).unwrap();
    assert_eq!(r.kind, TemplateKind::Builtin(ModelFamily::Glm47));
    assert_eq!(r.source, builtin::GLM47);
    let r = resolve_chat_template(None, ModelFamily::Glm45).unwrap();
    assert_eq!(r.kind, TemplateKind::Builtin(ModelFamily::Glm45));

    // tokenizer_config.json with a list of named templates → "default"
    let cfg = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &cfg,
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages | length }}"}]}"#,
    )
    .unwrap();
    let r = resolve_chat_template(Some(dir.path()), ModelFamily::Glm45).unwrap();
    assert_eq!(
        r.kind,
        TemplateKind::TokenizerConfig {
            path: cfg.clone(),
            name: Some("default".into())
        }
    );
    let out = r
        .compile()
        .unwrap()
        .render(
            &json!([{"role": "user", "content": "x"}]),
            None,
            false,
            &Map::new(),
        )
        .unwrap();
    assert_eq!(out, "D1");

    // string form
    std::fs::write(
        &cfg,
        r#"{"chat_template": "S", "eos_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    let r = resolve_chat_template(Some(dir.path()), ModelFamily::Glm45).unwrap();
    assert_eq!(r.source, "S");

    // config without chat_template → built-in
    std::fs::write(&cfg, r#"{"eos_token": "<|endoftext|>"}"#).unwrap();
    let r = resolve_chat_template(Some(dir.path()), ModelFamily::Glm45).unwrap();
    assert_eq!(r.kind, TemplateKind::Builtin(ModelFamily::Glm45));

    // broken config → clear error
    std::fs::write(&cfg, "{not json").unwrap();
    let err = resolve_chat_template(Some(dir.path()), ModelFamily::Glm45).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");

    // chat_template.jinja wins over everything
    let jinja = dir.path().join("chat_template.jinja");
    std::fs::write(&jinja, "J").unwrap();
    let r = resolve_chat_template(Some(dir.path()), ModelFamily::Glm45).unwrap();
    assert_eq!(r.kind, TemplateKind::CheckpointFile(jinja));
    assert_eq!(r.source, "J");
}
