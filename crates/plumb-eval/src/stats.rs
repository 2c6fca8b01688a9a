//! Statistics for honest comparisons, used by every report and gate: Wilson intervals for
//! rates, bootstrap intervals for means, the exact McNemar test for paired pass/fail outcomes, a
//! paired permutation test for score differences, Holm's correction across several measures,
//! the minimum detectable effect and the cases needed for a given difference.
//! Everything here is pure and deterministic (resampling takes a seed).

/// z for a two-sided 95% interval (and a two-sided test at α = 0.05).
pub const Z95: f64 = 1.959_963_984_540_054;
/// z for 80% power.
pub const Z_POWER80: f64 = 0.841_621_233_572_914;
/// Up to this many non-zero differences the permutation test enumerates every sign pattern.
const EXACT_PERMUTATION_MAX: usize = 16;

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

/// Cohen's κ of two raters' binary verdicts from their confusion counts (a = pass by both,
/// b = pass by the first only, c = pass by the second only, d = fail by both): observed agreement
/// beyond chance, (p_o − p_e) / (1 − p_e). `None` when chance agreement is total (each rater
/// used one class, the same) or there is nothing to compare.
pub fn cohen_kappa(a: u64, b: u64, c: u64, d: u64) -> Option<f64> {
    let n = (a + b + c + d) as f64;
    if n == 0.0 {
        return None;
    }
    let observed = (a + d) as f64 / n;
    let first_pass = (a + b) as f64 / n;
    let second_pass = (a + c) as f64 / n;
    let chance = first_pass * second_pass + (1.0 - first_pass) * (1.0 - second_pass);
    if (1.0 - chance).abs() < 1e-12 {
        return None;
    }
    Some((observed - chance) / (1.0 - chance))
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

/// Sample standard deviation (n − 1; 0 below two values).
pub fn std_dev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    let sum: f64 = values.iter().map(|v| (v - m).powi(2)).sum();
    (sum / (values.len() - 1) as f64).sqrt()
}

/// (mean, low, high): the 95% percentile-bootstrap interval of the mean of `values` (per-case
/// scores, or paired differences), with `iterations` resamples drawn from a seeded generator so
/// reports are reproducible.
pub fn bootstrap_mean(values: &[f64], iterations: usize, seed: u64) -> (f64, f64, f64) {
    let observed = mean(values);
    if values.len() < 2 {
        return (observed, observed, observed);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = values.len();
    let mut means = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let mut sum = 0.0;
        for _ in 0..n {
            sum += values[rng.usize(..n)];
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

/// Two-sided paired permutation (sign-flip) test of mean(differences) = 0: under the null each
/// difference is as likely negative as positive. Exact over all 2^n sign patterns for up to 16
/// non-zero differences, else `iterations` random patterns ((hits + 1) / (iterations + 1)).
pub fn paired_permutation(differences: &[f64], iterations: usize, seed: u64) -> f64 {
    let nonzero: Vec<f64> = differences
        .iter()
        .copied()
        .filter(|d| d.abs() > 1e-12)
        .collect();
    if nonzero.is_empty() {
        return 1.0;
    }
    let observed = nonzero.iter().sum::<f64>().abs();
    // Sums within rounding of the observed one count as "as extreme".
    let tolerance = 1e-9 * (1.0 + observed);
    let n = nonzero.len();
    if n <= EXACT_PERMUTATION_MAX {
        let patterns = 1u32 << n;
        let extreme = (0..patterns)
            .filter(|signs| {
                let sum: f64 = nonzero
                    .iter()
                    .enumerate()
                    .map(|(i, d)| if signs >> i & 1 == 1 { -d } else { *d })
                    .sum();
                sum.abs() >= observed - tolerance
            })
            .count();
        return extreme as f64 / f64::from(patterns);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut extreme = 0usize;
    for _ in 0..iterations {
        let sum: f64 = nonzero
            .iter()
            .map(|d| if rng.bool() { -d } else { *d })
            .sum();
        if sum.abs() >= observed - tolerance {
            extreme += 1;
        }
    }
    (extreme + 1) as f64 / (iterations + 1) as f64
}

/// Holm's step-down adjusted p-values, in the order given: controls the chance of any false
/// "significant" across the family at α when each adjusted p is compared with α.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p_values[*a].total_cmp(&p_values[*b]));
    let mut adjusted = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, index) in order.into_iter().enumerate() {
        let value = (p_values[index] * (m - rank) as f64).min(1.0);
        running = running.max(value);
        adjusted[index] = running;
    }
    adjusted
}

/// Paired cases McNemar needs to detect a difference `diff` in pass rates (|p10 − p01|) at
/// α = 0.05 with 80% power, given the share of discordant pairs `discordant` (p10 + p01), by
/// Connor's (1987) normal approximation. `None` when `diff` is 0 or not possible (> discordant).
pub fn mcnemar_cases_needed(diff: f64, discordant: f64) -> Option<u64> {
    let diff = diff.abs();
    if diff < 1e-9 || diff > discordant + 1e-12 {
        return None;
    }
    let needed = (Z95 * discordant.sqrt() + Z_POWER80 * (discordant - diff * diff).max(0.0).sqrt())
        .powi(2)
        / (diff * diff);
    Some((needed - 1e-9).ceil() as u64)
}

/// The smallest difference in pass rates McNemar detects with 80% power at α = 0.05 over `n`
/// paired cases with this share of discordant pairs: the inverse of `mcnemar_cases_needed`.
/// `None` when even the largest difference the discordance allows would not be detected.
pub fn mcnemar_mde(n: u64, discordant: f64) -> Option<f64> {
    if n == 0 || discordant <= 0.0 {
        return None;
    }
    let needed = |diff: f64| {
        (Z95 * discordant.sqrt() + Z_POWER80 * (discordant - diff * diff).max(0.0).sqrt()).powi(2)
            / (diff * diff)
    };
    let (mut low, mut high) = (1e-9, discordant.min(1.0));
    if needed(high) > n as f64 {
        return None;
    }
    for _ in 0..100 {
        let mid = (low + high) / 2.0;
        if needed(mid) > n as f64 {
            low = mid;
        } else {
            high = mid;
        }
    }
    Some(high)
}

/// The smallest mean score difference a paired test detects with 80% power at α = 0.05 over
/// `n` pairs whose differences have standard deviation `sd` (normal approximation).
pub fn mean_mde(n: u64, sd: f64) -> Option<f64> {
    (n >= 2).then(|| (Z95 + Z_POWER80) * sd / (n as f64).sqrt())
}

/// Pairs needed to detect a mean difference `diff` with 80% power at α = 0.05, given the
/// differences' standard deviation.
pub fn mean_cases_needed(diff: f64, sd: f64) -> Option<u64> {
    let diff = diff.abs();
    (diff > 1e-9).then(|| {
        (((Z95 + Z_POWER80) * sd / diff).powi(2) - 1e-9)
            .ceil()
            .max(2.0) as u64
    })
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
        let (observed, low, high) = bootstrap_mean(&differences, 2000, 7);
        assert!((observed - 0.8).abs() < 1e-12);
        assert!(
            low < observed && observed < high && low > 0.6 && high <= 1.0,
            "{low} {high}"
        );
        assert_eq!(bootstrap_mean(&differences, 2000, 7), (observed, low, high));
    }

    #[test]
    fn percentiles() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 0.5), 2.5);
        assert!((percentile(&sorted, 0.95) - 3.85).abs() < 1e-12);
    }

    #[test]
    fn holm_matches_the_textbook_example() {
        // p = (0.01, 0.04, 0.03, 0.005): sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 is
        // 0.02, 0.03, 0.06, 0.04, made monotone: 0.02, 0.03, 0.06, 0.06.
        let adjusted = holm(&[0.01, 0.04, 0.03, 0.005]);
        let expected = [0.03, 0.06, 0.06, 0.02];
        for (got, want) in adjusted.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{adjusted:?}");
        }
        assert_eq!(holm(&[0.5, 0.9]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn permutation_test_exact_values() {
        // Five positive differences: only all-plus and all-minus are as extreme: 2/32.
        assert!((paired_permutation(&[1.0; 5], 0, 1) - 0.0625).abs() < 1e-12);
        // Zeros carry no sign; ties count as extreme: (1, -1) gives p = 1.
        assert_eq!(paired_permutation(&[0.0, 0.0], 0, 1), 1.0);
        assert_eq!(paired_permutation(&[1.0, -1.0], 0, 1), 1.0);
        // 0.5, 0.25, 0.25: |sum| ≥ 1 only for all-same signs: 2/8.
        assert!((paired_permutation(&[0.5, 0.25, 0.25], 0, 1) - 0.25).abs() < 1e-12);
        // Large samples: Monte Carlo, reproducible and near the sign test for ±1 differences.
        let differences: Vec<f64> = (0..40).map(|i| if i < 28 { 1.0 } else { -1.0 }).collect();
        let p = paired_permutation(&differences, 20_000, 3);
        assert_eq!(p, paired_permutation(&differences, 20_000, 3));
        // binom.test(28, 40) two-sided = 0.01659
        assert!((p - 0.016_59).abs() < 0.004, "{p}");
    }

    #[test]
    fn detectable_effects_and_cases_needed_are_inverse() {
        // Connor's example scale: 20% discordant, a 10-point difference needs ~155 pairs.
        let needed = mcnemar_cases_needed(0.10, 0.20).unwrap();
        assert!((150..=160).contains(&needed), "{needed}");
        let mde = mcnemar_mde(needed, 0.20).unwrap();
        assert!((mde - 0.10).abs() < 0.002, "{mde}");
        assert_eq!(mcnemar_cases_needed(0.0, 0.2), None);
        assert_eq!(mcnemar_cases_needed(0.3, 0.2), None);
        assert_eq!(mcnemar_mde(3, 0.05), None, "3 cases cannot detect anything");
        // Means: sd 0.2, 50 pairs: (1.96 + 0.84) * 0.2 / sqrt(50) = 0.0792.
        let mde = mean_mde(50, 0.2).unwrap();
        assert!((mde - 0.0792).abs() < 1e-3, "{mde}");
        assert_eq!(mean_cases_needed(mde, 0.2), Some(50));
    }

    /// A simulated rate or mean: the share of 2000 intervals that cover the truth.
    fn coverage(mut interval: impl FnMut(&mut fastrand::Rng) -> bool) -> f64 {
        let mut rng = fastrand::Rng::with_seed(42);
        let runs = 2000;
        (0..runs).filter(|_| interval(&mut rng)).count() as f64 / runs as f64
    }

    #[test]
    fn intervals_cover_the_truth_at_the_nominal_level() {
        for (n, p) in [(30u64, 0.2), (100, 0.5), (60, 0.9)] {
            let covered = coverage(|rng| {
                let successes = (0..n).filter(|_| rng.f64() < p).count() as u64;
                let (low, high) = wilson(successes, n, Z95);
                low <= p && p <= high
            });
            assert!(
                (0.93..=0.975).contains(&covered),
                "Wilson n={n} p={p}: {covered}"
            );
        }
        // Bootstrap of a mean of uniform scores (true mean 0.5), 40 cases.
        let covered = coverage(|rng| {
            let values: Vec<f64> = (0..40).map(|_| rng.f64()).collect();
            let (_, low, high) = bootstrap_mean(&values, 400, rng.u64(..));
            low <= 0.5 && 0.5 <= high
        });
        assert!((0.91..=0.975).contains(&covered), "bootstrap: {covered}");
    }

    #[test]
    fn tests_hold_their_false_positive_rate_under_the_null() {
        // No true difference: each test says "significant" about 5% of the time, or less.
        let mut rng = fastrand::Rng::with_seed(9);
        let runs = 1000;
        let (mut mcnemar, mut permutation) = (0, 0);
        for _ in 0..runs {
            let (mut b, mut c) = (0, 0);
            for _ in 0..60 {
                match rng.u8(..10) {
                    0 => b += 1,
                    1 => c += 1,
                    _ => {}
                }
            }
            mcnemar += usize::from(mcnemar_exact(b, c) < 0.05);
            let differences: Vec<f64> = (0..30).map(|_| rng.f64() - rng.f64()).collect();
            permutation += usize::from(paired_permutation(&differences, 500, rng.u64(..)) < 0.05);
        }
        let rate = |hits: usize| hits as f64 / runs as f64;
        assert!(rate(mcnemar) <= 0.06, "McNemar: {}", rate(mcnemar));
        assert!(
            (0.03..=0.07).contains(&rate(permutation)),
            "permutation: {}",
            rate(permutation)
        );
    }

    #[test]
    fn cohen_kappa_matches_textbook_examples() {
        // Wikipedia's example: 50 proposals, both yes 20, A yes B no 5, A no B yes 10, both
        // no 15: p_o = 0.7, p_e = 0.5, κ = 0.4.
        let kappa = cohen_kappa(20, 5, 10, 15).unwrap();
        assert!((kappa - 0.4).abs() < 1e-12, "{kappa}");
        // Second example there: 45/15/25/15 gives κ ≈ 0.1304.
        let kappa = cohen_kappa(45, 15, 25, 15).unwrap();
        assert!((kappa - 0.1304).abs() < 1e-4, "{kappa}");
        assert_eq!(cohen_kappa(10, 0, 0, 10), Some(1.0));
        assert_eq!(cohen_kappa(7, 0, 0, 0), None, "one class on both sides");
        assert_eq!(cohen_kappa(0, 0, 0, 0), None);
        assert!(
            cohen_kappa(0, 5, 5, 0).unwrap() < 0.0,
            "systematic disagreement"
        );
    }
}
