//! Python-compatible JSON and literal handling.
//!
//! GLM chat templates and the reference tool parser are Python code: the template's `tojson` is
//! `json.dumps(x, ensure_ascii=False)` and tool-call argument values are decoded with
//! `json.loads`, then `ast.literal_eval`, then kept as raw text. Byte-exact prompts and
//! vLLM-compatible `arguments` strings need the same formatting (`", "` / `": "` separators,
//! Python float `repr`, arbitrary-size integers kept digit for digit), which `serde_json` does not
//! produce. This module holds a small value model ([`PyValue`]), a `json.dumps` writer, a strict
//! `json.loads` subset and an `ast.literal_eval` subset, all panic-free on any input.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Maximum nesting accepted by the parsers (deeper input is rejected, never overflows the stack).
const MAX_DEPTH: usize = 128;

/// A JSON-serialisable value as Python sees it after `json.loads` / `ast.literal_eval`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PyValue {
    Null,
    Bool(bool),
    /// Integer kept as normalised decimal text (Python ints are unbounded).
    Int(String),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    /// Insertion-ordered; keys already converted the way `json.dumps` converts them.
    Dict(Vec<(String, PyValue)>),
}

/// Options of Python's `json.dumps` that chat templates use.
#[derive(Debug, Clone)]
pub(crate) struct DumpOptions {
    pub ensure_ascii: bool,
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
        }
    }
}

/// `json.dumps(value, ensure_ascii=False)` with default separators.
pub(crate) fn dumps(value: &PyValue) -> String {
    dumps_with(value, &DumpOptions::default())
}

pub(crate) fn dumps_with(value: &PyValue, opts: &DumpOptions) -> String {
    let mut out = String::new();
    write_value(&mut out, value, opts, 0);
    out
}

fn write_newline_indent(out: &mut String, opts: &DumpOptions, level: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn write_value(out: &mut String, value: &PyValue, opts: &DumpOptions, level: usize) {
    match value {
        PyValue::Null => out.push_str("null"),
        PyValue::Bool(true) => out.push_str("true"),
        PyValue::Bool(false) => out.push_str("false"),
        PyValue::Int(digits) => out.push_str(digits),
        PyValue::Float(f) => out.push_str(&float_json(*f)),
        PyValue::Str(s) => write_json_str(out, s, opts.ensure_ascii),
        PyValue::List(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline_indent(out, opts, level + 1);
                write_value(out, item, opts, level + 1);
            }
            write_newline_indent(out, opts, level);
            out.push(']');
        }
        PyValue::Dict(entries) => {
            if entries.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut order: Vec<&(String, PyValue)> = entries.iter().collect();
            if opts.sort_keys {
                order.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (k, v)) in order.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline_indent(out, opts, level + 1);
                write_json_str(out, k, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_value(out, v, opts, level + 1);
            }
            write_newline_indent(out, opts, level);
            out.push('}');
        }
    }
}

/// Writes `s` as a JSON string literal exactly like Python's encoder.
pub(crate) fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        push_json_char(out, c, ensure_ascii);
    }
    out.push('"');
}

/// JSON-escapes one character (Python rules); escaping is per character, so the escape of a
/// prefix is a prefix of the escape (the streaming tool parser relies on this).
pub(crate) fn push_json_char(out: &mut String, c: char, ensure_ascii: bool) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{08}' => out.push_str("\\b"),
        '\u{0c}' => out.push_str("\\f"),
        c if (c as u32) < 0x20 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c if ensure_ascii && (c as u32) > 0x7e => {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                let _ = write!(out, "\\u{:04x}", unit);
            }
        }
        c => out.push(c),
    }
}

/// JSON-escapes `s` without the surrounding quotes.
pub(crate) fn escape_json_fragment(out: &mut String, s: &str) {
    for c in s.chars() {
        push_json_char(out, c, false);
    }
}

/// Python `float.__repr__`, as `json.dumps` writes floats (`NaN`/`Infinity` included).
pub(crate) fn float_json(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    float_repr(f)
}

/// Python `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// [-4, 16), otherwise `d.ddde+XX`.
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let neg = f.is_sign_negative();
    let sign = if neg { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "1.2345e-5".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let mut s = String::from(sign);
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                for _ in digits.len()..int_len {
                    s.push('0');
                }
                s.push_str(".0");
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        } else {
            s.push_str("0.");
            for _ in 0..(-exp - 1) {
                s.push('0');
            }
            s.push_str(&digits);
        }
        s
    } else {
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exp.unsigned_abs())
    }
}

/// Python `repr(str)`: single quotes unless the text contains `'` and no `"`.
pub(crate) fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_printable(c) => {
                let v = c as u32;
                let _ = if v <= 0xff {
                    write!(out, "\\x{v:02x}")
                } else if v <= 0xffff {
                    write!(out, "\\u{v:04x}")
                } else {
                    write!(out, "\\U{v:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Approximation of Python's `str.isprintable` per character: control and format characters
/// and non-space separators are not printable.
fn py_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(c as u32,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f
        | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb
        | 0xe000..=0xf8ff | 0xf0000..=0x10ffff)
}

/// Python `repr()` of a value (strings quoted, `None`/`True`/`False`).
pub(crate) fn py_repr(value: &PyValue) -> String {
    match value {
        PyValue::Str(s) => str_repr(s),
        other => py_str(other),
    }
}

/// Python `str()` of a value: strings unquoted, containers like `repr`.
pub(crate) fn py_str(value: &PyValue) -> String {
    match value {
        PyValue::Null => "None".into(),
        PyValue::Bool(true) => "True".into(),
        PyValue::Bool(false) => "False".into(),
        PyValue::Int(d) => d.clone(),
        PyValue::Float(f) => float_repr(*f),
        PyValue::Str(s) => s.clone(),
        PyValue::List(items) => {
            let parts: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", parts.join(", "))
        }
        PyValue::Dict(entries) => {
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", str_repr(k), py_repr(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

/// Builds a dict with Python semantics for duplicate keys (last value wins, first position).
struct DictBuilder {
    entries: Vec<(String, PyValue)>,
    index: HashMap<String, usize>,
}

impl DictBuilder {
    fn new() -> Self {
        DictBuilder {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }
    fn insert(&mut self, k: String, v: PyValue) {
        if let Some(&i) = self.index.get(&k) {
            self.entries[i].1 = v;
        } else {
            self.index.insert(k.clone(), self.entries.len());
            self.entries.push((k, v));
        }
    }
    fn finish(self) -> PyValue {
        PyValue::Dict(self.entries)
    }
}

// ---------------------------------------------------------------------------------------------
// json.loads (strict subset: NaN/Infinity and numbers overflowing f64 are rejected so that the
// output stays valid JSON)
// ---------------------------------------------------------------------------------------------

/// Parses `text` as Python's `json.loads` would (surrounding JSON whitespace allowed).
pub(crate) fn json_loads(text: &str) -> Option<PyValue> {
    let mut p = Cursor {
        s: text.as_bytes(),
        src: text,
        i: 0,
    };
    p.skip_json_ws();
    let v = p.json_value(0)?;
    p.skip_json_ws();
    (p.i == p.s.len()).then_some(v)
}

struct Cursor<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }
    fn skip_json_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn json_value(&mut self, depth: usize) -> Option<PyValue> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.i += 1;
                let mut d = DictBuilder::new();
                self.skip_json_ws();
                if self.eat("}") {
                    return Some(d.finish());
                }
                loop {
                    self.skip_json_ws();
                    if self.peek()? != b'"' {
                        return None;
                    }
                    let k = self.json_string()?;
                    self.skip_json_ws();
                    if !self.eat(":") {
                        return None;
                    }
                    self.skip_json_ws();
                    let v = self.json_value(depth + 1)?;
                    d.insert(k, v);
                    self.skip_json_ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Some(d.finish());
                    }
                    return None;
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.skip_json_ws();
                if self.eat("]") {
                    return Some(PyValue::List(items));
                }
                loop {
                    self.skip_json_ws();
                    items.push(self.json_value(depth + 1)?);
                    self.skip_json_ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Some(PyValue::List(items));
                    }
                    return None;
                }
            }
            b'"' => self.json_string().map(PyValue::Str),
            b't' => self.eat("true").then_some(PyValue::Bool(true)),
            b'f' => self.eat("false").then_some(PyValue::Bool(false)),
            b'n' => self.eat("null").then_some(PyValue::Null),
            b'-' | b'0'..=b'9' => self.json_number(),
            _ => None,
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn json_number(&mut self) -> Option<PyValue> {
        let start = self.i;
        let neg = self.eat("-");
        let int_start = self.i;
        if self.eat("0") {
            // a leading zero stands alone
        } else if self.digits() == 0 {
            return None;
        }
        let int_end = self.i;
        let mut is_float = false;
        if self.peek() == Some(b'.') && matches!(self.s.get(self.i + 1), Some(b'0'..=b'9')) {
            self.i += 1;
            self.digits();
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.i;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                // Python's scanner stops before a dangling exponent; the trailing text then
                // fails the whole parse, which is what we want.
                self.i = save;
            } else {
                is_float = true;
            }
        }
        let text = &self.src[start..self.i];
        if is_float {
            let f: f64 = text.parse().ok()?;
            f.is_finite().then_some(PyValue::Float(f))
        } else {
            Some(PyValue::Int(normalise_int(
                neg,
                &self.src[int_start..int_end],
            )))
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.src.get(self.i..self.i + 4)?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u32::from_str_radix(h, 16).ok()
    }

    fn json_string(&mut self) -> Option<String> {
        // at the opening quote
        self.i += 1;
        let mut out = String::new();
        loop {
            let rest = self.src.get(self.i..)?;
            let stop = rest.find(|c: char| c == '"' || c == '\\' || (c as u32) < 0x20)?;
            out.push_str(&rest[..stop]);
            self.i += stop;
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(out);
                }
                b'\\' => {
                    self.i += 1;
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let u = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&u) {
                                if !self.eat("\\u") {
                                    return None;
                                }
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return None;
                                }
                                char::from_u32(0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00))?
                            } else {
                                char::from_u32(u)?
                            };
                            out.push(c);
                        }
                        _ => return None,
                    }
                }
                _ => return None, // raw control character (strict mode)
            }
        }
    }
}

/// Normalises decimal integer digits the way `str(int(text))` would.
fn normalise_int(neg: bool, digits: &str) -> String {
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else if neg {
        format!("-{trimmed}")
    } else {
        trimmed.into()
    }
}

// ---------------------------------------------------------------------------------------------
// ast.literal_eval subset: None/True/False, numbers (with one sign, underscores, hex/oct/bin),
// str literals (quotes, triple quotes, u/r prefixes, escapes, implicit concatenation), lists,
// tuples and dicts. Sets, bytes and complex numbers are rejected (json.dumps cannot write them).
// ---------------------------------------------------------------------------------------------

/// Parses `text` as Python's `ast.literal_eval` would (for the JSON-representable subset).
pub(crate) fn literal_eval(text: &str) -> Option<PyValue> {
    let mut p = Lit { s: text, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct Lit<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Lit<'a> {
    fn rest(&self) -> &'a str {
        self.s.get(self.i..).unwrap_or("")
    }
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }
    fn ws(&mut self) {
        let r = self.rest();
        let t = r.trim_start();
        self.i += r.len() - t.len();
    }
    fn eat(&mut self, lit: &str) -> bool {
        if self.rest().starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }
    fn word(&mut self) -> &'a str {
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        self.i += n;
        &r[..n]
    }

    fn value(&mut self, depth: usize) -> Option<PyValue> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        let c = self.peek()?;
        match c {
            '[' => {
                self.i += 1;
                let items = self.seq(']', depth)?;
                Some(PyValue::List(items.0))
            }
            '(' => {
                self.i += 1;
                let (mut items, had_comma) = self.seq(')', depth)?;
                if items.len() == 1 && !had_comma {
                    items.pop()
                } else {
                    Some(PyValue::List(items))
                }
            }
            '{' => {
                self.i += 1;
                self.dict(depth)
            }
            '\'' | '"' => self.strings(),
            '+' | '-' => {
                self.i += 1;
                self.ws();
                let v = self.number()?;
                Some(if c == '-' { negate(v) } else { v })
            }
            '0'..='9' | '.' => self.number(),
            c if c.is_alphabetic() || c == '_' => {
                let save = self.i;
                let w = self.word();
                match w {
                    "None" => Some(PyValue::Null),
                    "True" => Some(PyValue::Bool(true)),
                    "False" => Some(PyValue::Bool(false)),
                    "u" | "U" | "r" | "R" if matches!(self.peek(), Some('\'' | '"')) => {
                        self.i = save;
                        self.strings()
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Comma-separated values up to `close`; returns the items and whether a comma was seen.
    fn seq(&mut self, close: char, depth: usize) -> Option<(Vec<PyValue>, bool)> {
        let mut items = Vec::new();
        let mut had_comma = false;
        loop {
            self.ws();
            if self.peek()? == close {
                self.i += close.len_utf8();
                return Some((items, had_comma));
            }
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.peek()? {
                ',' => {
                    self.i += 1;
                    had_comma = true;
                }
                c if c == close => {}
                _ => return None,
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Option<PyValue> {
        let mut d = DictBuilder::new();
        loop {
            self.ws();
            if self.eat("}") {
                return Some(d.finish());
            }
            let k = self.value(depth + 1)?;
            self.ws();
            if !self.eat(":") {
                return None; // a set, or garbage
            }
            let v = self.value(depth + 1)?;
            let key = match k {
                PyValue::Str(s) => s,
                PyValue::Int(d) => d,
                PyValue::Float(f) => float_json(f),
                PyValue::Bool(true) => "true".into(),
                PyValue::Bool(false) => "false".into(),
                PyValue::Null => "null".into(),
                _ => return None,
            };
            d.insert(key, v);
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("}") {
                return Some(d.finish());
            }
            return None;
        }
    }

    fn number(&mut self) -> Option<PyValue> {
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(r.len());
        // an exponent sign belongs to the number: 1e-5, 2.5E+3
        let mut end = n;
        let bytes = r.as_bytes();
        if end < r.len()
            && (bytes[end] == b'+' || bytes[end] == b'-')
            && end > 0
            && matches!(bytes[end - 1], b'e' | b'E')
            && !r[..end].starts_with("0x")
            && !r[..end].starts_with("0X")
        {
            let more = r[end + 1..]
                .find(|c: char| !(c.is_ascii_digit() || c == '_'))
                .unwrap_or(r.len() - end - 1);
            end += 1 + more;
        }
        let tok = &r[..end];
        self.i += end;
        parse_py_number(tok)
    }

    /// One or more adjacent string literals (implicit concatenation).
    fn strings(&mut self) -> Option<PyValue> {
        let mut out = String::new();
        let mut any = false;
        loop {
            self.ws();
            let save = self.i;
            let mut raw = false;
            match self.peek() {
                Some('r' | 'R') => {
                    self.i += 1;
                    raw = true;
                }
                Some('u' | 'U') => self.i += 1,
                _ => {}
            }
            let q = match self.peek() {
                Some(q @ ('\'' | '"')) => q,
                _ => {
                    self.i = save;
                    break;
                }
            };
            let triple: String = std::iter::repeat_n(q, 3).collect();
            let delim: &str = if self.rest().starts_with(&triple) {
                &triple
            } else if q == '"' {
                "\""
            } else {
                "'"
            };
            self.i += delim.len();
            out.push_str(&self.string_body(delim, raw)?);
            any = true;
        }
        any.then_some(PyValue::Str(out))
    }

    fn string_body(&mut self, delim: &str, raw: bool) -> Option<String> {
        let single_line = delim.len() == 1;
        let mut out = String::new();
        loop {
            let r = self.rest();
            if r.starts_with(delim) {
                self.i += delim.len();
                return Some(out);
            }
            let c = r.chars().next()?;
            if single_line && c == '\n' {
                return None;
            }
            if c != '\\' {
                out.push(c);
                self.i += c.len_utf8();
                continue;
            }
            // backslash escape
            self.i += 1;
            let e = self.peek()?;
            self.i += e.len_utf8();
            if raw {
                out.push('\\');
                out.push(e);
                continue;
            }
            match e {
                '\n' => {}
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                '"' => out.push('"'),
                'a' => out.push('\u{07}'),
                'b' => out.push('\u{08}'),
                'f' => out.push('\u{0c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\u{0b}'),
                'x' => out.push(self.hex_escape(2)?),
                'u' => out.push(self.hex_escape(4)?),
                'U' => out.push(self.hex_escape(8)?),
                '0'..='7' => {
                    let mut v = e as u32 - '0' as u32;
                    for _ in 0..2 {
                        match self.peek() {
                            Some(d @ '0'..='7') => {
                                v = v * 8 + (d as u32 - '0' as u32);
                                self.i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(char::from_u32(v)?);
                }
                'N' => return None,
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        }
    }

    fn hex_escape(&mut self, n: usize) -> Option<char> {
        let h = self.s.get(self.i..self.i + n)?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += n;
        char::from_u32(u32::from_str_radix(h, 16).ok()?)
    }
}

fn negate(v: PyValue) -> PyValue {
    match v {
        PyValue::Int(d) if d == "0" => PyValue::Int(d),
        PyValue::Int(d) => match d.strip_prefix('-') {
            Some(pos) => PyValue::Int(pos.to_string()),
            None => PyValue::Int(format!("-{d}")),
        },
        PyValue::Float(f) => PyValue::Float(-f),
        other => other,
    }
}

/// Validates Python's digit-group underscores (`1_000`, never leading/trailing/doubled).
fn strip_underscores(s: &str) -> Option<String> {
    if s.starts_with('_') || s.ends_with('_') || s.contains("__") {
        return None;
    }
    Some(s.replace('_', ""))
}

fn parse_py_number(tok: &str) -> Option<PyValue> {
    if tok.is_empty() {
        return None;
    }
    let lower = tok.to_ascii_lowercase();
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(body) = lower.strip_prefix(prefix) {
            let body = body.strip_prefix('_').unwrap_or(body);
            let clean = strip_underscores(body)?;
            if clean.is_empty() {
                return None;
            }
            let v = u128::from_str_radix(&clean, radix).ok()?;
            return Some(PyValue::Int(v.to_string()));
        }
    }
    if lower.ends_with('j') {
        return None; // complex
    }
    let clean = strip_underscores(&lower)?;
    if clean.bytes().all(|b| b.is_ascii_digit()) {
        // Python forbids leading zeros in non-zero decimal ints.
        if clean.len() > 1 && clean.starts_with('0') && clean.bytes().any(|b| b != b'0') {
            return None;
        }
        return Some(PyValue::Int(normalise_int(false, &clean)));
    }
    // float: digits, optional '.', optional exponent; at least one digit in the mantissa
    let (mant, exp) = match clean.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (clean.as_str(), None),
    };
    if !mant.bytes().any(|b| b.is_ascii_digit())
        || !mant.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        || mant.matches('.').count() > 1
    {
        return None;
    }
    if let Some(e) = exp {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let f: f64 = clean.parse().ok()?;
    f.is_finite().then_some(PyValue::Float(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (3.0, "3.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-0.0, "-0.0"),
            (1e300, "1e+300"),
            (2.71, "2.71"),
            (100.0, "100.0"),
            (1.0 / 3.0, "0.3333333333333333"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "repr({f})");
        }
    }

    #[test]
    fn dumps_matches_python_defaults() {
        let v = json_loads(r#"{"a": [1, 2.0, "x\ny", null, true], "é": {"k": -0}}"#).unwrap();
        assert_eq!(
            dumps(&v),
            r#"{"a": [1, 2.0, "x\ny", null, true], "é": {"k": 0}}"#
        );
        let opts = DumpOptions {
            ensure_ascii: true,
            indent: Some("  ".into()),
            item_sep: ",".into(),
            key_sep: ": ".into(),
            sort_keys: true,
        };
        assert_eq!(
            dumps_with(&v, &opts),
            "{\n  \"a\": [\n    1,\n    2.0,\n    \"x\\ny\",\n    null,\n    true\n  ],\n  \"\\u00e9\": {\n    \"k\": 0\n  }\n}"
        );
        let emoji = PyValue::Str("😀\u{7f}\u{1}".into());
        assert_eq!(
            dumps_with(
                &emoji,
                &DumpOptions {
                    ensure_ascii: true,
                    ..Default::default()
                }
            ),
            r#""\ud83d\ude00\u007f\u0001""#
        );
        assert_eq!(dumps(&emoji), "\"😀\u{7f}\\u0001\"");
    }

    #[test]
    fn json_loads_edge_cases() {
        assert_eq!(
            json_loads("123456789012345678901234567890"),
            Some(PyValue::Int("123456789012345678901234567890".into()))
        );
        assert_eq!(json_loads("NaN"), None);
        assert_eq!(json_loads("1e400"), None);
        assert_eq!(json_loads("01"), None);
        assert_eq!(json_loads("1."), None);
        assert_eq!(json_loads("\"a\tb\""), None, "strict: raw control char");
        assert_eq!(
            json_loads(r#""\ud83d\ude00""#),
            Some(PyValue::Str("😀".into()))
        );
        assert_eq!(json_loads(r#""\ud83d""#), None, "lone surrogate");
        assert_eq!(
            json_loads(r#"{"a":1,"a":2,"b":3}"#),
            Some(PyValue::Dict(vec![
                ("a".into(), PyValue::Int("2".into())),
                ("b".into(), PyValue::Int("3".into()))
            ]))
        );
        let deep = "[".repeat(10_000);
        assert_eq!(json_loads(&deep), None);
        assert_eq!(json_loads(" [1, 2] "), json_loads("[1,2]"));
    }

    #[test]
    fn literal_eval_subset() {
        assert_eq!(literal_eval("True"), Some(PyValue::Bool(true)));
        assert_eq!(literal_eval("None"), Some(PyValue::Null));
        assert_eq!(literal_eval("-5"), Some(PyValue::Int("-5".into())));
        assert_eq!(literal_eval("1_000"), Some(PyValue::Int("1000".into())));
        assert_eq!(literal_eval("0x1F"), Some(PyValue::Int("31".into())));
        assert_eq!(literal_eval("1e5"), Some(PyValue::Float(100000.0)));
        assert_eq!(literal_eval("2.5E-3"), Some(PyValue::Float(0.0025)));
        assert_eq!(literal_eval(".5"), Some(PyValue::Float(0.5)));
        assert_eq!(literal_eval("'it''s'"), Some(PyValue::Str("its".into())));
        assert_eq!(
            literal_eval(r#""a\tb\x41\u00e9""#),
            Some(PyValue::Str("a\tbAé".into()))
        );
        assert_eq!(
            literal_eval("['a', (1, 2), {'k': False, 1: None}]"),
            Some(PyValue::List(vec![
                PyValue::Str("a".into()),
                PyValue::List(vec![PyValue::Int("1".into()), PyValue::Int("2".into())]),
                PyValue::Dict(vec![
                    ("k".into(), PyValue::Bool(false)),
                    ("1".into(), PyValue::Null)
                ]),
            ]))
        );
        assert_eq!(
            literal_eval("(1,)"),
            Some(PyValue::List(vec![PyValue::Int("1".into())]))
        );
        assert_eq!(literal_eval("(7)"), Some(PyValue::Int("7".into())));
        assert_eq!(literal_eval("{1, 2}"), None, "sets are not JSON");
        assert_eq!(literal_eval("1+2j"), None);
        assert_eq!(literal_eval("hello world"), None);
        assert_eq!(literal_eval("007"), None);
        assert_eq!(literal_eval("b'x'"), None);
        assert_eq!(
            literal_eval("'''a\nb'''"),
            Some(PyValue::Str("a\nb".into()))
        );
        assert_eq!(literal_eval("'a\nb'"), None);
    }

    #[test]
    fn repr_of_containers() {
        let v =
            json_loads(r#"{"type": "text", "text": "it's", "n": [1, null, true, 2.0]}"#).unwrap();
        assert_eq!(
            py_str(&v),
            r#"{'type': 'text', 'text': "it's", 'n': [1, None, True, 2.0]}"#
        );
        assert_eq!(str_repr("a'b\"c\n\u{a0}"), r#"'a\'b"c\n\xa0'"#);
    }

    #[test]
    fn parsers_never_panic_on_garbage() {
        let samples = [
            "",
            "\"",
            "\\",
            "'",
            "[",
            "{",
            "{'a'",
            "0x",
            "0x_",
            "1e",
            "1e+",
            "-",
            "é",
            "'\\x4",
            "'\\u12'",
            "u",
            "r'",
            "1__0",
            "[1,,2]",
            "{:}",
            "(",
            "((",
            "\"\\u",
            "\"\\ud800\\u",
            "1.2.3",
            "--1",
            "+-1",
            "𝟘",
        ];
        for s in samples {
            let _ = json_loads(s);
            let _ = literal_eval(s);
        }
    }
}
