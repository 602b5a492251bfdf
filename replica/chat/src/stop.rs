//! Stop strings over streamed text.
//!
//! OpenAI `stop` ends generation as soon as any stop string appears; the stop string is not part
//! of the returned text. "As soon as" means the match that completes first (earliest end; on a
//! tie the longer one), which is what token-by-token checking yields and keeps the result
//! independent of how the text is split into pieces. While streaming, the tail that could still
//! grow into a stop string is held back (never sent and then retracted); everything before it is
//! safe to send.

/// Result of feeding text to a [`StopMatcher`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutput {
    /// Text that can be emitted now.
    pub text: String,
    /// Index (into the stop list given to [`StopMatcher::new`]) of the stop string that
    /// matched; generation must end.
    pub stopped: Option<usize>,
}

/// Incremental stop-string matcher for one sequence.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StopMatcher {
            stops: stops.into_iter().map(Into::into).collect(),
            held: String::new(),
            stopped: None,
        }
    }

    /// True when there is nothing to match (text passes through unchanged).
    pub fn is_empty(&self) -> bool {
        self.stops.iter().all(String::is_empty)
    }

    /// The stop string that matched, if any.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.map(|i| self.stops[i].as_str())
    }

    /// Feeds newly generated text. After a match, further text is ignored.
    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.stopped.is_some() {
            return StopOutput {
                text: String::new(),
                stopped: self.stopped,
            };
        }
        self.held.push_str(text);
        // The match that completes first wins (as when text arrives one character at a time,
        // so the result does not depend on how the text was split); on a tie, the longer one.
        let mut best: Option<(usize, usize)> = None; // (start, stop index)
        for (i, stop) in self.stops.iter().enumerate() {
            if stop.is_empty() {
                continue;
            }
            if let Some(at) = self.held.find(stop.as_str()) {
                let end = at + stop.len();
                let better = match best {
                    None => true,
                    Some((b_at, b_i)) => {
                        let b_end = b_at + self.stops[b_i].len();
                        end < b_end || (end == b_end && at < b_at)
                    }
                };
                if better {
                    best = Some((at, i));
                }
            }
        }
        if let Some((at, i)) = best {
            self.held.truncate(at);
            self.stopped = Some(i);
            return StopOutput {
                text: std::mem::take(&mut self.held),
                stopped: Some(i),
            };
        }
        let hold = self.partial_len();
        let emit_len = self.held.len() - hold;
        let rest = self.held.split_off(emit_len);
        let text = std::mem::replace(&mut self.held, rest);
        StopOutput {
            text,
            stopped: None,
        }
    }

    /// Ends the sequence: returns the held-back text (nothing if a stop string matched).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Longest suffix of the held text that is a proper prefix of some stop string.
    fn partial_len(&self) -> usize {
        let s = &self.held;
        let max = self.stops.iter().map(String::len).max().unwrap_or(0);
        let lo = s.len().saturating_sub(max.saturating_sub(1));
        (lo..s.len())
            .filter(|&i| s.is_char_boundary(i))
            .find(|&i| {
                let tail = &s[i..];
                self.stops
                    .iter()
                    .any(|st| st.len() > tail.len() && st.starts_with(tail))
            })
            .map_or(0, |i| s.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.text);
            if let Some(i) = o.stopped {
                return (out, Some(i));
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn truncates_at_stop_across_pieces() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D world"]),
            ("hello ".into(), Some(0))
        );
        assert_eq!(
            run(&["END"], &["hello EN", "X"]),
            ("hello ENX".into(), None)
        );
        assert_eq!(run(&["END"], &["hello EN"]), ("hello EN".into(), None));
    }

    #[test]
    fn holds_only_possible_prefixes() {
        let mut m = StopMatcher::new(["\n\nUser:"]);
        let o = m.push("abc\n");
        assert_eq!(o.text, "abc");
        let o = m.push("x");
        assert_eq!(o.text, "\nx");
    }

    #[test]
    fn first_completed_match_wins() {
        assert_eq!(
            run(&["world", "lo"], &["hello world"]),
            ("hel".into(), Some(1))
        );
        assert_eq!(run(&["abc", "ab"], &["xabc"]), ("x".into(), Some(1)));
        assert_eq!(run(&["abcd", "bc"], &["abcd"]), ("a".into(), Some(1)));
        assert_eq!(run(&["abcd", "bc"], &["ab", "cd"]), ("a".into(), Some(1)));
        assert_eq!(run(&["bc", "abc"], &["xabc"]), ("x".into(), Some(1)));
    }

    #[test]
    fn unicode_and_empty_stops() {
        assert_eq!(
            run(&["", "é!"], &["caf", "é", "!", "x"]),
            ("caf".into(), Some(1))
        );
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert!(m.is_empty());
        assert_eq!(m.push("anything").text, "anything");
    }

    #[test]
    fn after_stop_everything_is_ignored() {
        let mut m = StopMatcher::new(["x"]);
        assert_eq!(m.push("axb").stopped, Some(0));
        assert_eq!(m.stopped(), Some("x"));
        assert_eq!(m.push("more").text, "");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn random_splits_agree_with_one_shot() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let stops = ["</s>", "STOP", "ééx", "aaab", "ab", "s>", "xé"];
        let alphabet: Vec<char> = "aabx</s>STOPé ".chars().collect();
        for _ in 0..300 {
            let len = rng.gen_range(0..40);
            let text: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let whole = run(&stops, &[&text]);
            let chars: Vec<char> = text.chars().collect();
            let mut pieces = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let n = rng.gen_range(1..=4).min(chars.len() - i);
                pieces.push(chars[i..i + n].iter().collect::<String>());
                i += n;
            }
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(run(&stops, &refs), whole, "text {text:?}");
            // the reference: the occurrence that ends first (then the longer one)
            let expect = stops
                .iter()
                .enumerate()
                .filter_map(|(i, s)| text.find(s).map(|at| (at, i)))
                .min_by_key(|&(at, i)| (at + stops[i].len(), at));
            match expect {
                Some((at, i)) => assert_eq!(whole, (text[..at].to_string(), Some(i))),
                None => assert_eq!(whole, (text.clone(), None)),
            }
        }
    }
}
