//! Promotion evidence: for each suite a label's policy names, the newest completed run of the
//! suite (as it is now) that evaluated the target version must meet the suite's thresholds,
//! and, when asked, must show no significant regression against the version the label points
//! at now (exact McNemar on the paired cases, the same test `plumb eval --compare` uses).

use std::path::Path;

use plumb_core::short_hash;
use plumb_eval::runner::RunConfig;
use plumb_eval::summary::{self, Cell, Outcomes, Summary};
use plumb_eval::{Suite, Thresholds};
use plumb_store::{RunRecord, RunStatus, VersionRecord};
use serde::Serialize;

use crate::Registry;
use crate::config::LabelPolicy;
use crate::error::RegistryError;

/// Runs scanned per policy check, newest first.
const RUNS_SCANNED: usize = 5000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Evidence {
    pub suites: Vec<SuiteEvidence>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SuiteEvidence {
    pub suite: String,
    pub run: String,
    pub cells: Vec<CellEvidence>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<ComparisonEvidence>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CellEvidence {
    pub provider: String,
    pub passed: u64,
    pub measured: u64,
    pub pass_rate: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ComparisonEvidence {
    pub against_version: u64,
    pub run: String,
    pub provider: String,
    pub pairs: u64,
    pub mcnemar_p: f64,
    pub regression: bool,
    pub verdict: String,
}

struct RunOf {
    record: RunRecord,
    config: RunConfig,
}

pub(crate) fn evaluate(
    registry: &Registry,
    policy: &LabelPolicy,
    label: &str,
    target: &VersionRecord,
    current: Option<&VersionRecord>,
) -> Result<(Evidence, Vec<String>), RegistryError> {
    let mut evidence = Evidence::default();
    let mut missing = Vec::new();
    let db = registry.db();
    let runs: Vec<RunOf> = db
        .list_runs(RUNS_SCANNED)?
        .into_iter()
        .filter(|run| run.status == RunStatus::Completed)
        .filter_map(|record| {
            let config: RunConfig = serde_json::from_str(&record.config).ok()?;
            Some(RunOf { record, config })
        })
        .collect();
    let name = &target.name;
    let target_label = format!("{name} v{}", target.version);
    for (path, suite_name) in policy.suites.iter().zip(&policy.suite_names) {
        let (suite_hash, thresholds) = match load_gate(path) {
            Ok(gate) => gate,
            Err(problem) => {
                missing.push(format!("suite {suite_name}: {problem}"));
                continue;
            }
        };
        let canonical = std::fs::canonicalize(path)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let of_suite: Vec<&RunOf> = runs
            .iter()
            .filter(|run| run.config.suite_abs.as_deref() == Some(canonical.as_str()))
            .collect();
        let with_target: Vec<&RunOf> = of_suite
            .iter()
            .copied()
            .filter(|run| run.config.prompts.iter().any(|p| p.hash == target.hash))
            .collect();
        if with_target.is_empty() {
            missing.push(format!(
                "no completed run of {suite_name} evaluated {target_label} (content {})",
                short_hash(&target.hash)
            ));
            continue;
        }
        let fresh: Vec<&RunOf> = with_target
            .iter()
            .copied()
            .filter(|run| run.config.suite_hash == suite_hash)
            .collect();
        let Some(run) = fresh.first() else {
            missing.push(format!(
                "run {} of {suite_name} evaluated {target_label}, but the suite has changed since: re-run it",
                summary::short_id(&with_target[0].record.id)
            ));
            continue;
        };
        let (run_summary, outcomes) = summary::summarize(db, &run.record)?;
        let target_cells = cells_for(&run_summary, &run.config, &target.hash);
        let gated = Summary {
            cells: target_cells.clone(),
            ..run_summary.clone()
        };
        let run_id = summary::short_id(&run.record.id).to_owned();
        if let Some(problems) = summary::gate(&gated, &thresholds) {
            for problem in problems {
                missing.push(format!("run {run_id} of {suite_name}: {problem}"));
            }
        }
        let mut suite_evidence = SuiteEvidence {
            suite: suite_name.clone(),
            run: run.record.id.clone(),
            cells: target_cells
                .iter()
                .map(|cell| CellEvidence {
                    provider: cell.provider.clone(),
                    passed: cell.passed,
                    measured: cell.passed + cell.failed,
                    pass_rate: cell.pass_rate,
                })
                .collect(),
            comparisons: Vec::new(),
        };
        if policy.no_regression
            && let Some(current) = current.filter(|c| c.hash != target.hash)
        {
            let current_label = format!("{name} v{} (now at {label})", current.version);
            // The same run is the best baseline (same tests, same time); else the newest fresh
            // run of the suite that evaluated the current version.
            let baseline_run = if cells_for(&run_summary, &run.config, &current.hash).is_empty() {
                of_suite
                    .iter()
                    .copied()
                    .filter(|r| r.config.suite_hash == suite_hash)
                    .find(|r| r.config.prompts.iter().any(|p| p.hash == current.hash))
            } else {
                Some(*run)
            };
            let Some(baseline_run) = baseline_run else {
                missing.push(format!(
                    "no completed run of {suite_name} (as it is now) evaluated {current_label}, so a regression cannot be ruled out; put `{name}@{label}` next to the new version in the suite's prompts"
                ));
                evidence.suites.push(suite_evidence);
                continue;
            };
            let baseline: (Summary, Outcomes) = if baseline_run.record.id == run.record.id {
                (run_summary.clone(), outcomes.clone())
            } else {
                summary::summarize(db, &baseline_run.record)?
            };
            let base_cells = cells_for(&baseline.0, &baseline_run.config, &current.hash);
            for cell in &target_cells {
                let Some(base) = base_cells.iter().find(|b| b.provider == cell.provider) else {
                    missing.push(format!(
                        "run {} has no results of {current_label} on {} to compare with",
                        summary::short_id(&baseline_run.record.id),
                        cell.provider
                    ));
                    continue;
                };
                let comparison = summary::compare_cells(base, cell, &baseline.1, &outcomes);
                let regression = summary::is_regression(&comparison);
                if regression {
                    missing.push(format!(
                        "{target_label} is significantly worse than {current_label} on {suite_name} · {}: {}",
                        cell.provider, comparison.verdict
                    ));
                }
                suite_evidence.comparisons.push(ComparisonEvidence {
                    against_version: current.version,
                    run: baseline_run.record.id.clone(),
                    provider: cell.provider.clone(),
                    pairs: comparison.pairs,
                    mcnemar_p: comparison.mcnemar_p,
                    regression,
                    verdict: comparison.verdict,
                });
            }
        }
        evidence.suites.push(suite_evidence);
    }
    Ok((evidence, missing))
}

fn load_gate(path: &Path) -> Result<(String, Thresholds), String> {
    if !path.is_file() {
        return Err(format!("{} does not exist", path.display()));
    }
    Suite::gate_of(path).map_err(|mut error| {
        error.hint = None;
        error.to_string()
    })
}

/// The cells of a run that evaluated the content `hash`.
fn cells_for(summary: &Summary, config: &RunConfig, hash: &str) -> Vec<Cell> {
    summary
        .cells
        .iter()
        .filter(|cell| {
            config
                .prompts
                .get(cell.prompt_idx as usize)
                .is_some_and(|p| p.hash == hash)
        })
        .cloned()
        .collect()
}
