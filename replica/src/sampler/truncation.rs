//! top_k / top_p truncation and the final draw, in time linear in the vocabulary.
//!
//! A histogram of weights (8 buckets per octave, read off the float's bits) finds the bucket
//! where the kept set ends: by count for top_k, by mass for top_p. Tokens in better buckets are
//! kept whole; only the crossing bucket is resolved, by selection (`select_nth` for top_k, a
//! weighted quickselect for top_p). The nucleus is never sorted, so flat distributions (high
//! temperatures) cost as little as peaked ones.

use super::{argmax, SamplingParams};

/// Weight buckets: 8 per octave over the positive `f32` range below 1 (see [`bucket`]).
const NUM_BUCKETS: usize = (0x3F80_0000 >> 20) + 1;
/// Relative slack on the top_p mass, so that `top_p` given as f32 (0.1 is 0.100000001) does
/// not pull in one extra token of a flat distribution.
const TOP_P_SLACK: f64 = 1e-6;
/// Below this many candidates a weighted selection just sorts.
const SMALL_SORT: usize = 32;

/// Turns logits into weights relative to the best token, in place: w = exp((x - max) / T) ∈ [0, 1]
/// (p_i ∝ w_i), zeroed below the min_p floor (min_p compares p_i / p_max = w_i with it). False
/// when no logit is finite above -inf (the row is left as it was).
fn to_weights(row: &mut [f32], p: &SamplingParams) -> bool {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return false;
    }
    let inv_t = 1.0 / p.temperature;
    let floor = p.min_p.max(0.0);
    for x in row.iter_mut() {
        let w = ((*x - max) * inv_t).exp();
        *x = if w >= floor { w } else { 0.0 };
    }
    true
}

/// Temperature, min_p, top_k and top_p, then one draw with `u ∈ [0, 1)`.
pub(super) fn draw(row: &mut [f32], p: &SamplingParams, u: f64) -> u32 {
    if !to_weights(row, p) {
        return 0;
    }
    if p.top_k > 0 || p.top_p < 1.0 {
        return truncate_and_draw(row, p, u);
    }
    let total: f64 = row.iter().map(|&w| f64::from(w)).sum();
    let mut target = u * total;
    let mut last = 0;
    for (i, &w) in row.iter().enumerate() {
        if w > 0.0 {
            last = i;
            target -= f64::from(w);
            if target < 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}

/// The distribution [`draw`] samples from, as probabilities over `row` (speculative sampling needs
/// whole distributions): temperature, min_p, top_k and top_p, with the same kept set as `draw`.
pub(super) fn distribution(row: &[f32], p: &SamplingParams) -> Vec<f32> {
    let mut w = row.to_vec();
    if !to_weights(&mut w, p) {
        w.fill(0.0);
        if let Some(first) = w.first_mut() {
            *first = 1.0;
        }
        return w;
    }
    if p.top_k > 0 || p.top_p < 1.0 {
        let kept = kept_set(&w, p);
        w.fill(0.0);
        for (i, x) in kept {
            w[i as usize] = x;
        }
    }
    let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
    if total > 0.0 {
        for x in &mut w {
            *x = (f64::from(*x) / total) as f32;
        }
    } else {
        let best = argmax(row) as usize;
        w[best] = 1.0;
    }
    w
}

/// Mass and count of the positive weights per [`bucket`].
struct Histogram {
    mass: Vec<f64>,
    count: Vec<usize>,
    total_count: usize,
}

impl Histogram {
    fn new(w: &[f32]) -> Self {
        let mut mass = vec![0f64; NUM_BUCKETS];
        let mut count = vec![0usize; NUM_BUCKETS];
        for &x in w.iter().filter(|&&x| x > 0.0) {
            let b = bucket(x);
            mass[b] += f64::from(x);
            count[b] += 1;
        }
        let total_count = count.iter().sum();
        Self {
            mass,
            count,
            total_count,
        }
    }

    /// top_p's crossing bucket: `(bucket, mass of the better buckets, mass needed)`. The buckets
    /// before it hold less than the needed mass.
    fn top_p_cross(&self, top_p: f32) -> (usize, f64, f64) {
        let total: f64 = self.mass.iter().sum();
        let need = f64::from(top_p) * total * (1.0 - TOP_P_SLACK);
        let last = self.count.iter().rposition(|&c| c > 0).unwrap_or(0);
        let (mut above, mut b) = (0f64, 0usize);
        while b < last && above + self.mass[b] < need {
            above += self.mass[b];
            b += 1;
        }
        (b, above, need)
    }
}

/// The candidates [`truncate_and_draw`] draws from (same histogram, same selections), with their
/// weights.
fn kept_set(w: &[f32], p: &SamplingParams) -> Vec<(u32, f32)> {
    let h = Histogram::new(w);
    if h.total_count == 0 {
        return vec![(argmax(w), 1.0)];
    }
    if p.top_k > 0 && p.top_k < h.total_count {
        return top_k_kept(w, p, &h.count);
    }
    let positive = w
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > 0.0)
        .map(|(i, &x)| (i as u32, x));
    if p.top_p >= 1.0 {
        return positive.collect();
    }
    let (b, above, need) = h.top_p_cross(p.top_p);
    let mut kept: Vec<(u32, f32)> = Vec::new();
    let mut cross: Vec<(u32, f32)> = Vec::new();
    for (i, x) in positive {
        match bucket(x).cmp(&b) {
            std::cmp::Ordering::Less => kept.push((i, x)),
            std::cmp::Ordering::Equal => cross.push((i, x)),
            std::cmp::Ordering::Greater => {}
        }
    }
    let n = weighted_select(&mut cross, need - above);
    cross.truncate(n);
    kept.extend(cross);
    kept
}

/// The top-k set (then top_p within it) from the bucket histogram's counts: buckets before the
/// crossing one hold fewer than k tokens and are kept whole; the crossing bucket is resolved by
/// selection.
fn top_k_kept(w: &[f32], p: &SamplingParams, count: &[usize]) -> Vec<(u32, f32)> {
    let (mut above, mut b) = (0usize, 0usize);
    while above + count[b] < p.top_k {
        above += count[b];
        b += 1;
    }
    let mut kept: Vec<(u32, f32)> = Vec::with_capacity(p.top_k);
    let mut cross: Vec<(u32, f32)> = Vec::with_capacity(count[b]);
    for (i, &x) in w.iter().enumerate().filter(|(_, &x)| x > 0.0) {
        match bucket(x).cmp(&b) {
            std::cmp::Ordering::Less => kept.push((i as u32, x)),
            std::cmp::Ordering::Equal => cross.push((i as u32, x)),
            std::cmp::Ordering::Greater => {}
        }
    }
    let rest = p.top_k - above;
    if rest < cross.len() {
        cross.select_nth_unstable_by(rest - 1, by_weight);
        cross.truncate(rest);
    }
    kept.extend(cross);
    if p.top_p < 1.0 {
        let kept_mass: f64 = kept.iter().map(|c| f64::from(c.1)).sum();
        let n = weighted_select(
            &mut kept,
            f64::from(p.top_p) * kept_mass * (1.0 - TOP_P_SLACK),
        );
        kept.truncate(n);
    }
    kept
}

/// Histogram bucket of a weight in (0, 1]: monotone (larger weight → smaller bucket), 8 buckets
/// per octave (exponent and top 3 mantissa bits of the float).
#[inline]
fn bucket(w: f32) -> usize {
    (0x3F80_0000u32.saturating_sub(w.to_bits()) >> 20) as usize
}

/// Orders candidates by weight, best first (ties: lower id first).
pub(super) fn by_weight(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Reorders `list` so that its first `k` entries are the smallest prefix (by weight, best
/// first) whose mass reaches `need`, and returns `k` (at least 1 for a non-empty list).
/// Weighted quickselect: expected linear time.
fn weighted_select(list: &mut [(u32, f32)], need: f64) -> usize {
    let (mut lo, mut hi, mut need) = (0usize, list.len(), need);
    loop {
        if hi - lo <= SMALL_SORT {
            let part = &mut list[lo..hi];
            part.sort_by(by_weight);
            let mut cum = 0.0;
            for (i, c) in part.iter().enumerate() {
                cum += f64::from(c.1);
                if cum >= need {
                    return lo + i + 1;
                }
            }
            return hi.max(1);
        }
        let mid = lo + (hi - lo) / 2;
        let mut three = [list[lo].1, list[mid].1, list[hi - 1].1];
        three.sort_by(f32::total_cmp);
        let pivot = three[1];
        // Three-way partition of list[lo..hi]: > pivot, == pivot, < pivot.
        let (mut gt, mut i, mut lt) = (lo, lo, hi);
        while i < lt {
            let w = list[i].1;
            if w > pivot {
                list.swap(gt, i);
                gt += 1;
                i += 1;
            } else if w < pivot {
                lt -= 1;
                list.swap(i, lt);
            } else {
                i += 1;
            }
        }
        let m_gt: f64 = list[lo..gt].iter().map(|c| f64::from(c.1)).sum();
        let m_eq = f64::from(pivot) * (lt - gt) as f64;
        if m_gt >= need {
            hi = gt;
        } else if m_gt + m_eq >= need {
            let k = ((need - m_gt) / f64::from(pivot)).ceil() as usize;
            return gt + k.clamp(1, lt - gt);
        } else if lt == hi {
            return hi;
        } else {
            need -= m_gt + m_eq;
            lo = lt;
        }
    }
}

/// Draws with `u · total` from `cands` in their order; the last one on rounding.
fn draw_from(cands: &[(u32, f32)], u: f64) -> u32 {
    let total: f64 = cands.iter().map(|c| f64::from(c.1)).sum();
    let mut target = u * total;
    for c in cands {
        target -= f64::from(c.1);
        if target < 0.0 {
            return c.0;
        }
    }
    cands.last().map_or(0, |c| c.0)
}

/// top_k / top_p over weights `w` (best = 1; tokens below the min_p floor already zeroed).
///
/// A histogram of masses and counts per [`bucket`] locates the bucket in which the kept set
/// ends: by count for top_k, by mass for top_p. Tokens in better buckets are kept whole; only
/// the crossing bucket is resolved by selection. top_p then applies within the top-k set.
fn truncate_and_draw(w: &[f32], p: &SamplingParams, u: f64) -> u32 {
    let h = Histogram::new(w);
    if h.total_count == 0 {
        return argmax(w);
    }
    if p.top_k > 0 && p.top_k < h.total_count {
        return draw_from(&top_k_kept(w, p, &h.count), u);
    }
    if p.top_p >= 1.0 {
        // top_k keeps everything: sample over all positive weights.
        let all: Vec<(u32, f32)> = w
            .iter()
            .enumerate()
            .filter(|(_, &x)| x > 0.0)
            .map(|(i, &x)| (i as u32, x))
            .collect();
        return draw_from(&all, u);
    }
    let (b, above, need) = h.top_p_cross(p.top_p);
    let mut cross: Vec<(u32, f32)> = w
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > 0.0 && bucket(x) == b)
        .map(|(i, &x)| (i as u32, x))
        .collect();
    let n = weighted_select(&mut cross, need - above);
    cross.truncate(n);
    let nucleus = above + cross.iter().map(|c| f64::from(c.1)).sum::<f64>();
    let mut target = u * nucleus;
    for (i, &x) in w.iter().enumerate() {
        if x > 0.0 && bucket(x) < b {
            target -= f64::from(x);
            if target < 0.0 {
                return i as u32;
            }
        }
    }
    draw_from(
        &cross,
        (target.max(0.0) / (nucleus - above).max(f64::MIN_POSITIVE)).min(1.0),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::sampler::SeqSampler;

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    fn state(p: SamplingParams, seed: u64) -> SeqSampler {
        SeqSampler::new(p, seed, &[], vec![])
    }

    #[test]
    fn weighted_select_finds_the_smallest_heavy_prefix() {
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..50 {
            let n = rng.gen_range(1..300);
            let mut list: Vec<(u32, f32)> = (0..n)
                .map(|i| (i, rng.gen_range(0.0..1.0f32).max(1e-6)))
                .collect();
            let total: f64 = list.iter().map(|c| f64::from(c.1)).sum();
            let need = total * rng.gen_range(0.01..1.0);
            let mut sorted = list.clone();
            sorted.sort_by(by_weight);
            let mut cum = 0.0;
            let expect = sorted
                .iter()
                .position(|c| {
                    cum += f64::from(c.1);
                    cum >= need
                })
                .map_or(n as usize, |i| i + 1);
            let k = weighted_select(&mut list, need);
            assert_eq!(k, expect);
            let mut chosen: Vec<u32> = list[..k].iter().map(|c| c.0).collect();
            let mut want: Vec<u32> = sorted[..k].iter().map(|c| c.0).collect();
            chosen.sort_unstable();
            want.sort_unstable();
            assert_eq!(chosen, want);
        }
    }

    /// `distribution` is the law `draw` samples: the same support, and `draw` over a fine grid
    /// of `u` hits each token about as often as its probability.
    #[test]
    fn distribution_is_what_draw_samples() {
        let mut rng = StdRng::seed_from_u64(21);
        let settings = [
            (1.0, 0, 1.0, 0.0),
            (0.7, 5, 1.0, 0.0),
            (1.3, 0, 0.8, 0.0),
            (1.0, 12, 0.6, 0.0),
            (0.9, 0, 1.0, 0.1),
            (1.0, 3, 0.9, 0.05),
        ];
        for (temperature, top_k, top_p, min_p) in settings {
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                ..params()
            };
            for _ in 0..10 {
                let row: Vec<f32> = (0..40).map(|_| rng.gen_range(-3.0..3.0f32)).collect();
                let dist = distribution(&row, &p);
                let total: f64 = dist.iter().map(|&x| f64::from(x)).sum();
                assert!((total - 1.0).abs() < 1e-5);
                let grid = 20_000;
                let mut hits = vec![0usize; row.len()];
                for g in 0..grid {
                    let u = (g as f64 + 0.5) / grid as f64;
                    hits[draw(&mut row.clone(), &p, u) as usize] += 1;
                }
                for (i, (&h, &q)) in hits.iter().zip(&dist).enumerate() {
                    assert!(h == 0 || q > 0.0, "{i} drawn outside the support: {p:?}");
                    assert!(h > 0 || q < 1e-4, "{i} kept but never drawn: {p:?}");
                    let share = h as f64 / grid as f64;
                    assert!((share - f64::from(q)).abs() < 1e-3, "{i}: {share} vs {q}");
                }
            }
        }
    }

    #[test]
    fn top_p_on_a_flat_distribution_keeps_the_right_share() {
        // 1000 equal tokens: top_p 0.1 keeps 100 of them.
        let mut s = state(
            SamplingParams {
                top_p: 0.1,
                ..params()
            },
            4,
        );
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            seen.insert(s.sample_row(&mut vec![0.5; 1000], 1000).token);
        }
        assert!(seen.len() <= 100 && seen.len() > 90, "{}", seen.len());
    }
}
