//! Chat-template rendering with Hugging Face transformers semantics.
//!
//! Checkpoints ship Jinja chat templates that transformers renders with Python Jinja2
//! (`trim_blocks`, `lstrip_blocks`, `loopcontrols`, a `tojson` equal to
//! `json.dumps(ensure_ascii=False)`, `raise_exception`, `strftime_now`). The prompt must match
//! those bytes exactly — the model was trained on them — so this module configures minijinja the
//! same way, adds Python's `str()` rendering of `None`/`True`/containers, normalises OpenAI
//! request messages before rendering (null content, JSON-string tool arguments) and implements
//! `continue_final_message` like transformers. It also chooses which template a checkpoint uses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{AutoEscape, Environment, Error as JError, ErrorKind, Output, State};
use serde_json::{Map, Value};

use crate::builtin;
use crate::pyjson::{self, DumpOptions, PyValue};
use crate::ToolParserKind;

const TEMPLATE_NAME: &str = "chat_template";

/// Errors from loading, compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source does not compile.
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`.
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    /// Rendering failed for another reason (type error in the template, bad filter arguments…).
    #[error("chat template rendering failed: {0}")]
    Render(String),
    /// A message of the conversation is malformed.
    #[error("messages[{index}]: {reason}")]
    InvalidMessage {
        /// Position of the offending message in `messages`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The request as a whole is malformed (messages not an array, reserved kwargs, …).
    #[error("invalid chat request: {0}")]
    InvalidRequest(String),
    /// A template file could not be read or parsed.
    #[error("cannot load chat template from {path}: {reason}")]
    Load {
        /// File that failed.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A compiled chat template.
///
/// Cheap to share behind an `Arc`; rendering takes `&self` and is thread-safe.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` with the transformers Jinja settings.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = hf_environment();
        // transformers strips `{% generation %}` markers (training-only extension) — so do we.
        let source = strip_generation_tags(source);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate { env })
    }

    /// Renders a conversation.
    ///
    /// * `messages`: the OpenAI `messages` array (normalised first, see [`normalize_messages`]).
    /// * `tools`: the OpenAI `tools` array, or `None` (rendered as Python `None`).
    /// * `add_generation_prompt`: append the assistant turn opener.
    /// * `extra`: `chat_template_kwargs` (e.g. `enable_thinking`, `clear_thinking`) and any other
    ///   template variables (special tokens such as `bos_token`). `messages`, `tools` and
    ///   `add_generation_prompt` may not be overridden through it.
    pub fn render(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<String, TemplateError> {
        let messages = normalize_messages(messages)?;
        self.render_normalized(&messages, tools, add_generation_prompt, extra)
    }

    /// Renders with transformers' `continue_final_message=True`: no generation prompt, and the
    /// output is cut right after the final message's content so the model continues that
    /// message (e.g. an assistant prefill) instead of starting a new turn.
    pub fn render_continuation(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        extra: &Map<String, Value>,
    ) -> Result<String, TemplateError> {
        let messages = normalize_messages(messages)?;
        let final_text = final_message_text(&messages)?;
        let rendered = self.render_normalized(&messages, tools, false, extra)?;
        let needle = final_text.trim();
        let Some(loc) = rendered.rfind(needle) else {
            return Err(TemplateError::InvalidRequest(
                "continue_final_message: the final message's content does not appear in the \
                 rendered prompt (the template alters or drops it), so it cannot be continued"
                    .into(),
            ));
        };
        let lead_trimmed = final_text.trim_start();
        let keep = if rendered[loc..].starts_with(lead_trimmed) {
            // the template kept the message's trailing whitespace (or it has none)
            lead_trimmed.len()
        } else {
            needle.len()
        };
        Ok(rendered[..loc + keep].to_string())
    }

    fn render_normalized(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<String, TemplateError> {
        if let Some(t) = tools {
            if !t.is_array() && !t.is_null() {
                return Err(TemplateError::InvalidRequest(
                    "tools must be a JSON array".into(),
                ));
            }
        }
        let mut ctx: std::collections::BTreeMap<String, JValue> = Default::default();
        for (k, v) in extra {
            if matches!(k.as_str(), "messages" | "tools" | "add_generation_prompt") {
                return Err(TemplateError::InvalidRequest(format!(
                    "chat_template_kwargs may not set the reserved variable {k:?}"
                )));
            }
            ctx.insert(k.clone(), JValue::from_serialize(v));
        }
        ctx.insert("messages".into(), JValue::from_serialize(messages));
        ctx.insert(
            "tools".into(),
            match tools {
                Some(t) => JValue::from_serialize(t),
                None => JValue::from(()),
            },
        );
        ctx.insert(
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        );
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        tmpl.render(ctx).map_err(render_error)
    }
}

/// Text transformers looks for when cutting a `continue_final_message` render.
fn final_message_text(messages: &Value) -> Result<String, TemplateError> {
    let arr = messages.as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(last) = arr.last() else {
        return Err(TemplateError::InvalidRequest(
            "continue_final_message needs at least one message".into(),
        ));
    };
    match last.get("content") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .rev()
            .find_map(|p| p.get("text").and_then(Value::as_str))
            .map(str::to_string)
            .ok_or_else(|| TemplateError::InvalidMessage {
                index: arr.len() - 1,
                reason: "continue_final_message: the final message has no text part to continue"
                    .into(),
            }),
        _ => Err(TemplateError::InvalidMessage {
            index: arr.len() - 1,
            reason: "continue_final_message: the final message has no text content".into(),
        }),
    }
}

/// Normalises OpenAI chat messages for template rendering.
///
/// * every message must be an object with a string `role`;
/// * `content: null` becomes `""` (templates would otherwise print Python's `None`);
/// * `tool_calls: null` is removed; `tool_calls` must otherwise be an array of objects, each
///   with a string `name` (in `function` or, bare, at top level);
/// * `arguments` given as a JSON string (the OpenAI wire format) is parsed into a mapping, as
///   templates iterate `arguments.items()`; an empty string means `{}`; anything that is not a
///   JSON object is an error.
pub fn normalize_messages(messages: &Value) -> Result<Value, TemplateError> {
    let Some(arr) = messages.as_array() else {
        return Err(TemplateError::InvalidRequest(
            "messages must be a JSON array".into(),
        ));
    };
    let mut out = Vec::with_capacity(arr.len());
    for (index, msg) in arr.iter().enumerate() {
        let bad = |reason: String| TemplateError::InvalidMessage { index, reason };
        let Some(obj) = msg.as_object() else {
            return Err(bad(format!(
                "expected a JSON object, got {}",
                json_type(msg)
            )));
        };
        let mut obj = obj.clone();
        match obj.get("role") {
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(bad(format!(
                    "\"role\" must be a string, got {}",
                    json_type(other)
                )))
            }
            None => return Err(bad("missing \"role\"".into())),
        }
        if let Some(c) = obj.get_mut("content") {
            if c.is_null() {
                *c = Value::String(String::new());
            }
        }
        if obj.get("tool_calls").is_some_and(Value::is_null) {
            obj.remove("tool_calls");
        }
        if let Some(calls) = obj.get_mut("tool_calls") {
            let Some(calls) = calls.as_array_mut() else {
                return Err(bad("\"tool_calls\" must be an array".into()));
            };
            for (j, call) in calls.iter_mut().enumerate() {
                normalize_tool_call(call).map_err(|r| bad(format!("tool_calls[{j}]: {r}")))?;
            }
        }
        out.push(Value::Object(obj));
    }
    Ok(Value::Array(out))
}

fn normalize_tool_call(call: &mut Value) -> Result<(), String> {
    let Some(obj) = call.as_object_mut() else {
        return Err(format!("expected a JSON object, got {}", json_type(call)));
    };
    let (func, path) = if obj.get("function").is_some_and(Value::is_object) {
        (
            obj.get_mut("function").and_then(Value::as_object_mut),
            "function.",
        )
    } else {
        (Some(obj), "")
    };
    let Some(func) = func else {
        return Err("malformed function".into());
    };
    if !func.get("name").is_some_and(Value::is_string) {
        return Err(format!("missing or non-string \"{path}name\""));
    }
    let Some(args) = func.get_mut("arguments") else {
        return Ok(());
    };
    match args {
        Value::String(s) => {
            if s.trim().is_empty() {
                *args = Value::Object(Map::new());
                return Ok(());
            }
            match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => *args = v,
                Ok(other) => {
                    return Err(format!(
                        "\"{path}arguments\" must encode a JSON object, got {}",
                        json_type(&other)
                    ))
                }
                Err(e) => return Err(format!("\"{path}arguments\" is not valid JSON: {e}")),
            }
        }
        Value::Object(_) | Value::Null => {}
        other => {
            return Err(format!(
                "\"{path}arguments\" must be a JSON object or a JSON string, got {}",
                json_type(other)
            ))
        }
    }
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Removes `{% generation %}` / `{% endgeneration %}` tags (any whitespace control), keeping
/// their contents, as transformers' AssistantTracker extension renders them transparently.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(i) = rest.find("{%") {
        let after = &rest[i + 2..];
        let inner = after.trim_start_matches(['-', '+']).trim_start();
        let is_gen = inner.starts_with("generation") || inner.starts_with("endgeneration");
        let word_end = inner
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(inner.len());
        let exact = matches!(&inner[..word_end], "generation" | "endgeneration");
        match (is_gen && exact, after.find("%}")) {
            (true, Some(end)) => {
                out.push_str(&rest[..i]);
                rest = &after[end + 2..];
            }
            _ => {
                out.push_str(&rest[..i + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn describe(e: &JError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

fn render_error(e: JError) -> TemplateError {
    // raise_exception() errors carry our marker prefix in their detail
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if let Some(j) = err.downcast_ref::<JError>() {
            if let Some(msg) = j.detail().and_then(|d| d.strip_prefix(RAISE_MARKER)) {
                return TemplateError::Raised(msg.to_string());
            }
        }
        cur = err.source();
    }
    TemplateError::Render(describe(&e))
}

const RAISE_MARKER: &str = "raise_exception: ";

/// A minijinja environment configured like transformers' `_compile_jinja_template`.
fn hf_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(py_formatter);
    env.add_filter("tojson", tojson_filter);
    env.add_filter("string", |v: JValue| -> Result<String, JError> {
        Ok(match v.kind() {
            ValueKind::String => v.as_str().unwrap_or_default().to_string(),
            ValueKind::Undefined => String::new(),
            _ => pyjson::py_str(&to_py(&v)?),
        })
    });
    env.add_function(
        "raise_exception",
        |msg: Option<JValue>| -> Result<JValue, JError> {
            let msg = msg.map(|m| m.to_string()).unwrap_or_default();
            Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("{RAISE_MARKER}{msg}"),
            ))
        },
    );
    env.add_function("strftime_now", |fmt: String| -> Result<String, JError> {
        Ok(strftime_utc(&fmt, SystemTime::now()))
    });
    env
}

/// Renders `None`, booleans, numbers and containers the way Python's `str()` does (Jinja2
/// prints Python objects), strings and undefined through minijinja's default formatter.
fn py_formatter(out: &mut Output, state: &State, value: &JValue) -> Result<(), JError> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            let py = to_py(value)?;
            out.write_str(&pyjson::py_str(&py))?;
            Ok(())
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Converts a template value into the Python value model.
fn to_py(v: &JValue) -> Result<PyValue, JError> {
    to_py_depth(v, 0)
}

fn to_py_depth(v: &JValue, depth: usize) -> Result<PyValue, JError> {
    if depth > 256 {
        return Err(JError::new(
            ErrorKind::InvalidOperation,
            "value nested too deeply to serialise",
        ));
    }
    Ok(match v.kind() {
        ValueKind::None => PyValue::Null,
        ValueKind::Bool => PyValue::Bool(v.is_true()),
        ValueKind::Number => {
            if v.is_integer() {
                PyValue::Int(v.to_string())
            } else {
                PyValue::Float(f64::try_from(v.clone()).unwrap_or(f64::NAN))
            }
        }
        ValueKind::String => PyValue::Str(v.as_str().unwrap_or_default().to_string()),
        ValueKind::Seq | ValueKind::Iterable => {
            let mut items = Vec::new();
            for item in v.try_iter()? {
                items.push(to_py_depth(&item, depth + 1)?);
            }
            PyValue::List(items)
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let val = v.get_item(&key)?;
                let k = match to_py_depth(&key, depth + 1)? {
                    PyValue::Str(s) => s,
                    PyValue::Int(d) => d,
                    PyValue::Float(f) => pyjson::float_json(f),
                    PyValue::Bool(b) => if b { "true" } else { "false" }.to_string(),
                    PyValue::Null => "null".to_string(),
                    _ => {
                        return Err(JError::new(
                            ErrorKind::InvalidOperation,
                            "keys must be str, int, float, bool or None",
                        ))
                    }
                };
                entries.push((k, to_py_depth(&val, depth + 1)?));
            }
            PyValue::Dict(entries)
        }
        ValueKind::Undefined => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                "Object of type Undefined is not JSON serializable",
            ))
        }
        other => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {other} is not JSON serializable"),
            ))
        }
    })
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson_filter(value: &JValue, args: &[JValue], kwargs: Kwargs) -> Result<JValue, JError> {
    if args.len() > 4 {
        return Err(JError::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 positional arguments",
        ));
    }
    let pick = |pos: usize, name: &str| -> Result<Option<JValue>, JError> {
        let kw: Option<JValue> = kwargs.get(name)?;
        Ok(kw
            .or_else(|| args.get(pos).cloned())
            .filter(|v| !v.is_none() && !v.is_undefined()))
    };
    let ensure_ascii = pick(0, "ensure_ascii")?;
    let indent = pick(1, "indent")?;
    let separators = pick(2, "separators")?;
    let sort_keys = pick(3, "sort_keys")?;
    kwargs.assert_all_used()?;

    let mut opts = DumpOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        ..Default::default()
    };
    if let Some(ind) = indent {
        opts.indent = Some(match ind.kind() {
            ValueKind::String => ind.as_str().unwrap_or_default().to_string(),
            ValueKind::Number => {
                let n = i64::try_from(ind.clone()).map_err(|_| {
                    JError::new(ErrorKind::InvalidOperation, "tojson: indent must be an int")
                })?;
                " ".repeat(n.clamp(0, 64) as usize)
            }
            _ => {
                return Err(JError::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                ))
            }
        });
        opts.item_sep = ",".into();
    }
    if let Some(seps) = separators {
        let parts: Vec<JValue> = seps.try_iter()?.collect();
        match parts.as_slice() {
            [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                opts.item_sep = a.as_str().unwrap_or_default().to_string();
                opts.key_sep = b.as_str().unwrap_or_default().to_string();
            }
            _ => {
                return Err(JError::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be a pair of strings",
                ))
            }
        }
    }
    let py = to_py(value)?;
    Ok(JValue::from(pyjson::dumps_with(&py, &opts)))
}

/// `strftime` over UTC for the directives chat templates use (`%d %b %Y` and friends).
fn strftime_utc(fmt: &str, now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match d {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:>2}"),
            '-' if matches!(chars.clone().next(), Some('d' | 'm' | 'H')) => match chars.next() {
                Some('d') => write!(out, "{day}"),
                Some('m') => write!(out, "{month}"),
                _ => write!(out, "{hour}"),
            },
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{:02}", if hour % 12 == 0 { 12 } else { hour % 12 }),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'j' => write!(out, "{yday:03}"),
            'B' => write!(out, "{}", MONTHS[(month - 1) as usize]),
            'b' | 'h' => write!(out, "{}", &MONTHS[(month - 1) as usize][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'F' => write!(out, "{year}-{month:02}-{day:02}"),
            'T' => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            'Z' => write!(out, "UTC"),
            'z' => write!(out, "+0000"),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// Choosing a template
// ---------------------------------------------------------------------------------------------

/// GLM model family, which decides the built-in template and the parsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// GLM-4.5, GLM-4.5-Air, GLM-4.6: newline-separated format, model writes `<think>` itself.
    Glm45,
    /// GLM-4.7: compact format, generation prompt ends with `<think>`.
    Glm47,
}

impl ModelFamily {
    /// Guesses the family from a model name or path (`zai-org/GLM-4.7-FP8` → `Glm47`).
    pub fn from_name_hint(name: &str) -> Option<Self> {
        let n = name.to_ascii_lowercase().replace(['_', ' '], "-");
        if n.contains("glm-4.7") || n.contains("glm4.7") || n.contains("glm-47") {
            Some(ModelFamily::Glm47)
        } else if [
            "glm-4.5", "glm4.5", "glm-4.6", "glm4.6", "glm-45", "glm-46", "glm4-moe",
        ]
        .iter()
        .any(|p| n.contains(p))
        {
            Some(ModelFamily::Glm45)
        } else {
            None
        }
    }

    /// The project's own template for this family.
    pub fn builtin_template(self) -> &'static str {
        match self {
            ModelFamily::Glm45 => builtin::GLM45,
            ModelFamily::Glm47 => builtin::GLM47,
        }
    }

    /// The tool-call parser vLLM/SGLang recommend for this family.
    pub fn tool_parser(self) -> ToolParserKind {
        match self {
            ModelFamily::Glm45 => ToolParserKind::Glm45,
            ModelFamily::Glm47 => ToolParserKind::Glm47,
        }
    }
}

/// Where a chat template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateKind {
    /// The checkpoint's `chat_template.jinja`.
    CheckpointFile(PathBuf),
    /// `chat_template` of the checkpoint's `tokenizer_config.json` (`name` set when it was a
    /// list of named templates).
    TokenizerConfig {
        /// The config file.
        path: PathBuf,
        /// The chosen entry's name, for the list form.
        name: Option<String>,
    },
    /// A template built into this crate.
    Builtin(ModelFamily),
}

/// A template source together with where it came from.
#[derive(Debug, Clone)]
pub struct ResolvedTemplate {
    /// Origin.
    pub kind: TemplateKind,
    /// Jinja source text.
    pub source: String,
}

impl ResolvedTemplate {
    /// Compiles the source.
    pub fn compile(&self) -> Result<ChatTemplate, TemplateError> {
        ChatTemplate::new(&self.source)
    }
}

/// Picks the chat template for a checkpoint: `chat_template.jinja` in `model_dir`, else
/// `tokenizer_config.json`'s `chat_template` (a string, or a list of `{name, template}` of
/// which `default` — else the first — is used), else the built-in template of `family`.
pub fn resolve_chat_template(
    model_dir: Option<&Path>,
    family: ModelFamily,
) -> Result<ResolvedTemplate, TemplateError> {
    if let Some(dir) = model_dir {
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja).map_err(|e| TemplateError::Load {
                path: jinja.clone(),
                reason: e.to_string(),
            })?;
            return Ok(ResolvedTemplate {
                kind: TemplateKind::CheckpointFile(jinja),
                source,
            });
        }
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let load_err = |reason: String| TemplateError::Load {
                path: cfg_path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| load_err(e.to_string()))?;
            let cfg: Value =
                serde_json::from_str(&text).map_err(|e| load_err(format!("invalid JSON: {e}")))?;
            match cfg.get("chat_template") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    return Ok(ResolvedTemplate {
                        kind: TemplateKind::TokenizerConfig {
                            path: cfg_path.clone(),
                            name: None,
                        },
                        source: s.clone(),
                    })
                }
                Some(Value::Array(list)) => {
                    let entries: Vec<(&str, &str)> = list
                        .iter()
                        .filter_map(|e| {
                            Some((e.get("name")?.as_str()?, e.get("template")?.as_str()?))
                        })
                        .collect();
                    let chosen = entries
                        .iter()
                        .find(|(n, _)| *n == "default")
                        .or_else(|| entries.first());
                    let Some((name, source)) = chosen else {
                        return Err(load_err(
                            "chat_template is a list without any {name, template} entry".into(),
                        ));
                    };
                    return Ok(ResolvedTemplate {
                        kind: TemplateKind::TokenizerConfig {
                            path: cfg_path.clone(),
                            name: Some(name.to_string()),
                        },
                        source: source.to_string(),
                    });
                }
                Some(_) => {
                    return Err(load_err(
                        "chat_template must be a string or a list of {name, template}".into(),
                    ))
                }
            }
        }
    }
    Ok(ResolvedTemplate {
        kind: TemplateKind::Builtin(family),
        source: family.builtin_template().to_string(),
    })
}

/// Whether a rendered prompt leaves the model inside an open `<think>` block (GLM-4.7's
/// generation prompt, or a continued assistant message with unfinished reasoning): looks at the
/// text after the last `<|assistant|>` and checks that its last `<think>` is not closed.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    let tail = prompt
        .rfind("<|assistant|>")
        .map_or(prompt, |i| &prompt[i..]);
    match (tail.rfind("<think>"), tail.rfind("</think>")) {
        (Some(open), Some(close)) => open > close,
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, ctx: Value) -> String {
        let t = ChatTemplate::new(src).unwrap();
        let extra = ctx.as_object().cloned().unwrap_or_default();
        t.render(&json!([]), None, false, &extra).unwrap()
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let ctx = json!({"x": {"b": [1, 2.5, "é<>&'"], "a": null, "t": true}});
        assert_eq!(
            render("{{ x | tojson }}", ctx.clone()),
            r#"{"b": [1, 2.5, "é<>&'"], "a": null, "t": true}"#
        );
        assert_eq!(
            render(
                "{{ x | tojson(ensure_ascii=True, sort_keys=True) }}",
                ctx.clone()
            ),
            r#"{"a": null, "b": [1, 2.5, "\u00e9<>&'"], "t": true}"#
        );
        assert_eq!(
            render("{{ x.b | tojson(indent=2) }}", ctx.clone()),
            "[\n  1,\n  2.5,\n  \"é<>&'\"\n]"
        );
        assert_eq!(
            render("{{ x | tojson(separators=(',', ':')) }}", ctx),
            r#"{"b":[1,2.5,"é<>&'"],"a":null,"t":true}"#
        );
    }

    #[test]
    fn python_str_rendering() {
        let ctx = json!({"n": null, "t": true, "d": {"type": "text", "text": "hi"}, "f": 2.0});
        assert_eq!(
            render("{{ n }}|{{ t }}|{{ d }}|{{ f }}|{{ t | string }}", ctx),
            "None|True|{'type': 'text', 'text': 'hi'}|2.0|True"
        );
    }

    #[test]
    fn hf_whitespace_and_pycompat() {
        let src = "{% for m in messages %}\n  {{ m.content.strip() }}\n{% endfor %}\n";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(
                &json!([{"role": "user", "content": " a "}, {"role": "user", "content": "b"}]),
                None,
                false,
                &Map::new(),
            )
            .unwrap();
        assert_eq!(out, "  a\n  b\n");
        let src =
            "{% for i in [1,2,3] %}{% if i == 2 %}{% continue %}{% endif %}{{ i }}{% endfor %}";
        assert_eq!(render(src, json!({})), "13");
        let src = "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}";
        assert_eq!(render(src, json!({})), "a=1");
    }

    #[test]
    fn raise_exception_is_reported() {
        let t = ChatTemplate::new("{{ raise_exception('only user/assistant roles') }}").unwrap();
        let err = t.render(&json!([]), None, false, &Map::new()).unwrap_err();
        match err {
            TemplateError::Raised(m) => assert_eq!(m, "only user/assistant roles"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn strftime_now_formats() {
        // 2024-02-29T13:05:09Z was a Thursday
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_211_909);
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %a %b %j %B %A %%", t),
            "2024-02-29 13:05:09 Thu Feb 060 February Thursday %"
        );
        assert_eq!(strftime_utc("%d %b %Y", t), "29 Feb 2024");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}").unwrap();
        let y = t.render(&json!([]), None, false, &Map::new()).unwrap();
        assert!(y.len() == 4 && y.chars().all(|c| c.is_ascii_digit()), "{y}");
    }

    #[test]
    fn normalisation_errors_are_precise() {
        let bad = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
            ]}
        ]);
        let err = normalize_messages(&bad).unwrap_err().to_string();
        assert_eq!(
            err,
            "messages[1]: tool_calls[0]: \"function.arguments\" must encode a JSON object, got an array"
        );
        let err = normalize_messages(&json!([{"content": "x"}]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "messages[0]: missing \"role\"");
        let err = normalize_messages(
            &json!([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("function.name"), "{err}");
        let err = normalize_messages(&json!([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("messages[0]: tool_calls[0]: \"function.arguments\" is not valid JSON"),
            "{err}"
        );
        assert!(matches!(
            normalize_messages(&json!({"role": "user"})),
            Err(TemplateError::InvalidRequest(_))
        ));
    }

    #[test]
    fn normalisation_parses_arguments_in_order() {
        let msgs = json!([{"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"z\": 1, \"a\": {\"y\": true}}"}},
            {"name": "g", "arguments": ""}
        ]}]);
        let n = normalize_messages(&msgs).unwrap();
        assert_eq!(n[0]["content"], json!(""));
        let args = &n[0]["tool_calls"][0]["function"]["arguments"];
        let keys: Vec<&String> = args.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a"]);
        assert_eq!(n[0]["tool_calls"][1]["arguments"], json!({}));
    }

    #[test]
    fn reserved_kwargs_rejected() {
        let t = ChatTemplate::new("x").unwrap();
        let mut extra = Map::new();
        extra.insert("messages".into(), json!([]));
        assert!(matches!(
            t.render(&json!([]), None, false, &extra),
            Err(TemplateError::InvalidRequest(_))
        ));
    }

    #[test]
    fn generation_tags_are_stripped() {
        let src = "{% for m in messages %}{%- generation -%}{{ m.content }}{%- endgeneration -%}{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(
                &json!([{"role": "assistant", "content": "x"}]),
                None,
                false,
                &Map::new(),
            )
            .unwrap();
        assert_eq!(out, "x");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(
            ChatTemplate::new("{% if %}"),
            Err(TemplateError::Syntax(_))
        ));
    }

    #[test]
    fn prompt_thinking_detection() {
        assert!(prompt_opens_thinking(
            "[gMASK]<sop><|user|>Hi<|assistant|><think>"
        ));
        assert!(!prompt_opens_thinking(
            "[gMASK]<sop><|user|>\nHi<|assistant|>"
        ));
        assert!(!prompt_opens_thinking(
            "<|user|>\nHi/nothink<|assistant|>\n<think></think>"
        ));
        assert!(!prompt_opens_thinking("<|user|>Hi<|assistant|></think>"));
        assert!(!prompt_opens_thinking(
            "<|assistant|><think>old</think>x<|user|>Q<|assistant|>"
        ));
        assert!(prompt_opens_thinking("<|assistant|>\n<think>partial"));
    }

    #[test]
    fn family_hints() {
        assert_eq!(
            ModelFamily::from_name_hint("zai-org/GLM-4.7-FP8"),
            Some(ModelFamily::Glm47)
        );
        assert_eq!(
            ModelFamily::from_name_hint("/models/GLM-4.5-Air"),
            Some(ModelFamily::Glm45)
        );
        assert_eq!(
            ModelFamily::from_name_hint("zai-org/GLM-4.6"),
            Some(ModelFamily::Glm45)
        );
        assert_eq!(ModelFamily::from_name_hint("llama"), None);
    }
}
