//! Retrieval evals (`plumb rag eval`): labeled queries run against one or more settings
//! (collection × fusion), scored by recall@k, MRR@k and nDCG@k with bootstrap intervals, and
//! every setting compared with the first one, paired by query.
//!
//! A query's targets are its gold passages (a hit holds one when the passage's words appear in
//! it, see `plumb_rag::evidence::holds_passage`) and its gold sources (any chunk of the
//! document). Passages, not chunk ids, so one label file serves every chunking.
//!
//! * recall@k: targets covered by the top k / targets;
//! * MRR@k: 1 / rank of the first hit covering a target (0 when none in the top k);
//! * nDCG@k: binary gains — a hit gains 1 when it covers a target no earlier hit covered —
//!   discounted by log2(rank + 1), over the ideal min(targets, k) gains.

use std::path::Path;

use plumb_core::SourceError;
use plumb_rag::{Hit, Retriever, SearchOptions, evidence};
use serde::{Deserialize, Serialize};

use crate::raw::OneOrMany;
use crate::stats;
use crate::summary::{self, Measure};

/// A gold passage counts as held by a chunk that has this share of its content words when
/// its words do not appear in order (a passage cut across two chunks).
const PASSAGE_SHARE: f64 = 0.8;

/// A labeled query: `{query, gold, sources}`, or a suite test whose `vars` hold them
/// (`question` or `query`, `gold`, `sources`), so one file serves `plumb rag eval` and an
/// answer suite (`tests: file://questions.yaml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    gold: Option<OneOrMany<String>>,
    #[serde(default)]
    sources: Option<OneOrMany<String>>,
    #[serde(default)]
    vars: Option<serde_json::Map<String, serde_json::Value>>,
    // Kept for files shared with suites; retrieval evals do not use them.
    #[serde(default)]
    #[allow(dead_code, reason = "shared with answer suites")]
    answer: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "shared with answer suites")]
    description: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "shared with answer suites")]
    assert: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code, reason = "free-form")]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code, reason = "free-form")]
    id: Option<serde_json::Value>,
}

/// Strings of a var: one text or a list of them.
fn strings(value: Option<&serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::String(text)) => vec![text.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// One labeled query.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub query: String,
    pub gold: Vec<String>,
    pub sources: Vec<String>,
    /// 1-based position in the file.
    pub number: usize,
}

/// Reads a YAML list of `{query, gold, sources, answer}` (gold: passages; sources: documents).
pub fn load_labels(path: &Path) -> Result<Vec<Label>, SourceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| SourceError::in_file(path, format!("cannot read it: {error}")))?;
    let raw: Vec<RawLabel> = plumb_prompt::yaml::from_str(&text, path)?;
    if raw.is_empty() {
        return Err(SourceError::in_file(path, "no labeled queries").with_hint(
            "a list of `- query: …` with `gold: [passage, …]` or `sources: [file, …]`",
        ));
    }
    let mut labels = Vec::with_capacity(raw.len());
    for (index, item) in raw.into_iter().enumerate() {
        let vars = item.vars.unwrap_or_default();
        let query = item
            .query
            .or_else(|| strings(vars.get("query")).pop())
            .or_else(|| strings(vars.get("question")).pop())
            .unwrap_or_default();
        let mut gold: Vec<String> = item.gold.map(|list| list.0).unwrap_or_default();
        gold.extend(strings(vars.get("gold")));
        gold.retain(|g| !g.trim().is_empty());
        let mut sources = item.sources.map(|list| list.0).unwrap_or_default();
        sources.extend(strings(vars.get("sources")));
        if query.trim().is_empty() || (gold.is_empty() && sources.is_empty()) {
            return Err(SourceError::in_file(
                path,
                format!(
                    "query {}: needs a non-empty `query` (or `vars.question`) and a `gold` passage or `sources`",
                    index + 1
                ),
            ));
        }
        labels.push(Label {
            query,
            gold,
            sources,
            number: index + 1,
        });
    }
    Ok(labels)
}

/// One query's scores under one setting.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryScore {
    pub number: usize,
    pub recall: f64,
    pub reciprocal_rank: f64,
    pub ndcg: f64,
    /// Rank of the first hit covering a target.
    pub first_rank: Option<usize>,
}

/// Scores ranked hits against a label at cutoff `k`.
pub fn score(hits: &[Hit], label: &Label, k: usize) -> QueryScore {
    let targets = label.gold.len() + label.sources.len();
    let mut covered = vec![false; targets];
    let mut first_rank = None;
    let mut dcg = 0.0;
    for (position, hit) in hits.iter().take(k).enumerate() {
        let mut gain = false;
        let mut relevant = false;
        let matches = label
            .gold
            .iter()
            .map(|gold| evidence::holds_passage(&hit.chunk.text, gold, PASSAGE_SHARE))
            .chain(
                label
                    .sources
                    .iter()
                    .map(|source| source_matches(source, &hit.chunk.source)),
            );
        for (target, held) in matches.enumerate() {
            if held {
                relevant = true;
                if !covered[target] {
                    covered[target] = true;
                    gain = true;
                }
            }
        }
        if relevant && first_rank.is_none() {
            first_rank = Some(position + 1);
        }
        if gain {
            dcg += 1.0 / ((position + 2) as f64).log2();
        }
    }
    let ideal: f64 = (0..targets.min(k))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    QueryScore {
        number: label.number,
        recall: covered.iter().filter(|c| **c).count() as f64 / targets.max(1) as f64,
        reciprocal_rank: first_rank.map(|r| 1.0 / r as f64).unwrap_or(0.0),
        ndcg: if ideal > 0.0 { dcg / ideal } else { 0.0 },
        first_rank,
    }
}

fn source_matches(pattern: &str, source: &str) -> bool {
    plumb_rag::store::SourceGlob::lenient(pattern).matches(source)
}

/// A way to retrieve: a collection and search options.
#[derive(Clone)]
pub struct Setting {
    pub label: String,
    pub retriever: Retriever,
    pub options: SearchOptions,
}

/// A mean with its 95% bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

impl Estimate {
    fn of(values: &[f64]) -> Estimate {
        let (mean, low, high) = stats::bootstrap_mean(values, 2000, 0x5eed);
        Estimate { mean, low, high }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SettingReport {
    pub label: String,
    pub recall: Estimate,
    pub mrr: Estimate,
    pub ndcg: Estimate,
    pub queries: Vec<QueryScore>,
}

impl SettingReport {
    /// Queries none of whose targets reached the top k.
    pub fn misses(&self) -> impl Iterator<Item = &QueryScore> {
        self.queries.iter().filter(|q| q.first_rank.is_none())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SettingComparison {
    pub baseline: String,
    pub setting: String,
    /// recall@k, MRR@k, nDCG@k: setting − baseline, paired by query, Holm-adjusted together.
    pub measures: Vec<Measure>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RetrievalReport {
    pub k: usize,
    pub queries: usize,
    pub settings: Vec<SettingReport>,
    pub comparisons: Vec<SettingComparison>,
}

/// Runs every label under every setting (at cutoff `k`) and compares each setting with the
/// first.
pub async fn evaluate(
    labels: &[Label],
    settings: &[Setting],
    k: usize,
    mut progress: impl FnMut(usize),
) -> Result<RetrievalReport, String> {
    let mut reports = Vec::with_capacity(settings.len());
    for setting in settings {
        let options = SearchOptions {
            k,
            candidates: setting.options.candidates.max(k),
            ..setting.options.clone()
        };
        let mut queries = Vec::with_capacity(labels.len());
        for label in labels {
            let hits = setting
                .retriever
                .search(&label.query, &options)
                .await
                .map_err(|error| format!("{}: query {}: {error}", setting.label, label.number))?;
            queries.push(score(&hits, label, k));
            progress(1);
        }
        let column = |f: fn(&QueryScore) -> f64| queries.iter().map(f).collect::<Vec<f64>>();
        reports.push(SettingReport {
            label: setting.label.clone(),
            recall: Estimate::of(&column(|q| q.recall)),
            mrr: Estimate::of(&column(|q| q.reciprocal_rank)),
            ndcg: Estimate::of(&column(|q| q.ndcg)),
            queries,
        });
    }
    let mut comparisons = Vec::new();
    if let Some((baseline, others)) = reports.split_first() {
        for other in others {
            let differences = |f: fn(&QueryScore) -> f64| -> Vec<f64> {
                baseline
                    .queries
                    .iter()
                    .zip(&other.queries)
                    .map(|(a, b)| f(b) - f(a))
                    .collect()
            };
            let mut measures = vec![
                summary::mean_measure(format!("recall@{k}"), &differences(|q| q.recall)),
                summary::mean_measure(format!("MRR@{k}"), &differences(|q| q.reciprocal_rank)),
                summary::mean_measure(format!("nDCG@{k}"), &differences(|q| q.ndcg)),
            ];
            summary::adjust_measures(&mut measures);
            comparisons.push(SettingComparison {
                baseline: baseline.label.clone(),
                setting: other.label.clone(),
                measures,
            });
        }
    }
    Ok(RetrievalReport {
        k,
        queries: labels.len(),
        settings: reports,
        comparisons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_rag::{Format, StoredChunk};

    fn hit(rank: usize, source: &str, text: &str) -> Hit {
        Hit {
            rank,
            chunk: StoredChunk {
                id: rank as u64,
                source: source.into(),
                title: String::new(),
                format: Format::Markdown,
                ordinal: 0,
                text: text.into(),
                start: 0,
                end: text.len(),
                headings: Vec::new(),
                page: None,
                tokens: 1,
            },
            fused: 0.0,
            text_rank: None,
            text_score: None,
            vector_rank: None,
            vector_score: None,
            fused_rank: None,
        }
    }

    fn label(gold: &[&str], sources: &[&str]) -> Label {
        Label {
            query: "q".into(),
            gold: gold.iter().map(|g| g.to_string()).collect(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            number: 1,
        }
    }

    #[test]
    fn metrics_follow_their_definitions() {
        let hits = vec![
            hit(1, "a.md", "nothing here"),
            hit(2, "b.md", "the limit is 600 requests per minute"),
            hit(3, "c.md", "also 600 requests per minute"),
            hit(4, "d.md", "refunds take five days"),
        ];
        // Two targets: found at ranks 2 (and again at 3, no gain) and 4.
        let s = score(&hits, &label(&["600 requests per minute"], &["d.md"]), 5);
        assert_eq!(s.first_rank, Some(2));
        assert_eq!(s.recall, 1.0);
        assert_eq!(s.reciprocal_rank, 0.5);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert!((s.ndcg - dcg / ideal).abs() < 1e-12);
        // Cut at 3: the document target is missed.
        let s = score(&hits, &label(&["600 requests per minute"], &["d.md"]), 3);
        assert_eq!(s.recall, 0.5);
        // Nothing relevant.
        let s = score(&hits, &label(&["status 429"], &[]), 4);
        assert_eq!(
            (s.recall, s.reciprocal_rank, s.ndcg, s.first_rank),
            (0.0, 0.0, 0.0, None)
        );
        // Perfect.
        let s = score(&hits[1..], &label(&["600 requests"], &[]), 1);
        assert_eq!((s.recall, s.reciprocal_rank, s.ndcg), (1.0, 1.0, 1.0));
        // Globs over sources.
        let s = score(&hits, &label(&[], &["*.md"]), 1);
        assert_eq!(s.recall, 1.0);
    }
}
