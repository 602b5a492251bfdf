//! Formatting sampler logprobs for the two OpenAI shapes: chat (`content: [{token, logprob,
//! bytes, top_logprobs}]`) and legacy completions (`tokens`, `token_logprobs`, `top_logprobs`,
//! `text_offset`). Token texts are the single-token decodes, special tokens included.

use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use super::protocol::{ChatLogprob, ChatLogprobs, ChatTopLogprob, CompletionLogprobs};
use crate::sampler::SampleLogprobs;

/// Text of one token.
pub fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// Chat logprobs for consecutive tokens.
pub fn chat(tok: &Tokenizer, lps: &[SampleLogprobs]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| {
                let token = token_text(tok, lp.sampled.token);
                ChatLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: lp.sampled.logprob,
                    top_logprobs: lp
                        .top
                        .iter()
                        .map(|t| {
                            let token = token_text(tok, t.token);
                            ChatTopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob: t.logprob,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// Appends completions logprobs for consecutive tokens; `offset` is the byte length of the
/// choice text before them (advanced by each token's text).
pub fn append_completion(
    out: &mut CompletionLogprobs,
    tok: &Tokenizer,
    lps: &[SampleLogprobs],
    offset: &mut usize,
) {
    for lp in lps {
        let text = token_text(tok, lp.sampled.token);
        out.text_offset.push(*offset);
        *offset += text.len();
        let mut top = Map::new();
        for t in &lp.top {
            top.insert(token_text(tok, t.token), Value::from(f64::from(t.logprob)));
        }
        // vLLM lists the sampled token among the alternatives too.
        top.entry(text.clone())
            .or_insert_with(|| Value::from(f64::from(lp.sampled.logprob)));
        out.tokens.push(text);
        out.token_logprobs.push(lp.sampled.logprob);
        out.top_logprobs.push(top);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::TokenLogprob;
    use crate::testing::byte_tokenizer;

    #[test]
    fn both_shapes() {
        let tok = byte_tokenizer();
        let lp = SampleLogprobs {
            sampled: TokenLogprob {
                token: 97,
                logprob: -0.5,
            },
            top: vec![TokenLogprob {
                token: 98,
                logprob: -0.1,
            }],
        };
        let c = chat(&tok, std::slice::from_ref(&lp));
        assert_eq!(c.content[0].token, "a");
        assert_eq!(c.content[0].bytes, b"a");
        assert_eq!(c.content[0].top_logprobs[0].token, "b");
        let mut out = CompletionLogprobs::default();
        let mut offset = 3;
        append_completion(&mut out, &tok, &[lp.clone(), lp], &mut offset);
        assert_eq!(out.tokens, vec!["a", "a"]);
        assert_eq!(out.text_offset, vec![3, 4]);
        assert_eq!(offset, 5);
        assert_eq!(out.top_logprobs[0].len(), 2);
    }
}
