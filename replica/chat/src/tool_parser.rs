//! GLM tool-call parsing (`glm45` and `glm47`), non-streaming and streaming.
//!
//! GLM models write tool calls as XML-ish text:
//! `<tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>\n</tool_call>` (GLM-4.5/4.6)
//! or the same without newlines (GLM-4.7). This module turns such output into OpenAI
//! `tool_calls` (`arguments` as JSON text) plus the remaining `content`.
//!
//! # Design
//! One scanner serves both modes: it consumes the accumulated text only as far as every possible
//! continuation agrees, and keeps undecidable tails (a partial `<tool_call>` tag, a partial
//! `</arg_value>`, whitespace that may turn out to precede a call) for the next delta. The
//! non-streaming parser is "push everything, then finish". Output therefore does not depend on
//! how the text was split into deltas (several tags per delta — MTP, `stream_interval > 1` —
//! included); a property test checks this over random splits. Every state resumes its search
//! where the previous delta stopped, so streaming is linear in the output length.
//!
//! # Semantics (vLLM `glm45`/`glm47` plus the fixes from the GLM bug digest)
//! * A call is `<tool_call>` … `</tool_call>`; a new `<tool_call>` outside a value also closes
//!   the open call. A call still open when the output ends is *not* a call: its raw text
//!   (`<tool_call>` included) becomes content. In streaming its start and arguments may already
//!   have been sent; [`ToolCallStream::abandoned_call`] reports it.
//! * Name: leading whitespace skipped; ends at the first tag (`<arg_key>`, `</tool_call>`, …)
//!   and, for `glm45`, also at the first newline. The name is trimmed (also of a literal `\n`).
//!   Zero-argument calls `<tool_call>name</tool_call>` are accepted by both parsers (vLLM #32436,
//!   #44326, rtp-llm #525). An empty name makes the `<tool_call>` tag plain content.
//! * `NAMEKEY</arg_key>` (missing `<arg_key>`, vLLM PR #47190): when a requested tool's name is
//!   a prefix of the text before `</arg_key>`, the rest is taken as the first key.
//! * Pairs: `<arg_key>K</arg_key>`, then any whitespace or literal `\n`, then
//!   `<arg_value>V</arg_value>`. K is trimmed. A key followed by anything else is dropped.
//!   `<arg_value>` directly after an unterminated key also ends the key. A value ends at
//!   `</arg_value>` or `</tool_call>`. A repeated key keeps its first value (the streamed JSON
//!   cannot be retracted).
//! * Typing from the tool's JSON schema (`function.parameters.properties[K]`, see
//!   [`ArgType`]): string-only → the raw value, untrimmed; no schema / non-string →
//!   trimmed, then `json.loads`, then Python literal (`True`, `None`, `'x'`, tuples…), then the
//!   trimmed text; string-or-other (`["string","null"]`, `anyOf`) → a decoded value whose type the
//!   schema allows, else the raw string.
//! * `arguments` is `json.dumps(args, ensure_ascii=False)` (Unicode unescaped, `", "`/`": "`).
//! * Content: all text outside calls, except whitespace directly before a call or after one;
//!   `None` when empty.
//!
//! # Streaming output
//! [`StreamDelta::ToolCallStart`] once the name is complete (with a fresh `call_…` id), then
//! [`StreamDelta::ToolCallArgs`] fragments whose concatenation is exactly the non-streaming
//! `arguments`: `{` at once, each string-typed value incrementally as it is generated (issue
//! #32829), other values when complete, `}` when the call closes.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::Value;

use crate::pyjson::{self, PyValue};

const TC_OPEN: &str = "<tool_call>";
const TC_CLOSE: &str = "</tool_call>";
const AK_OPEN: &str = "<arg_key>";
const AK_CLOSE: &str = "</arg_key>";
const AV_OPEN: &str = "<arg_value>";
const AV_CLOSE: &str = "</arg_value>";
const STRUCT_TAGS: [&str; 6] = [TC_OPEN, TC_CLOSE, AK_OPEN, AK_CLOSE, AV_OPEN, AV_CLOSE];
const VALUE_END_TAGS: [&str; 2] = [AV_CLOSE, TC_CLOSE];
const MAX_TAG_LEN: usize = 12;

/// Which GLM tool-call dialect to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolParserKind {
    /// GLM-4.5 / 4.6 (`--tool-call-parser glm45`): the name also ends at a newline.
    Glm45,
    /// GLM-4.7 (`--tool-call-parser glm47`): the name ends only at a tag.
    Glm47,
}

impl FromStr for ToolParserKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "glm45" | "glm4_moe" | "glm-4.5" | "glm46" => Ok(ToolParserKind::Glm45),
            "glm47" | "glm-4.7" => Ok(ToolParserKind::Glm47),
            other => Err(format!(
                "unknown tool-call parser {other:?} (expected glm45 or glm47)"
            )),
        }
    }
}

/// A parsed tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_` followed by 24 random alphanumerics.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments as JSON object text.
    pub arguments: String,
}

/// Result of non-streaming parsing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedOutput {
    /// Text outside tool calls; `None` when empty.
    pub content: Option<String>,
    /// Calls in output order.
    pub tool_calls: Vec<ToolCall>,
}

/// One streaming event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDelta {
    /// Plain content text.
    Content(String),
    /// A call begins (its arguments follow as [`StreamDelta::ToolCallArgs`]).
    ToolCallStart {
        /// 0-based position of the call in this output.
        index: usize,
        /// Call id.
        id: String,
        /// Function name.
        name: String,
    },
    /// The next piece of a call's arguments JSON.
    ToolCallArgs {
        /// Which call.
        index: usize,
        /// Text to append.
        fragment: String,
    },
}

/// How an argument value is typed, derived from the tool's JSON schema.
///
/// Types are collected from `type` (a string or an array), `anyOf`/`oneOf`/`allOf` members,
/// `enum` and `const` values; an alternative without any type information makes the whole
/// schema [`ArgType::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgType {
    /// Only strings allowed: the raw value is used verbatim (and streamed incrementally).
    StringOnly,
    /// Strings and other types allowed (bit set of [`TypeSet`]): a decoded non-string value is
    /// used when its type is allowed, else the raw string.
    Mixed(TypeSet),
    /// Strings not allowed: decode (JSON, then Python literal), else the trimmed text.
    NonString,
    /// No schema information: treated like [`ArgType::NonString`] (vLLM behaviour).
    Unknown,
}

/// Bit set of JSON schema types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeSet(u8);

impl TypeSet {
    const STRING: u8 = 1;
    const NUMBER: u8 = 2;
    const INTEGER: u8 = 4;
    const BOOLEAN: u8 = 8;
    const NULL: u8 = 16;
    const ARRAY: u8 = 32;
    const OBJECT: u8 = 64;

    fn of_name(name: &str) -> u8 {
        match name {
            "string" => Self::STRING,
            "number" => Self::NUMBER,
            "integer" => Self::INTEGER,
            "boolean" => Self::BOOLEAN,
            "null" => Self::NULL,
            "array" => Self::ARRAY,
            "object" => Self::OBJECT,
            _ => 0,
        }
    }

    fn of_value(v: &Value) -> u8 {
        match v {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Number(n) if n.is_f64() => Self::NUMBER,
            Value::Number(_) => Self::INTEGER | Self::NUMBER,
            Value::String(_) => Self::STRING,
            Value::Array(_) => Self::ARRAY,
            Value::Object(_) => Self::OBJECT,
        }
    }

    fn admits(self, v: &PyValue) -> bool {
        let need = match v {
            PyValue::Null => Self::NULL,
            PyValue::Bool(_) => Self::BOOLEAN,
            PyValue::Int(_) => Self::INTEGER | Self::NUMBER,
            PyValue::Float(_) => Self::NUMBER,
            PyValue::Str(_) => Self::STRING,
            PyValue::List(_) => Self::ARRAY,
            PyValue::Dict(_) => Self::OBJECT,
        };
        self.0 & need != 0
    }
}

/// Classifies a property schema.
pub fn classify_schema(schema: &Value) -> ArgType {
    match schema_types(schema, 0) {
        None => ArgType::Unknown,
        Some(0) => ArgType::Unknown,
        Some(TypeSet::STRING) => ArgType::StringOnly,
        Some(t) if t & TypeSet::STRING != 0 => ArgType::Mixed(TypeSet(t)),
        Some(_) => ArgType::NonString,
    }
}

fn schema_types(schema: &Value, depth: usize) -> Option<u8> {
    if depth > 16 {
        return None;
    }
    let obj = schema.as_object()?;
    let mut set = 0u8;
    let mut known = false;
    match obj.get("type") {
        Some(Value::String(t)) => {
            set |= TypeSet::of_name(t);
            known = true;
        }
        Some(Value::Array(ts)) => {
            for t in ts.iter().filter_map(Value::as_str) {
                set |= TypeSet::of_name(t);
            }
            known = true;
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(subs)) = obj.get(key) {
            for sub in subs {
                match schema_types(sub, depth + 1) {
                    Some(t) => {
                        set |= t;
                        known = true;
                    }
                    // an unconstrained alternative admits anything
                    None if key != "allOf" => return None,
                    None => {}
                }
            }
        }
    }
    if let Some(Value::Array(vals)) = obj.get("enum") {
        for v in vals {
            set |= TypeSet::of_value(v);
        }
        known = true;
    }
    if let Some(v) = obj.get("const") {
        set |= TypeSet::of_value(v);
        known = true;
    }
    known.then_some(set)
}

/// Argument types per tool, precomputed from the request's `tools`.
#[derive(Debug, Clone, Default)]
struct Schemas {
    tools: HashMap<String, HashMap<String, ArgType>>,
    /// Names sorted longest first (for the missing-`<arg_key>` recovery).
    names: Vec<String>,
}

impl Schemas {
    fn new(tools: &[Value]) -> Self {
        let mut s = Schemas::default();
        for tool in tools {
            let func = tool
                .get("function")
                .filter(|f| f.is_object())
                .unwrap_or(tool);
            let Some(name) = func.get("name").and_then(Value::as_str) else {
                continue;
            };
            let mut props = HashMap::new();
            if let Some(Value::Object(p)) = func.get("parameters").and_then(|p| p.get("properties"))
            {
                for (k, schema) in p {
                    props.insert(k.clone(), classify_schema(schema));
                }
            }
            // first definition wins, like a linear search over the request's tools
            s.tools.entry(name.to_string()).or_insert(props);
        }
        s.names = s.tools.keys().cloned().collect();
        s.names
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        s
    }

    fn arg_type(&self, tool: &str, key: &str) -> ArgType {
        self.tools
            .get(tool)
            .and_then(|p| p.get(key))
            .copied()
            .unwrap_or(ArgType::Unknown)
    }

    /// `get_weathercity` → (`get_weather`, `city`) when `get_weather` is a requested tool.
    fn split_fused_name<'a>(&'a self, fused: &'a str) -> Option<(&'a str, &'a str)> {
        self.names.iter().find_map(|n| {
            let rest = fused.strip_prefix(n.as_str())?;
            (!rest.trim().is_empty()).then_some((n.as_str(), rest.trim()))
        })
    }
}

/// Converts a raw argument value according to its schema type.
fn convert_value(raw: &str, ty: ArgType) -> PyValue {
    match ty {
        ArgType::StringOnly => PyValue::Str(raw.to_string()),
        ArgType::NonString | ArgType::Unknown => {
            let t = raw.trim();
            pyjson::json_loads(t)
                .or_else(|| pyjson::literal_eval(t))
                .unwrap_or_else(|| PyValue::Str(t.to_string()))
        }
        ArgType::Mixed(set) => {
            let t = raw.trim();
            match pyjson::json_loads(t).or_else(|| pyjson::literal_eval(t)) {
                Some(v) if !matches!(v, PyValue::Str(_)) && set.admits(&v) => v,
                _ => PyValue::Str(raw.to_string()),
            }
        }
    }
}

/// A new OpenAI-style call id: `call_` + 24 random alphanumerics.
pub fn new_call_id() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("call_{suffix}")
}

/// Parses a complete model output (the content part, after reasoning extraction).
pub fn parse_tool_calls(kind: ToolParserKind, text: &str, tools: &[Value]) -> ParsedOutput {
    let mut stream = ToolCallStream::new(kind, tools);
    let mut deltas = stream.push(text);
    deltas.extend(stream.finish());
    let abandoned = stream.abandoned_call();
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for d in deltas {
        match d {
            StreamDelta::Content(s) => content.push_str(&s),
            StreamDelta::ToolCallStart { id, name, .. } => calls.push(ToolCall {
                id,
                name,
                arguments: String::new(),
            }),
            StreamDelta::ToolCallArgs { index, fragment } => {
                if let Some(c) = calls.get_mut(index) {
                    c.arguments.push_str(&fragment);
                }
            }
        }
    }
    if let Some(i) = abandoned {
        calls.truncate(i);
    }
    ParsedOutput {
        content: (!content.is_empty()).then_some(content),
        tool_calls: calls,
    }
}

/// How an open value is being handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueMode {
    /// String-typed: streamed; `sent` is the absolute byte position escaped and emitted so far.
    Stream { sent: usize },
    /// Emitted when complete.
    Hold(ArgType),
    /// Duplicate key: parsed and dropped.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Outside calls.
    Content,
    /// Reading a call name that starts at `start`; search for its end from `scan`.
    Name { start: usize, scan: usize },
    /// Inside a call, between pairs; search for the next tag from `scan`.
    Pairs { scan: usize },
    /// Reading a key that starts at `start`.
    Key { start: usize, scan: usize },
    /// Key done; expecting `<arg_value>` at `at` after whitespace / literal `\n`.
    Gap { key: String, at: usize },
    /// Reading a value that starts at `start`.
    Value {
        key: String,
        start: usize,
        scan: usize,
        mode: ValueMode,
    },
    /// Finished.
    Done,
}

#[derive(Debug)]
struct OpenCall {
    index: usize,
    name: String,
    pairs: usize,
    keys: HashSet<String>,
}

/// Streaming tool-call parser; see the module docs.
#[derive(Debug)]
pub struct ToolCallStream {
    kind: ToolParserKind,
    schemas: Schemas,
    buf: String,
    pos: usize,
    state: State,
    /// Drop leading whitespace of the content that follows a call.
    after_call: bool,
    /// Start of the held text (whitespace before the current `<tool_call>`).
    hold_start: usize,
    /// Position of the current `<tool_call>`.
    region_start: usize,
    call: Option<OpenCall>,
    next_index: usize,
    completed: usize,
    abandoned: Option<usize>,
    out: Vec<StreamDelta>,
}

impl ToolCallStream {
    /// A parser for one model output; `tools` is the request's OpenAI `tools` array.
    pub fn new(kind: ToolParserKind, tools: &[Value]) -> Self {
        ToolCallStream {
            kind,
            schemas: Schemas::new(tools),
            buf: String::new(),
            pos: 0,
            state: State::Content,
            after_call: false,
            hold_start: 0,
            region_start: 0,
            call: None,
            next_index: 0,
            completed: 0,
            abandoned: None,
            out: Vec::new(),
        }
    }

    /// Feeds the next piece of output text; returns what can be emitted now.
    /// Text pushed after [`ToolCallStream::finish`] is ignored.
    pub fn push(&mut self, delta: &str) -> Vec<StreamDelta> {
        if self.state == State::Done {
            return Vec::new();
        }
        self.buf.push_str(delta);
        self.run(false);
        self.compact();
        std::mem::take(&mut self.out)
    }

    /// Ends the output: flushes held text; an unterminated call becomes content.
    pub fn finish(&mut self) -> Vec<StreamDelta> {
        if self.state != State::Done {
            self.run(true);
            self.state = State::Done;
        }
        std::mem::take(&mut self.out)
    }

    /// Number of calls completed so far (for `finish_reason: "tool_calls"`).
    pub fn completed_calls(&self) -> usize {
        self.completed
    }

    /// Index of a call whose start was streamed but which never closed (its text was re-sent
    /// as content by [`ToolCallStream::finish`]); clients should disregard it.
    pub fn abandoned_call(&self) -> Option<usize> {
        self.abandoned
    }

    /// Drops consumed text so a long output does not keep its whole history.
    fn compact(&mut self) {
        if self.state == State::Content && self.pos > 4096 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    fn emit_content(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(StreamDelta::Content(last)) = self.out.last_mut() {
            last.push_str(s);
        } else {
            self.out.push(StreamDelta::Content(s.to_string()));
        }
    }

    fn emit_args(&mut self, fragment: &str) {
        let Some(call) = &self.call else { return };
        if fragment.is_empty() {
            return;
        }
        let index = call.index;
        if let Some(StreamDelta::ToolCallArgs {
            index: i,
            fragment: f,
        }) = self.out.last_mut()
        {
            if *i == index {
                f.push_str(fragment);
                return;
            }
        }
        self.out.push(StreamDelta::ToolCallArgs {
            index,
            fragment: fragment.to_string(),
        });
    }

    fn start_call(&mut self, name: &str) {
        let index = self.next_index;
        self.next_index += 1;
        self.out.push(StreamDelta::ToolCallStart {
            index,
            id: new_call_id(),
            name: name.to_string(),
        });
        self.call = Some(OpenCall {
            index,
            name: name.to_string(),
            pairs: 0,
            keys: HashSet::new(),
        });
        self.emit_args("{");
    }

    /// Closes the open call; `resume` is where content scanning continues.
    fn close_call(&mut self, resume: usize) {
        self.emit_args("}");
        self.call = None;
        self.completed += 1;
        self.pos = resume;
        self.after_call = true;
        self.state = State::Content;
    }

    /// The `"key": ` prefix of the next pair (with separator); records the key.
    fn open_pair(&mut self, key: &str) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        let mut s = String::new();
        if call.pairs > 0 {
            s.push_str(", ");
        }
        call.pairs += 1;
        call.keys.insert(key.to_string());
        pyjson::write_json_str(&mut s, key, false);
        s.push_str(": ");
        self.emit_args(&s);
    }

    /// The open call never closed: its raw text (and the whitespace held before it) is content.
    fn abandon(&mut self) {
        let text = self.buf[self.hold_start..].to_string();
        if let Some(call) = self.call.take() {
            self.abandoned = Some(call.index);
        }
        self.emit_content(&text);
        self.pos = self.buf.len();
        self.state = State::Done;
    }

    /// The text so far cannot decide the current step: at the end of the output the open call is
    /// abandoned, otherwise the parser waits in `state` for more text. Returns `false` (no
    /// progress) for the step to return.
    fn wait_for_more(&mut self, eof: bool, state: State) -> bool {
        if eof {
            self.abandon();
        } else {
            self.state = state;
        }
        false
    }

    /// A `<tool_call>` without a usable name: the tag is plain content.
    fn reject_region(&mut self) {
        let end = self.region_start + TC_OPEN.len();
        let text = self.buf[self.hold_start..end].to_string();
        self.emit_content(&text);
        self.pos = end;
        self.after_call = false;
        self.state = State::Content;
    }

    fn run(&mut self, eof: bool) {
        loop {
            let progressed = match self.state.clone() {
                State::Done => false,
                State::Content => self.step_content(eof),
                State::Name { start, scan } => self.step_name(start, scan, eof),
                State::Pairs { scan } => self.step_pairs(scan, eof),
                State::Key { start, scan } => self.step_key(start, scan, eof),
                State::Gap { key, at } => self.step_gap(key, at, eof),
                State::Value {
                    key,
                    start,
                    scan,
                    mode,
                } => self.step_value(key, start, scan, mode, eof),
            };
            if !progressed {
                break;
            }
        }
    }

    fn step_content(&mut self, eof: bool) -> bool {
        let rest = &self.buf[self.pos..];
        if self.after_call {
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.is_empty() {
                return false;
            }
            self.after_call = false;
            return true;
        }
        if let Some(i) = rest.find(TC_OPEN) {
            let keep = rest[..i].trim_end().to_string();
            let region = self.pos + i;
            self.hold_start = self.pos + keep.len();
            self.region_start = region;
            self.emit_content(&keep);
            self.pos = region + TC_OPEN.len();
            self.state = State::Name {
                start: self.pos,
                scan: self.pos,
            };
            return true;
        }
        if eof {
            let all = rest.to_string();
            self.emit_content(&all);
            self.pos = self.buf.len();
            self.state = State::Done;
            return false;
        }
        let avail_len = rest.len() - partial_tag_suffix(rest, &[TC_OPEN]);
        let keep = rest[..avail_len].trim_end().to_string();
        self.pos += keep.len();
        self.emit_content(&keep);
        false
    }

    fn step_name(&mut self, start: usize, scan: usize, eof: bool) -> bool {
        // skip leading whitespace (so a glm45 newline ends the name only after some text)
        let rest = &self.buf[start..];
        let trimmed = rest.trim_start();
        let start = start + (rest.len() - trimmed.len());
        let scan = scan.max(start);
        let rest = &self.buf[start..];
        let tail = &self.buf[scan..];
        let tag = find_first_tag(tail, &STRUCT_TAGS).map(|(i, t)| (i + scan - start, t));
        let newline = match self.kind {
            ToolParserKind::Glm45 => tail.find('\n').map(|i| i + scan - start),
            ToolParserKind::Glm47 => None,
        };
        let (end, tag) = match (tag, newline) {
            (Some((t, _)), Some(n)) if n < t => (n, None),
            (Some((t, ti)), _) => (t, Some(ti)),
            (None, Some(n)) => (n, None),
            (None, None) => {
                let state = State::Name {
                    start,
                    scan: resume_point(&self.buf, scan),
                };
                return self.wait_for_more(eof, state);
            }
        };
        let name = clean_name(&rest[..end]).to_string();
        let abs_end = start + end;
        match tag {
            None => {
                // glm45: newline after the name
                if name.is_empty() {
                    self.reject_region();
                    return true;
                }
                self.start_call(&name);
                self.state = State::Pairs { scan: abs_end + 1 };
            }
            Some(tag) => {
                let after = abs_end + tag.len();
                if name.is_empty() {
                    self.reject_region();
                    return true;
                }
                match tag {
                    TC_CLOSE => {
                        self.start_call(&name);
                        self.close_call(after);
                    }
                    TC_OPEN => {
                        self.start_call(&name);
                        self.close_call(abs_end);
                    }
                    AK_OPEN => {
                        self.start_call(&name);
                        self.state = State::Key {
                            start: after,
                            scan: after,
                        };
                    }
                    AK_CLOSE => {
                        let fused = self
                            .schemas
                            .split_fused_name(&name)
                            .map(|(n, k)| (n.to_string(), k.to_string()));
                        match fused {
                            Some((n, key)) => {
                                self.start_call(&n);
                                self.state = State::Gap { key, at: after };
                            }
                            None => {
                                self.start_call(&name);
                                self.state = State::Pairs { scan: after };
                            }
                        }
                    }
                    _ => {
                        // <arg_value> / </arg_value> right after the name: no key, skip it
                        self.start_call(&name);
                        self.state = State::Pairs { scan: after };
                    }
                }
            }
        }
        true
    }

    fn step_pairs(&mut self, scan: usize, eof: bool) -> bool {
        match find_first_tag(&self.buf[scan..], &STRUCT_TAGS) {
            None => {
                let state = State::Pairs {
                    scan: resume_point(&self.buf, scan),
                };
                self.wait_for_more(eof, state)
            }
            Some((off, tag)) => {
                let at = scan + off;
                let after = at + tag.len();
                match tag {
                    AK_OPEN => {
                        self.state = State::Key {
                            start: after,
                            scan: after,
                        }
                    }
                    TC_CLOSE => self.close_call(after),
                    TC_OPEN => self.close_call(at),
                    // stray closers / a value without a key: ignored
                    _ => self.state = State::Pairs { scan: after },
                }
                true
            }
        }
    }

    fn step_key(&mut self, start: usize, scan: usize, eof: bool) -> bool {
        match find_first_tag(&self.buf[scan..], &STRUCT_TAGS) {
            None => {
                let state = State::Key {
                    start,
                    scan: resume_point(&self.buf, scan),
                };
                self.wait_for_more(eof, state)
            }
            Some((off, tag)) => {
                let at = scan + off;
                let after = at + tag.len();
                let key = self.buf[start..at].trim().to_string();
                match tag {
                    AK_CLOSE => self.state = State::Gap { key, at: after },
                    AV_OPEN => self.enter_value(key, after),
                    AK_OPEN => {
                        self.state = State::Key {
                            start: after,
                            scan: after,
                        }
                    }
                    AV_CLOSE => self.state = State::Pairs { scan: after },
                    TC_CLOSE => self.close_call(after),
                    _ => self.close_call(at), // TC_OPEN
                }
                true
            }
        }
    }

    fn step_gap(&mut self, key: String, at: usize, eof: bool) -> bool {
        let mut i = at;
        loop {
            let rest = &self.buf[i..];
            if let Some(c) = rest.chars().next().filter(|c| c.is_whitespace()) {
                i += c.len_utf8();
            } else if rest.starts_with("\\n") {
                i += 2;
            } else {
                break;
            }
        }
        let rest = &self.buf[i..];
        if rest.starts_with(AV_OPEN) {
            self.enter_value(key, i + AV_OPEN.len());
            return true;
        }
        let undecided = rest.is_empty() || AV_OPEN.starts_with(rest) || rest == "\\";
        if undecided {
            return self.wait_for_more(eof, State::Gap { key, at: i });
        }
        // something else follows the key: drop the pair
        self.state = State::Pairs { scan: i };
        true
    }

    fn enter_value(&mut self, key: String, start: usize) {
        let Some(call) = &self.call else {
            self.state = State::Pairs { scan: start };
            return;
        };
        let mode = if call.keys.contains(&key) {
            ValueMode::Skip
        } else {
            match self.schemas.arg_type(&call.name, &key) {
                ArgType::StringOnly => ValueMode::Stream { sent: start },
                other => ValueMode::Hold(other),
            }
        };
        if let ValueMode::Stream { .. } = mode {
            self.open_pair(&key);
            self.emit_args("\"");
        }
        self.state = State::Value {
            key,
            start,
            scan: start,
            mode,
        };
    }

    fn step_value(
        &mut self,
        key: String,
        start: usize,
        scan: usize,
        mode: ValueMode,
        eof: bool,
    ) -> bool {
        match find_first_tag(&self.buf[scan..], &VALUE_END_TAGS) {
            Some((off, tag)) => {
                let end = scan + off;
                match mode {
                    ValueMode::Stream { sent } => {
                        let mut s = String::new();
                        pyjson::escape_json_fragment(&mut s, &self.buf[sent..end]);
                        s.push('"');
                        self.emit_args(&s);
                    }
                    ValueMode::Hold(ty) => {
                        let v = convert_value(&self.buf[start..end], ty);
                        self.open_pair(&key);
                        let json = pyjson::dumps(&v);
                        self.emit_args(&json);
                    }
                    ValueMode::Skip => {}
                }
                if tag == AV_CLOSE {
                    self.state = State::Pairs {
                        scan: end + AV_CLOSE.len(),
                    };
                } else {
                    self.close_call(end + TC_CLOSE.len());
                }
                true
            }
            None => {
                if eof {
                    self.abandon();
                    return false;
                }
                let mut mode = mode;
                if let ValueMode::Stream { sent } = mode {
                    let tail = &self.buf[sent..];
                    let safe = sent + tail.len() - partial_tag_suffix(tail, &VALUE_END_TAGS);
                    if safe > sent {
                        let mut s = String::new();
                        pyjson::escape_json_fragment(&mut s, &self.buf[sent..safe]);
                        self.emit_args(&s);
                        mode = ValueMode::Stream { sent: safe };
                    }
                }
                self.state = State::Value {
                    key,
                    start,
                    scan: resume_point(&self.buf, scan),
                    mode,
                };
                false
            }
        }
    }
}

/// Trims a call name, including a trailing literal `\n` (two characters) some models emit.
fn clean_name(raw: &str) -> &str {
    let mut s = raw.trim();
    while let Some(stripped) = s.strip_suffix("\\n") {
        s = stripped.trim_end();
    }
    s
}

/// Earliest occurrence of any of `tags` in `s`: (byte offset, tag).
fn find_first_tag(s: &str, tags: &[&'static str]) -> Option<(usize, &'static str)> {
    let mut from = 0;
    while let Some(i) = s[from..].find('<') {
        let at = from + i;
        let rest = &s[at..];
        if let Some(t) = tags.iter().find(|t| rest.starts_with(**t)) {
            return Some((at, t));
        }
        from = at + 1;
    }
    None
}

/// Length of the longest suffix of `s` that is a proper prefix of one of `tags`.
fn partial_tag_suffix(s: &str, tags: &[&str]) -> usize {
    let max = tags.iter().map(|t| t.len()).max().unwrap_or(0);
    let lo = s.len().saturating_sub(max.saturating_sub(1));
    for i in lo..s.len() {
        if !s.is_char_boundary(i) {
            continue;
        }
        let tail = &s[i..];
        if tags
            .iter()
            .any(|t| t.len() > tail.len() && t.starts_with(tail))
        {
            return s.len() - i;
        }
    }
    0
}

/// Where to resume a tag search next time: far enough back to see a tag split by the delta.
fn resume_point(buf: &str, scan: usize) -> usize {
    let mut p = buf.len().saturating_sub(MAX_TAG_LEN).max(scan);
    while !buf.is_char_boundary(p) {
        p -= 1;
    }
    p.max(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather_tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"]}}}),
        ]
    }

    #[test]
    fn glm45_basic() {
        let text = "Let me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>";
        let out = parse_tool_calls(ToolParserKind::Glm45, text, &weather_tools());
        assert_eq!(out.content.as_deref(), Some("Let me check."));
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.tool_calls[0].name, "get_weather");
        assert_eq!(
            out.tool_calls[0].arguments,
            r#"{"city": "Paris", "days": 3}"#
        );
        assert!(out.tool_calls[0].id.starts_with("call_"));
        assert_eq!(out.tool_calls[0].id.len(), 29);
    }

    #[test]
    fn glm47_basic_and_multiple() {
        let text = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call><tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value><arg_key>days</arg_key><arg_value>2</arg_value></tool_call>";
        let out = parse_tool_calls(ToolParserKind::Glm47, text, &weather_tools());
        assert_eq!(out.content, None);
        let args: Vec<&str> = out
            .tool_calls
            .iter()
            .map(|c| c.arguments.as_str())
            .collect();
        assert_eq!(
            args,
            [r#"{"city": "Paris"}"#, r#"{"city": "Rome", "days": 2}"#]
        );
        assert_ne!(out.tool_calls[0].id, out.tool_calls[1].id);
    }

    #[test]
    fn no_calls_is_all_content() {
        let out = parse_tool_calls(ToolParserKind::Glm45, "Hello  \n", &[]);
        assert_eq!(out.content.as_deref(), Some("Hello  \n"));
        assert!(out.tool_calls.is_empty());
        let out = parse_tool_calls(ToolParserKind::Glm45, "", &[]);
        assert_eq!(out, ParsedOutput::default());
    }

    #[test]
    fn schema_classification() {
        assert_eq!(
            classify_schema(&json!({"type": "string"})),
            ArgType::StringOnly
        );
        assert_eq!(
            classify_schema(&json!({"enum": ["a", "b"]})),
            ArgType::StringOnly
        );
        assert_eq!(
            classify_schema(&json!({"type": "integer"})),
            ArgType::NonString
        );
        assert_eq!(
            classify_schema(&json!({"description": "x"})),
            ArgType::Unknown
        );
        assert!(matches!(
            classify_schema(&json!({"type": ["string", "null"]})),
            ArgType::Mixed(_)
        ));
        assert!(matches!(
            classify_schema(&json!({"anyOf": [{"type": "string"}, {"type": "integer"}]})),
            ArgType::Mixed(_)
        ));
        assert_eq!(
            classify_schema(&json!({"anyOf": [{"type": "string"}, {"format": "x"}]})),
            ArgType::Unknown
        );
        assert_eq!(
            classify_schema(&json!({"oneOf": [{"type": "string"}, {"const": "x"}]})),
            ArgType::StringOnly
        );
    }

    #[test]
    fn conversions() {
        let mixed = classify_schema(&json!({"type": ["string", "integer"]}));
        assert_eq!(pyjson::dumps(&convert_value(" 42 ", mixed)), "42");
        assert_eq!(pyjson::dumps(&convert_value(" hi ", mixed)), r#"" hi ""#);
        assert_eq!(
            pyjson::dumps(&convert_value("true", mixed)),
            r#""true""#,
            "bool not admitted → raw string"
        );
        let nullable = classify_schema(&json!({"type": ["string", "null"]}));
        assert_eq!(pyjson::dumps(&convert_value("null", nullable)), "null");
        assert_eq!(pyjson::dumps(&convert_value("None", nullable)), "null");
        assert_eq!(
            pyjson::dumps(&convert_value("True", ArgType::Unknown)),
            "true"
        );
        assert_eq!(
            pyjson::dumps(&convert_value("['a', 1]", ArgType::NonString)),
            r#"["a", 1]"#
        );
        assert_eq!(
            pyjson::dumps(&convert_value("  some words ", ArgType::NonString)),
            r#""some words""#
        );
        assert_eq!(
            pyjson::dumps(&convert_value("  x ", ArgType::StringOnly)),
            r#""  x ""#
        );
    }

    #[test]
    fn partial_suffix() {
        assert_eq!(partial_tag_suffix("abc<tool_", &[TC_OPEN]), 6);
        assert_eq!(partial_tag_suffix("abc<", &[TC_OPEN]), 1);
        assert_eq!(partial_tag_suffix("abc<tool_call>", &[TC_OPEN]), 0);
        assert_eq!(partial_tag_suffix("é<", &[TC_OPEN]), 1);
        assert_eq!(partial_tag_suffix("x</arg_val", &VALUE_END_TAGS), 9);
        assert_eq!(partial_tag_suffix("x</", &VALUE_END_TAGS), 2);
    }
}
