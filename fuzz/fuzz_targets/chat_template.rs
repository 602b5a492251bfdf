//! Chat-template rendering (built-in GLM45 and GLM47 templates) of arbitrary message lists.
//!
//! Input: a flags byte (bit 0 GLM47, bit 1 `continue_final_message`, bit 2
//! `add_generation_prompt`, bit 3 JSON mode), then either a JSON object `{"messages", "tools",
//! "chat_template_kwargs"}` (JSON mode: the seeds are real conversations) or bytes decoded by
//! `arbitrary` into structured messages (every role, content shape, tool-call argument shape,
//! reasoning). Any outcome is a rendered prompt or a `TemplateError`; never a panic, and a
//! rendered prompt (not a continuation) starts with the GLM prefix.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use chat::{builtin, ChatTemplate};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

#[derive(Arbitrary, Debug)]
enum Role {
    System,
    User,
    Assistant,
    Tool,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Part {
    Text(String),
    Image(String),
    Odd(u8),
}

#[derive(Arbitrary, Debug)]
enum Content {
    Missing,
    Null,
    Text(String),
    Parts(Vec<Part>),
    Number(i64),
}

#[derive(Arbitrary, Debug)]
enum Leaf {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<String>),
}

#[derive(Arbitrary, Debug)]
enum Args {
    Missing,
    Object(Vec<(String, Leaf)>),
    JsonText(String),
    Number(i32),
}

#[derive(Arbitrary, Debug)]
struct Call {
    name: Option<String>,
    bare: bool,
    args: Args,
}

#[derive(Arbitrary, Debug)]
struct Message {
    role: Role,
    content: Content,
    reasoning: Option<String>,
    tool_calls: Option<Vec<Call>>,
}

#[derive(Arbitrary, Debug)]
enum Messages {
    Structured(Vec<Message>),
    Raw(String),
}

/// A tool: name and `(property, JSON schema type)` pairs.
type ToolDef = (String, Vec<(String, String)>);

#[derive(Arbitrary, Debug)]
struct Input {
    messages: Messages,
    tools: Option<Vec<ToolDef>>,
    raw_tools: Option<String>,
    enable_thinking: Option<bool>,
    clear_thinking: Option<bool>,
    raw_kwargs: Option<String>,
}

fn leaf(l: &Leaf) -> Value {
    match l {
        Leaf::Str(s) => json!(s),
        Leaf::Int(i) => json!(i),
        Leaf::Float(f) => json!(f),
        Leaf::Bool(b) => json!(b),
        Leaf::Null => Value::Null,
        Leaf::List(v) => json!(v),
    }
}

fn message(m: &Message) -> Value {
    let mut o = Map::new();
    let role = match &m.role {
        Role::System => "system".to_string(),
        Role::User => "user".to_string(),
        Role::Assistant => "assistant".to_string(),
        Role::Tool => "tool".to_string(),
        Role::Other(s) => s.clone(),
    };
    o.insert("role".into(), json!(role));
    match &m.content {
        Content::Missing => {}
        Content::Null => {
            o.insert("content".into(), Value::Null);
        }
        Content::Text(s) => {
            o.insert("content".into(), json!(s));
        }
        Content::Parts(parts) => {
            let parts: Vec<Value> = parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => json!({"type": "text", "text": t}),
                    Part::Image(u) => json!({"type": "image_url", "image_url": {"url": u}}),
                    Part::Odd(n) => json!(n),
                })
                .collect();
            o.insert("content".into(), Value::Array(parts));
        }
        Content::Number(n) => {
            o.insert("content".into(), json!(n));
        }
    }
    if let Some(r) = &m.reasoning {
        o.insert("reasoning_content".into(), json!(r));
    }
    if let Some(calls) = &m.tool_calls {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let mut f = Map::new();
                if let Some(n) = &c.name {
                    f.insert("name".into(), json!(n));
                }
                match &c.args {
                    Args::Missing => {}
                    Args::Object(kv) => {
                        let obj: Map<String, Value> =
                            kv.iter().map(|(k, v)| (k.clone(), leaf(v))).collect();
                        f.insert("arguments".into(), Value::Object(obj));
                    }
                    Args::JsonText(t) => {
                        f.insert("arguments".into(), json!(t));
                    }
                    Args::Number(n) => {
                        f.insert("arguments".into(), json!(n));
                    }
                }
                if c.bare {
                    Value::Object(f)
                } else {
                    json!({"id": "call_1", "type": "function", "function": f})
                }
            })
            .collect();
        o.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(o)
}

fn templates() -> &'static (ChatTemplate, ChatTemplate) {
    static T: OnceLock<(ChatTemplate, ChatTemplate)> = OnceLock::new();
    T.get_or_init(|| {
        (
            ChatTemplate::new(builtin::GLM45).expect("GLM45 compiles"),
            ChatTemplate::new(builtin::GLM47).expect("GLM47 compiles"),
        )
    })
}

/// `(messages, tools, kwargs)` to render.
type Parsed = (Value, Option<Value>, Map<String, Value>);

/// `(messages, tools, kwargs)` from the structured form.
fn structured(input: &Input) -> Option<Parsed> {
    let messages = match &input.messages {
        Messages::Structured(list) => Value::Array(list.iter().map(message).collect()),
        Messages::Raw(text) => serde_json::from_str(text).ok()?,
    };
    let tools = match (&input.raw_tools, &input.tools) {
        (Some(raw), _) => serde_json::from_str::<Value>(raw).ok(),
        (None, Some(defs)) => Some(Value::Array(
            defs.iter()
                .map(|(name, props)| {
                    let props: Map<String, Value> = props
                        .iter()
                        .map(|(k, t)| (k.clone(), json!({"type": t})))
                        .collect();
                    json!({"type": "function", "function": {"name": name, "description": "d",
                        "parameters": {"type": "object", "properties": props}}})
                })
                .collect(),
        )),
        (None, None) => None,
    };
    let mut kwargs = input
        .raw_kwargs
        .as_deref()
        .and_then(|raw| serde_json::from_str::<Map<String, Value>>(raw).ok())
        .unwrap_or_default();
    if let Some(t) = input.enable_thinking {
        kwargs.insert("enable_thinking".into(), json!(t));
    }
    if let Some(c) = input.clear_thinking {
        kwargs.insert("clear_thinking".into(), json!(c));
    }
    Some((messages, tools, kwargs))
}

/// `(messages, tools, kwargs)` from a JSON request object.
fn from_json(bytes: &[u8]) -> Option<Parsed> {
    let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(bytes) else {
        return None;
    };
    let messages = req.remove("messages").unwrap_or(Value::Null);
    let tools = req.remove("tools");
    let kwargs = match req.remove("chat_template_kwargs") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Some((messages, tools, kwargs))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (glm45, glm47) = templates();
    let template = if flags & 1 != 0 { glm47 } else { glm45 };
    let continuation = flags & 2 != 0;
    let add_generation_prompt = flags & 4 != 0;
    let parsed = if flags & 8 != 0 {
        from_json(rest)
    } else {
        Input::arbitrary_take_rest(Unstructured::new(rest))
            .ok()
            .and_then(|input| structured(&input))
    };
    let Some((messages, tools, kwargs)) = parsed else {
        return;
    };
    let result = if continuation {
        template.render_continuation(&messages, tools.as_ref(), &kwargs)
    } else {
        template.render(&messages, tools.as_ref(), add_generation_prompt, &kwargs)
    };
    if let Ok(prompt) = result {
        // (a continuation is cut at the final message's text, wherever the template put it)
        assert!(
            continuation || prompt.starts_with("[gMASK]<sop>"),
            "prompt without the GLM prefix: {prompt:?}"
        );
        let _ = chat::prompt_opens_thinking(&prompt);
    }
});
