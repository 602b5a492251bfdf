//! Token-level stop conditions, checked after each generated token is appended.
//!
//! Order: once `min_tokens` tokens are generated, EOS (unless `ignore_eos`) and stop token ids
//! finish with `Stop` (before that both are held back, as in vLLM); otherwise reaching
//! `max_tokens` finishes with `Length`, whatever `min_tokens` says. Stop strings are the engine's (see `Scheduler::finish`).

use crate::request::{FinishReason, Request};

/// Returns the finish reason (and the stop token, for `Stop`) if `req` must finish now.
/// `token` is the last token, already appended to `req.tokens`.
pub(crate) fn check_stop(req: &Request, token: u32) -> Option<(FinishReason, Option<u32>)> {
    let num_output = req.num_output_tokens();
    if num_output >= req.min_tokens {
        let is_eos = !req.ignore_eos && req.eos_token_ids.contains(&token);
        if is_eos || req.stop_token_ids.contains(&token) {
            return Some((FinishReason::Stop, Some(token)));
        }
    }
    // Always honoured, even when `min_tokens > max_tokens`.
    if num_output >= req.max_tokens {
        return Some((FinishReason::Length, None));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::NewRequest;

    fn req(min_tokens: usize, max_tokens: usize, ignore_eos: bool) -> Request {
        Request::new(
            NewRequest {
                id: 1,
                prompt_token_ids: vec![5, 5],
                max_tokens,
                min_tokens,
                eos_token_ids: vec![0],
                stop_token_ids: vec![9],
                ignore_eos,
                ..Default::default()
            },
            0,
        )
    }

    fn push(r: &mut Request, t: u32) -> Option<(FinishReason, Option<u32>)> {
        r.tokens.push(t);
        check_stop(r, t)
    }

    #[test]
    fn eos_and_stop_ids_finish_with_stop() {
        let mut r = req(0, 10, false);
        assert_eq!(push(&mut r, 3), None);
        assert_eq!(push(&mut r, 0), Some((FinishReason::Stop, Some(0))));
        let mut r = req(0, 10, false);
        assert_eq!(push(&mut r, 9), Some((FinishReason::Stop, Some(9))));
    }

    #[test]
    fn ignore_eos_keeps_stop_ids() {
        let mut r = req(0, 10, true);
        assert_eq!(push(&mut r, 0), None);
        assert_eq!(push(&mut r, 9), Some((FinishReason::Stop, Some(9))));
    }

    #[test]
    fn min_tokens_holds_back_eos_and_stop_ids() {
        let mut r = req(2, 10, false);
        assert_eq!(push(&mut r, 0), None);
        assert_eq!(push(&mut r, 0), Some((FinishReason::Stop, Some(0))));
        let mut r = req(2, 10, false);
        assert_eq!(push(&mut r, 9), None);
    }

    #[test]
    fn max_tokens_finishes_with_length_unless_stop_token() {
        let mut r = req(0, 2, false);
        assert_eq!(push(&mut r, 3), None);
        assert_eq!(push(&mut r, 4), Some((FinishReason::Length, None)));
        let mut r = req(0, 1, false);
        assert_eq!(push(&mut r, 0), Some((FinishReason::Stop, Some(0))));
        // max_tokens wins over a larger min_tokens.
        let mut r = req(5, 1, false);
        assert_eq!(push(&mut r, 0), Some((FinishReason::Length, None)));
    }
}
