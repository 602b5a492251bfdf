//! Sampling that a device can do without the host: greedy, or temperature sampling by the Gumbel-max
//! trick with a counter-based random stream (so a seed gives the same token on any device). This is
//! the reference twin of the GPU `sample_rows` kernel; penalties, logit bias, top-k/top-p and logprobs
//! stay with the replica's host sampler.

/// What one sampled row asks of the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceSampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// Seed of this row's noise (mix the request seed with the step for a fresh draw each token).
    pub seed: u64,
}

impl DeviceSampling {
    /// The argmax (ties to the lower id).
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        seed: 0,
    };
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

/// The token the device picks for `row` (only the first `valid` entries are candidates). Ties go
/// to the lower id; NaN logits are never picked.
pub fn sample_host(row: &[f32], valid: usize, s: DeviceSampling) -> u32 {
    let mut best = (f32::NEG_INFINITY, usize::MAX);
    for (j, &l) in row.iter().enumerate().take(valid) {
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
        let g = DeviceSampling {
            temperature: 0.0,
            seed: 0,
        };
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
        };
        assert_eq!(sample_host(&row, 2, s), sample_host(&row, 2, s));
    }

    #[test]
    fn uniform_is_inside_the_open_interval() {
        for i in 0..10_000 {
            let u = uniform01(7, i);
            assert!(u > 0.0 && u < 1.0);
        }
    }
}
