//! Summaries built from a run's stored results: per prompt × provider cells with pass rates and
//! their Wilson intervals and mean scores with bootstrap intervals; paired comparisons of pass
//! rate (exact McNemar), mean score and each named metric (paired permutation), Holm-corrected
//! together and told in words; the worst failures; and the CI gate. Built by streaming the store, so `plumb eval` and `plumb runs show` say the
//! same thing about the same run.

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;
use plumb_store::{RunRecord, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::runner::CaseResult;
use crate::stats;
use crate::suite::Thresholds;

/// Failures kept for the terminal report.
const WORST_FAILURES: usize = 10;
const BOOTSTRAP_ITERATIONS: usize = 2000;
const PERMUTATION_ITERATIONS: usize = 10_000;
/// Resampling costs iterations × cases; past this many draws a summary uses fewer iterations
/// (at least `MIN_RESAMPLES`), so a 100k-case run is not summarized for seconds.
const RESAMPLING_WORK: usize = 20_000_000;
const MIN_RESAMPLES: usize = 500;

/// Iterations for resampling `n` values, within `RESAMPLING_WORK`.
fn resamples(most: usize, n: usize) -> usize {
    (RESAMPLING_WORK / n.max(1)).clamp(MIN_RESAMPLES, most)
}
pub const ALPHA: f64 = 0.05;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub run_id: String,
    pub suite_path: String,
    pub description: String,
    pub status: String,
    pub cells: Vec<Cell>,
    pub comparisons: Vec<Comparison>,
    pub failures: Vec<Failure>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub prompt_idx: u32,
    pub provider_idx: u32,
    pub prompt: String,
    pub provider: String,
    pub cases: u64,
    pub passed: u64,
    pub failed: u64,
    /// Cases whose model call failed: neither pass nor fail.
    pub unmeasured: u64,
    /// passed / (passed + failed); `None` when nothing was measured.
    pub pass_rate: Option<f64>,
    pub pass_rate_ci: (f64, f64),
    pub mean_score: f64,
    /// 95% bootstrap interval of the mean score over measured cases.
    #[serde(default)]
    pub mean_score_ci: (f64, f64),
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub cached: u64,
    /// Mean score per named metric.
    pub metrics: IndexMap<String, f64>,
    /// With repeats: tests whose repeats disagreed, over tests with ≥ 2 measured repeats.
    pub flaky_tests: u64,
    pub repeated_tests: u64,
    /// `select-best` comparisons whose two orders picked different outputs (unmeasured).
    #[serde(default)]
    pub position_bias: u64,
}

impl Cell {
    /// A cell with nothing counted yet.
    pub fn empty(prompt_idx: u32, provider_idx: u32, prompt: &str, provider: &str) -> Cell {
        Cell {
            prompt_idx,
            provider_idx,
            prompt: prompt.to_owned(),
            provider: provider.to_owned(),
            cases: 0,
            passed: 0,
            failed: 0,
            unmeasured: 0,
            pass_rate: None,
            pass_rate_ci: (0.0, 1.0),
            mean_score: 0.0,
            mean_score_ci: (0.0, 0.0),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: 0.0,
            latency_p50_ms: 0.0,
            latency_p95_ms: 0.0,
            cached: 0,
            metrics: IndexMap::new(),
            flaky_tests: 0,
            repeated_tests: 0,
            position_bias: 0,
        }
    }

    pub fn flake_rate(&self) -> Option<f64> {
        (self.repeated_tests > 0).then(|| self.flaky_tests as f64 / self.repeated_tests as f64)
    }

    /// The flake rate's 95% Wilson interval.
    pub fn flake_rate_ci(&self) -> (f64, f64) {
        stats::wilson(self.flaky_tests, self.repeated_tests, stats::Z95)
    }
}

/// One measure compared between the two sides of a comparison: its paired difference, test
/// and p-value, Holm-adjusted across the comparison's measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measure {
    /// `pass rate`, `mean score`, or a named metric.
    pub name: String,
    /// B − A over the paired cases (a pass-rate difference is a share, in [−1, 1]).
    pub diff: f64,
    /// 95% bootstrap interval of `diff`.
    pub ci: (f64, f64),
    /// `exact McNemar` or `paired permutation`.
    pub test: String,
    pub p: f64,
    /// Holm-adjusted over this comparison's measures.
    pub p_adjusted: f64,
    pub significant: bool,
    /// The smallest difference these pairs detect with 80% power at α = 0.05.
    pub detectable: Option<f64>,
    /// Pairs needed to detect the observed difference with 80% power (when not significant).
    pub cases_needed: Option<u64>,
}

impl Measure {
    /// The measure in words: what changed, by how much, and whether that is significant.
    pub fn describe(&self, measures: usize) -> String {
        let is_rate = self.name == "pass rate";
        let amount = |x: f64| {
            if is_rate {
                format!("{:+.1} points", x * 100.0)
            } else {
                format!("{x:+.3}")
            }
        };
        let adjusted = if measures > 1 {
            format!(
                ", Holm-adjusted over {measures} measures: p {}",
                format_p(self.p_adjusted)
            )
        } else {
            String::new()
        };
        let head = format!(
            "{} {} (95% CI {} to {}; {} p {}{adjusted})",
            self.name,
            amount(self.diff),
            amount(self.ci.0),
            amount(self.ci.1),
            self.test,
            format_p(self.p),
        );
        if self.significant {
            let direction = if self.diff > 0.0 { "better" } else { "worse" };
            return format!("{head}: significantly {direction}");
        }
        let mut text = format!("{head}: not significant");
        if let Some(detectable) = self.detectable {
            text.push_str(&format!(
                "; these cases detect differences of {} or more",
                amount(detectable).trim_start_matches('+')
            ));
        }
        if let Some(needed) = self.cases_needed {
            text.push_str(&format!(
                "; about {needed} paired cases would detect one this size"
            ));
        }
        text
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    /// Labels of the two sides, e.g. `v1 · local:gemma3-270m`.
    pub a: String,
    pub b: String,
    pub pairs: u64,
    /// Cases that pass under A only / B only / both / neither.
    pub a_only: u64,
    pub b_only: u64,
    pub both: u64,
    pub neither: u64,
    /// Per-case score: B higher / lower / equal.
    pub b_wins: u64,
    pub b_losses: u64,
    pub ties: u64,
    pub mcnemar_p: f64,
    /// Mean of (score B − score A) with its 95% bootstrap interval and permutation p.
    pub score_diff: f64,
    pub score_diff_ci: (f64, f64),
    #[serde(default = "one")]
    pub score_p: f64,
    /// Pass rate, mean score and each named metric, Holm-corrected together.
    #[serde(default)]
    pub measures: Vec<Measure>,
    /// The pass rate differs significantly (after Holm's correction).
    pub significant: bool,
    pub verdict: String,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub prompt: String,
    pub provider: String,
    pub test: String,
    pub score: f64,
    pub output: String,
    pub reasons: Vec<String>,
}

/// What a case's comparisons need.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseOutcome {
    pub pass: Option<bool>,
    pub score: f64,
    /// Mean score per named metric.
    pub metrics: Vec<(String, f64)>,
}

/// Per-case facts kept for pairing: (prompt, provider, test, repeat) → outcome.
pub type Outcomes = HashMap<(u32, u32, u32, u32), CaseOutcome>;

struct CellAccumulator {
    cell: Cell,
    latencies: Vec<f64>,
    scores: Vec<f64>,
    metric_sums: IndexMap<String, (f64, u64)>,
    /// test → (passes, measured repeats)
    repeats: BTreeMap<u32, (u32, u32)>,
}

/// Streams the run's results from the store into a summary.
pub fn summarize(store: &dyn Store, run: &RunRecord) -> Result<(Summary, Outcomes), StoreError> {
    let mut cells: BTreeMap<(u32, u32), CellAccumulator> = BTreeMap::new();
    let mut outcomes: Outcomes = HashMap::new();
    let mut failures: Vec<Failure> = Vec::new();
    store.for_each_result(&run.id, &mut |record| {
        let result: CaseResult = serde_json::from_str(&record.payload)
            .map_err(|e| StoreError::Internal(format!("bad result payload: {e}")))?;
        let entry = cells
            .entry((result.prompt_idx, result.provider_idx))
            .or_insert_with(|| CellAccumulator {
                cell: Cell::empty(
                    result.prompt_idx,
                    result.provider_idx,
                    &result.prompt,
                    &result.provider,
                ),
                latencies: Vec::new(),
                scores: Vec::new(),
                metric_sums: IndexMap::new(),
                repeats: BTreeMap::new(),
            });
        let cell = &mut entry.cell;
        cell.cases += 1;
        match result.pass {
            Some(true) => cell.passed += 1,
            Some(false) => cell.failed += 1,
            None => cell.unmeasured += 1,
        }
        if result.pass.is_some() {
            entry.scores.push(result.score);
            entry.latencies.push(result.latency_ms);
            let slot = entry.repeats.entry(result.test_idx).or_insert((0, 0));
            slot.0 += u32::from(result.pass == Some(true));
            slot.1 += 1;
            for assertion in &result.assertions {
                if let Some(metric) = &assertion.metric {
                    let sum = entry.metric_sums.entry(metric.clone()).or_insert((0.0, 0));
                    sum.0 += assertion.score;
                    sum.1 += 1;
                }
            }
        }
        cell.position_bias += result
            .assertions
            .iter()
            .filter(|a| a.unmeasured && a.reason.starts_with(crate::judge::select::POSITION_BIAS))
            .count() as u64;
        cell.prompt_tokens += result.usage.prompt_tokens;
        cell.completion_tokens += result.usage.completion_tokens;
        cell.cost += result.cost;
        cell.cached += u64::from(result.cached);
        let mut metrics: Vec<(String, f64, u32)> = Vec::new();
        for assertion in &result.assertions {
            if let Some(metric) = &assertion.metric {
                match metrics.iter_mut().find(|(name, _, _)| name == metric) {
                    Some(slot) => {
                        slot.1 += assertion.score;
                        slot.2 += 1;
                    }
                    None => metrics.push((metric.clone(), assertion.score, 1)),
                }
            }
        }
        outcomes.insert(
            (
                result.prompt_idx,
                result.provider_idx,
                result.test_idx,
                result.repeat_idx,
            ),
            CaseOutcome {
                pass: result.pass,
                score: result.score,
                metrics: metrics
                    .into_iter()
                    .map(|(name, sum, n)| (name, sum / f64::from(n)))
                    .collect(),
            },
        );
        if result.pass != Some(true) {
            let reasons = match &result.error {
                Some(error) => vec![format!("unmeasured: {error}")],
                None => result
                    .assertions
                    .iter()
                    .filter(|a| !a.pass && a.weight > 0.0)
                    .map(|a| format!("{}: {}", a.label, a.reason))
                    .collect(),
            };
            let failure = Failure {
                prompt: result.prompt.clone(),
                provider: result.provider.clone(),
                test: result.test.clone(),
                score: result.score,
                output: result.output.chars().take(300).collect(),
                reasons,
            };
            // Keep the lowest scores, bounded.
            failures.push(failure);
            if failures.len() > WORST_FAILURES * 4 {
                failures.sort_by(|a, b| a.score.total_cmp(&b.score));
                failures.truncate(WORST_FAILURES);
            }
        }
        Ok(())
    })?;
    failures.sort_by(|a, b| a.score.total_cmp(&b.score));
    failures.truncate(WORST_FAILURES);

    let mut cells: Vec<Cell> = cells
        .into_values()
        .map(|mut entry| {
            let cell = &mut entry.cell;
            let measured = cell.passed + cell.failed;
            if measured > 0 {
                cell.pass_rate = Some(cell.passed as f64 / measured as f64);
                cell.pass_rate_ci = stats::wilson(cell.passed, measured, stats::Z95);
                let (mean, low, high) = stats::bootstrap_mean(
                    &entry.scores,
                    resamples(BOOTSTRAP_ITERATIONS, entry.scores.len()),
                    0x5eed,
                );
                cell.mean_score = mean;
                cell.mean_score_ci = (low, high);
            }
            entry.latencies.sort_by(f64::total_cmp);
            cell.latency_p50_ms = stats::percentile(&entry.latencies, 0.5);
            cell.latency_p95_ms = stats::percentile(&entry.latencies, 0.95);
            cell.metrics = entry
                .metric_sums
                .into_iter()
                .map(|(k, (sum, n))| (k, sum / n as f64))
                .collect();
            for (passes, measured) in entry.repeats.values() {
                if *measured >= 2 {
                    cell.repeated_tests += 1;
                    if *passes != 0 && passes != measured {
                        cell.flaky_tests += 1;
                    }
                }
            }
            entry.cell
        })
        .collect();
    cells.sort_by_key(|c| (c.provider_idx, c.prompt_idx));

    let mut comparisons = Vec::new();
    // Prompts against the first prompt, per provider; then providers against the first
    // provider, per prompt.
    for cell in &cells {
        if cell.prompt_idx > 0
            && let Some(base) = cells
                .iter()
                .find(|c| c.prompt_idx == 0 && c.provider_idx == cell.provider_idx)
        {
            comparisons.push(compare_cells(base, cell, &outcomes, &outcomes));
        }
    }
    for cell in &cells {
        if cell.provider_idx > 0
            && let Some(base) = cells
                .iter()
                .find(|c| c.provider_idx == 0 && c.prompt_idx == cell.prompt_idx)
        {
            comparisons.push(compare_cells(base, cell, &outcomes, &outcomes));
        }
    }
    let summary = Summary {
        run_id: run.id.clone(),
        suite_path: run.suite_path.clone(),
        description: run.description.clone(),
        status: run.status.as_str().to_owned(),
        cells,
        comparisons,
        failures,
    };
    Ok((summary, outcomes))
}

pub fn cell_label(cell: &Cell) -> String {
    format!("{} · {}", cell.prompt, cell.provider)
}

/// Pairs the cases of two cells by (test, repeat) and tests the differences: pass rate by the
/// exact McNemar test, mean score and each named metric both sides measured by a paired
/// permutation test, all Holm-corrected together.
pub fn compare_cells(
    a: &Cell,
    b: &Cell,
    a_outcomes: &Outcomes,
    b_outcomes: &Outcomes,
) -> Comparison {
    let mut comparison = Comparison {
        a: cell_label(a),
        b: cell_label(b),
        pairs: 0,
        a_only: 0,
        b_only: 0,
        both: 0,
        neither: 0,
        b_wins: 0,
        b_losses: 0,
        ties: 0,
        mcnemar_p: 1.0,
        score_diff: 0.0,
        score_diff_ci: (0.0, 0.0),
        score_p: 1.0,
        measures: Vec::new(),
        significant: false,
        verdict: String::new(),
    };
    let mut keys: Vec<(u32, u32)> = a_outcomes
        .keys()
        .filter(|(p, v, _, _)| *p == a.prompt_idx && *v == a.provider_idx)
        .map(|(_, _, t, r)| (*t, *r))
        .collect();
    keys.sort_unstable();
    let mut pass_differences = Vec::new();
    let mut differences = Vec::new();
    let mut metric_differences: IndexMap<String, Vec<f64>> = IndexMap::new();
    for (test, repeat) in keys {
        let Some(case_a) = a_outcomes.get(&(a.prompt_idx, a.provider_idx, test, repeat)) else {
            continue;
        };
        let Some(case_b) = b_outcomes.get(&(b.prompt_idx, b.provider_idx, test, repeat)) else {
            continue;
        };
        let (Some(pass_a), Some(pass_b)) = (case_a.pass, case_b.pass) else {
            continue;
        };
        comparison.pairs += 1;
        match (pass_a, pass_b) {
            (true, true) => comparison.both += 1,
            (true, false) => comparison.a_only += 1,
            (false, true) => comparison.b_only += 1,
            (false, false) => comparison.neither += 1,
        }
        pass_differences.push(f64::from(u8::from(pass_b)) - f64::from(u8::from(pass_a)));
        let difference = case_b.score - case_a.score;
        if difference > 1e-12 {
            comparison.b_wins += 1;
        } else if difference < -1e-12 {
            comparison.b_losses += 1;
        } else {
            comparison.ties += 1;
        }
        differences.push(difference);
        for (name, value_a) in &case_a.metrics {
            if let Some((_, value_b)) = case_b.metrics.iter().find(|(n, _)| n == name) {
                metric_differences
                    .entry(name.clone())
                    .or_default()
                    .push(value_b - value_a);
            }
        }
    }
    comparison.mcnemar_p = stats::mcnemar_exact(comparison.a_only, comparison.b_only);
    let (diff, low, high) = stats::bootstrap_mean(
        &differences,
        resamples(BOOTSTRAP_ITERATIONS, differences.len()),
        0x5eed,
    );
    comparison.score_diff = diff;
    comparison.score_diff_ci = (low, high);
    comparison.score_p = stats::paired_permutation(
        &differences,
        resamples(PERMUTATION_ITERATIONS, differences.len()),
        0x5eed,
    );
    if comparison.pairs > 0 {
        let n = comparison.pairs;
        let discordant = (comparison.a_only + comparison.b_only) as f64 / n as f64;
        let (rate_diff, rate_low, rate_high) = stats::bootstrap_mean(
            &pass_differences,
            resamples(BOOTSTRAP_ITERATIONS, pass_differences.len()),
            0x5eed,
        );
        comparison.measures.push(Measure {
            name: "pass rate".into(),
            diff: rate_diff,
            ci: (rate_low, rate_high),
            test: "exact McNemar".into(),
            p: comparison.mcnemar_p,
            p_adjusted: comparison.mcnemar_p,
            significant: false,
            detectable: stats::mcnemar_mde(n, discordant),
            cases_needed: stats::mcnemar_cases_needed(rate_diff, discordant),
        });
        // With pass/fail-only assertions every score is its case's pass: the same test twice.
        if differences != pass_differences {
            let score = mean_measure("mean score".into(), &differences);
            comparison.measures.push(score);
        }
        for (name, values) in &metric_differences {
            let measure = mean_measure(format!("metric `{name}`"), values);
            comparison.measures.push(measure);
        }
        adjust_measures(&mut comparison.measures);
        comparison.significant = comparison.measures[0].significant;
    }
    comparison.verdict = verdict(&comparison);
    comparison
}

/// A mean difference over paired values (B − A): its bootstrap interval, paired permutation
/// p, and the smallest difference these pairs detect. Not yet adjusted: see `adjust_measures`.
pub fn mean_measure(name: String, differences: &[f64]) -> Measure {
    let (diff, low, high) = stats::bootstrap_mean(
        differences,
        resamples(BOOTSTRAP_ITERATIONS, differences.len()),
        0x5eed,
    );
    let sd = stats::std_dev(differences);
    Measure {
        name,
        diff,
        ci: (low, high),
        test: "paired permutation".into(),
        p: stats::paired_permutation(
            differences,
            resamples(PERMUTATION_ITERATIONS, differences.len()),
            0x5eed,
        ),
        p_adjusted: 1.0,
        significant: false,
        detectable: stats::mean_mde(differences.len() as u64, sd).filter(|d| *d > 0.0),
        cases_needed: stats::mean_cases_needed(diff, sd).filter(|_| sd > 0.0),
    }
}

/// Holm-adjusts measures tested together and marks the significant ones (α = 0.05).
pub fn adjust_measures(measures: &mut [Measure]) {
    let p_values: Vec<f64> = measures.iter().map(|m| m.p).collect();
    for (measure, adjusted) in measures.iter_mut().zip(stats::holm(&p_values)) {
        measure.p_adjusted = adjusted;
        measure.significant = adjusted < ALPHA && measure.diff.abs() > 1e-12;
        if measure.significant {
            measure.cases_needed = None;
        }
    }
}

fn verdict(c: &Comparison) -> String {
    if c.pairs == 0 {
        return "no paired cases to compare".to_owned();
    }
    let rate = |passes: u64| passes as f64 / c.pairs as f64 * 100.0;
    let (rate_a, rate_b) = (rate(c.both + c.a_only), rate(c.both + c.b_only));
    let adjusted = match c.measures.len() {
        0 | 1 => String::new(),
        n => format!(
            ", Holm-adjusted over {n} measures: p {}",
            format_p(c.measures[0].p_adjusted)
        ),
    };
    if c.significant {
        let better = if c.b_only > c.a_only { &c.b } else { &c.a };
        format!(
            "{better} is better: pass rate {rate_a:.0}% → {rate_b:.0}% over {} paired cases; {} flipped to pass, {} to fail (exact McNemar p {}{adjusted})",
            c.pairs,
            c.b_only,
            c.a_only,
            format_p(c.mcnemar_p)
        )
    } else {
        let rate = &c.measures[0];
        let detectable = rate
            .detectable
            .map(|d| {
                format!(
                    "; these cases detect pass-rate differences of {:.0} points or more",
                    d * 100.0
                )
            })
            .unwrap_or_default();
        let needed = rate
            .cases_needed
            .map(|n| format!("; about {n} cases would be needed to detect a difference this size"))
            .unwrap_or_default();
        format!(
            "no significant difference in pass rate: {rate_a:.0}% vs {rate_b:.0}% over {} paired cases ({} vs {} discordant, p {}{adjusted}){detectable}{needed}",
            c.pairs,
            c.a_only,
            c.b_only,
            format_p(c.mcnemar_p),
        )
    }
}

/// `< 0.001` or `= 0.042`, to follow "p".
pub fn format_p(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".to_owned()
    } else {
        format!("= {p:.3}")
    }
}

/// Why the CI gate failed, or `None` when it holds.
pub fn gate(summary: &Summary, thresholds: &Thresholds) -> Option<Vec<String>> {
    let mut problems = Vec::new();
    for cell in &summary.cells {
        let label = cell_label(cell);
        if thresholds.is_set() {
            if let Some(required) = thresholds.pass_rate {
                match cell.pass_rate {
                    Some(rate) if rate >= required => {}
                    Some(rate) => problems.push(format!(
                        "{label}: pass rate {:.1}% < required {:.1}%",
                        rate * 100.0,
                        required * 100.0
                    )),
                    None => problems.push(format!("{label}: nothing measured")),
                }
            }
            for (metric, floor) in &thresholds.metrics {
                match cell.metrics.get(metric) {
                    Some(value) if value >= floor => {}
                    Some(value) => problems.push(format!(
                        "{label}: metric `{metric}` {value:.3} < required {floor}"
                    )),
                    None => problems.push(format!("{label}: metric `{metric}` was not measured")),
                }
            }
        } else {
            if cell.failed > 0 {
                problems.push(format!(
                    "{label}: {} of {} cases failed",
                    cell.failed, cell.cases
                ));
            }
            if cell.unmeasured > 0 {
                problems.push(format!(
                    "{label}: {} cases could not be measured",
                    cell.unmeasured
                ));
            }
        }
    }
    (!problems.is_empty()).then_some(problems)
}

/// Compares a run against a baseline run, cell by cell (matched by prompt and provider label),
/// pairing cases by test index and repeat.
pub fn compare_runs(
    current: &(Summary, Outcomes),
    baseline: &(Summary, Outcomes),
) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for cell in &current.0.cells {
        if let Some(base) = baseline
            .0
            .cells
            .iter()
            .find(|c| c.prompt == cell.prompt && c.provider == cell.provider)
        {
            let mut comparison = compare_cells(base, cell, &baseline.1, &current.1);
            comparison.a = format!("{} (run {})", comparison.a, short_id(&baseline.0.run_id));
            comparison.b = format!("{} (run {})", comparison.b, short_id(&current.0.run_id));
            comparison.verdict = verdict(&comparison);
            comparisons.push(comparison);
        }
    }
    comparisons
}

/// A comparison where the newer side (B) is significantly worse on any measure (pass rate,
/// mean score or a named metric, after Holm's correction).
pub fn is_regression(comparison: &Comparison) -> bool {
    comparison
        .measures
        .iter()
        .any(|m| m.significant && m.diff < 0.0)
}

pub fn short_id(id: &str) -> &str {
    // UUIDv7: the first 8 hex digits are milliseconds, too coarse; the tail is random.
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(prompt_idx: u32) -> Cell {
        Cell::empty(prompt_idx, 0, &format!("p{prompt_idx}"), "m")
    }

    fn outcome(score: f64, metrics: &[(&str, f64)]) -> CaseOutcome {
        CaseOutcome {
            pass: Some(true),
            score,
            metrics: metrics.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        }
    }

    #[test]
    fn comparisons_test_every_measure_and_correct_for_several() {
        let mut outcomes = Outcomes::new();
        for test in 0..30u32 {
            let better = test < 25;
            let a = outcome(0.5, &[("tone", 0.6), ("accuracy", 0.9)]);
            let b = outcome(
                if better { 0.7 } else { 0.5 },
                &[
                    ("tone", 0.6),
                    ("accuracy", if test < 20 { 0.6 } else { 0.9 }),
                ],
            );
            outcomes.insert((0, 0, test, 0), a);
            outcomes.insert((1, 0, test, 0), b);
        }
        let c = compare_cells(&cell(0), &cell(1), &outcomes, &outcomes);
        let names: Vec<&str> = c.measures.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pass rate",
                "mean score",
                "metric `tone`",
                "metric `accuracy`"
            ]
        );
        // Every case passes on both sides: no discordant pair, nothing to detect.
        assert!(!c.significant);
        assert_eq!((c.measures[0].p, c.measures[0].detectable), (1.0, None));
        assert!(
            c.verdict
                .starts_with("no significant difference in pass rate")
        );
        let score = &c.measures[1];
        assert!((score.diff - 25.0 * 0.2 / 30.0).abs() < 1e-9);
        assert!(score.significant && score.p < 1e-3 && score.p_adjusted >= score.p);
        assert!(score.describe(4).ends_with("significantly better"));
        let tone = &c.measures[2];
        assert!(!tone.significant && tone.p == 1.0);
        assert!(tone.describe(4).contains("not significant"));
        let accuracy = &c.measures[3];
        assert!(accuracy.significant && accuracy.diff < 0.0);
        assert!(
            accuracy
                .describe(4)
                .contains("Holm-adjusted over 4 measures"),
            "{}",
            accuracy.describe(4)
        );
        assert!(
            is_regression(&c),
            "a significantly worse metric is a regression"
        );
    }

    #[test]
    fn a_small_unclear_difference_says_what_would_detect_it() {
        let mut outcomes = Outcomes::new();
        for test in 0..20u32 {
            let pass_a = test % 2 == 0;
            let pass_b = test % 2 == 0 || test == 1 || test == 3;
            let case = |pass: bool| CaseOutcome {
                pass: Some(pass),
                score: f64::from(u8::from(pass)),
                metrics: Vec::new(),
            };
            outcomes.insert((0, 0, test, 0), case(pass_a));
            outcomes.insert((1, 0, test, 0), case(pass_b));
        }
        let c = compare_cells(&cell(0), &cell(1), &outcomes, &outcomes);
        assert_eq!(
            c.measures.len(),
            1,
            "scores are the passes: one test, not two"
        );
        assert!(!c.significant && !is_regression(&c));
        assert!(c.verdict.contains("0 vs 2 discordant"), "{}", c.verdict);
        assert!(
            c.verdict
                .contains("cases would be needed to detect a difference this size"),
            "{}",
            c.verdict
        );
        let needed = c.measures[0].cases_needed.unwrap();
        assert_eq!(needed, stats::mcnemar_cases_needed(0.1, 0.1).unwrap());
    }
}
