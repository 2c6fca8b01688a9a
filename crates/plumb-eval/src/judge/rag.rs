//! RAG metrics with RAGAS's published algorithms, each verdict asked under a JSON Schema
//! through the same path as the other judged assertions:
//!
//! * `context-faithfulness`: the output's statements, then a verdict per statement against the
//!   context; score = supported / statements.
//! * `answer-relevance`: `n` questions the output answers (asked concurrently), each with a
//!   noncommittal flag; score = mean cosine between them and the real question, 0 when every
//!   generation is noncommittal.
//! * `context-precision`: per chunk, in rank order, was it useful for the reference answer (or
//!   the output); score = average precision, Σ_k precision@k · v_k / Σ v_k (0 if none).
//! * `context-recall`: each statement of the reference answer, attributable to the context or
//!   not; score = attributed / statements.
//!
//! The context comes from the test's vars (`context` or `contexts`: one text or a list of
//! chunks in rank order), the question from `query` (or `question`, else the prompt's last user
//! message). What is missing makes the assertion unmeasured with the reason; so does an output
//! or reference with no statements (RAGAS's NaN).

use std::sync::Arc;

use plumb_core::ChatModel;
use serde_json::{Map, Value, json};

use super::{
    Ask, JudgeContext, JudgeInfo, Subject, Verdict, add_info, object_schema, prompt, reason_schema,
    text_field,
};
use crate::assertion::{self, Assertion, AssertionType};

/// Questions answer-relevance generates per output (RAGAS's `strictness`).
pub const RELEVANCE_QUESTIONS: usize = 3;
/// RAGAS samples its several questions at this temperature (one sample is asked at 0).
const RELEVANCE_TEMPERATURE: f64 = 0.3;
/// The most statements taken from one text, and their longest length.
const MAX_STATEMENTS: usize = 16;
const STATEMENT_CHARS: u32 = 200;
/// Room for a list of statements or verdicts.
const LIST_MAX_TOKENS: u32 = 1536;

const STATEMENTS_SYSTEM: &str = "You break an answer into short factual statements. Each \
statement stands on its own (no pronouns: name what it is about) and holds one fact. Leave out \
greetings, hedges and questions. Reply with JSON only.";
const STATEMENTS_USER: &str = "[Question]\n{{ query }}\n\n[Answer]\n{{ output }}\n\n\
List the answer's statements as {\"statements\": [\"...\"]}. An answer that states nothing gives \
an empty list.";
const FAITHFUL_SYSTEM: &str = "You check statements against a context. A statement is \
supported only when the context says it or it follows directly from what the context says; \
general knowledge does not count. Reply with JSON only.";
const FAITHFUL_USER: &str = "[Context]\n{{ context }}\n\n[Statements]\n{{ statements }}\n\n\
For each statement, in order, give a short reason and whether the context supports it: \
{\"verdicts\": [{\"reason\": \"...\", \"supported\": true}]}, exactly {{ count }} verdicts.";
const RELEVANCE_SYSTEM: &str = "You read an answer and write the one question it answers. You \
also say whether the answer is noncommittal: evasive, vague or refusing (\"I don't know\", \"I'm \
not sure\"). Reply with JSON only.";
const RELEVANCE_USER: &str = "[Answer]\n{{ output }}\n\n\
Reply as {\"question\": \"...\", \"noncommittal\": false}.";
const PRECISION_SYSTEM: &str = "You judge whether a retrieved passage was useful for arriving \
at the given answer to a question. Reply with JSON only.";
const PRECISION_USER: &str = "[Question]\n{{ query }}\n\n[Answer]\n{{ reference }}\n\n\
[Passage]\n{{ chunk }}\n\nWas the passage useful for arriving at the answer? Reply as \
{\"reason\": \"...\", \"useful\": true}.";
const RECALL_SYSTEM: &str = "You check which statements of a reference answer can be \
attributed to a context: the context says them or they follow directly from it. Reply with \
JSON only.";
const RECALL_USER: &str = "[Question]\n{{ query }}\n\n[Context]\n{{ context }}\n\n\
[Reference answer]\n{{ reference }}\n\nSplit the reference answer into its statements (one \
fact each) and, for each, give a short reason and whether it is attributed to the context: \
{\"statements\": [{\"statement\": \"...\", \"reason\": \"...\", \"attributed\": true}]}.";

/// A score and its explanation, with what asking for it cost.
type Measured = (f64, String, JudgeInfo);

impl JudgeContext {
    pub(super) async fn rag(
        &self,
        assertion: &Assertion,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        subject: &Subject<'_>,
    ) -> Result<Verdict, String> {
        let query = query(subject);
        let (score, reason, judge) = match assertion.kind {
            AssertionType::ContextFaithfulness => {
                let context = contexts(assertion, subject.vars)?.join("\n\n");
                self.faithfulness(model, grader, &query, subject.output, &context)
                    .await?
            }
            AssertionType::AnswerRelevance => {
                self.answer_relevance(assertion, model, grader, &query, subject.output)
                    .await?
            }
            AssertionType::ContextPrecision => {
                let chunks = contexts(assertion, subject.vars)?;
                let reference = match assertion.rendered_value(subject.vars)? {
                    Value::Null => subject.output.to_owned(),
                    other => super::value_text(&other),
                };
                self.precision(model, grader, &query, &reference, &chunks)
                    .await?
            }
            AssertionType::ContextRecall => {
                let context = contexts(assertion, subject.vars)?.join("\n\n");
                let reference = super::value_text(&assertion.rendered_value(subject.vars)?);
                self.recall(model, grader, &query, &reference, &context)
                    .await?
            }
            other => return Err(format!("internal: `{}` is not a RAG metric", other.name())),
        };
        let threshold = assertion
            .threshold
            .unwrap_or(default_threshold(assertion.kind));
        Ok(Verdict {
            pass: score >= threshold,
            score,
            reason: format!("score {score:.2} (threshold {threshold}): {reason}"),
            judge,
        })
    }

    async fn faithfulness(
        &self,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        query: &str,
        output: &str,
        context: &str,
    ) -> Result<Measured, String> {
        let (statements, mut total) = self.statements(model, grader, query, output).await?;
        if statements.is_empty() {
            return Err(
                "the output makes no statements to check against the context (nothing to score)"
                    .into(),
            );
        }
        let mut vars = Map::new();
        vars.insert("context".into(), json!(context));
        vars.insert("statements".into(), json!(numbered(&statements)));
        vars.insert("count".into(), json!(statements.len()));
        let verdict = object_schema(&[
            (
                "reason",
                json!({"type": "string", "maxLength": STATEMENT_CHARS}),
            ),
            ("supported", json!({"type": "boolean"})),
        ]);
        let schema = object_schema(&[(
            "verdicts",
            json!({"type": "array", "items": verdict, "minItems": statements.len(),
                   "maxItems": statements.len()}),
        )]);
        let prompt = prompt(FAITHFUL_SYSTEM, FAITHFUL_USER);
        let ask = Ask {
            max_tokens: LIST_MAX_TOKENS,
            ..Ask::new(&prompt, &vars, schema)
        };
        let (answer, info, _) = self.ask_with(model, grader, &ask).await?;
        add_info(&mut total, &info);
        let verdicts = flags(&answer, "verdicts", "supported");
        let supported = verdicts.iter().filter(|v| **v).count();
        let unsupported: Vec<&str> = statements
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| !**v)
            .map(|(s, _)| s.as_str())
            .collect();
        let score = supported as f64 / statements.len() as f64;
        let mut reason = format!(
            "{supported} of {} statements supported by the context",
            statements.len()
        );
        if !unsupported.is_empty() {
            reason.push_str(&format!("; not supported: {}", quoted(&unsupported)));
        }
        Ok((score, reason, total))
    }

    async fn statements(
        &self,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        query: &str,
        output: &str,
    ) -> Result<(Vec<String>, JudgeInfo), String> {
        let mut vars = Map::new();
        vars.insert("query".into(), json!(query));
        vars.insert("output".into(), json!(output));
        let schema = object_schema(&[(
            "statements",
            json!({"type": "array", "maxItems": MAX_STATEMENTS,
                   "items": {"type": "string", "maxLength": STATEMENT_CHARS}}),
        )]);
        let prompt = prompt(STATEMENTS_SYSTEM, STATEMENTS_USER);
        let ask = Ask {
            max_tokens: LIST_MAX_TOKENS,
            ..Ask::new(&prompt, &vars, schema)
        };
        let (answer, info, _) = self.ask_with(model, grader, &ask).await?;
        Ok((super::text_list(&answer, "statements"), info))
    }

    async fn answer_relevance(
        &self,
        assertion: &Assertion,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        query: &str,
        output: &str,
    ) -> Result<Measured, String> {
        let mut vars = Map::new();
        vars.insert("output".into(), json!(output));
        let schema = object_schema(&[
            (
                "question",
                json!({"type": "string", "minLength": 1, "maxLength": 240}),
            ),
            ("noncommittal", json!({"type": "boolean"})),
        ]);
        let prompt = prompt(RELEVANCE_SYSTEM, RELEVANCE_USER);
        let asks: Vec<Ask<'_>> = (0..RELEVANCE_QUESTIONS)
            .map(|i| Ask {
                temperature: RELEVANCE_TEMPERATURE,
                salt: format!(" question={i}"),
                ..Ask::new(&prompt, &vars, schema.clone())
            })
            .collect();
        let answers = futures_util::future::join_all(
            asks.iter().map(|ask| self.ask_with(model, grader, ask)),
        )
        .await;
        let mut total = JudgeInfo::default();
        let mut questions = Vec::new();
        let mut noncommittal = 0;
        for answer in answers {
            let (answer, info, _) = answer?;
            add_info(&mut total, &info);
            questions.push(text_field(&answer, "question"));
            noncommittal += usize::from(answer.get("noncommittal") == Some(&Value::Bool(true)));
        }
        let embedder_id = assertion.embedder();
        let embedder = self
            .embedders
            .get(embedder_id)
            .ok_or_else(|| format!("embedder `{embedder_id}` is not available"))?;
        let mut texts = vec![query.to_owned()];
        texts.extend(questions.iter().cloned());
        let vectors = embedder
            .embed(&texts)
            .await
            .map_err(|error| format!("embedder `{embedder_id}` failed: {error}"))?;
        let (real, generated) = vectors
            .split_first()
            .ok_or_else(|| format!("embedder `{embedder_id}` returned no vectors"))?;
        let similarities: Vec<f64> = generated
            .iter()
            .map(|v| assertion::cosine(real, v))
            .collect();
        let mean = similarities.iter().sum::<f64>() / similarities.len().max(1) as f64;
        let all_noncommittal = noncommittal == questions.len();
        let score = if all_noncommittal {
            0.0
        } else {
            mean.clamp(0.0, 1.0)
        };
        let mut distinct: Vec<&str> = Vec::new();
        for question in &questions {
            if !distinct.contains(&question.as_str()) {
                distinct.push(question);
            }
        }
        let mut reason = format!(
            "mean cosine {mean:.3} between the question and {} generated from the output ({})",
            questions.len(),
            quoted(&distinct)
        );
        if all_noncommittal {
            reason.push_str("; every generation found the output noncommittal, so 0");
        } else if noncommittal > 0 {
            reason.push_str(&format!("; {noncommittal} found it noncommittal"));
        }
        Ok((score, reason, total))
    }

    async fn precision(
        &self,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        query: &str,
        reference: &str,
        chunks: &[String],
    ) -> Result<Measured, String> {
        let schema = object_schema(&[
            ("reason", reason_schema()),
            ("useful", json!({"type": "boolean"})),
        ]);
        let prompt = prompt(PRECISION_SYSTEM, PRECISION_USER);
        let all_vars: Vec<Map<String, Value>> = chunks
            .iter()
            .map(|chunk| {
                let mut vars = Map::new();
                vars.insert("query".into(), json!(query));
                vars.insert("reference".into(), json!(reference));
                vars.insert("chunk".into(), json!(chunk));
                vars
            })
            .collect();
        let answers = futures_util::future::join_all(
            all_vars
                .iter()
                .map(|vars| self.ask(model, grader, &prompt, vars, schema.clone())),
        )
        .await;
        let mut total = JudgeInfo::default();
        let mut useful = Vec::new();
        for answer in answers {
            let (answer, info) = answer?;
            add_info(&mut total, &info);
            useful.push(answer.get("useful") == Some(&Value::Bool(true)));
        }
        let score = average_precision(&useful);
        let ranks: Vec<String> = useful
            .iter()
            .enumerate()
            .filter(|(_, u)| **u)
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        let reason = format!(
            "{} of {} chunks useful{}",
            ranks.len(),
            chunks.len(),
            if ranks.is_empty() {
                String::new()
            } else {
                format!(" (ranks {})", ranks.join(", "))
            }
        );
        Ok((score, reason, total))
    }

    async fn recall(
        &self,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        query: &str,
        reference: &str,
        context: &str,
    ) -> Result<Measured, String> {
        let mut vars = Map::new();
        vars.insert("query".into(), json!(query));
        vars.insert("context".into(), json!(context));
        vars.insert("reference".into(), json!(reference));
        let item = object_schema(&[
            (
                "statement",
                json!({"type": "string", "maxLength": STATEMENT_CHARS}),
            ),
            (
                "reason",
                json!({"type": "string", "maxLength": STATEMENT_CHARS}),
            ),
            ("attributed", json!({"type": "boolean"})),
        ]);
        let schema = object_schema(&[(
            "statements",
            json!({"type": "array", "items": item, "maxItems": MAX_STATEMENTS}),
        )]);
        let prompt = prompt(RECALL_SYSTEM, RECALL_USER);
        let ask = Ask {
            max_tokens: LIST_MAX_TOKENS,
            ..Ask::new(&prompt, &vars, schema)
        };
        let (answer, info, _) = self.ask_with(model, grader, &ask).await?;
        let attributed = flags(&answer, "statements", "attributed");
        if attributed.is_empty() {
            return Err(
                "the judge found no statements in the reference answer (nothing to score)".into(),
            );
        }
        let hits = attributed.iter().filter(|a| **a).count();
        let missing: Vec<String> = answer
            .get("statements")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|item| item.get("attributed") != Some(&Value::Bool(true)))
            .map(|item| text_field(item, "statement"))
            .collect();
        let mut reason = format!(
            "{hits} of {} reference statements attributed to the context",
            attributed.len()
        );
        if !missing.is_empty() {
            let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
            reason.push_str(&format!("; not in the context: {}", quoted(&missing)));
        }
        let score = hits as f64 / attributed.len() as f64;
        Ok((score, reason, info))
    }
}

/// Where a metric reads its question: `query`, `question`, or the prompt's last user message.
fn query(subject: &Subject<'_>) -> String {
    ["query", "question"]
        .iter()
        .find_map(|name| subject.vars.get(*name).filter(|v| !v.is_null()))
        .map(super::value_text)
        .unwrap_or_else(|| subject.input.to_owned())
}

/// The retrieved chunks, in rank order, from `contexts` or `context`.
fn contexts(assertion: &Assertion, vars: &Map<String, Value>) -> Result<Vec<String>, String> {
    let missing = || {
        format!(
            "`{}` needs the retrieved context: set `context` in the test's vars (a text, or a \
             list of chunks in rank order)",
            assertion.label
        )
    };
    // `contexts` first: with a retrieval step, `context` is the chunks laid out as one text
    // for the prompt, `contexts` the chunks themselves.
    let value = vars
        .get("contexts")
        .or_else(|| vars.get("context"))
        .ok_or_else(missing)?;
    let chunks: Vec<String> = match value {
        Value::Array(items) => items.iter().map(super::value_text).collect(),
        other => vec![super::value_text(other)],
    };
    let chunks: Vec<String> = chunks
        .into_iter()
        .filter(|chunk| !chunk.trim().is_empty())
        .collect();
    if chunks.is_empty() {
        return Err(format!("{} (it is empty)", missing()));
    }
    Ok(chunks)
}

/// promptfoo's defaults: the context metrics only score unless a threshold is set;
/// answer-relevance passes at 0.7.
pub fn default_threshold(kind: AssertionType) -> f64 {
    match kind {
        AssertionType::AnswerRelevance => 0.7,
        _ => 0.0,
    }
}

/// RAGAS's context precision: the mean of precision@k over the ranks k of useful chunks, 0 when
/// none is. (RAGAS divides by Σ v_k + 1e-10, so its "perfect" is 0.9999999999; plumb's is 1,
/// and a threshold of 1 can pass.)
pub fn average_precision(useful: &[bool]) -> f64 {
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (rank, is_useful) in useful.iter().enumerate() {
        if *is_useful {
            hits += 1;
            sum += hits as f64 / (rank + 1) as f64;
        }
    }
    if hits == 0 { 0.0 } else { sum / hits as f64 }
}

/// The boolean `flag` of each object in the list `list`.
fn flags(answer: &Value, list: &str, flag: &str) -> Vec<bool> {
    answer
        .get(list)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| item.get(flag) == Some(&Value::Bool(true)))
                .collect()
        })
        .unwrap_or_default()
}

fn numbered(items: &[String]) -> String {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| format!("{}. {item}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("“{item}”"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_is_ragas_formula() {
        assert_eq!(average_precision(&[]), 0.0);
        assert_eq!(average_precision(&[false, false]), 0.0);
        assert!((average_precision(&[true, true, true]) - 1.0).abs() < 1e-9);
        // useful at ranks 1 and 3: (1/1 + 2/3) / 2
        let ap = average_precision(&[true, false, true]);
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-9, "{ap}");
        // useful only at rank 2: (1/2) / 1
        assert!((average_precision(&[false, true]) - 0.5).abs() < 1e-9);
    }
}
