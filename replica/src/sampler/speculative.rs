//! Speculative decoding on the host: choosing draft tokens from the draft model's rows, and
//! verifying them against the target model's rows so that the tokens keep exactly the
//! distribution of ordinary sampling.
//!
//! * Greedy: a draft token is the argmax of its (processed) draft row. The target accepts draft
//!   `i` while it equals its own greedy token at that position, then adds its own token: the
//!   correction at the first mismatch, or a bonus token after the last draft. The result is the
//!   greedy output, token for token.
//! * Sampling (speculative sampling, Leviathan et al. 2023 / Chen et al. 2023): draft token `d`
//!   is drawn from `q`, the draft row after the same processors, temperature and truncation as
//!   the target's. The target accepts it with probability `min(1, p(d) / q(d))`, where `p` is
//!   its own distribution at that position; on rejection it draws from `norm(max(0, p - q))` and
//!   stops; after the last accepted draft it draws a bonus token from `p`. Every emitted token
//!   then has exactly the law of ordinary sampling from `p`.
//!
//! Processors (penalties, the `min_tokens` mask) treat earlier drafts of the same proposal as
//! generated, as ordinary sampling would once they are accepted. Logprobs are the raw target
//! distribution's, as for ordinary sampling.

use rand::Rng;

use super::truncation::{distribution, draw};
use super::{argmax, RawLogprobs, Sampled, SeqSampler};

/// A proposed draft token.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftToken {
    /// Token id.
    pub token: u32,
    /// The draft distribution it was drawn from (sampling; `None` for greedy), over the valid
    /// vocabulary: verification needs it.
    pub probs: Option<Vec<f32>>,
}

/// Inverse-CDF draw from probabilities with `u ∈ [0, 1)`; the last positive entry on rounding.
fn draw_probs(probs: &[f32], u: f64) -> u32 {
    let total: f64 = probs.iter().map(|&x| f64::from(x)).sum();
    let mut target = u * total;
    let mut last = 0;
    for (i, &x) in probs.iter().enumerate() {
        if x > 0.0 {
            last = i;
            target -= f64::from(x);
            if target < 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}

impl SeqSampler {
    /// Chooses a draft token from the draft model's `row` (scratch, modified). `pending` are the
    /// draft tokens already chosen for this proposal; `valid` the real vocabulary size.
    pub fn propose(&mut self, row: &mut [f32], valid: usize, pending: &[u32]) -> DraftToken {
        let valid = valid.min(row.len());
        let row = &mut row[..valid];
        self.apply_processors(row, pending);
        if self.params.is_greedy() {
            return DraftToken {
                token: argmax(row),
                probs: None,
            };
        }
        let q = distribution(row, &self.params);
        let u: f64 = self.rng.gen();
        DraftToken {
            token: draw_probs(&q, u),
            probs: Some(q),
        }
    }

    /// Verifies `drafts` and returns the tokens to emit (1 to `drafts.len() + 1`). `rows` holds
    /// the target's logits rows (`vocab` wide, scratch) of the positions from the last known
    /// token on: `rows` row `i` scores the token that follows draft `i - 1`. `probs` are the
    /// drafts' distributions from [`Self::propose`] (sampling); drafts without one are not
    /// verified (the step then emits fewer tokens, still with the right law).
    pub fn verify(
        &mut self,
        rows: &mut [f32],
        vocab: usize,
        valid: usize,
        drafts: &[u32],
        probs: &[Vec<f32>],
    ) -> Vec<Sampled> {
        let greedy = self.params.is_greedy();
        let n_rows = rows.len().checked_div(vocab).unwrap_or(0);
        let usable = if greedy {
            drafts.len()
        } else {
            drafts.len().min(probs.len())
        };
        let n = usable.min(n_rows.saturating_sub(1));
        let valid = valid.min(vocab);
        let mut out = Vec::with_capacity(n + 1);
        for (i, chunk) in rows.chunks_mut(vocab).take(n + 1).enumerate() {
            if i == n {
                out.push(self.sample_row_after(chunk, valid, &drafts[..n]));
                break;
            }
            chunk[valid..].fill(f32::NEG_INFINITY);
            let row = &mut chunk[..valid];
            let logprobs = self.params.logprobs.map(|k| RawLogprobs::new(row, k));
            self.apply_processors(row, &drafts[..i]);
            let draft = drafts[i];
            let (token, accepted) = if greedy {
                let t = argmax(row);
                (t, t == draft)
            } else {
                let p = distribution(row, &self.params);
                let q = &probs[i];
                let (pd, qd) = (
                    p.get(draft as usize).copied().unwrap_or(0.0),
                    q.get(draft as usize).copied().unwrap_or(0.0),
                );
                if q.len() != p.len() || qd <= 0.0 {
                    // Not a draft of this distribution: plain sampling at this position.
                    let u: f64 = self.rng.gen();
                    (draw(row, &self.params, u), false)
                } else {
                    let u: f64 = self.rng.gen();
                    if u * f64::from(qd) < f64::from(pd) {
                        (draft, true)
                    } else {
                        let residual: Vec<f32> =
                            p.iter().zip(q).map(|(&a, &b)| (a - b).max(0.0)).collect();
                        let u: f64 = self.rng.gen();
                        if residual.iter().any(|&r| r > 0.0) {
                            (draw_probs(&residual, u), false)
                        } else {
                            (draw_probs(&p, u), false)
                        }
                    }
                }
            };
            out.push(Sampled {
                token,
                logprobs: logprobs.map(|lp| lp.finish(token)),
            });
            if !accepted {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::sampler::SamplingParams;

    fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    fn tokens(s: &[Sampled]) -> Vec<u32> {
        s.iter().map(|x| x.token).collect()
    }

    #[test]
    fn greedy_accepts_while_drafts_match_then_corrects() {
        let mut s = SeqSampler::new(greedy(), 0, &[], vec![]);
        // 3 rows over a vocabulary of 4: argmaxes 2, 1, 3.
        let rows = vec![
            0.0, 0.0, 5.0, 0.0, //
            0.0, 4.0, 0.0, 0.0, //
            0.0, 0.0, 0.0, 1.0,
        ];
        assert_eq!(
            tokens(&s.verify(&mut rows.clone(), 4, 4, &[2, 1], &[])),
            [2, 1, 3]
        );
        assert_eq!(
            tokens(&s.verify(&mut rows.clone(), 4, 4, &[2, 0], &[])),
            [2, 1]
        );
        assert_eq!(
            tokens(&s.verify(&mut rows.clone(), 4, 4, &[3, 1], &[])),
            [2]
        );
        // Padded columns (valid = 2) are never emitted: row 0's argmax becomes 0.
        assert_eq!(
            tokens(&s.verify(&mut rows.clone(), 4, 2, &[0, 1], &[])),
            [0, 1, 0]
        );
        let d = s.propose(&mut [0.0, 1.0, 3.0, 0.5], 4, &[]);
        assert_eq!((d.token, d.probs), (2, None));
    }

    /// Greedy verification with penalties, logprobs and a `min_tokens` mask equals sampling
    /// the positions one by one and observing each token.
    #[test]
    fn greedy_verification_equals_sequential_sampling() {
        let params = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.7,
            frequency_penalty: 0.4,
            presence_penalty: 0.3,
            min_tokens: 2,
            logprobs: Some(2),
            ..SamplingParams::default()
        };
        let vocab = 6;
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..300 {
            let rows: Vec<f32> = (0..vocab * 4).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let prompt = [rng.gen_range(0..6u32)];
            let mut spec = SeqSampler::new(params.clone(), 0, &prompt, vec![0]);
            let mut plain = spec.clone();
            // Drafts: mostly the sequential answer, sometimes not.
            let mut want = Vec::new();
            for i in 0..4 {
                let t = plain.sample_row(&mut rows[i * vocab..(i + 1) * vocab].to_vec(), vocab);
                plain.observe(&[t.token]);
                want.push(t);
            }
            let drafts: Vec<u32> = want[..3]
                .iter()
                .map(|t| {
                    if rng.gen_bool(0.8) {
                        t.token
                    } else {
                        rng.gen_range(0..6)
                    }
                })
                .collect();
            let got = spec.verify(&mut rows.clone(), vocab, vocab, &drafts, &[]);
            let n_ok = drafts
                .iter()
                .zip(&want)
                .take_while(|(d, w)| **d == w.token)
                .count();
            assert_eq!(got, want[..n_ok + 1].to_vec());
        }
    }

    /// A tiny "model" over 4 tokens: target and draft logits depend on the previous token.
    fn target_row(prev: u32) -> Vec<f32> {
        let table = [
            [1.0, 0.2, -0.5, 0.7],
            [0.1, 1.5, 0.3, -1.0],
            [-0.3, 0.4, 0.9, 0.0],
            [0.8, -0.2, 0.1, 1.1],
        ];
        table[prev as usize].to_vec()
    }

    fn draft_row(prev: u32) -> Vec<f32> {
        let table = [
            [0.9, 0.9, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.5],
            [1.0, 0.0, 0.0, 1.0],
            [0.5, 0.5, 0.5, 0.5],
        ];
        table[prev as usize].to_vec()
    }

    /// Speculative sampling keeps the law of ordinary sampling: the joint distribution of the
    /// first two generated tokens matches `p(a) p(b | a)` (with temperature, top_k and a
    /// repetition penalty that sees the pending draft), over 60k seeded runs.
    #[test]
    fn speculative_sampling_preserves_the_distribution() {
        let params = SamplingParams {
            temperature: 0.8,
            top_k: 3,
            repetition_penalty: 1.3,
            ..SamplingParams::default()
        };
        let prompt_last = 0u32;
        // Exact law of two ordinary draws.
        let mut exact = [[0f64; 4]; 4];
        let probe = SeqSampler::new(params.clone(), 0, &[prompt_last], vec![]);
        let law = |s: &SeqSampler, prev: u32, pending: &[u32]| {
            let mut row = target_row(prev);
            s.apply_processors(&mut row, pending);
            distribution(&row, &s.params)
        };
        let pa = law(&probe, prompt_last, &[]);
        for a in 0..4u32 {
            let pb = law(&probe, a, &[a]);
            for b in 0..4 {
                exact[a as usize][b] = f64::from(pa[a as usize]) * f64::from(pb[b]);
            }
        }
        let runs = 60_000;
        let mut counts = [[0usize; 4]; 4];
        let mut accepted = 0;
        for seed in 0..runs {
            let mut s = SeqSampler::new(params.clone(), seed, &[prompt_last], vec![]);
            let d = s.propose(&mut draft_row(prompt_last), 4, &[]);
            let mut rows = target_row(prompt_last);
            rows.extend(target_row(d.token));
            let probs = d.probs.clone().into_iter().collect::<Vec<_>>();
            let out = s.verify(&mut rows, 4, 4, &[d.token], &probs);
            let first = out[0].token;
            s.observe(&[first]);
            let second = if out.len() == 2 {
                accepted += 1;
                out[1].token
            } else {
                s.sample_row(&mut target_row(first), 4).token
            };
            counts[first as usize][second as usize] += 1;
        }
        for a in 0..4 {
            for b in 0..4 {
                let got = counts[a][b] as f64 / runs as f64;
                let want = exact[a][b];
                // 5 standard deviations of a binomial share.
                let tol = 5.0 * (want * (1.0 - want) / runs as f64).sqrt() + 1e-4;
                assert!(
                    (got - want).abs() < tol,
                    "P({a}, {b}) = {got:.4}, expected {want:.4}"
                );
            }
        }
        // The draft is decent: a good share of runs took both tokens from one step.
        assert!(accepted > runs as usize / 3, "{accepted} accepted");
    }

    #[test]
    fn drafts_without_probabilities_are_not_verified() {
        let mut s = SeqSampler::new(SamplingParams::default(), 3, &[], vec![]);
        let mut rows = vec![0.0; 8];
        // Sampling with no draft distribution: plain sampling at the first position.
        assert_eq!(s.verify(&mut rows, 4, 4, &[1], &[]).len(), 1);
        // A draft outside its own distribution is not accepted blindly.
        let mut rows = vec![0.0; 8];
        let out = s.verify(&mut rows, 4, 4, &[1], &[vec![1.0, 0.0, 0.0, 0.0]]);
        assert_eq!(out.len(), 1);
    }
}
