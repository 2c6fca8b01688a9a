//! Judge calibration: how far a suite's judges agree with human raters.
//!
//! A labels file (CSV) holds outputs that people graded against the suite's judged assertions:
//!
//! ```csv
//! test,criterion,output,label
//! 1,apologises,"Sorry about that! A new mug ships today.",pass
//! ```
//!
//! * `test`: the test's 1-based number in the suite, or its description;
//! * `criterion`: which judged assertion of that test: its `metric`, its value (the rubric
//!   text), or its type when the test has one of that type; may be empty when the test has a
//!   single judged assertion;
//! * `output`: the output that was graded; `label`: the human verdict (pass/fail, yes/no,
//!   true/false, 1/0); optional `rater` and `note` columns are kept for people, not read.
//!
//! Each labeled output is judged `repeats` times (distinct cache entries per repeat); the
//! judge's verdict is the majority of its measured repeats. Per criterion: agreement (with its
//! Wilson interval), Cohen's κ, TPR (judge passes what people pass) and TNR, and the
//! self-consistency flip rate (labeled outputs whose repeats disagree).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plumb_core::{Embedder, SourceError};
use plumb_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::assertion::Assertion;
use crate::judge::{Graders, JudgeContext, StepsMemo, Subject, collect_judged};
use crate::runner::{CacheMode, Caller};
use crate::stats;
use crate::suite::{Suite, render_messages};

/// Disagreements kept per criterion for the report.
const KEPT_DISAGREEMENTS: usize = 10;

/// `calibration:` in a suite: the labels and the agreement judged metrics must reach.
#[derive(Clone, Debug)]
pub struct CalibrationConfig {
    pub labels: PathBuf,
    /// Below this Cohen's κ (for any criterion) the judged metrics may not gate: `plumb eval`
    /// fails its gate, saying which judge is not trusted.
    pub min_kappa: Option<f64>,
    /// Judgements per labeled output for self-consistency (`plumb judge calibrate`).
    pub repeats: Option<u32>,
    /// The labels, checked against the suite when it loaded.
    pub rows: Vec<LabelRow>,
}

/// One labeled output.
#[derive(Clone, Debug)]
pub struct LabelRow {
    /// The row's line in the labels file.
    pub line: usize,
    pub test_idx: usize,
    /// Where the assertion is in `collect_judged` order of the test's assertions.
    pub judged_idx: usize,
    pub criterion: String,
    pub output: String,
    pub human: bool,
}

/// Agreement between a judge and people on one criterion (or all of them).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CriterionCalibration {
    pub criterion: String,
    /// The grader (or graders) that judged it.
    pub grader: String,
    pub labels: u64,
    /// Labeled outputs with no measured judgement (judge errors): left out of the figures.
    pub unmeasured: u64,
    /// Judge pass & human pass, judge pass & human fail, judge fail & human fail, judge fail &
    /// human pass.
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub agreement: Option<f64>,
    pub agreement_ci: (f64, f64),
    /// Cohen's κ; `None` when chance agreement is total (one class only on both sides).
    pub kappa: Option<f64>,
    pub tpr: Option<f64>,
    pub tnr: Option<f64>,
    pub repeats: u32,
    /// Labeled outputs whose repeated judgements did not all agree.
    pub flipped: u64,
    pub flip_rate: Option<f64>,
    pub disagreements: Vec<Disagreement>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Disagreement {
    pub line: usize,
    pub test: String,
    pub human: bool,
    pub judge: bool,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Calibration {
    pub labels_path: String,
    pub criteria: Vec<CriterionCalibration>,
    pub overall: CriterionCalibration,
}

impl Calibration {
    /// Criteria below `min_kappa` (κ undefined or nothing measured counts as below), with why.
    pub fn untrusted(&self, min_kappa: f64) -> Vec<String> {
        self.criteria
            .iter()
            .filter_map(|c| match c.kappa {
                Some(kappa) if kappa >= min_kappa => None,
                Some(kappa) => Some(format!(
                    "judge `{}` of `{}`: Cohen's κ {kappa:.2} < required {min_kappa} over {} labeled outputs",
                    c.grader,
                    c.criterion,
                    c.labels - c.unmeasured
                )),
                None => Some(format!(
                    "judge `{}` of `{}`: Cohen's κ cannot be computed ({}); required {min_kappa}",
                    c.grader,
                    c.criterion,
                    if c.labels == c.unmeasured {
                        "nothing was measured".to_owned()
                    } else {
                        "the labels or the verdicts are all one class".to_owned()
                    }
                )),
            })
            .collect()
    }
}

/// The name a criterion goes by in reports: the assertion's `metric`, else its type and value.
pub fn criterion_name(assertion: &Assertion) -> String {
    if let Some(metric) = &assertion.metric {
        return metric.clone();
    }
    match &assertion.value {
        Some(Value::String(text)) => format!("{}: {text}", assertion.label),
        Some(other) => format!("{}: {other}", assertion.label),
        None => assertion.label.clone(),
    }
}

fn parse_label(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "pass" | "yes" | "y" | "true" | "1" => Some(true),
        "fail" | "no" | "n" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// Reads and checks a labels file against the suite: every row names an existing test and
/// one of its judged assertions, an output, and a label.
pub fn load_labels(path: &Path, suite: &Suite) -> Result<Vec<LabelRow>, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        SourceError::in_file(path, format!("cannot read the labels file: {error}"))
            .with_hint("a CSV with the columns test, criterion, output, label")
    })?;
    let (mut reader, headers) = crate::suite::csv_reader(&text, path)?;
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    for header in headers.iter() {
        if !["test", "criterion", "output", "label", "rater", "note"].contains(&header.trim()) {
            return Err(SourceError::in_file(
                path,
                format!("unknown column `{header}` in the labels file"),
            )
            .at(1, 1)
            .with_hint("columns: test, criterion (optional), output, label; rater and note are kept for people"));
        }
    }
    let (Some(test_col), Some(output_col), Some(label_col)) =
        (column("test"), column("output"), column("label"))
    else {
        return Err(SourceError::in_file(
            path,
            "the labels file needs the columns test, output and label",
        )
        .at(1, 1)
        .with_hint("and `criterion` when a test has several judged assertions"));
    };
    let criterion_col = column("criterion");
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| crate::suite::csv_row_error(path, &error))?;
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let at = |message: String| SourceError::in_file(path, message).at(line, 1);
        let test_ref = record.get(test_col).unwrap_or("").trim();
        let test_idx = match test_ref.parse::<usize>() {
            Ok(number) if (1..=suite.tests.len()).contains(&number) => number - 1,
            Ok(number) => {
                return Err(at(format!(
                    "test {number} does not exist: the suite has {} tests",
                    suite.tests.len()
                )));
            }
            Err(_) => suite
                .tests
                .iter()
                .position(|t| t.description == test_ref)
                .ok_or_else(|| {
                    at(format!("no test is described as `{test_ref}`"))
                        .with_hint("name a test by its 1-based number or its exact description")
                })?,
        };
        let test = &suite.tests[test_idx];
        let mut judged = Vec::new();
        collect_judged(&test.asserts, &mut judged);
        if judged.is_empty() {
            return Err(at(format!(
                "test {} (`{}`) has no judged assertion to calibrate",
                test_idx + 1,
                test.description
            )));
        }
        let wanted = criterion_col
            .and_then(|c| record.get(c))
            .unwrap_or("")
            .trim();
        let judged_idx = if wanted.is_empty() {
            if judged.len() > 1 {
                return Err(at(format!(
                    "test {} has {} judged assertions: say which in `criterion`",
                    test_idx + 1,
                    judged.len()
                ))
                .with_hint(known_criteria(&judged)));
            }
            0
        } else {
            find_criterion(&judged, wanted).ok_or_else(|| {
                at(format!(
                    "test {} has no judged assertion `{wanted}`",
                    test_idx + 1
                ))
                .with_hint(known_criteria(&judged))
            })?
        };
        let output = record.get(output_col).unwrap_or("").to_owned();
        let label_text = record.get(label_col).unwrap_or("");
        let human = parse_label(label_text).ok_or_else(|| {
            at(format!("label `{label_text}` is not a verdict"))
                .with_hint("use pass or fail (also yes/no, true/false, 1/0)")
        })?;
        rows.push(LabelRow {
            line,
            test_idx,
            judged_idx,
            criterion: criterion_name(judged[judged_idx]),
            output,
            human,
        });
    }
    if rows.is_empty() {
        return Err(SourceError::in_file(path, "the labels file has no rows"));
    }
    Ok(rows)
}

fn find_criterion(judged: &[&Assertion], wanted: &str) -> Option<usize> {
    let by = |matches: &dyn Fn(&Assertion) -> bool| {
        let found: Vec<usize> = judged
            .iter()
            .enumerate()
            .filter(|(_, a)| matches(a))
            .map(|(i, _)| i)
            .collect();
        (found.len() == 1).then(|| found[0])
    };
    by(&|a| a.metric.as_deref() == Some(wanted))
        .or_else(|| by(&|a| matches!(&a.value, Some(Value::String(v)) if v.trim() == wanted)))
        .or_else(|| by(&|a| a.label == wanted))
}

fn known_criteria(judged: &[&Assertion]) -> String {
    let names: Vec<String> = judged
        .iter()
        .map(|a| format!("`{}`", criterion_name(a)))
        .collect();
    format!("this test's judged assertions: {}", names.join(", "))
}

/// What calibrating needs besides the suite: the graders, the response cache, the embedders
/// (answer-relevance).
pub struct Calibrator {
    pub graders: Arc<Graders>,
    pub store: Arc<dyn Store>,
    pub cache: CacheMode,
    pub embedders: Arc<HashMap<String, Arc<dyn Embedder>>>,
    pub concurrency: usize,
}

impl Calibrator {
    /// Judges every labeled output `repeats` times and compares with the people's labels.
    pub async fn calibrate(
        &self,
        suite: &Suite,
        labels_path: &Path,
        rows: &[LabelRow],
        repeats: u32,
    ) -> Calibration {
        let repeats = repeats.max(1);
        let steps = Arc::new(StepsMemo::default());
        let gate = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let judged_rows = rows.iter().map(|row| {
            let steps = steps.clone();
            let gate = gate.clone();
            async move {
                let _permit = gate.acquire().await.ok();
                let test = &suite.tests[row.test_idx];
                let mut judged = Vec::new();
                collect_judged(&test.asserts, &mut judged);
                let assertion = judged[row.judged_idx];
                let input = suite
                    .prompts
                    .first()
                    .and_then(|prompt| render_messages(prompt, &test.vars).ok())
                    .and_then(|messages| {
                        messages
                            .iter()
                            .rev()
                            .find(|m| m.role == plumb_core::Role::User)
                            .map(|m| m.content.clone())
                    })
                    .unwrap_or_default();
                let subject = Subject {
                    output: &row.output,
                    input: &input,
                    vars: &test.vars,
                };
                let mut verdicts = Vec::new();
                for repeat in 0..repeats {
                    let judges = JudgeContext {
                        graders: self.graders.clone(),
                        caller: Caller {
                            store: self.store.clone(),
                            cache: self.cache,
                            repeat: (repeats > 1).then_some(repeat),
                        },
                        steps: steps.clone(),
                        embedders: self.embedders.clone(),
                    };
                    let judgement = judges
                        .judge_all(std::slice::from_ref(assertion), &subject)
                        .await
                        .remove(&assertion.id)
                        .unwrap_or_else(|| Err("internal: not judged".into()));
                    // `not-` assertions pass when the judge says the rubric is not met.
                    verdicts.push(judgement.map(|v| (v.pass != assertion.negate, v.reason)));
                }
                let grader = self
                    .graders
                    .key_for(assertion)
                    .unwrap_or("(none)")
                    .to_owned();
                (grader, verdicts)
            }
        });
        let results = futures_util::future::join_all(judged_rows).await;

        let mut criteria: Vec<CriterionCalibration> = Vec::new();
        let mut overall = CriterionCalibration {
            criterion: "all criteria".into(),
            repeats,
            ..CriterionCalibration::default()
        };
        for (row, (grader, verdicts)) in rows.iter().zip(results) {
            let index = match criteria
                .iter()
                .position(|c| c.criterion == row.criterion && c.grader == grader)
            {
                Some(index) => index,
                None => {
                    criteria.push(CriterionCalibration {
                        criterion: row.criterion.clone(),
                        grader: grader.clone(),
                        repeats,
                        ..CriterionCalibration::default()
                    });
                    criteria.len() - 1
                }
            };
            let test = &suite.tests[row.test_idx].description;
            for target in [&mut criteria[index], &mut overall] {
                tally(target, row, test, &verdicts);
            }
        }
        let graders: Vec<&str> = {
            let mut names: Vec<&str> = criteria.iter().map(|c| c.grader.as_str()).collect();
            names.dedup();
            names
        };
        overall.grader = graders.join(", ");
        for target in criteria.iter_mut().chain(std::iter::once(&mut overall)) {
            finish(target);
        }
        Calibration {
            labels_path: labels_path.display().to_string(),
            criteria,
            overall,
        }
    }
}

type Judged = Result<(bool, String), String>;

fn tally(target: &mut CriterionCalibration, row: &LabelRow, test: &str, verdicts: &[Judged]) {
    target.labels += 1;
    let measured: Vec<&(bool, String)> = verdicts.iter().filter_map(|v| v.as_ref().ok()).collect();
    if measured.is_empty() {
        target.unmeasured += 1;
        return;
    }
    let passes = measured.iter().filter(|(pass, _)| *pass).count();
    let judge = match (passes * 2).cmp(&measured.len()) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        // A tie (an even number of repeats) goes to the first verdict.
        std::cmp::Ordering::Equal => measured[0].0,
    };
    if passes != 0 && passes != measured.len() {
        target.flipped += 1;
    }
    match (judge, row.human) {
        (true, true) => target.tp += 1,
        (true, false) => target.fp += 1,
        (false, false) => target.tn += 1,
        (false, true) => target.fn_ += 1,
    }
    if judge != row.human && target.disagreements.len() < KEPT_DISAGREEMENTS {
        target.disagreements.push(Disagreement {
            line: row.line,
            test: test.to_owned(),
            human: row.human,
            judge,
            reason: measured[0].1.chars().take(200).collect(),
        });
    }
}

fn finish(target: &mut CriterionCalibration) {
    let measured = target.tp + target.fp + target.tn + target.fn_;
    if measured == 0 {
        return;
    }
    let agree = target.tp + target.tn;
    target.agreement = Some(agree as f64 / measured as f64);
    target.agreement_ci = stats::wilson(agree, measured, stats::Z95);
    target.kappa = stats::cohen_kappa(target.tp, target.fp, target.fn_, target.tn);
    let positives = target.tp + target.fn_;
    let negatives = target.tn + target.fp;
    target.tpr = (positives > 0).then(|| target.tp as f64 / positives as f64);
    target.tnr = (negatives > 0).then(|| target.tn as f64 / negatives as f64);
    target.flip_rate = (target.repeats > 1).then(|| target.flipped as f64 / measured as f64);
}

/// The calibration as a terminal table, in words where it matters.
pub fn render(calibration: &Calibration, min_kappa: Option<f64>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let width = calibration
        .criteria
        .iter()
        .map(|c| c.criterion.chars().count())
        .max()
        .unwrap_or(12)
        .clamp(12, 40);
    let grader_width = calibration
        .criteria
        .iter()
        .map(|c| c.grader.chars().count())
        .max()
        .unwrap_or(6)
        .clamp(6, 28);
    let _ = writeln!(
        out,
        "  {:<width$} {:<grader_width$} {:>6}  {:<20} {:>6} {:>5} {:>5} {:>10}",
        "criterion", "grader", "labels", "agreement (95% CI)", "κ", "TPR", "TNR", "flips"
    );
    let fraction = |value: Option<f64>| match value {
        // No "-0.00".
        Some(value) if value.abs() < 0.005 => "0.00".to_owned(),
        Some(value) => format!("{value:.2}"),
        None => "–".to_owned(),
    };
    let line = |out: &mut String, c: &CriterionCalibration, grader: &str| {
        let agreement = match c.agreement {
            Some(rate) => format!(
                "{:.0}% ({:.0}–{:.0}%)",
                rate * 100.0,
                c.agreement_ci.0 * 100.0,
                c.agreement_ci.1 * 100.0
            ),
            None => "unmeasured".to_owned(),
        };
        let measured = c.labels - c.unmeasured;
        let flips = if c.repeats > 1 {
            format!("{}/{measured}", c.flipped)
        } else {
            "–".to_owned()
        };
        let criterion: String = c.criterion.chars().take(width).collect();
        let grader: String = grader.chars().take(grader_width).collect();
        let _ = writeln!(
            out,
            "  {criterion:<width$} {grader:<grader_width$} {:>6}  {agreement:<20} {:>6} {:>5} {:>5} {flips:>10}",
            c.labels,
            fraction(c.kappa),
            fraction(c.tpr),
            fraction(c.tnr),
        );
        if c.unmeasured > 0 {
            let _ = writeln!(
                out,
                "    ↳ {} labeled outputs unmeasured (judge errors), left out of the figures",
                c.unmeasured
            );
        }
    };
    for criterion in &calibration.criteria {
        line(&mut out, criterion, &criterion.grader);
    }
    if calibration.criteria.len() > 1 {
        line(&mut out, &calibration.overall, "");
    }
    for c in &calibration.criteria {
        let words = match c.kappa {
            None => "κ cannot be computed (one class only)".to_owned(),
            Some(k) if k >= 0.8 => format!("κ {k:.2}: almost perfect agreement"),
            Some(k) if k >= 0.6 => format!("κ {k:.2}: substantial agreement"),
            Some(k) if k >= 0.4 => format!("κ {k:.2}: moderate agreement"),
            Some(k) if k >= 0.2 => format!("κ {k:.2}: fair agreement"),
            Some(k) if k > 0.0 => format!("κ {k:.2}: slight agreement"),
            Some(k) => format!("κ {k:.2}: no agreement beyond chance"),
        };
        let gate = match (min_kappa, c.kappa) {
            (Some(min), Some(k)) if k >= min => format!("; may gate CI (≥ {min})"),
            (Some(min), _) => format!("; may NOT gate CI (needs κ ≥ {min})"),
            (None, _) => String::new(),
        };
        let flips = match c.flip_rate {
            Some(rate) if rate > 0.0 => format!(
                "; the judge changed its mind on {:.0}% of the outputs over {} judgements",
                rate * 100.0,
                c.repeats
            ),
            Some(_) => format!(
                "; its {} judgements of each output always agreed",
                c.repeats
            ),
            None => String::new(),
        };
        let _ = writeln!(out, "  {}: {words}{gate}{flips}", c.criterion);
    }
    let disagreements: Vec<(&CriterionCalibration, &Disagreement)> = calibration
        .criteria
        .iter()
        .flat_map(|c| c.disagreements.iter().map(move |d| (c, d)))
        .collect();
    if !disagreements.is_empty() {
        let _ = writeln!(
            out,
            "Disagreements (up to {KEPT_DISAGREEMENTS} per criterion):"
        );
        let verdict = |pass: bool| if pass { "pass" } else { "fail" };
        for (c, d) in disagreements {
            let _ = writeln!(
                out,
                "  {}:{} {} · {}: people said {}, the judge {}: {}",
                calibration.labels_path,
                d.line,
                d.test,
                c.criterion,
                verdict(d.human),
                verdict(d.judge),
                d.reason
            );
        }
    }
    out
}
