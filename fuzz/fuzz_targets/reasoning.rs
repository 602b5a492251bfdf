//! Reasoning parser (`glm45`): the split into reasoning and content does not depend on how the
//! output was chunked, `split` equals streaming, nothing is invented (content is a suffix of the
//! output, reasoning a substring), and the reasoning-tool chain never panics.
#![no_main]

use chat::{ReasoningParser, ToolCallStream, ToolParserKind};
use glmfleet_fuzz::{header, split_str, text_of};
use libfuzzer_sys::fuzz_target;

fn stream(opens: bool, enabled: bool, pieces: &[&str]) -> (String, String, bool) {
    let mut p = ReasoningParser::new(opens, enabled);
    let (mut r, mut c) = (String::new(), String::new());
    for piece in pieces {
        let (dr, dc) = p.push(piece);
        r.push_str(&dr);
        c.push_str(&dc);
    }
    let (dr, dc) = p.finish();
    r.push_str(&dr);
    c.push_str(&dc);
    assert_eq!(p.push("more </think>"), (String::new(), String::new()));
    (r, c, p.reasoning_ended())
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, seed, rest)) = header(data) else {
        return;
    };
    let (opens, enabled) = (flags & 1 != 0, flags & 2 != 0);
    let text = text_of(rest);
    let whole = stream(opens, enabled, &[&text]);
    let a = stream(
        opens,
        enabled,
        &split_str(&text, u64::from(seed), 1 + (flags as usize >> 2)),
    );
    assert_eq!(whole, a, "split changed the reasoning split of {text:?}");
    let (r, c, _) = &whole;
    let split = ReasoningParser::new(opens, enabled).split(&text);
    assert_eq!(split.0.as_deref(), (!r.is_empty()).then_some(r.as_str()));
    assert_eq!(split.1.as_deref(), (!c.is_empty()).then_some(c.as_str()));
    assert!(
        text.ends_with(c.as_str()),
        "content {c:?} is not a suffix of {text:?}"
    );
    assert!(
        text.contains(r.as_str()),
        "reasoning {r:?} is not in {text:?}"
    );
    assert!(r.len() + c.len() <= text.len());
    if !opens && !enabled {
        assert_eq!(c, &text, "thinking disabled: everything is content");
    }

    // The server's chain: content deltas go on to the tool parser.
    let mut p = ReasoningParser::new(opens, enabled);
    let mut tools = ToolCallStream::new(ToolParserKind::Glm47, &[]);
    for piece in split_str(&text, u64::from(seed) ^ 0x55, 5) {
        let (_, content) = p.push(piece);
        tools.push(&content);
    }
    let (_, content) = p.finish();
    tools.push(&content);
    tools.finish();
});
