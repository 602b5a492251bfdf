//! Tool-call parser tests: semantics, one regression test per bug of the GLM parser digest
//! (glm.md §7.5), and the streaming == non-streaming property over random delta splits.

mod common;

use chat::{
    parse_tool_calls, ParsedOutput, StreamDelta, ToolCallStream, ToolParserKind,
    ToolParserKind::{Glm45, Glm47},
};
use common::split_chars;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}}}}}),
        json!({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}),
        json!({"type": "function", "function": {"name": "write_file", "parameters": {"type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}}),
        json!({"type": "function", "function": {"name": "set_zip", "parameters": {"type": "object",
            "properties": {"zip": {"type": "string"}, "note": {"type": ["string", "null"]},
                           "count": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}}}),
        json!({"type": "function", "function": {"name": "ls", "parameters": {"type": "object",
            "properties": {"dirPath": {"type": "string"}}}}}),
    ]
}

fn args(out: &ParsedOutput) -> Vec<Value> {
    out.tool_calls
        .iter()
        .map(|c| serde_json::from_str::<Value>(&c.arguments).unwrap())
        .collect()
}

fn names(out: &ParsedOutput) -> Vec<&str> {
    out.tool_calls.iter().map(|c| c.name.as_str()).collect()
}

/// Streams `pieces` and assembles the same shape as `ParsedOutput` (+ all deltas).
fn stream(
    kind: ToolParserKind,
    pieces: &[&str],
    tools: &[Value],
) -> (ParsedOutput, Vec<StreamDelta>) {
    let mut s = ToolCallStream::new(kind, tools);
    let mut all = Vec::new();
    for p in pieces {
        all.extend(s.push(p));
    }
    all.extend(s.finish());
    let mut content = String::new();
    let mut calls: Vec<chat::ToolCall> = Vec::new();
    for d in &all {
        match d {
            StreamDelta::Content(c) => content.push_str(c),
            StreamDelta::ToolCallStart { index, id, name } => {
                assert_eq!(*index, calls.len(), "indices are dense and ordered");
                calls.push(chat::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                })
            }
            StreamDelta::ToolCallArgs { index, fragment } => {
                calls[*index].arguments.push_str(fragment)
            }
        }
    }
    if let Some(i) = s.abandoned_call() {
        assert_eq!(i + 1, calls.len(), "only the last call can be abandoned");
        calls.truncate(i);
    }
    assert_eq!(s.completed_calls(), calls.len());
    (
        ParsedOutput {
            content: (!content.is_empty()).then_some(content),
            tool_calls: calls,
        },
        all,
    )
}

fn same_modulo_ids(a: &ParsedOutput, b: &ParsedOutput) -> bool {
    a.content == b.content
        && a.tool_calls.len() == b.tool_calls.len()
        && a.tool_calls
            .iter()
            .zip(&b.tool_calls)
            .all(|(x, y)| x.name == y.name && x.arguments == y.arguments)
}

/// Checks the streaming invariant for `text` over several split strategies.
fn check_split_invariance(kind: ToolParserKind, text: &str, tools: &[Value], rng: &mut StdRng) {
    let whole = parse_tool_calls(kind, text, tools);
    for c in &whole.tool_calls {
        let v: Value = serde_json::from_str(&c.arguments)
            .unwrap_or_else(|e| panic!("invalid arguments {:?} for {text:?}: {e}", c.arguments));
        assert!(v.is_object(), "arguments not an object for {text:?}");
    }
    let one_char: Vec<String> = text.chars().map(String::from).collect();
    let strategies = [
        one_char,
        split_chars(text, rng, 3),
        split_chars(text, rng, 9),
        split_chars(text, rng, 40),
    ];
    for pieces in strategies {
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (got, _) = stream(kind, &refs, tools);
        assert!(
            same_modulo_ids(&got, &whole),
            "{kind:?} split {refs:?}\n  stream {got:?}\n  whole  {whole:?}"
        );
    }
}

// ---- basic semantics -------------------------------------------------------------------------

#[test]
fn typed_arguments_from_schema() {
    let text = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value> New York </arg_value>\n<arg_key>days</arg_key>\n<arg_value> 42 </arg_value>\n<arg_key>ratio</arg_key>\n<arg_value>3.14</arg_value>\n<arg_key>flag</arg_key>\n<arg_value>true</arg_value>\n<arg_key>py</arg_key>\n<arg_value>False</arg_value>\n<arg_key>obj</arg_key>\n<arg_value>{\"a\": [1, null]}</arg_value>\n<arg_key>words</arg_key>\n<arg_value>  two words </arg_value>\n</tool_call>";
    let out = parse_tool_calls(Glm45, text, &tools());
    assert_eq!(
        out.tool_calls[0].arguments,
        r#"{"city": " New York ", "days": 42, "ratio": 3.14, "flag": true, "py": false, "obj": {"a": [1, null]}, "words": "two words"}"#
    );
}

#[test]
fn mixed_schema_types() {
    let text = "<tool_call>set_zip<arg_key>zip</arg_key><arg_value>01234</arg_value><arg_key>note</arg_key><arg_value>null</arg_value><arg_key>count</arg_key><arg_value>7</arg_value></tool_call>\
                <tool_call>set_zip<arg_key>note</arg_key><arg_value> hello </arg_value><arg_key>count</arg_key><arg_value>many</arg_value></tool_call>";
    let out = parse_tool_calls(Glm47, text, &tools());
    assert_eq!(
        args(&out),
        [
            json!({"zip": "01234", "note": null, "count": 7}),
            json!({"note": " hello ", "count": "many"})
        ]
    );
}

#[test]
fn unknown_tool_and_no_tools_use_value_decoding() {
    let text = "<tool_call>mystery\n<arg_key>n</arg_key>\n<arg_value>10001</arg_value>\n<arg_key>s</arg_key>\n<arg_value>text here</arg_value>\n</tool_call>";
    let out = parse_tool_calls(Glm45, text, &[]);
    assert_eq!(names(&out), ["mystery"]);
    assert_eq!(args(&out), [json!({"n": 10001, "s": "text here"})]);
}

#[test]
fn thinking_tags_stay_in_content_without_reasoning_parser() {
    let text = "<think>plan</think>\nSure.\n<tool_call>get_time\n</tool_call>";
    let out = parse_tool_calls(Glm45, text, &tools());
    assert_eq!(out.content.as_deref(), Some("<think>plan</think>\nSure."));
    assert_eq!(args(&out), [json!({})]);
}

#[test]
fn content_between_and_after_calls() {
    let text = "Before.\n\n<tool_call>get_time</tool_call>\n  middle text \n<tool_call>get_time</tool_call>\n\n after";
    let out = parse_tool_calls(Glm47, text, &tools());
    assert_eq!(out.content.as_deref(), Some("Before.middle textafter"));
    assert_eq!(out.tool_calls.len(), 2);
    // whitespace-only content around calls is None
    let out = parse_tool_calls(Glm45, "\n<tool_call>get_time\n</tool_call>\n", &tools());
    assert_eq!(out.content, None);
}

#[test]
fn unterminated_call_is_content() {
    let text = "Let me call.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par";
    let out = parse_tool_calls(Glm45, text, &tools());
    assert!(out.tool_calls.is_empty());
    assert_eq!(out.content.as_deref(), Some(text));
    // streaming: the start went out, finish re-sends the text as content and flags the call
    let mut s = ToolCallStream::new(Glm45, &tools());
    let mut deltas = s.push(text);
    assert!(matches!(deltas[1], StreamDelta::ToolCallStart { .. }));
    deltas.extend(s.finish());
    assert_eq!(s.abandoned_call(), Some(0));
    let content: String = deltas
        .iter()
        .filter_map(|d| match d {
            StreamDelta::Content(c) => Some(c.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(content, text);
    // a complete call followed by an unterminated one keeps the complete one
    let text2 = "<tool_call>get_time</tool_call><tool_call>get_weather<arg_key>city";
    let out = parse_tool_calls(Glm47, text2, &tools());
    assert_eq!(names(&out), ["get_time"]);
    assert_eq!(
        out.content.as_deref(),
        Some("<tool_call>get_weather<arg_key>city")
    );
}

#[test]
fn empty_name_is_content() {
    let out = parse_tool_calls(Glm47, "a <tool_call></tool_call> b", &tools());
    assert!(out.tool_calls.is_empty());
    assert_eq!(out.content.as_deref(), Some("a <tool_call></tool_call> b"));
}

#[test]
fn new_tool_call_closes_the_open_one() {
    let text = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value><tool_call>get_time</tool_call>";
    let out = parse_tool_calls(Glm47, text, &tools());
    assert_eq!(names(&out), ["get_weather", "get_time"]);
    assert_eq!(args(&out)[0], json!({"city": "Oslo"}));
}

#[test]
fn duplicate_keys_keep_the_first_value() {
    let text = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>A</arg_value><arg_key>city</arg_key><arg_value>B</arg_value></tool_call>";
    let out = parse_tool_calls(Glm47, text, &tools());
    assert_eq!(args(&out), [json!({"city": "A"})]);
}

#[test]
fn value_terminated_by_tool_call_end_is_finalised() {
    let text = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</tool_call>";
    let out = parse_tool_calls(Glm47, text, &tools());
    assert_eq!(args(&out), [json!({"city": "Oslo"})]);
}

#[test]
fn literal_backslash_n_between_tags_glm47() {
    let text = "<tool_call>get_weather\\n<arg_key>city</arg_key>\\n<arg_value>Rome</arg_value>\\n</tool_call>";
    let out = parse_tool_calls(Glm47, text, &tools());
    assert_eq!(names(&out), ["get_weather"]);
    assert_eq!(args(&out), [json!({"city": "Rome"})]);
}

#[test]
fn glm45_name_ends_at_newline_glm47_does_not() {
    let text = "<tool_call>get_time\nnoise<arg_key>k</arg_key><arg_value>1</arg_value></tool_call>";
    assert_eq!(
        names(&parse_tool_calls(Glm45, text, &tools())),
        ["get_time"]
    );
    assert_eq!(
        names(&parse_tool_calls(Glm47, text, &tools())),
        ["get_time\nnoise"]
    );
}

#[test]
fn ids_are_unique_and_openai_shaped() {
    let text = "<tool_call>get_time</tool_call>".repeat(50);
    let out = parse_tool_calls(Glm47, &text, &tools());
    let ids: std::collections::HashSet<&str> =
        out.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 50);
    for id in ids {
        assert!(id.starts_with("call_") && id[5..].chars().all(|c| c.is_ascii_alphanumeric()));
    }
}

// ---- regression tests: glm.md §7.5 digest ----------------------------------------------------

#[test]
fn vllm_32436_zero_arg_call() {
    for kind in [Glm45, Glm47] {
        let out = parse_tool_calls(kind, "<tool_call>get_time</tool_call>", &tools());
        assert_eq!(names(&out), ["get_time"], "{kind:?}");
        assert_eq!(out.tool_calls[0].arguments, "{}");
        assert_eq!(out.content, None);
        let out = parse_tool_calls(kind, "<tool_call>get_time\n</tool_call>", &tools());
        assert_eq!(out.tool_calls[0].arguments, "{}");
    }
}

#[test]
fn vllm_44326_streaming_inline_zero_arg_call() {
    let text = "I'll check the time.<tool_call>get_current_time</tool_call>";
    let mut rng = StdRng::seed_from_u64(44326);
    check_split_invariance(Glm47, text, &tools(), &mut rng);
    let pieces: Vec<String> = text.chars().map(String::from).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let (out, _) = stream(Glm47, &refs, &tools());
    assert_eq!(names(&out), ["get_current_time"]);
    assert_eq!(out.tool_calls[0].arguments, "{}");
    assert_eq!(out.content.as_deref(), Some("I'll check the time."));
}

#[test]
fn vllm_pr_47190_missing_arg_key_opener() {
    let text = "<tool_call>get_weathercity</arg_key><arg_value>Paris</arg_value><arg_key>days</arg_key><arg_value>2</arg_value></tool_call>";
    let out = parse_tool_calls(Glm47, text, &tools());
    assert_eq!(names(&out), ["get_weather"]);
    assert_eq!(args(&out), [json!({"city": "Paris", "days": 2})]);
    // recovery is limited to requested tool names
    let out = parse_tool_calls(Glm47, text, &[]);
    assert_eq!(names(&out), ["get_weathercity"]);
    assert_eq!(args(&out), [json!({"days": 2})]);
}

#[test]
fn vllm_30999_32829_long_string_argument_streams_incrementally() {
    let code: String = (0..200)
        .map(|i| format!("    line_{i} = \"value {i}\"  # ünïcode\n"))
        .collect();
    assert!(code.len() > 4000);
    let text = format!(
        "<tool_call>write_file\n<arg_key>path</arg_key>\n<arg_value>/tmp/x.py</arg_value>\n<arg_key>content</arg_key>\n<arg_value>{code}</arg_value>\n</tool_call>"
    );
    // token-sized deltas
    let mut rng = StdRng::seed_from_u64(32829);
    let pieces = split_chars(&text, &mut rng, 6);
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let (out, deltas) = stream(Glm45, &refs, &tools());
    let fragments = deltas
        .iter()
        .filter(|d| matches!(d, StreamDelta::ToolCallArgs { .. }))
        .count();
    assert!(fragments >= 10, "only {fragments} argument fragments");
    // fragments arrive while the value is still open (before </arg_value> was seen)
    let mut s = ToolCallStream::new(Glm45, &tools());
    let half = text.len() / 2;
    let mut cut = half;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let early: String = s
        .push(&text[..cut])
        .into_iter()
        .filter_map(|d| match d {
            StreamDelta::ToolCallArgs { fragment, .. } => Some(fragment),
            _ => None,
        })
        .collect();
    assert!(
        early.len() > 1000,
        "string value not streamed early: {}",
        early.len()
    );
    assert_eq!(args(&out), [json!({"path": "/tmp/x.py", "content": code})]);
}

#[test]
fn vllm_34449_25993_mtp_several_tags_per_delta() {
    let text = "Checking.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>\n<tool_call>get_time\n</tool_call>";
    let whole = parse_tool_calls(Glm45, text, &tools());
    assert_eq!(
        args(&whole),
        [json!({"city": "Paris", "days": 3}), json!({})]
    );
    // deltas of several tags at once, as with MTP / stream_interval > 1
    let cuts = [
        "Checking.\n<tool_call>get_weather\n<arg_key>city</arg_key>",
        "\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3",
        "</arg_value>\n</tool_call>\n<tool_call>get_time\n</tool_call>",
    ];
    assert_eq!(cuts.concat(), text);
    let (got, _) = stream(Glm45, &cuts, &tools());
    assert!(same_modulo_ids(&got, &whole), "{got:?}");
    let mut rng = StdRng::seed_from_u64(34449);
    check_split_invariance(Glm45, text, &tools(), &mut rng);
}

#[test]
fn vllm_39574_tools_without_function_wrapper() {
    // Responses-API style tool definitions (no "function" object) and junk entries
    let tools = vec![
        json!({"type": "function", "name": "set_zip", "parameters": {"type": "object", "properties": {"zip": {"type": "string"}}}}),
        json!("not a tool"),
        json!({"type": "function"}),
        json!({"type": "function", "function": {"name": "x", "parameters": null}}),
    ];
    let out = parse_tool_calls(
        Glm47,
        "<tool_call>set_zip<arg_key>zip</arg_key><arg_value>10001</arg_value></tool_call>",
        &tools,
    );
    assert_eq!(args(&out), [json!({"zip": "10001"})]);
}

#[test]
fn vllm_pr_30920_unicode_not_escaped() {
    let text = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京 😀</arg_value>\n<arg_key>extra</arg_key>\n<arg_value>{\"名\": \"ü\"}</arg_value>\n</tool_call>";
    let out = parse_tool_calls(Glm45, text, &tools());
    assert_eq!(
        out.tool_calls[0].arguments,
        r#"{"city": "北京 😀", "extra": {"名": "ü"}}"#
    );
}

#[test]
fn mlx_lm_1612_1756_name_trailing_newline_and_string_zip() {
    let text =
        "<tool_call>set_zip\n<arg_key>zip</arg_key>\n<arg_value>10001</arg_value>\n</tool_call>";
    for kind in [Glm45, Glm47] {
        let out = parse_tool_calls(kind, text, &tools());
        assert_eq!(names(&out), ["set_zip"], "{kind:?}");
        assert_eq!(args(&out), [json!({"zip": "10001"})], "{kind:?}");
    }
}

#[test]
fn rtp_llm_525_glm47_call_without_args_among_text() {
    let text = "Fetching all functions.\n<tool_call>get_all_func</tool_call>";
    let out = parse_tool_calls(Glm47, text, &tools());
    assert_eq!(names(&out), ["get_all_func"]);
    assert_eq!(out.content.as_deref(), Some("Fetching all functions."));
}

#[test]
fn ik_llama_753_spaces_between_tags() {
    let text = "Let me search: <tool_call>ls <arg_key>dirPath</arg_key> <arg_value>backend</arg_value> </tool_call>";
    for kind in [Glm45, Glm47] {
        let out = parse_tool_calls(kind, text, &tools());
        assert_eq!(names(&out), ["ls"], "{kind:?}");
        assert_eq!(args(&out), [json!({"dirPath": "backend"})]);
        assert_eq!(out.content.as_deref(), Some("Let me search:"));
    }
}

// ---- properties ------------------------------------------------------------------------------

const SAMPLES: &[&str] = &[
    "",
    "plain text with <angle> brackets & no calls",
    "text ending in a partial tag <tool_",
    "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
    "a\n<tool_call>get_weather<arg_key>city</arg_key><arg_value>x</arg_value</arg_value></tool_call>b",
    "<tool_call>write_file<arg_key>content</arg_key><arg_value>if a < b and c </ d:\n\t\"q\" \\ é😀</arg_value></tool_call>",
    "<tool_call>get_weather<arg_key>days</arg_key><arg_value>True</arg_value><arg_key>unit</arg_key><arg_value>c</arg_value></tool_call>",
    "<tool_call> \n </tool_call>",
    "<tool_call><tool_call>get_time</tool_call>",
    "<tool_call>get_time</tool_call></tool_call>",
    "<tool_call>get_weather<arg_key>city</arg_key>junk<arg_value>x</arg_value></tool_call>",
    "<tool_call>get_weather<arg_key>city<arg_value>Oslo</arg_value></tool_call>",
    "<tool_call>get_weather\n<arg_value>orphan</arg_value><arg_key>city</arg_key><arg_value>Y</arg_value></tool_call>",
    "<tool_call>get_weather<arg_key>city</arg_key>\\",
    "<tool_call>get_weather<arg_key>city</arg_key><arg_value>unterminated value",
    "  leading ws <tool_call>get_time</tool_call>   trailing ws  ",
    "<tool_call>get_weathercity</arg_key><arg_value>Paris</arg_value></tool_call>",
    "<tool_call>set_zip<arg_key>note</arg_key><arg_value>None</arg_value><arg_key>count</arg_key><arg_value>[1]</arg_value></tool_call>",
    "<tool_call>x\\n</tool_call>",
    "<tool_call>é</tool_call>ü<tool_call>\u{a0}name\u{a0}<arg_key>\u{2028}</arg_key><arg_value>\u{0}</arg_value></tool_call>",
];

#[test]
fn streaming_matches_non_streaming_on_samples() {
    let mut rng = StdRng::seed_from_u64(1);
    for kind in [Glm45, Glm47] {
        for text in SAMPLES {
            check_split_invariance(kind, text, &tools(), &mut rng);
        }
    }
}

/// Random texts made of structural tags, partial tags, names, keys, values and noise.
fn random_text(rng: &mut StdRng) -> String {
    const FRAGMENTS: &[&str] = &[
        "<tool_call>",
        "</tool_call>",
        "<arg_key>",
        "</arg_key>",
        "<arg_value>",
        "</arg_value>",
        "<tool_",
        "</arg",
        "<",
        ">",
        "get_weather",
        "get_time",
        "set_zip",
        "write_file",
        "city",
        "days",
        "zip",
        "note",
        "count",
        "content",
        "Paris",
        "3",
        " 42 ",
        "true",
        "True",
        "None",
        "null",
        "[1, 2]",
        "{\"a\": {\"b\": 1.5}}",
        "(1,)",
        "'q'",
        "x<y",
        "é😀",
        "\n",
        "\\n",
        " ",
        "\t",
        "Hello",
        "think",
        "</think>",
        "\"",
        "\\",
        "1e400",
        "-0",
        "12345678901234567890123",
    ];
    let n = rng.gen_range(0..28);
    (0..n)
        .map(|_| FRAGMENTS[rng.gen_range(0..FRAGMENTS.len())])
        .collect()
}

/// Random well-formed calls (exercises typing and multi-call streaming).
fn random_calls(rng: &mut StdRng, kind: ToolParserKind) -> String {
    let sep = if kind == Glm45 { "\n" } else { "" };
    let mut s = String::new();
    if rng.gen_bool(0.5) {
        s.push_str("Some preface text. ");
    }
    for _ in 0..rng.gen_range(1..4) {
        let (name, keys): (&str, &[&str]) = match rng.gen_range(0..4) {
            0 => ("get_weather", &["city", "days", "unit"]),
            1 => ("set_zip", &["zip", "note", "count"]),
            2 => ("write_file", &["path", "content"]),
            _ => ("get_time", &[]),
        };
        s.push_str(&format!("{sep}<tool_call>{name}{sep}"));
        for k in keys.iter() {
            if !rng.gen_bool(0.7) {
                continue;
            }
            let v = [
                "Oslo",
                "12",
                " 7 ",
                "null",
                "multi\nline \"text\"",
                "ünï",
                "{\"x\": [true]}",
                "",
            ][rng.gen_range(0..8)];
            s.push_str(&format!(
                "<arg_key>{k}</arg_key>{sep}<arg_value>{v}</arg_value>{sep}"
            ));
        }
        s.push_str("</tool_call>");
    }
    if rng.gen_bool(0.2) {
        s.truncate(rng.gen_range(0..=s.len()));
        while !s.is_char_boundary(s.len()) {
            s.pop();
        }
    }
    s
}

#[test]
fn streaming_matches_non_streaming_on_random_texts() {
    let mut rng = StdRng::seed_from_u64(0x61a5);
    let (mut with_calls, mut abandoned, mut typed) = (0, 0, 0);
    for i in 0..600 {
        let kind = if i % 2 == 0 { Glm45 } else { Glm47 };
        let text = if i % 3 == 0 {
            random_calls(&mut rng, kind)
        } else {
            random_text(&mut rng)
        };
        check_split_invariance(kind, &text, &tools(), &mut rng);
        let out = parse_tool_calls(kind, &text, &tools());
        with_calls += usize::from(!out.tool_calls.is_empty());
        typed += usize::from(out.tool_calls.iter().any(|c| c.arguments.len() > 2));
        let mut s = ToolCallStream::new(kind, &tools());
        s.push(&text);
        s.finish();
        abandoned += usize::from(s.abandoned_call().is_some());
    }
    // the generator must keep exercising the interesting paths
    assert!(with_calls > 150, "{with_calls} texts with calls");
    assert!(typed > 100, "{typed} texts with arguments");
    assert!(
        abandoned > 30,
        "{abandoned} texts with an unterminated call"
    );
}

#[test]
fn arbitrary_character_soup_never_panics_and_is_split_invariant() {
    let alphabet: Vec<char> = "<>/_tolcagkeyvrum\\n \n\té😀\u{a0}\u{0}".chars().collect();
    let mut rng = StdRng::seed_from_u64(0xfeed);
    for i in 0..400 {
        let len = rng.gen_range(0..60);
        let text: String = (0..len)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect();
        let kind = if i % 2 == 0 { Glm45 } else { Glm47 };
        check_split_invariance(kind, &text, &tools(), &mut rng);
    }
}

#[test]
fn content_is_a_subsequence_of_the_input() {
    // nothing is invented: content characters all come from the text, in order
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..300 {
        let text = random_text(&mut rng);
        for kind in [Glm45, Glm47] {
            let out = parse_tool_calls(kind, &text, &tools());
            let content = out.content.unwrap_or_default();
            let mut it = text.chars();
            assert!(
                content.chars().all(|c| it.any(|t| t == c)),
                "content {content:?} not drawn from {text:?}"
            );
        }
    }
}
