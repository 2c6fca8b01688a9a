//! Summaries built from a run's stored results: per prompt × provider cells with pass rates and
//! their Wilson intervals, paired comparisons with McNemar and bootstrap, the worst failures,
//! and the CI gate. Built by streaming the store, so `plumb eval` and `plumb runs show` say the
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
}

impl Cell {
    pub fn flake_rate(&self) -> Option<f64> {
        (self.repeated_tests > 0).then(|| self.flaky_tests as f64 / self.repeated_tests as f64)
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
    /// Mean of (score B − score A) with its 95% bootstrap interval.
    pub score_diff: f64,
    pub score_diff_ci: (f64, f64),
    pub significant: bool,
    pub verdict: String,
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

/// Per-case facts kept for pairing: (prompt, provider, test, repeat) → (pass, score).
pub type Outcomes = HashMap<(u32, u32, u32, u32), (Option<bool>, f64)>;

struct CellAccumulator {
    cell: Cell,
    latencies: Vec<f64>,
    score_sum: f64,
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
                cell: Cell {
                    prompt_idx: result.prompt_idx,
                    provider_idx: result.provider_idx,
                    prompt: result.prompt.clone(),
                    provider: result.provider.clone(),
                    cases: 0,
                    passed: 0,
                    failed: 0,
                    unmeasured: 0,
                    pass_rate: None,
                    pass_rate_ci: (0.0, 1.0),
                    mean_score: 0.0,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    cost: 0.0,
                    latency_p50_ms: 0.0,
                    latency_p95_ms: 0.0,
                    cached: 0,
                    metrics: IndexMap::new(),
                    flaky_tests: 0,
                    repeated_tests: 0,
                },
                latencies: Vec::new(),
                score_sum: 0.0,
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
            entry.score_sum += result.score;
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
        cell.prompt_tokens += result.usage.prompt_tokens;
        cell.completion_tokens += result.usage.completion_tokens;
        cell.cost += result.cost;
        cell.cached += u64::from(result.cached);
        outcomes.insert(
            (
                result.prompt_idx,
                result.provider_idx,
                result.test_idx,
                result.repeat_idx,
            ),
            (result.pass, result.score),
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
                cell.mean_score = entry.score_sum / measured as f64;
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

/// Pairs the cases of two cells by (test, repeat) and tests the difference.
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
        significant: false,
        verdict: String::new(),
    };
    let mut keys: Vec<(u32, u32)> = a_outcomes
        .keys()
        .filter(|(p, v, _, _)| *p == a.prompt_idx && *v == a.provider_idx)
        .map(|(_, _, t, r)| (*t, *r))
        .collect();
    keys.sort_unstable();
    let mut differences = Vec::new();
    for (test, repeat) in keys {
        let Some((Some(pass_a), score_a)) = a_outcomes
            .get(&(a.prompt_idx, a.provider_idx, test, repeat))
            .copied()
        else {
            continue;
        };
        let Some((Some(pass_b), score_b)) = b_outcomes
            .get(&(b.prompt_idx, b.provider_idx, test, repeat))
            .copied()
        else {
            continue;
        };
        comparison.pairs += 1;
        match (pass_a, pass_b) {
            (true, true) => comparison.both += 1,
            (true, false) => comparison.a_only += 1,
            (false, true) => comparison.b_only += 1,
            (false, false) => comparison.neither += 1,
        }
        let difference = score_b - score_a;
        if difference > 1e-12 {
            comparison.b_wins += 1;
        } else if difference < -1e-12 {
            comparison.b_losses += 1;
        } else {
            comparison.ties += 1;
        }
        differences.push(difference);
    }
    comparison.mcnemar_p = stats::mcnemar_exact(comparison.a_only, comparison.b_only);
    let (diff, low, high) = stats::paired_bootstrap(&differences, BOOTSTRAP_ITERATIONS, 0x5eed);
    comparison.score_diff = diff;
    comparison.score_diff_ci = (low, high);
    comparison.significant = comparison.pairs > 0 && comparison.mcnemar_p < ALPHA;
    comparison.verdict = verdict(&comparison);
    comparison
}

fn verdict(c: &Comparison) -> String {
    if c.pairs == 0 {
        return "no paired cases to compare".to_owned();
    }
    let rate = |passes: u64| passes as f64 / c.pairs as f64 * 100.0;
    let (rate_a, rate_b) = (rate(c.both + c.a_only), rate(c.both + c.b_only));
    if c.significant {
        let better = if c.b_only > c.a_only { &c.b } else { &c.a };
        format!(
            "{better} is better: pass rate {rate_a:.0}% → {rate_b:.0}% over {} paired cases; {} flipped to pass, {} to fail (exact McNemar p {})",
            c.pairs,
            c.b_only,
            c.a_only,
            format_p(c.mcnemar_p)
        )
    } else {
        let needed = cases_needed(c);
        format!(
            "no significant difference: pass rate {rate_a:.0}% vs {rate_b:.0}% over {} paired cases ({} vs {} discordant, p {}){}",
            c.pairs,
            c.a_only,
            c.b_only,
            format_p(c.mcnemar_p),
            needed
                .map(|n| format!(
                    "; about {n} cases would be needed to detect a difference this size"
                ))
                .unwrap_or_default()
        )
    }
}

/// Rough number of paired cases for McNemar to reach p < 0.05 at 80% power with the observed
/// discordance, by the normal approximation (Connor 1987). `None` when there is no difference.
fn cases_needed(c: &Comparison) -> Option<u64> {
    let n = c.pairs as f64;
    let p10 = c.a_only as f64 / n;
    let p01 = c.b_only as f64 / n;
    let diff = (p10 - p01).abs();
    if diff < 1e-9 {
        return None;
    }
    let psi = p10 + p01;
    let (z_alpha, z_beta) = (stats::Z95, 0.841_621_233_572_914);
    let needed = (z_alpha * psi.sqrt() + z_beta * (psi - diff * diff).max(0.0).sqrt()).powi(2)
        / (diff * diff);
    Some(needed.ceil() as u64)
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

/// A comparison where the newer side (B) is significantly worse.
pub fn is_regression(comparison: &Comparison) -> bool {
    comparison.significant && comparison.a_only > comparison.b_only
}

pub fn short_id(id: &str) -> &str {
    // UUIDv7: the first 8 hex digits are milliseconds, too coarse; the tail is random.
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}
