//! Reading the Prometheus text exposition (`GET /metrics`) into samples, for assertions on
//! exported names, labels and values.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// `# TYPE` of each family (family name as declared).
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// Parses the text format; panics on a malformed sample line (the exposition is under test).
    pub fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    out.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            out.samples.push(
                parse_sample(line).unwrap_or_else(|e| panic!("bad sample line {line:?}: {e}")),
            );
        }
        out
    }

    /// Every series name that has at least one sample (histograms as `_bucket`, `_sum`, `_count`).
    pub fn names(&self) -> BTreeSet<String> {
        self.samples.iter().map(|s| s.name.clone()).collect()
    }

    /// Samples of `name` whose labels include every `(key, value)` of `filter`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of the values of [`select`](Self::select).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.select(name, filter).map(|s| s.value).sum()
    }

    /// The family a series name belongs to (`x_bucket` → `x` when `x` is a histogram) and its type.
    pub fn family_of(&self, series: &str) -> Option<(&str, &str)> {
        if let Some((name, kind)) = self.types.get_key_value(series) {
            return Some((name.as_str(), kind.as_str()));
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series.strip_suffix(suffix) {
                if let Some((name, kind)) = self.types.get_key_value(base) {
                    if kind == "histogram" || kind == "summary" {
                        return Some((name.as_str(), kind.as_str()));
                    }
                }
            }
        }
        None
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // skip separators
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || *c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(&(start, c)) = chars.peek() else {
                break;
            };
            if c == '}' {
                end = Some(start);
                break;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => return Err("dangling escape".into()),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("label {key} value not closed"));
            }
            labels.insert(key.trim().to_owned(), value);
        }
        let end = end.ok_or("labels not closed")?;
        rest = &body[end + 1..];
    }
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_histograms_and_types() {
        let text = "# HELP a_total help\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"t\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\nplain 1e3\n";
        let e = Exposition::parse(text);
        assert_eq!(e.samples.len(), 5);
        assert_eq!(e.samples[0].labels["y"], "q\"t");
        assert_eq!(e.sum("a_total", &[("x", "1")]), 3.0);
        assert_eq!(e.family_of("h_bucket"), Some(("h", "histogram")));
        assert_eq!(e.family_of("a_total"), Some(("a_total", "counter")));
        assert_eq!(e.sum("plain", &[]), 1000.0);
        assert!(e.names().contains("h_count"));
    }
}
