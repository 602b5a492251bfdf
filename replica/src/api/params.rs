//! From request fields to an [`EngineRequest`]: defaults (request → checkpoint generation
//! config → OpenAI), validation with vLLM's rules and messages, and the context-window check.

use std::time::Instant;

use super::error::ApiError;
use super::protocol::SamplingFields;
use super::AppState;
use crate::engine::EngineRequest;
use crate::sampler::SamplingParams;

/// Largest `n` accepted (each choice is a sequence in the batch).
pub const MAX_N: usize = 128;

/// The validated, prompt-independent part of a generation request.
#[derive(Debug, Clone)]
pub struct CommonParams {
    /// Choices per prompt.
    pub n: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Extra stop token ids.
    pub stop_token_ids: Vec<u32>,
    /// Ignore EOS.
    pub ignore_eos: bool,
    /// Keep stop strings in the text.
    pub include_stop_str_in_output: bool,
    /// Drop special tokens from the text.
    pub skip_special_tokens: bool,
    /// Queue priority.
    pub priority: i32,
    /// Prefix-cache namespace.
    pub cache_salt: Option<String>,
}

fn check_range(param: &'static str, v: f32, lo: f32, hi: f32) -> Result<(), ApiError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(ApiError::bad(
            param,
            format!("{param} must be in [{lo}, {hi}], got {v}"),
        ))
    }
}

/// Validates the shared fields; `logprobs` is the number of top logprobs (None = no logprobs).
pub fn common_params(
    f: &SamplingFields,
    logprobs: Option<usize>,
    st: &AppState,
) -> Result<CommonParams, ApiError> {
    let d = &st.defaults;
    if f.stream_options.is_some() && !f.stream {
        return Err(ApiError::bad(
            "stream_options",
            "Stream options can only be defined when `stream=True`.",
        ));
    }
    let n = f.n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::bad(
            "n",
            format!("n must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let temperature = f.temperature.or(d.temperature).unwrap_or(1.0);
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(ApiError::bad(
            "temperature",
            format!("temperature must be non-negative, got {temperature}"),
        ));
    }
    let top_p = f.top_p.or(d.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match f.top_k {
        Some(k) if k < -1 => {
            return Err(ApiError::bad(
                "top_k",
                format!("top_k must be -1 (disable), or at least 0, got {k}"),
            ))
        }
        Some(k) => usize::try_from(k).unwrap_or(0),
        None => d.top_k.unwrap_or(0),
    };
    let min_p = f.min_p.or(d.min_p).unwrap_or(0.0);
    check_range("min_p", min_p, 0.0, 1.0)?;
    let presence_penalty = f.presence_penalty.unwrap_or(0.0);
    check_range("presence_penalty", presence_penalty, -2.0, 2.0)?;
    let frequency_penalty = f.frequency_penalty.unwrap_or(0.0);
    check_range("frequency_penalty", frequency_penalty, -2.0, 2.0)?;
    let repetition_penalty = f.repetition_penalty.or(d.repetition_penalty).unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(ApiError::bad(
            "repetition_penalty",
            format!("repetition_penalty must be greater than zero, got {repetition_penalty}"),
        ));
    }
    if let Some(k) = logprobs {
        if k > st.max_logprobs {
            return Err(ApiError::bad(
                "logprobs",
                format!(
                    "Requested sample logprobs of {k}, which is greater than max allowed: {}",
                    st.max_logprobs
                ),
            ));
        }
    }
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "stop cannot contain an empty string"));
    }
    let stop_token_ids = f.stop_token_ids.clone().unwrap_or_default();
    if let Some(bad) = stop_token_ids
        .iter()
        .find(|&&t| t as usize >= st.vocab_size)
    {
        return Err(ApiError::bad(
            "stop_token_ids",
            format!("stop token id {bad} is out of vocabulary"),
        ));
    }
    let logit_bias = parse_logit_bias(f, st.vocab_size)?;
    Ok(CommonParams {
        n,
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            presence_penalty,
            frequency_penalty,
            repetition_penalty,
            // Negative seeds are accepted (as by vLLM) and reinterpreted as u64.
            seed: f.seed.map(|s| s as u64),
            logprobs,
            logit_bias,
            min_tokens: f.min_tokens.unwrap_or(0),
        },
        stop,
        stop_token_ids,
        ignore_eos: f.ignore_eos,
        include_stop_str_in_output: f.include_stop_str_in_output,
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
        priority: f.priority.unwrap_or(0),
        cache_salt: f.cache_salt.clone().filter(|s| !s.is_empty()),
    })
}

fn parse_logit_bias(f: &SamplingFields, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = &f.logit_bias else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| {
            let tok: u32 = k
                .parse()
                .ok()
                .filter(|&t: &u32| (t as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::bad(
                        "logit_bias",
                        format!("invalid token id {k:?} in logit_bias"),
                    )
                })?;
            let bias = v
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    ApiError::bad(
                        "logit_bias",
                        format!("bias for token {k} must be a number in [-100, 100]"),
                    )
                })?;
            Ok((tok, bias as f32))
        })
        .collect()
}

/// The number of tokens to generate: the request's, else the checkpoint default, else what fits
/// the context window. Errors with vLLM's wording when the request cannot fit.
pub fn max_tokens_for(
    prompt_len: usize,
    requested: Option<usize>,
    st: &AppState,
) -> Result<usize, ApiError> {
    max_tokens_within(
        prompt_len,
        requested,
        st.max_model_len,
        st.defaults.max_new_tokens,
    )
}

/// [`max_tokens_for`] on plain values: the context check and the default.
fn max_tokens_within(
    prompt_len: usize,
    requested: Option<usize>,
    max_len: usize,
    default_max_new_tokens: Option<usize>,
) -> Result<usize, ApiError> {
    if prompt_len >= max_len {
        return Err(ApiError::bad(
            "messages",
            format!(
                "This model's maximum context length is {max_len} tokens. However, your request has \
                 {prompt_len} input tokens. Please reduce the length of the input messages."
            ),
        ));
    }
    let room = max_len - prompt_len;
    match requested {
        Some(0) => Err(ApiError::bad("max_tokens", "max_tokens must be at least 1, got 0.")),
        // `m` is the client's number, up to usize::MAX: the sum in the message must not overflow
        Some(m) if m > room => Err(ApiError::bad(
            "max_tokens",
            format!(
                "This model's maximum context length is {max_len} tokens. However, you requested \
                 {} tokens ({prompt_len} in the messages, {m} in the completion). Please reduce the \
                 length of the messages or completion.",
                u128::from(prompt_len as u64) + u128::from(m as u64)
            ),
        )),
        Some(m) => Ok(m),
        None => Ok(default_max_new_tokens.map_or(room, |d| d.min(room))),
    }
}

/// Checks `min_tokens ≤ max_tokens` and builds the engine request.
pub fn engine_request(
    prompt: Vec<u32>,
    max_tokens: usize,
    p: &CommonParams,
    choice_base: u32,
    arrival: Instant,
) -> Result<EngineRequest, ApiError> {
    if p.sampling.min_tokens > max_tokens {
        return Err(ApiError::bad(
            "min_tokens",
            format!(
                "min_tokens must be less than or equal to max_tokens={max_tokens}, got {}",
                p.sampling.min_tokens
            ),
        ));
    }
    Ok(EngineRequest {
        prompt_token_ids: prompt,
        n: p.n,
        choice_base,
        max_tokens,
        sampling: p.sampling.clone(),
        stop: p.stop.clone(),
        stop_token_ids: p.stop_token_ids.clone(),
        ignore_eos: p.ignore_eos,
        include_stop_str_in_output: p.include_stop_str_in_output,
        skip_special_tokens: p.skip_special_tokens,
        priority: p.priority,
        cache_salt: p.cache_salt.clone(),
        arrival,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_near_usize_max_is_a_400_not_an_overflow() {
        // Regression (found by tests/tests/reliability_bad_input.rs): `"max_tokens":
        // 18446744073709551615` overflowed the sum in the error message and panicked the
        // handler, so the client's connection was dropped without an answer.
        for m in [usize::MAX, usize::MAX - 3, 1 << 63] {
            let err = max_tokens_within(3, Some(m), 512, None).unwrap_err();
            assert!(matches!(
                err,
                ApiError::BadRequest {
                    param: Some("max_tokens"),
                    ..
                }
            ));
            let expected = format!("you requested {} tokens", 3u128 + m as u128);
            assert!(err.to_string().contains(&expected), "{err}");
        }
    }

    #[test]
    fn max_tokens_defaults_and_bounds() {
        assert_eq!(max_tokens_within(10, None, 512, None).unwrap(), 502);
        assert_eq!(max_tokens_within(10, None, 512, Some(16)).unwrap(), 16);
        assert_eq!(max_tokens_within(10, Some(502), 512, None).unwrap(), 502);
        assert!(max_tokens_within(10, Some(503), 512, None).is_err());
        assert!(max_tokens_within(10, Some(0), 512, None).is_err());
        assert!(max_tokens_within(512, Some(1), 512, None).is_err());
    }
}
