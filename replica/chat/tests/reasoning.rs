//! Reasoning-parser tests: the three prompt/thinking modes, the reasoning bugs of the GLM
//! digest (glm.md §7.5), random-split invariance, and the reasoning → tool-parser chain.

mod common;

use chat::{
    builtin, parse_tool_calls, prompt_opens_thinking, ChatTemplate, ReasoningParser, StreamDelta,
    ToolCallStream, ToolParserKind,
};
use common::split_chars;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

fn s(x: &str) -> Option<String> {
    Some(x.to_string())
}

fn stream(p: &ReasoningParser, pieces: &[String]) -> (Option<String>, Option<String>) {
    let mut p = p.clone();
    let (mut r, mut c) = (String::new(), String::new());
    for piece in pieces {
        let (dr, dc) = p.push(piece);
        r.push_str(&dr);
        c.push_str(&dc);
    }
    let (dr, dc) = p.finish();
    r.push_str(&dr);
    c.push_str(&dc);
    ((!r.is_empty()).then_some(r), (!c.is_empty()).then_some(c))
}

fn render(template: &str, messages: Value, kwargs: Value) -> String {
    let t = ChatTemplate::new(template).unwrap();
    let kw: Map<String, Value> = kwargs.as_object().cloned().unwrap_or_default();
    t.render(&messages, None, true, &kw).unwrap()
}

// ---- regression tests: glm.md §7.5 -----------------------------------------------------------

#[test]
fn vllm_pr_25355_multi_turn_reasoning_after_first_turn() {
    // the prompt carries past `<think></think>` blocks; they must not make the parser believe
    // reasoning has already ended
    let prompt = render(
        builtin::GLM45,
        json!([{"role": "user", "content": "Q1"},
               {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
               {"role": "user", "content": "Q2"}]),
        json!({}),
    );
    assert!(prompt.contains("<think></think>"));
    let p = ReasoningParser::new(prompt_opens_thinking(&prompt), true);
    assert_eq!(
        p.split("\n<think>second turn thoughts</think>\nA2"),
        (s("second turn thoughts"), s("\nA2"))
    );
    let prompt47 = render(
        builtin::GLM47,
        json!([{"role": "user", "content": "Q1"},
               {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
               {"role": "user", "content": "Q2"}]),
        json!({}),
    );
    assert!(prompt_opens_thinking(&prompt47));
    let p = ReasoningParser::new(true, true);
    assert_eq!(p.split("thoughts</think>A2"), (s("thoughts"), s("A2")));
}

#[test]
fn vllm_27703_turn3_tool_loop_think_not_in_content() {
    let out =
        "\n<think>Third turn: call the tool again.</think>\n<tool_call>get_time\n</tool_call>";
    let (r, c) = ReasoningParser::new(false, true).split(out);
    assert_eq!(r.as_deref(), Some("Third turn: call the tool again."));
    let parsed = parse_tool_calls(ToolParserKind::Glm45, c.as_deref().unwrap(), &[]);
    assert_eq!(parsed.content, None, "no <think> text leaks into content");
    assert_eq!(parsed.tool_calls[0].name, "get_time");
}

#[test]
fn vllm_31319_33348_glm47_output_without_think_opener() {
    let prompt = render(
        builtin::GLM47,
        json!([{"role": "user", "content": "Hi"}]),
        json!({}),
    );
    assert!(prompt.ends_with("<|assistant|><think>"));
    let p = ReasoningParser::new(prompt_opens_thinking(&prompt), true);
    assert_eq!(
        p.split("The user greets me.</think>Hello!"),
        (s("The user greets me."), s("Hello!"))
    );
}

#[test]
fn vllm_mlx_725_glm47_streaming_keeps_thinking_out_of_content() {
    let p = ReasoningParser::new(true, true);
    let text = "The user greets me.</think>Hello!";
    let pieces: Vec<String> = text.chars().map(String::from).collect();
    assert_eq!(stream(&p, &pieces), (s("The user greets me."), s("Hello!")));
}

#[test]
fn sglang_37645_skipped_thinking_is_content_for_glm45() {
    // GLM-4.5/4.6: the model writes <think> itself; an answer without it is content
    let p = ReasoningParser::new(false, true);
    assert_eq!(p.split("Direct answer."), (None, s("Direct answer.")));
    // GLM-4.7 (prompt opened the block): R1 semantics, documented — all reasoning
    let p = ReasoningParser::new(true, true);
    assert_eq!(p.split("Direct answer."), (s("Direct answer."), None));
}

#[test]
fn tokenspeed_1499_reasoning_end_is_observable_for_constraints() {
    let mut p = ReasoningParser::new(true, true);
    p.push("thinking about the schema");
    assert!(
        !p.reasoning_ended(),
        "constraints must not start inside reasoning"
    );
    p.push("</think>");
    assert!(p.reasoning_ended());
    let mut p = ReasoningParser::new(false, false);
    assert!(
        p.reasoning_ended(),
        "thinking disabled: constraints apply from token 0"
    );
    assert_eq!(
        p.push("{\"a\": 1}"),
        (String::new(), "{\"a\": 1}".to_string())
    );
}

#[test]
fn enable_thinking_false_for_both_families() {
    let p45 = render(
        builtin::GLM45,
        json!([{"role": "user", "content": "Hi"}]),
        json!({"enable_thinking": false}),
    );
    let p47 = render(
        builtin::GLM47,
        json!([{"role": "user", "content": "Hi"}]),
        json!({"enable_thinking": false}),
    );
    for prompt in [p45, p47] {
        assert!(!prompt_opens_thinking(&prompt), "{prompt:?}");
        let p = ReasoningParser::new(false, false);
        assert_eq!(p.split("\nHello"), (None, s("\nHello")));
    }
}

// ---- properties ------------------------------------------------------------------------------

const OUTPUTS: &[&str] = &[
    "",
    "\n<think>a</think>\nb",
    "<think>",
    "  <thi",
    "<think></think>",
    "no tags at all",
    "reasoning only, truncated",
    "r</think>c</think>d<think>e",
    "\n\n<think>x</thin",
    "pre<think>x</think>y",
    "plan<tool_call>f\n</tool_call>",
    "<think>é😀 ünï</think>\u{a0}ok",
    "</think>",
    "</thi",
    "<tool_",
];

fn check(p: &ReasoningParser, text: &str, rng: &mut StdRng) {
    let whole = p.split(text);
    let one: Vec<String> = text.chars().map(String::from).collect();
    for pieces in [one, split_chars(text, rng, 3), split_chars(text, rng, 12)] {
        assert_eq!(stream(p, &pieces), whole, "text {text:?} pieces {pieces:?}");
    }
}

#[test]
fn streaming_matches_split_for_all_modes() {
    let mut rng = StdRng::seed_from_u64(5);
    let modes = [(true, true), (true, false), (false, true), (false, false)];
    for (open, enabled) in modes {
        let p = ReasoningParser::new(open, enabled);
        for text in OUTPUTS {
            check(&p, text, &mut rng);
        }
        for _ in 0..300 {
            const FRAGS: &[&str] = &[
                "<think>",
                "</think>",
                "<tool_call>",
                "<thi",
                "</th",
                "<",
                "\n",
                " ",
                "a",
                "é",
                "word",
                "</tool_call>",
            ];
            let n = rng.gen_range(0..14);
            let text: String = (0..n)
                .map(|_| FRAGS[rng.gen_range(0..FRAGS.len())])
                .collect();
            check(&p, &text, &mut rng);
        }
    }
}

#[test]
fn reasoning_then_tool_calls_chain_streaming_equals_non_streaming() {
    let tools = vec![
        json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
    ];
    let cases = [
        (ToolParserKind::Glm45, false, "\n<think>I will call it.</think>\nSure.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>"),
        (ToolParserKind::Glm47, true, "I will call it.</think>Sure.<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>"),
        (ToolParserKind::Glm47, true, "forgot to close<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>"),
    ];
    let mut rng = StdRng::seed_from_u64(77);
    for (kind, open, text) in cases {
        let rp = ReasoningParser::new(open, true);
        let (reasoning, content) = rp.split(text);
        let whole = parse_tool_calls(kind, content.as_deref().unwrap_or(""), &tools);
        assert_eq!(whole.tool_calls.len(), 1, "{text:?}");
        for max in [1, 4, 16] {
            let mut r = rp.clone();
            let mut t = ToolCallStream::new(kind, &tools);
            let (mut rs, mut cs, mut args) = (String::new(), String::new(), String::new());
            let mut name = None;
            let mut absorb = |ds: Vec<StreamDelta>, cs: &mut String| {
                for d in ds {
                    match d {
                        StreamDelta::Content(c) => cs.push_str(&c),
                        StreamDelta::ToolCallStart { name: n, .. } => name = Some(n),
                        StreamDelta::ToolCallArgs { fragment, .. } => args.push_str(&fragment),
                    }
                }
            };
            for piece in split_chars(text, &mut rng, max) {
                let (dr, dc) = r.push(&piece);
                rs.push_str(&dr);
                absorb(t.push(&dc), &mut cs);
            }
            let (dr, dc) = r.finish();
            rs.push_str(&dr);
            absorb(t.push(&dc), &mut cs);
            absorb(t.finish(), &mut cs);
            assert_eq!(Some(rs).filter(|x| !x.is_empty()), reasoning);
            assert_eq!(Some(cs).filter(|x| !x.is_empty()), whole.content);
            assert_eq!(name.as_deref(), Some(whole.tool_calls[0].name.as_str()));
            assert_eq!(args, whole.tool_calls[0].arguments);
        }
    }
}
