//! The tool-call property shared by the `tool_call_glm45` and `tool_call_glm47` targets.
//!
//! For one text: streaming with two different arbitrary splittings and with a single push must
//! give the same event sequence (content runs, call starts, argument text per call), the
//! non-streaming parser must agree with it, and every completed call must have a non-empty name
//! and a JSON-object `arguments`.

use chat::{parse_tool_calls, StreamDelta, ToolCallStream, ToolParserKind};
use serde_json::Value;

use crate::{header, split_str, tools_and_text};

/// A stream's output with chunking (and random ids) taken out.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Content(String),
    Start { index: usize, name: String },
    Args { index: usize, text: String },
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    completed: usize,
    abandoned: Option<usize>,
}

fn normalise(deltas: Vec<StreamDelta>, events: &mut Vec<Event>) {
    for d in deltas {
        match d {
            StreamDelta::Content(s) => match events.last_mut() {
                Some(Event::Content(c)) => c.push_str(&s),
                _ if s.is_empty() => {}
                _ => events.push(Event::Content(s)),
            },
            StreamDelta::ToolCallStart { index, name, id } => {
                assert!(
                    id.starts_with("call_") && id.len() == 29,
                    "bad call id {id:?}"
                );
                events.push(Event::Start { index, name });
            }
            StreamDelta::ToolCallArgs { index, fragment } => match events.last_mut() {
                Some(Event::Args { index: i, text }) if *i == index => text.push_str(&fragment),
                _ => events.push(Event::Args {
                    index,
                    text: fragment,
                }),
            },
        }
    }
}

fn stream(kind: ToolParserKind, tools: &[Value], pieces: &[&str]) -> Outcome {
    let mut s = ToolCallStream::new(kind, tools);
    let mut events = Vec::new();
    for p in pieces {
        normalise(s.push(p), &mut events);
    }
    normalise(s.finish(), &mut events);
    // pushing after finish is ignored
    assert!(s.push("<tool_call>x</tool_call>").is_empty());
    Outcome {
        events,
        completed: s.completed_calls(),
        abandoned: s.abandoned_call(),
    }
}

/// Runs the property on one fuzz input.
pub fn check(kind: ToolParserKind, data: &[u8]) {
    let Some((flags, seed, rest)) = header(data) else {
        return;
    };
    let (tools, text) = tools_and_text(flags, rest);
    let whole = stream(kind, &tools, &[&text]);
    let a = stream(
        kind,
        &tools,
        &split_str(&text, u64::from(seed), 1 + (flags as usize >> 2 & 0x1f)),
    );
    assert_eq!(whole, a, "split A changed the output of {text:?}");
    let b = stream(kind, &tools, &split_str(&text, u64::from(seed) + 1000, 3));
    assert_eq!(whole, b, "split B changed the output of {text:?}");

    // Non-streaming agrees with the stream.
    let parsed = parse_tool_calls(kind, &text, &tools);
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for e in &whole.events {
        match e {
            Event::Content(c) => content.push_str(c),
            Event::Start { index, name } => {
                assert_eq!(*index, calls.len(), "call indices must be consecutive");
                calls.push((name.clone(), String::new()));
            }
            Event::Args { index, text } => calls[*index].1.push_str(text),
        }
    }
    if let Some(i) = whole.abandoned {
        assert_eq!(i + 1, calls.len(), "only the last call can be abandoned");
        calls.truncate(i);
    }
    assert_eq!(
        parsed.content.as_deref(),
        (!content.is_empty()).then_some(content.as_str())
    );
    assert_eq!(parsed.tool_calls.len(), calls.len());
    assert_eq!(whole.completed, calls.len());
    for (call, (name, args)) in parsed.tool_calls.iter().zip(&calls) {
        assert_eq!(&call.name, name);
        assert_eq!(&call.arguments, args);
        assert!(!call.name.trim().is_empty(), "empty tool name");
        match serde_json::from_str::<Value>(&call.arguments) {
            Ok(Value::Object(_)) => {}
            other => panic!(
                "arguments {:?} are not a JSON object: {other:?}",
                call.arguments
            ),
        }
    }
}
