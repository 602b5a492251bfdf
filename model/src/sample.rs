//! Sampling that a device can do without the host: greedy, or temperature sampling by the Gumbel-max
//! trick with a counter-based random stream (so a seed gives the same token on any device), after
//! an optional top-k / top-p / min-p truncation expressed as one logit threshold per row. This is
//! the reference twin of the GPU `sample_thresh` / `sample_part` / `sample_rows` kernels;
//! penalties, logit bias and logprobs stay with the replica's host sampler.

/// What one sampled row asks of the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceSampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// Seed of this row's noise (mix the request seed with the step for a fresh draw each token).
    pub seed: u64,
    /// Keep the `top_k` largest logits (0: all).
    pub top_k: u32,
    /// Keep the fewest largest logits whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Keep the logits whose probability is at least `min_p` times the largest's (0: all).
    pub min_p: f32,
}

impl DeviceSampling {
    /// The argmax (ties to the lower id).
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        seed: 0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };

    /// Whether the row is truncated before its draw (greedy rows never are).
    pub fn truncates(&self) -> bool {
        self.temperature > 0.0 && (self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0)
    }
}

/// Relative slack on the top-p mass, as the host sampler's: `top_p` given as f32 (0.1 is
/// 0.100000001) must not pull in one extra token of a flat distribution.
pub const TOP_P_SLACK: f64 = 1e-6;

/// The truncation of a row as a logit threshold: the draw's candidates are the first `valid`
/// logits `>= threshold` (`-inf`: every finite logit). min-p keeps `x >= max + T ln(min_p)`;
/// top-k, of those, the `top_k` largest (ties with the k-th kept); top-p, of those, the fewest
/// largest whose weights `exp((x - max) / T)` reach `top_p` of their sum (ties kept). The kernel
/// finds the same values by radix selection; its float sums may differ in the last bits, which
/// moves the threshold only when a cumulative mass lands within rounding of `top_p`.
pub fn truncation_threshold(row: &[f32], valid: usize, s: DeviceSampling) -> f32 {
    if !s.truncates() {
        return f32::NEG_INFINITY;
    }
    let row = &row[..valid.min(row.len())];
    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if mx == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let mut lo = if s.min_p > 0.0 {
        s.temperature.mul_add(min_p_log(s.min_p), mx)
    } else {
        f32::NEG_INFINITY
    };
    let mut kept: Vec<f32> = row
        .iter()
        .copied()
        .filter(|&x| x >= lo && x > f32::NEG_INFINITY)
        .collect();
    kept.sort_unstable_by(|a, b| b.total_cmp(a));
    let k = s.top_k as usize;
    if k > 0 && k < kept.len() {
        lo = kept[k - 1];
        kept.retain(|&x| x >= lo);
    }
    if s.top_p < 1.0 {
        let inv_t = 1.0 / s.temperature;
        let w = |x: f32| f64::from(((x - mx) * inv_t).exp());
        let total: f64 = kept.iter().map(|&x| w(x)).sum();
        let need = f64::from(s.top_p) * total * (1.0 - TOP_P_SLACK);
        let mut cum = 0.0;
        for &x in &kept {
            cum += w(x);
            if cum >= need {
                lo = lo.max(x);
                break;
            }
        }
    }
    lo
}

/// `ln(min_p)` as the device kernel takes it (`-inf`: off). It is computed once, here, so that the
/// kernel and [`truncation_threshold`] form the same bound `max + T ln(min_p)` (one fused
/// multiply-add on both sides).
pub fn min_p_log(min_p: f32) -> f32 {
    if min_p > 0.0 {
        min_p.ln()
    } else {
        f32::NEG_INFINITY
    }
}

/// SplitMix64 finaliser (the same constants as the kernel).
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in (0, 1) from 24 random bits of `(seed, i)`.
pub fn uniform01(seed: u64, i: u64) -> f32 {
    let h = splitmix(seed ^ splitmix(i));
    ((h >> 40) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// The token the device picks for `row` (only the first `valid` entries, at or above the
/// [`truncation_threshold`], are candidates). Ties go to the lower id; NaN logits are never picked.
pub fn sample_host(row: &[f32], valid: usize, s: DeviceSampling) -> u32 {
    let threshold = truncation_threshold(row, valid, s);
    let mut best = (f32::NEG_INFINITY, usize::MAX);
    for (j, &l) in row.iter().enumerate().take(valid) {
        // below the threshold, or NaN
        if l.is_nan() || l < threshold {
            continue;
        }
        let v = if s.temperature > 0.0 {
            l / s.temperature - (-(uniform01(s.seed, j as u64)).ln()).ln()
        } else {
            l
        };
        if v > best.0 || (v == best.0 && j < best.1) {
            best = (v, j);
        }
    }
    if best.1 < valid {
        best.1 as u32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_with_lowest_tie() {
        let row = [0.5, 2.0, 2.0, f32::NAN, -1.0];
        let g = DeviceSampling::GREEDY;
        assert_eq!(sample_host(&row, 5, g), 1);
        assert_eq!(sample_host(&row, 1, g), 0);
        assert_eq!(sample_host(&[f32::NAN; 3], 3, g), 0);
    }

    #[test]
    fn gumbel_sampling_follows_softmax() {
        // p = softmax([0, ln 3]) = [0.25, 0.75]
        let row = [0.0, 3f32.ln()];
        let n = 20_000;
        let ones = (0..n)
            .filter(|&i| {
                sample_host(
                    &row,
                    2,
                    DeviceSampling {
                        temperature: 1.0,
                        seed: splitmix(i),
                        ..DeviceSampling::GREEDY
                    },
                ) == 1
            })
            .count();
        let p = ones as f64 / n as f64;
        assert!((p - 0.75).abs() < 0.015, "p(1) = {p}");
        // same seed, same token
        let s = DeviceSampling {
            temperature: 0.7,
            seed: 42,
            ..DeviceSampling::GREEDY
        };
        assert_eq!(sample_host(&row, 2, s), sample_host(&row, 2, s));
    }

    fn spec(temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> DeviceSampling {
        DeviceSampling {
            temperature,
            seed: 0,
            top_k,
            top_p,
            min_p,
        }
    }

    /// Draw frequencies over `n` seeds.
    fn frequencies(row: &[f32], s: DeviceSampling, n: u64) -> Vec<f64> {
        let mut f = vec![0f64; row.len()];
        for i in 0..n {
            let t = sample_host(
                row,
                row.len(),
                DeviceSampling {
                    seed: splitmix(i),
                    ..s
                },
            );
            f[t as usize] += 1.0 / n as f64;
        }
        f
    }

    #[test]
    fn truncation_thresholds_follow_their_definitions() {
        // probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1
        let row: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let t = |s| truncation_threshold(&row, 4, s);
        assert_eq!(t(spec(1.0, 0, 1.0, 0.0)), f32::NEG_INFINITY);
        assert_eq!(t(spec(0.0, 2, 0.5, 0.5)), f32::NEG_INFINITY, "greedy");
        assert_eq!(t(spec(1.0, 2, 1.0, 0.0)), row[1]);
        assert_eq!(
            t(spec(1.0, 9, 1.0, 0.0)),
            f32::NEG_INFINITY,
            "k above the row"
        );
        assert_eq!(t(spec(1.0, 0, 0.8, 0.0)), row[1], "0.5 + 0.3 reach 0.8");
        assert_eq!(t(spec(1.0, 0, 0.81, 0.0)), row[2]);
        assert_eq!(t(spec(1.0, 0, 0.4, 0.0)), row[0]);
        // min_p 0.5: p >= 0.25 keeps 0.5 and 0.3
        let m = t(spec(1.0, 0, 1.0, 0.5));
        assert!(row[1] >= m && row[2] < m, "{m}");
        // top_k 3 then top_p 0.9 of those (0.95 of mass): 0.5 + 0.3 = 0.8 < 0.855, so three
        assert_eq!(t(spec(1.0, 3, 0.9, 0.0)), row[2]);
        // ties with the k-th are kept
        let tied = [1.0f32, 2.0, 2.0, 0.0];
        assert_eq!(truncation_threshold(&tied, 4, spec(1.0, 2, 1.0, 0.0)), 2.0);
        assert_eq!(truncation_threshold(&tied, 4, spec(1.0, 1, 1.0, 0.0)), 2.0);
        // only the first `valid` logits count
        assert_eq!(
            truncation_threshold(&tied, 1, spec(1.0, 1, 1.0, 0.0)),
            f32::NEG_INFINITY
        );
        assert_eq!(truncation_threshold(&tied, 1, spec(1.0, 0, 0.5, 0.0)), 1.0);
    }

    #[test]
    fn random_thresholds_keep_the_smallest_sets_that_qualify() {
        let mut z = 1u64;
        let mut next = || {
            z = splitmix(z);
            (z >> 40) as f32 / 16_777_216.0
        };
        for case in 0..300 {
            let n = 5 + (next() * 300.0) as usize;
            let row: Vec<f32> = (0..n).map(|_| next() * 12.0 - 6.0).collect();
            let temperature = 0.2 + next() * 1.5;
            let k = [0, 1, 5, 40][case % 4];
            let p = [1.0, 0.95, 0.5, 0.1][(case / 4) % 4];
            let s = spec(temperature, k, p, 0.0);
            let th = truncation_threshold(&row, n, s);
            let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let w = |x: f32| f64::from(((x - mx) / temperature).exp());
            let kept: Vec<f32> = row.iter().copied().filter(|&x| x >= th).collect();
            let above: Vec<f32> = row.iter().copied().filter(|&x| x > th).collect();
            if k > 0 && (k as usize) < n {
                // the k-th largest of distinct random values: exactly k unless top_p cut more
                assert!(
                    kept.len() <= k as usize,
                    "case {case}: {} kept of top {k}",
                    kept.len()
                );
            }
            if p < 1.0 {
                let mut base = row.clone();
                if k > 0 && (k as usize) < n {
                    base.sort_by(|a, b| b.total_cmp(a));
                    base.truncate(k as usize);
                }
                let need =
                    f64::from(p) * base.iter().map(|&x| w(x)).sum::<f64>() * (1.0 - TOP_P_SLACK);
                let mass = |v: &[f32]| v.iter().map(|&x| w(x)).sum::<f64>();
                assert!(mass(&kept) >= need, "case {case}: kept mass short");
                assert!(mass(&above) < need, "case {case}: a smaller set qualifies");
            }
            // every draw is a kept token
            let t = sample_host(
                &row,
                n,
                DeviceSampling {
                    seed: case as u64,
                    ..s
                },
            );
            assert!(
                row[t as usize] >= th,
                "case {case}: drew below the threshold"
            );
        }
    }

    #[test]
    fn truncated_sampling_follows_the_renormalized_distribution() {
        let row: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        // top_k 2: 0.5 / 0.8 and 0.3 / 0.8
        let f = frequencies(&row, spec(1.0, 2, 1.0, 0.0), 20_000);
        assert!(
            (f[0] - 0.625).abs() < 0.015 && (f[1] - 0.375).abs() < 0.015,
            "{f:?}"
        );
        assert_eq!(f[2] + f[3], 0.0);
        // top_p 0.9: 0.5, 0.3, 0.15 renormalized by 0.95
        let f = frequencies(&row, spec(1.0, 0, 0.9, 0.0), 20_000);
        assert!((f[2] - 0.15 / 0.95).abs() < 0.012 && f[3] == 0.0, "{f:?}");
        // min_p 0.2: p >= 0.1 keeps three
        let f = frequencies(&row, spec(1.0, 0, 1.0, 0.2), 20_000);
        assert!(f[2] > 0.1 && f[3] == 0.0, "{f:?}");
    }

    #[test]
    fn uniform_is_inside_the_open_interval() {
        for i in 0..10_000 {
            let u = uniform01(7, i);
            assert!(u > 0.0 && u < 1.0);
        }
    }
}
