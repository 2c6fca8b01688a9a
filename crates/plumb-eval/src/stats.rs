//! Statistics for honest comparisons: Wilson intervals for pass rates, the exact McNemar test
//! for paired pass/fail outcomes, and a paired bootstrap interval for score differences.
//! Everything here is pure and deterministic (the bootstrap takes a seed).

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for `successes` out of `n` (empty interval (0, 1) for n = 0).
pub fn wilson(successes: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n_f;
    let center = (p + z2 / (2.0 * n_f)) / denominator;
    let half = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denominator;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Two-sided exact McNemar test: `b` cases passed only under A, `c` only under B. Under the
/// null, discordant pairs split 50/50, so p = P(X ≤ min(b, c)) * 2 for X ~ Binomial(b + c, ½),
/// capped at 1.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Sum in log space: n may be in the thousands.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut total = 0.0;
    let mut ln_choose = 0.0; // ln C(n, 0)
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        total += (ln_choose + ln_half_n).exp();
    }
    (2.0 * total).min(1.0)
}

/// Mean of `values` (0 for empty).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Percentile by linear interpolation between closest ranks; `sorted` must be ascending.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        len => {
            let rank = q.clamp(0.0, 1.0) * (len - 1) as f64;
            let low = rank.floor() as usize;
            let high = rank.ceil() as usize;
            sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
        }
    }
}

/// 95% percentile-bootstrap interval of the mean of paired differences, with `iterations`
/// resamples drawn from a seeded generator (so reports are reproducible).
pub fn paired_bootstrap(differences: &[f64], iterations: usize, seed: u64) -> (f64, f64, f64) {
    let observed = mean(differences);
    if differences.len() < 2 {
        return (observed, observed, observed);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = differences.len();
    let mut means = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let mut sum = 0.0;
        for _ in 0..n {
            sum += differences[rng.usize(..n)];
        }
        means.push(sum / n as f64);
    }
    means.sort_by(f64::total_cmp);
    (
        observed,
        percentile(&means, 0.025),
        percentile(&means, 0.975),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // 81/263 from Wilson (1927)-style textbook example: (0.2553, 0.3662) at 95%.
        let (low, high) = wilson(81, 263, Z95);
        assert!(
            (low - 0.2553).abs() < 1e-3 && (high - 0.3662).abs() < 1e-3,
            "{low} {high}"
        );
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
        let (low, high) = wilson(10, 10, Z95);
        assert!(
            (high - 1.0).abs() < 1e-12 && (low - 0.7225).abs() < 1e-3,
            "{low}"
        );
    }

    #[test]
    fn mcnemar_exact_values() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // b=0, c=10: p = 2 * 0.5^10.
        assert!((mcnemar_exact(0, 10) - 2.0 * 0.5f64.powi(10)).abs() < 1e-12);
        // b=3, c=12: binom.test(3, 15) two-sided = 0.03516.
        assert!(
            (mcnemar_exact(3, 12) - 0.035_156_25).abs() < 1e-6,
            "{}",
            mcnemar_exact(3, 12)
        );
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert!(mcnemar_exact(500, 560) > 0.05 && mcnemar_exact(400, 600) < 1e-6);
    }

    #[test]
    fn bootstrap_brackets_the_mean() {
        let differences: Vec<f64> = (0..50)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.0 })
            .collect();
        let (observed, low, high) = paired_bootstrap(&differences, 2000, 7);
        assert!((observed - 0.8).abs() < 1e-12);
        assert!(
            low < observed && observed < high && low > 0.6 && high <= 1.0,
            "{low} {high}"
        );
        assert_eq!(
            paired_bootstrap(&differences, 2000, 7),
            (observed, low, high)
        );
    }

    #[test]
    fn percentiles() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 0.5), 2.5);
        assert!((percentile(&sorted, 0.95) - 3.85).abs() < 1e-12);
    }
}
