//! When each request is released: all at once for `--request-rate inf`, otherwise gamma
//! distributed gaps (`--burstiness` 1 = Poisson) rescaled, as vLLM does, so that the last
//! request leaves at exactly `n / rate` seconds.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};

use crate::BenchError;

/// Cumulative send offsets in seconds, one per request.
pub fn arrival_offsets(
    n: usize,
    request_rate: f64,
    burstiness: f64,
    seed: u64,
) -> Result<Vec<f64>, BenchError> {
    if request_rate.is_nan() || request_rate <= 0.0 {
        return Err(BenchError::InvalidArgs(
            "--request-rate must be positive (or inf)".into(),
        ));
    }
    if burstiness.is_nan() || burstiness <= 0.0 {
        return Err(BenchError::InvalidArgs(
            "--burstiness must be positive".into(),
        ));
    }
    if request_rate.is_infinite() {
        return Ok(vec![0.0; n]);
    }
    let mut delays: Vec<f64> = if burstiness.is_infinite() {
        vec![1.0 / request_rate; n]
    } else {
        let theta = 1.0 / (request_rate * burstiness);
        let gamma = Gamma::new(burstiness, theta)
            .map_err(|e| BenchError::InvalidArgs(format!("gamma: {e}")))?;
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| gamma.sample(&mut rng)).collect()
    };
    for i in 1..delays.len() {
        delays[i] += delays[i - 1];
    }
    if let Some(&last) = delays.last() {
        if last != 0.0 {
            let factor = (n as f64 / request_rate) / last;
            for d in &mut delays {
                *d *= factor;
            }
        }
    }
    Ok(delays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_rate_sends_everything_at_once() {
        assert_eq!(
            arrival_offsets(3, f64::INFINITY, 1.0, 0).unwrap(),
            vec![0.0; 3]
        );
    }

    #[test]
    fn finite_rate_is_rescaled_to_n_over_rate() {
        let d = arrival_offsets(100, 10.0, 1.0, 42).unwrap();
        assert_eq!(d.len(), 100);
        assert!((d[99] - 10.0).abs() < 1e-9);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert!(d[0] > 0.0);
        // Constant gaps when burstiness → inf.
        let c = arrival_offsets(4, 2.0, f64::INFINITY, 0).unwrap();
        for (i, v) in c.iter().enumerate() {
            assert!((v - (i + 1) as f64 * 0.5).abs() < 1e-12);
        }
        // Bursty (0.2) still ends at n/rate and is reproducible.
        let b = arrival_offsets(50, 5.0, 0.2, 1).unwrap();
        assert!((b[49] - 10.0).abs() < 1e-9);
        assert_eq!(b, arrival_offsets(50, 5.0, 0.2, 1).unwrap());
    }

    #[test]
    fn rejects_non_positive_values() {
        assert!(arrival_offsets(1, 0.0, 1.0, 0).is_err());
        assert!(arrival_offsets(1, 1.0, 0.0, 0).is_err());
        assert!(arrival_offsets(1, f64::NAN, 1.0, 0).is_err());
    }
}
