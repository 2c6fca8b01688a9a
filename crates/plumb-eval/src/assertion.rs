//! Deterministic assertions with promptfoo's names and semantics, each negatable with `not-`.
//!
//! An assertion is resolved once when the suite loads (type checked, regex compiled when its
//! pattern has no template) and evaluated per case against the model's output.

use std::sync::Arc;

use plumb_core::{FinishReason, SourceError, ToolCall, did_you_mean};
use plumb_prompt::template;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::judge::{FactualityScores, JudgeInfo, JudgePrompt, Judgements};
use crate::metrics;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssertionType {
    Equals,
    Contains,
    Icontains,
    ContainsAny,
    ContainsAll,
    IcontainsAny,
    IcontainsAll,
    StartsWith,
    Regex,
    IsJson,
    ContainsJson,
    IsValidOpenaiToolsCall,
    Levenshtein,
    RougeN,
    Bleu,
    WordCount,
    Latency,
    Cost,
    FinishReason,
    Similar,
    AssertSet,
    LlmRubric,
    GEval,
    ModelGradedClosedqa,
    Factuality,
    ContextFaithfulness,
    AnswerRelevance,
    ContextPrecision,
    ContextRecall,
    SelectBest,
    Citations,
}

const SUPPORTED: [(&str, AssertionType); 32] = [
    ("equals", AssertionType::Equals),
    ("contains", AssertionType::Contains),
    ("icontains", AssertionType::Icontains),
    ("contains-any", AssertionType::ContainsAny),
    ("contains-all", AssertionType::ContainsAll),
    ("icontains-any", AssertionType::IcontainsAny),
    ("icontains-all", AssertionType::IcontainsAll),
    ("starts-with", AssertionType::StartsWith),
    ("regex", AssertionType::Regex),
    ("is-json", AssertionType::IsJson),
    ("contains-json", AssertionType::ContainsJson),
    (
        "is-valid-openai-tools-call",
        AssertionType::IsValidOpenaiToolsCall,
    ),
    ("levenshtein", AssertionType::Levenshtein),
    ("rouge-n", AssertionType::RougeN),
    ("bleu", AssertionType::Bleu),
    ("word-count", AssertionType::WordCount),
    ("latency", AssertionType::Latency),
    ("cost", AssertionType::Cost),
    ("finish-reason", AssertionType::FinishReason),
    ("similar", AssertionType::Similar),
    ("assert-set", AssertionType::AssertSet),
    ("llm-rubric", AssertionType::LlmRubric),
    ("g-eval", AssertionType::GEval),
    ("model-graded-closedqa", AssertionType::ModelGradedClosedqa),
    ("factuality", AssertionType::Factuality),
    ("model-graded-factuality", AssertionType::Factuality),
    ("context-faithfulness", AssertionType::ContextFaithfulness),
    ("answer-relevance", AssertionType::AnswerRelevance),
    ("context-precision", AssertionType::ContextPrecision),
    ("context-recall", AssertionType::ContextRecall),
    ("select-best", AssertionType::SelectBest),
    ("citations", AssertionType::Citations),
];

/// promptfoo types plumb knows of but does not run yet: named so the error says "not supported"
/// rather than "unknown", and never silently skipped.
const NOT_YET: [&str; 24] = [
    "context-relevance",
    "max-score",
    "javascript",
    "python",
    "ruby",
    "webhook",
    "is-xml",
    "contains-xml",
    "is-html",
    "contains-html",
    "is-sql",
    "contains-sql",
    "is-refusal",
    "perplexity",
    "perplexity-score",
    "classifier",
    "moderation",
    "gleu",
    "meteor",
    "is-valid-function-call",
    "is-valid-openai-function-call",
    "tool-call-f1",
    "conversation-relevance",
    "human",
];

impl AssertionType {
    pub fn name(self) -> &'static str {
        SUPPORTED
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    /// Graded by a model, not by code: per case, or (`select-best`) per test across the
    /// outputs of every prompt and provider.
    pub fn is_judged(self) -> bool {
        use AssertionType as T;
        matches!(
            self,
            T::LlmRubric | T::GEval | T::ModelGradedClosedqa | T::Factuality | T::SelectBest
        ) || self.is_rag()
    }

    /// Judged with plumb's own prompts only (several questions, or several outputs at once):
    /// no `rubricPrompt`.
    pub fn has_builtin_prompts(self) -> bool {
        self.is_rag() || self == AssertionType::SelectBest
    }

    /// A RAG metric: judged against the retrieved context (RAGAS's algorithms).
    pub fn is_rag(self) -> bool {
        use AssertionType as T;
        matches!(
            self,
            T::ContextFaithfulness | T::AnswerRelevance | T::ContextPrecision | T::ContextRecall
        )
    }

    pub fn supported_names() -> impl Iterator<Item = &'static str> {
        SUPPORTED.iter().map(|(name, _)| *name)
    }

    /// Parses `not-contains` into (Contains, negated), with a precise error otherwise.
    pub fn parse(text: &str) -> Result<(AssertionType, bool), (String, Option<String>)> {
        let (negate, base) = match text.strip_prefix("not-") {
            Some(base) => (true, base),
            None => (false, text),
        };
        if let Some((_, kind)) = SUPPORTED.iter().find(|(name, _)| *name == base) {
            if *kind == AssertionType::AssertSet && negate {
                return Err(("`assert-set` cannot be negated".into(), None));
            }
            return Ok((*kind, negate));
        }
        if NOT_YET.contains(&base) {
            return Err((
                format!("assertion type `{text}` is not supported yet"),
                Some(format!(
                    "plumb never skips an assertion silently; supported types: {}",
                    AssertionType::supported_names()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ));
        }
        let hint = match did_you_mean(base, AssertionType::supported_names()) {
            Some(best) => format!("did you mean `{}{best}`?", if negate { "not-" } else { "" }),
            None => format!(
                "supported types: {}",
                AssertionType::supported_names()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Err((format!("unknown assertion type `{text}`"), Some(hint)))
    }
}

/// A resolved assertion.
#[derive(Clone, Debug)]
pub struct Assertion {
    pub kind: AssertionType,
    pub negate: bool,
    /// As written (`not-contains`), for reports.
    pub label: String,
    pub value: Option<Value>,
    pub threshold: Option<f64>,
    pub weight: f64,
    pub metric: Option<String>,
    pub children: Vec<Assertion>,
    /// The embedder of `similar` (an embedder id); `None` means the default local one.
    pub provider: Option<String>,
    /// Unique in the process: the key of this assertion's verdict in `Judgements`.
    pub id: u64,
    /// Judged assertions: the grader (the assertion's or the test's `provider`); `None` means
    /// the run's default grader.
    pub grader: Option<Arc<crate::suite::Grader>>,
    /// Where the assertion is written, for errors found after it was resolved.
    pub location: Option<plumb_core::SourceError>,
    /// Judged assertions: `rubricPrompt`, replacing the built-in judge prompt.
    pub rubric_prompt: Option<JudgePrompt>,
    /// `factuality`: the score of each category.
    pub factuality: Option<FactualityScores>,
    /// Precompiled when the pattern has no template syntax.
    regex: Option<Arc<regex::Regex>>,
    /// Precompiled JSON Schema (is-json / contains-json) when it has no template syntax.
    schema: Option<Arc<jsonschema::Validator>>,
}

/// What an assertion looks at.
#[derive(Clone, Copy, Debug)]
pub struct Output<'a> {
    pub text: &'a str,
    pub tool_calls: &'a [ToolCall],
    pub finish_reason: Option<FinishReason>,
    pub latency_ms: f64,
    pub cost: f64,
    /// The tools the prompt offered (OpenAI shape), for `is-valid-openai-tools-call`.
    pub tools: &'a [Value],
    /// Embeddings computed for this case's `similar` assertions.
    pub embeddings: &'a Embeddings,
    /// Verdicts of this case's judged assertions, asked before evaluation.
    pub judgements: &'a Judgements,
}

/// Unit vectors by (embedder id, text), computed before assertions run (embedding is async,
/// assertions are not).
pub type Embeddings = std::collections::HashMap<(String, String), Vec<f32>>;

/// What a `select-best` result says until the test's outputs are compared.
pub const SELECT_BEST_PENDING: &str =
    "select-best is decided once every prompt and provider has answered this test";

/// The embedder `similar` uses when the assertion names none.
pub const DEFAULT_EMBEDDER: &str = "local:all-minilm-l6-v2";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssertionResult {
    #[serde(rename = "type")]
    pub label: String,
    pub pass: bool,
    pub score: f64,
    pub reason: String,
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Nothing was measured (a judge error, nothing to score): `pass` and `score` mean nothing
    /// and `reason` says why. Never counted as a pass or a fail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unmeasured: bool,
    /// Judged assertions: the grader, its prompt's hash, parameters and cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeInfo>,
}

impl Assertion {
    /// Checks what can be checked before any model call: the value's shape for the type,
    /// thresholds, regex syntax, schemas.
    pub fn resolve(
        label: &str,
        value: Option<Value>,
        threshold: Option<f64>,
        weight: Option<f64>,
        metric: Option<String>,
        children: Vec<Assertion>,
    ) -> Result<Assertion, (String, Option<String>)> {
        let (kind, negate) = AssertionType::parse(label)?;
        let weight = weight.unwrap_or(1.0);
        if !(weight.is_finite() && weight >= 0.0) {
            return Err((
                format!("`{label}`: weight must be a number ≥ 0, got {weight}"),
                None,
            ));
        }
        let mut assertion = Assertion {
            kind,
            negate,
            label: label.to_owned(),
            value,
            threshold,
            weight,
            metric,
            children,
            provider: None,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            grader: None,
            location: None,
            rubric_prompt: None,
            factuality: None,
            regex: None,
            schema: None,
        };
        assertion.check_shape()?;
        Ok(assertion)
    }

    fn check_shape(&mut self) -> Result<(), (String, Option<String>)> {
        use AssertionType as T;
        let label = self.label.clone();
        let need = |what: &str| Err((format!("`{label}` needs a `value`: {what}"), None));
        match self.kind {
            T::Equals | T::Contains | T::Icontains | T::StartsWith => {
                if self.value.is_none() {
                    return need("the expected text");
                }
            }
            T::ContainsAny | T::ContainsAll | T::IcontainsAny | T::IcontainsAll => {
                match &self.value {
                    Some(Value::Array(_)) | Some(Value::String(_)) => {}
                    _ => return need("a list of strings (or one comma-separated string)"),
                }
            }
            T::Regex => match &self.value {
                Some(Value::String(pattern)) => {
                    if !template::is_template(pattern) {
                        let regex = regex::Regex::new(pattern).map_err(|error| {
                            (
                                format!("`{label}`: invalid regular expression: {error}"),
                                None,
                            )
                        })?;
                        self.regex = Some(Arc::new(regex));
                    }
                }
                _ => return need("a regular expression string"),
            },
            T::IsJson | T::ContainsJson => {
                if let Some(schema) = &self.value {
                    if !schema.is_object() {
                        return Err((
                            format!("`{label}`: `value` must be a JSON Schema object"),
                            None,
                        ));
                    }
                    if !Value::to_string(schema).contains("{{") {
                        let validator = jsonschema::validator_for(schema).map_err(|error| {
                            (format!("`{label}`: invalid JSON Schema: {error}"), None)
                        })?;
                        self.schema = Some(Arc::new(validator));
                    }
                }
            }
            T::IsValidOpenaiToolsCall => {}
            T::Levenshtein | T::RougeN | T::Bleu => {
                if !matches!(self.value, Some(Value::String(_))) {
                    return need("the reference text");
                }
            }
            T::WordCount => match &self.value {
                Some(Value::Number(_)) => {}
                Some(Value::Object(bounds)) if bounds.keys().all(|k| k == "min" || k == "max") => {}
                _ => return need("a number, or {min, max}"),
            },
            T::Latency | T::Cost => {
                if self.threshold.is_none() {
                    return Err((
                        format!(
                            "`{label}` needs a `threshold` ({})",
                            if self.kind == T::Latency {
                                "milliseconds"
                            } else {
                                "USD"
                            }
                        ),
                        None,
                    ));
                }
            }
            T::FinishReason => {
                if !matches!(self.value, Some(Value::String(_))) {
                    return need("one of stop, length, tool_calls, content_filter");
                }
            }
            T::Similar => {
                match &self.value {
                    Some(Value::String(_)) => {}
                    Some(Value::Array(items))
                        if !items.is_empty() && items.iter().all(Value::is_string) => {}
                    _ => return need("the reference text, or a list of them"),
                }
                if let Some(threshold) = self.threshold
                    && !(-1.0..=1.0).contains(&threshold)
                {
                    return Err((
                        format!(
                            "`{label}`: threshold is a cosine similarity in [-1, 1], got {threshold}"
                        ),
                        None,
                    ));
                }
            }
            T::Citations => match &self.value {
                None => {}
                Some(Value::Object(options))
                    if options.iter().all(|(key, value)| match key.as_str() {
                        "min" => value.as_u64().is_some(),
                        "support" => value.as_f64().is_some_and(|s| (0.0..=1.0).contains(&s)),
                        _ => false,
                    }) => {}
                Some(_) => {
                    return Err((
                        format!("`{label}`: `value` is optional: {{min: N, support: 0..1}}"),
                        Some("min: citations the answer must make (default 1); support: share of a cited sentence's words its chunks must hold (default 0.5, 0 to skip)".into()),
                    ));
                }
            },
            T::AssertSet => {
                if self.children.is_empty() {
                    return Err(("`assert-set` needs a non-empty `assert` list".into(), None));
                }
            }
            T::LlmRubric | T::ModelGradedClosedqa | T::Factuality | T::GEval => {
                let what = match self.kind {
                    T::LlmRubric => "the rubric",
                    T::ModelGradedClosedqa => "the criterion the output must meet",
                    T::Factuality => "the reference answer",
                    _ => "the criterion (or a list of them)",
                };
                match &self.value {
                    Some(Value::String(text)) if !text.trim().is_empty() => {}
                    Some(Value::Array(items))
                        if self.kind == T::GEval
                            && !items.is_empty()
                            && items.iter().all(Value::is_string) => {}
                    _ => return need(what),
                }
                self.check_unit_threshold()?;
            }
            T::ContextRecall => {
                match &self.value {
                    Some(Value::String(text)) if !text.trim().is_empty() => {}
                    _ => return need("the reference answer the context should support"),
                }
                self.check_unit_threshold()?;
            }
            T::ContextPrecision => {
                match &self.value {
                    None => {}
                    Some(Value::String(text)) if !text.trim().is_empty() => {}
                    _ => {
                        return Err((
                            format!(
                                "`{label}`: `value` is the reference answer (text); leave it out \
                                 to judge the chunks against the output"
                            ),
                            None,
                        ));
                    }
                }
                self.check_unit_threshold()?;
            }
            T::SelectBest => match &self.value {
                Some(Value::String(text)) if !text.trim().is_empty() => {}
                _ => return need("the criterion the best output meets"),
            },
            T::ContextFaithfulness | T::AnswerRelevance => {
                if self.value.is_some() {
                    return Err((
                        format!(
                            "`{label}` takes no `value`: it reads the test's vars (`query`, \
                             `context`)"
                        ),
                        None,
                    ));
                }
                self.check_unit_threshold()?;
            }
        }
        Ok(())
    }

    fn check_unit_threshold(&self) -> Result<(), (String, Option<String>)> {
        match self.threshold {
            Some(threshold) if !(0.0..=1.0).contains(&threshold) => Err((
                format!(
                    "`{}`: threshold must be in [0, 1], got {threshold}",
                    self.label
                ),
                None,
            )),
            _ => Ok(()),
        }
    }

    pub fn evaluate(&self, output: &Output<'_>, vars: &Map<String, Value>) -> AssertionResult {
        let (pass, score, reason, judge) = match self.kind {
            // Decided by `select::select_best` once every output of the test is in.
            AssertionType::SelectBest => return self.unmeasured(SELECT_BEST_PENDING.into()),
            _ if self.kind.is_judged() => match output.judgements.get(&self.id) {
                Some(Ok(verdict)) => {
                    let verdict = verdict.clone();
                    (
                        verdict.pass,
                        verdict.score,
                        verdict.reason,
                        Some(verdict.judge),
                    )
                }
                Some(Err(reason)) => return self.unmeasured(reason.clone()),
                None => return self.unmeasured("internal: the judge was not asked".into()),
            },
            AssertionType::AssertSet => match self.evaluate_set(output, vars) {
                Ok((pass, score, reason)) => (pass, score, reason, None),
                Err(reason) => return self.unmeasured(reason),
            },
            _ => match self.evaluate_inner(output, vars) {
                Ok((pass, score, reason)) => (pass, score, reason, None),
                Err(reason) => (false, 0.0, reason, None),
            },
        };
        self.decided(pass, score, reason, judge)
    }

    /// The result of a measured outcome (before `not-`, which this applies).
    pub(crate) fn decided(
        &self,
        pass: bool,
        score: f64,
        reason: String,
        judge: Option<JudgeInfo>,
    ) -> AssertionResult {
        let (pass, score, reason) = if self.negate {
            (
                !pass,
                1.0 - score,
                format!("expected the opposite: {reason}"),
            )
        } else {
            (pass, score, reason)
        };
        AssertionResult {
            label: self.label.clone(),
            pass,
            score,
            reason,
            weight: self.weight,
            metric: self.metric.clone(),
            unmeasured: false,
            judge,
        }
    }

    pub(crate) fn unmeasured(&self, reason: String) -> AssertionResult {
        AssertionResult {
            label: self.label.clone(),
            pass: false,
            score: 0.0,
            reason,
            weight: self.weight,
            metric: self.metric.clone(),
            unmeasured: true,
            judge: None,
        }
    }

    /// `Err` is why the set is unmeasured (a child could not be measured and the others do
    /// not decide the set).
    fn evaluate_set(
        &self,
        output: &Output<'_>,
        vars: &Map<String, Value>,
    ) -> Result<(bool, f64, String), String> {
        let results: Vec<AssertionResult> = self
            .children
            .iter()
            .map(|c| c.evaluate(output, vars))
            .collect();
        let (score, pass) = verdict(&results, self.threshold);
        let Some(pass) = pass else {
            return Err(unmeasured_reasons(&results));
        };
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| !r.pass)
            .map(|r| r.reason.as_str())
            .collect();
        let reason = if failed.is_empty() {
            format!("all {} assertions passed", results.len())
        } else {
            format!(
                "{} of {} failed: {}",
                failed.len(),
                results.len(),
                failed.join("; ")
            )
        };
        Ok((pass, score, reason))
    }

    /// `value`, rendered with the test's vars.
    pub(crate) fn rendered_value(&self, vars: &Map<String, Value>) -> Result<Value, String> {
        match &self.value {
            Some(value) => render_value(value, vars),
            None => Ok(Value::Null),
        }
    }

    fn rendered_text(&self, vars: &Map<String, Value>) -> Result<String, String> {
        Ok(match self.rendered_value(vars)? {
            Value::String(text) => text,
            Value::Null => String::new(),
            other => other.to_string(),
        })
    }

    fn evaluate_inner(
        &self,
        output: &Output<'_>,
        vars: &Map<String, Value>,
    ) -> Result<(bool, f64, String), String> {
        use AssertionType as T;
        let text = output.text;
        let bool_result = |pass: bool, ok: String, fail: String| {
            Ok((
                pass,
                if pass { 1.0 } else { 0.0 },
                if pass { ok } else { fail },
            ))
        };
        match self.kind {
            T::Equals => {
                let expected = self.rendered_value(vars)?;
                match &expected {
                    Value::Object(_) | Value::Array(_) => {
                        let parsed: Result<Value, _> = serde_json::from_str(text.trim());
                        let pass = parsed.as_ref().is_ok_and(|v| *v == expected);
                        bool_result(
                            pass,
                            "output equals the expected JSON".into(),
                            format!("expected JSON {expected}, got {}", excerpt(text)),
                        )
                    }
                    _ => {
                        let expected = value_text(&expected);
                        bool_result(
                            text == expected,
                            "output equals the expected text".into(),
                            format!("expected `{}`, got `{}`", excerpt(&expected), excerpt(text)),
                        )
                    }
                }
            }
            T::Contains | T::Icontains => {
                let needle = self.rendered_text(vars)?;
                let pass = if self.kind == T::Icontains {
                    text.to_lowercase().contains(&needle.to_lowercase())
                } else {
                    text.contains(&needle)
                };
                bool_result(
                    pass,
                    format!("output contains `{}`", excerpt(&needle)),
                    format!("output does not contain `{}`", excerpt(&needle)),
                )
            }
            T::ContainsAny | T::ContainsAll | T::IcontainsAny | T::IcontainsAll => {
                let needles = string_list(&self.rendered_value(vars)?);
                let insensitive = matches!(self.kind, T::IcontainsAny | T::IcontainsAll);
                let haystack = if insensitive {
                    text.to_lowercase()
                } else {
                    text.to_owned()
                };
                let found = |needle: &String| {
                    if insensitive {
                        haystack.contains(&needle.to_lowercase())
                    } else {
                        haystack.contains(needle.as_str())
                    }
                };
                if matches!(self.kind, T::ContainsAny | T::IcontainsAny) {
                    let pass = needles.iter().any(found);
                    bool_result(
                        pass,
                        "output contains one of the values".into(),
                        format!("output contains none of {needles:?}"),
                    )
                } else {
                    let missing: Vec<&String> = needles.iter().filter(|n| !found(n)).collect();
                    bool_result(
                        missing.is_empty(),
                        "output contains all the values".into(),
                        format!("output lacks {missing:?}"),
                    )
                }
            }
            T::StartsWith => {
                let prefix = self.rendered_text(vars)?;
                bool_result(
                    text.starts_with(&prefix),
                    format!("output starts with `{}`", excerpt(&prefix)),
                    format!("output does not start with `{}`", excerpt(&prefix)),
                )
            }
            T::Regex => {
                let regex = match &self.regex {
                    Some(regex) => regex.clone(),
                    None => Arc::new(
                        regex::Regex::new(&self.rendered_text(vars)?)
                            .map_err(|e| format!("invalid regular expression: {e}"))?,
                    ),
                };
                bool_result(
                    regex.is_match(text),
                    format!("output matches /{}/", regex.as_str()),
                    format!("output does not match /{}/", regex.as_str()),
                )
            }
            T::IsJson => match serde_json::from_str::<Value>(text.trim()) {
                Err(error) => Ok((false, 0.0, format!("output is not valid JSON: {error}"))),
                Ok(value) => match self.validator(vars)? {
                    None => Ok((true, 1.0, "output is valid JSON".into())),
                    Some(validator) => match schema_errors(&validator, &value) {
                        None => Ok((true, 1.0, "output is valid JSON matching the schema".into())),
                        Some(errors) => Ok((
                            false,
                            0.0,
                            format!("output JSON does not match the schema: {errors}"),
                        )),
                    },
                },
            },
            T::ContainsJson => {
                let candidates = metrics::extract_json(text);
                if candidates.is_empty() {
                    return Ok((false, 0.0, "output contains no JSON".into()));
                }
                match self.validator(vars)? {
                    None => Ok((true, 1.0, "output contains JSON".into())),
                    Some(validator) => {
                        let mut last_error = String::new();
                        for candidate in &candidates {
                            match schema_errors(&validator, candidate) {
                                None => {
                                    return Ok((
                                        true,
                                        1.0,
                                        "output contains JSON matching the schema".into(),
                                    ));
                                }
                                Some(errors) => last_error = errors,
                            }
                        }
                        Ok((
                            false,
                            0.0,
                            format!("no JSON in the output matches the schema: {last_error}"),
                        ))
                    }
                }
            }
            T::IsValidOpenaiToolsCall => tools_call(output),
            T::Levenshtein => {
                let expected = self.rendered_text(vars)?;
                let distance = strsim::levenshtein(text, &expected);
                let threshold = self.threshold.unwrap_or(5.0);
                let pass = distance as f64 <= threshold;
                bool_result(
                    pass,
                    format!("edit distance {distance} ≤ {threshold}"),
                    format!("edit distance {distance} > {threshold}"),
                )
            }
            T::RougeN | T::Bleu => {
                let expected = self.rendered_text(vars)?;
                let (name, score, default) = if self.kind == T::RougeN {
                    ("ROUGE-N", metrics::rouge_n(text, &expected, 1), 0.75)
                } else {
                    ("BLEU", metrics::bleu(text, &expected), 0.5)
                };
                let threshold = self.threshold.unwrap_or(default);
                let pass = score >= threshold;
                let relation = if pass { "≥" } else { "<" };
                Ok((
                    pass,
                    score,
                    format!("{name} {score:.3} {relation} threshold {threshold}"),
                ))
            }
            T::Citations => citations(text, self.value.as_ref(), vars),
            T::WordCount => {
                let count = text.split_whitespace().count();
                match self.rendered_value(vars)? {
                    Value::Number(n) => {
                        let expected = n.as_f64().unwrap_or(-1.0);
                        bool_result(
                            count as f64 == expected,
                            format!("{count} words"),
                            format!("{count} words, expected {expected}"),
                        )
                    }
                    Value::Object(bounds) => {
                        let min = bounds.get("min").and_then(Value::as_f64).unwrap_or(0.0);
                        let max = bounds
                            .get("max")
                            .and_then(Value::as_f64)
                            .unwrap_or(f64::INFINITY);
                        let pass = (count as f64) >= min && (count as f64) <= max;
                        bool_result(
                            pass,
                            format!("{count} words in [{min}, {max}]"),
                            format!("{count} words, outside [{min}, {max}]"),
                        )
                    }
                    other => Err(format!(
                        "word-count value must be a number or {{min, max}}, got {other}"
                    )),
                }
            }
            T::Latency => {
                let threshold = self.threshold.unwrap_or(f64::INFINITY);
                let pass = output.latency_ms <= threshold;
                bool_result(
                    pass,
                    format!("latency {:.0} ms ≤ {threshold} ms", output.latency_ms),
                    format!("latency {:.0} ms > {threshold} ms", output.latency_ms),
                )
            }
            T::Cost => {
                let threshold = self.threshold.unwrap_or(f64::INFINITY);
                let pass = output.cost <= threshold;
                bool_result(
                    pass,
                    format!("cost ${:.6} ≤ ${threshold}", output.cost),
                    format!("cost ${:.6} > ${threshold}", output.cost),
                )
            }
            T::FinishReason => {
                let expected = self.rendered_text(vars)?.to_lowercase();
                let got = output
                    .finish_reason
                    .map(FinishReason::as_str)
                    .unwrap_or("unknown");
                bool_result(
                    got == expected,
                    format!("finish reason `{got}`"),
                    format!("finish reason `{got}`, expected `{expected}`"),
                )
            }
            T::Similar => {
                let embedder = self.embedder();
                let references = self.similar_references(vars)?;
                let vector = |text: &str| {
                    output
                        .embeddings
                        .get(&(embedder.to_owned(), text.to_owned()))
                };
                let Some(got) = vector(text) else {
                    return Err(format!("no embedding of the output from `{embedder}`"));
                };
                let mut best = f64::NEG_INFINITY;
                for reference in &references {
                    let Some(expected) = vector(reference) else {
                        return Err(format!(
                            "no embedding of `{}` from `{embedder}`",
                            excerpt(reference)
                        ));
                    };
                    best = best.max(cosine(got, expected));
                }
                let threshold = self.threshold.unwrap_or(0.75);
                let pass = best >= threshold;
                let relation = if pass { "≥" } else { "<" };
                Ok((
                    pass,
                    best.clamp(0.0, 1.0),
                    format!("cosine similarity {best:.3} {relation} threshold {threshold}"),
                ))
            }
            T::AssertSet => Err("internal: assert-set evaluated as a leaf".into()),
            T::LlmRubric
            | T::GEval
            | T::ModelGradedClosedqa
            | T::Factuality
            | T::ContextFaithfulness
            | T::AnswerRelevance
            | T::ContextPrecision
            | T::ContextRecall
            | T::SelectBest => Err("internal: a judged assertion evaluated as code".into()),
        }
    }

    /// The embedder id of a `similar` assertion; `answer-relevance` uses the default one.
    pub fn embedder(&self) -> &str {
        match self.kind {
            AssertionType::Similar => self.provider.as_deref().unwrap_or(DEFAULT_EMBEDDER),
            _ => DEFAULT_EMBEDDER,
        }
    }

    /// The rendered reference texts of a `similar` assertion.
    pub fn similar_references(&self, vars: &Map<String, Value>) -> Result<Vec<String>, String> {
        Ok(string_list_exact(&self.rendered_value(vars)?))
    }

    /// Every (embedder, text) this assertion (and its children) will need for `output`.
    pub fn embedding_requests(
        &self,
        output: &str,
        vars: &Map<String, Value>,
        into: &mut Vec<(String, String)>,
    ) {
        for child in &self.children {
            child.embedding_requests(output, vars, into);
        }
        if self.kind == AssertionType::Similar {
            let embedder = self.embedder().to_owned();
            into.push((embedder.clone(), output.to_owned()));
            if let Ok(references) = self.similar_references(vars) {
                into.extend(references.into_iter().map(|text| (embedder.clone(), text)));
            }
        }
    }

    fn validator(
        &self,
        vars: &Map<String, Value>,
    ) -> Result<Option<Arc<jsonschema::Validator>>, String> {
        if let Some(validator) = &self.schema {
            return Ok(Some(validator.clone()));
        }
        match &self.value {
            None => Ok(None),
            Some(_) => {
                let schema = self.rendered_value(vars)?;
                jsonschema::validator_for(&schema)
                    .map(|v| Some(Arc::new(v)))
                    .map_err(|error| format!("invalid JSON Schema: {error}"))
            }
        }
    }
}

/// A case's (or set's) score and three-valued pass: the weighted mean over measured results,
/// and `None` when unmeasured results leave the outcome open. Without a threshold every
/// weighted assertion must pass, so one measured failure fails it whatever the rest; with a
/// threshold it is decided when the unmeasured ones could not change it (all of them at 0
/// still reach it, or all at 1 still miss it).
pub fn verdict(results: &[AssertionResult], threshold: Option<f64>) -> (f64, Option<bool>) {
    let measured: Vec<AssertionResult> =
        results.iter().filter(|r| !r.unmeasured).cloned().collect();
    let (score, all_pass) = combine(&measured);
    let open: f64 = results
        .iter()
        .filter(|r| r.unmeasured)
        .map(|r| r.weight)
        .sum();
    if open == 0.0 {
        let pass = match threshold {
            Some(threshold) => score >= threshold,
            None => all_pass,
        };
        return (score, Some(pass));
    }
    let pass = match threshold {
        None => (!all_pass).then_some(false),
        Some(threshold) => {
            let total: f64 = results.iter().map(|r| r.weight).sum();
            let known: f64 = measured.iter().map(|r| r.weight * r.score).sum();
            let (low, high) = (known / total, (known + open) / total);
            if low >= threshold {
                Some(true)
            } else if high < threshold {
                Some(false)
            } else {
                None
            }
        }
    };
    (score, pass)
}

/// Why the unmeasured ones among `results` were not measured, each with its label.
pub fn unmeasured_reasons(results: &[AssertionResult]) -> String {
    let reasons: Vec<String> = results
        .iter()
        .filter(|r| r.unmeasured)
        .map(|r| format!("`{}`: {}", r.label, r.reason))
        .collect();
    reasons.join("; ")
}

/// (weighted mean score, whether every weighted assertion passed). Weight-0 assertions are
/// recorded but never gate.
pub fn combine(results: &[AssertionResult]) -> (f64, bool) {
    let total_weight: f64 = results.iter().map(|r| r.weight).sum();
    let score = if total_weight > 0.0 {
        results.iter().map(|r| r.weight * r.score).sum::<f64>() / total_weight
    } else {
        1.0
    };
    let all_pass = results.iter().filter(|r| r.weight > 0.0).all(|r| r.pass);
    (score, all_pass)
}

fn tools_call(output: &Output<'_>) -> Result<(bool, f64, String), String> {
    let calls: Vec<ToolCall> = if output.tool_calls.is_empty() {
        match serde_json::from_str::<Vec<ToolCall>>(output.text.trim()) {
            Ok(calls) if !calls.is_empty() => calls,
            _ => return Ok((false, 0.0, "output has no tool calls".into())),
        }
    } else {
        output.tool_calls.to_vec()
    };
    for call in &calls {
        let arguments: Value = match serde_json::from_str(&call.function.arguments) {
            Ok(value) => value,
            Err(error) => {
                return Ok((
                    false,
                    0.0,
                    format!("`{}` arguments are not JSON: {error}", call.function.name),
                ));
            }
        };
        if output.tools.is_empty() {
            continue;
        }
        let Some(tool) = output.tools.iter().find(|tool| {
            tool.pointer("/function/name").and_then(Value::as_str)
                == Some(call.function.name.as_str())
        }) else {
            return Ok((
                false,
                0.0,
                format!("`{}` is not one of the offered tools", call.function.name),
            ));
        };
        if let Some(parameters) = tool.pointer("/function/parameters") {
            let validator = jsonschema::validator_for(parameters)
                .map_err(|e| format!("tool schema is invalid: {e}"))?;
            if let Some(errors) = schema_errors(&validator, &arguments) {
                return Ok((
                    false,
                    0.0,
                    format!(
                        "`{}` arguments do not match its schema: {errors}",
                        call.function.name
                    ),
                ));
            }
        }
    }
    Ok((true, 1.0, format!("{} valid tool call(s)", calls.len())))
}

fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(3)
        .map(|e| e.to_string())
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Renders template syntax inside assertion values with the test's vars (promptfoo does too).
pub fn render_value(value: &Value, vars: &Map<String, Value>) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) if template::is_template(text) => Value::String(
            template::render_str(text, vars).map_err(|e| format!("in assertion value: {e}"))?,
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

/// A list of strings without comma splitting (reference sentences contain commas).
fn string_list_exact(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(value_text).collect(),
        other => vec![value_text(other)],
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A list value, or promptfoo's comma-separated string.
fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(value_text).collect(),
        Value::String(text) => text.split(',').map(|part| part.trim().to_owned()).collect(),
        other => vec![value_text(other)],
    }
}

fn excerpt(text: &str) -> String {
    const LIMIT: usize = 80;
    if text.chars().count() <= LIMIT {
        return text.to_owned();
    }
    let cut: String = text.chars().take(LIMIT).collect();
    format!("{cut}…")
}

/// Parses the `type(threshold):value` shorthand of promptfoo's CSV `__expected` columns.
pub fn parse_expected_shorthand(text: &str) -> Result<Assertion, (String, Option<String>)> {
    let text = text.trim();
    let (head, value) = match text.split_once(':') {
        Some((head, value)) if is_type_head(head) => (head, Some(value.to_owned())),
        _ if is_type_head(text) => (text, None),
        _ => ("equals", Some(text.to_owned())),
    };
    let (label, threshold) = match head.split_once('(') {
        Some((label, rest)) => {
            let number = rest.trim_end_matches(')');
            let threshold = number
                .parse::<f64>()
                .map_err(|_| (format!("invalid threshold `{number}` in `{text}`"), None))?;
            (label, Some(threshold))
        }
        None => (head, None),
    };
    let label = match label {
        "grade" => "llm-rubric",
        "fn" => "javascript",
        other => other,
    };
    let value = value.map(|v| match label.trim_start_matches("not-") {
        "contains-any" | "contains-all" | "icontains-any" | "icontains-all" => Value::Array(
            v.split(',')
                .map(|p| Value::String(p.trim().to_owned()))
                .collect(),
        ),
        "word-count" => v
            .trim()
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(Value::String(v)),
        "is-json" | "contains-json" => serde_json::from_str(&v).unwrap_or(Value::String(v)),
        _ => Value::String(v),
    });
    let value = value.filter(|v| !matches!(v, Value::String(s) if s.is_empty()));
    Assertion::resolve(label, value, threshold, None, None, Vec::new())
}

fn is_type_head(head: &str) -> bool {
    let base = head.split('(').next().unwrap_or(head);
    let base = base.strip_prefix("not-").unwrap_or(base);
    AssertionType::supported_names().any(|name| name == base)
        || NOT_YET.contains(&base)
        || matches!(base, "grade" | "fn")
}

/// Attaches a location to an assertion error.
pub(crate) fn located(error: (String, Option<String>), base: SourceError) -> SourceError {
    let mut out = base;
    out.message = error.0;
    out.hint = error.1;
    out
}

/// `citations`: the answer cites at least `min` retrieved chunks, cites none that was not
/// retrieved, and each sentence with citations is supported by its chunks (at least `support`
/// of its content words occur in them). Score: the share of cited sentences supported.
fn citations(
    text: &str,
    value: Option<&Value>,
    vars: &Map<String, Value>,
) -> Result<(bool, f64, String), String> {
    use plumb_rag::evidence;
    let min = value
        .and_then(|v| v.get("min"))
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize;
    let support = value
        .and_then(|v| v.get("support"))
        .and_then(Value::as_f64)
        .unwrap_or(0.5);
    let chunks: Vec<String> = match vars.get("retrieved").or_else(|| vars.get("contexts")) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.get("text") {
                Some(text) => value_text(text),
                None => value_text(item),
            })
            .collect(),
        _ => {
            return Err(
                "`citations` needs retrieved chunks: give the test a `context:` retrieval step (or a `contexts` list)"
                    .into(),
            );
        }
    };
    let cited = evidence::citations(text);
    let unknown: Vec<usize> = cited
        .iter()
        .copied()
        .filter(|n| *n == 0 || *n > chunks.len())
        .collect();
    if !unknown.is_empty() {
        return Ok((
            false,
            0.0,
            format!(
                "cites {} but only [1]..[{}] were retrieved",
                unknown
                    .iter()
                    .map(|n| format!("[{n}]"))
                    .collect::<Vec<_>>()
                    .join(" "),
                chunks.len()
            ),
        ));
    }
    if cited.len() < min {
        return Ok((
            false,
            0.0,
            format!("cites {} of the retrieved chunks, needs {min}", cited.len()),
        ));
    }
    let mut sentences = 0usize;
    let mut unsupported = Vec::new();
    for sentence in split_sentences(text) {
        let numbers = evidence::citations(sentence);
        if numbers.is_empty() {
            continue;
        }
        sentences += 1;
        let passages: String = numbers
            .iter()
            .map(|n| chunks[n - 1].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let share = evidence::answer_support(sentence, &passages);
        if share < support {
            unsupported.push(format!(
                "\"{}\" ({:.0}%)",
                excerpt(sentence.trim()),
                share * 100.0
            ));
        }
    }
    let score = if sentences == 0 {
        1.0
    } else {
        (sentences - unsupported.len()) as f64 / sentences as f64
    };
    if unsupported.is_empty() {
        Ok((
            true,
            score,
            format!(
                "cites {} retrieved chunk(s); {sentences} cited sentence(s) supported",
                cited.len()
            ),
        ))
    } else {
        Ok((
            false,
            score,
            format!(
                "{} of {sentences} cited sentences not supported by their chunks: {}",
                unsupported.len(),
                unsupported.join("; ")
            ),
        ))
    }
}

/// Sentences: split after `.`, `!`, `?` followed by whitespace (citations after the stop stay
/// with their sentence), and at line breaks.
fn split_sentences(text: &str) -> Vec<&str> {
    let mut sentences = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if matches!(bytes[i], b'.' | b'!' | b'?') {
                // Keep citations that follow the stop: "… in May. [2] Next".
                let mut end = i + 1;
                let rest = &line[end..];
                let trimmed = rest.trim_start();
                if trimmed.starts_with('[')
                    && let Some(close) = trimmed.find(']')
                {
                    end += rest.len() - trimmed.len() + close + 1;
                }
                if end >= bytes.len() || bytes[end].is_ascii_whitespace() {
                    sentences.push(&line[start..end]);
                    start = end;
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        if !line[start..].trim().is_empty() {
            sentences.push(&line[start..]);
        }
    }
    sentences.retain(|s| !s.trim().is_empty());
    sentences
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(text: &str) -> Output<'_> {
        static NONE: std::sync::LazyLock<Embeddings> = std::sync::LazyLock::new(Embeddings::new);
        static NO_VERDICTS: std::sync::LazyLock<Judgements> =
            std::sync::LazyLock::new(Judgements::new);
        Output {
            text,
            tool_calls: &[],
            finish_reason: Some(FinishReason::Stop),
            latency_ms: 12.0,
            cost: 0.001,
            tools: &[],
            embeddings: &NONE,
            judgements: &NO_VERDICTS,
        }
    }

    fn check(label: &str, value: Value, text: &str) -> (bool, f64) {
        let value = if value.is_null() { None } else { Some(value) };
        let assertion = Assertion::resolve(label, value, None, None, None, Vec::new()).unwrap();
        let vars = json!({"name": "Ada"}).as_object().cloned().unwrap();
        let result = assertion.evaluate(&output(text), &vars);
        (result.pass, result.score)
    }

    #[test]
    fn citations_must_exist_and_support_their_sentences() {
        let vars = json!({"retrieved": [
            {"id": 1, "text": "Each account may send 600 requests per minute."},
            {"id": 2, "text": "Requests over 10 MB are refused with status 413."},
        ]})
        .as_object()
        .cloned()
        .unwrap();
        let run = |value: Value, text: &str| {
            let value = if value.is_null() { None } else { Some(value) };
            let assertion =
                Assertion::resolve("citations", value, None, None, None, Vec::new()).unwrap();
            let result = assertion.evaluate(&output(text), &vars);
            (
                (!result.unmeasured).then_some(result.pass),
                result.score,
                result.reason,
            )
        };
        let (pass, score, _) = run(
            Value::Null,
            "You may send 600 requests per minute [1]. Larger requests (over 10 MB) get 413. [2]",
        );
        assert_eq!((pass, score), (Some(true), 1.0));
        let (pass, _, reason) = run(Value::Null, "It is 600 per minute [3].");
        assert_eq!(pass, Some(false));
        assert_eq!(reason, "cites [3] but only [1]..[2] were retrieved");
        let (pass, _, reason) = run(Value::Null, "600 requests per minute.");
        assert_eq!(pass, Some(false));
        assert_eq!(reason, "cites 0 of the retrieved chunks, needs 1");
        let (pass, score, reason) = run(
            Value::Null,
            "You may send 600 requests per minute [1]. Payments are due in 30 days [2].",
        );
        assert_eq!(pass, Some(false), "{reason}");
        assert_eq!(score, 0.5);
        let (pass, _, _) = run(json!({"min": 2}), "600 requests per minute [1].");
        assert_eq!(pass, Some(false));
        let (pass, _, _) = run(json!({"support": 0}), "Payments are due in 30 days [2].");
        assert_eq!(pass, Some(true));
        assert!(
            Assertion::resolve(
                "citations",
                Some(json!({"minimum": 1})),
                None,
                None,
                None,
                Vec::new()
            )
            .is_err()
        );
        let no_context =
            Assertion::resolve("citations", None, None, None, None, Vec::new()).unwrap();
        let result = no_context.evaluate(&output("x [1]"), &Map::new());
        assert!(!result.pass && result.reason.contains("needs retrieved chunks"));
    }

    #[test]
    fn sentences_keep_their_trailing_citations() {
        assert_eq!(
            split_sentences("A is 1. [2] B is 2 [3]! C?\nD e.g. f"),
            vec!["A is 1. [2]", " B is 2 [3]!", " C?", "D e.g.", " f"]
        );
    }

    /// One row per case: type, value, output, expected pass.
    #[test]
    fn deterministic_assertions_table() {
        let rows: Vec<(&str, Value, &str, bool)> = vec![
            ("equals", json!("hi"), "hi", true),
            ("equals", json!("hi"), "hi ", false),
            ("equals", json!({"a": 1}), " {\"a\": 1} ", true),
            ("equals", json!(3), "3", true),
            ("not-equals", json!("hi"), "ho", true),
            ("contains", json!("{{ name }}"), "Hello Ada!", true),
            ("contains", json!("ada"), "Hello Ada!", false),
            ("icontains", json!("ada"), "Hello Ada!", true),
            ("not-icontains", json!("bob"), "Hello Ada!", true),
            ("contains-any", json!(["x", "Ada"]), "Hello Ada", true),
            ("contains-any", json!("x, y"), "Hello Ada", false),
            ("contains-all", json!(["Hello", "Ada"]), "Hello Ada", true),
            ("contains-all", json!(["Hello", "Bob"]), "Hello Ada", false),
            ("icontains-all", json!(["hello", "ADA"]), "Hello Ada", true),
            ("icontains-any", json!(["zz", "ADA"]), "Hello Ada", true),
            ("starts-with", json!("Hel"), "Hello", true),
            ("starts-with", json!("lo"), "Hello", false),
            ("regex", json!("^\\d{3}-\\d{4}$"), "555-1234", true),
            ("regex", json!("^\\d+$"), "12a", false),
            ("is-json", Value::Null, "{\"a\": [1, 2]}", true),
            ("is-json", Value::Null, "{a: 1}", false),
            (
                "is-json",
                json!({"type": "object", "required": ["a"]}),
                "{\"b\": 1}",
                false,
            ),
            (
                "contains-json",
                Value::Null,
                "Sure! {\"a\": 1} hope that helps",
                true,
            ),
            (
                "contains-json",
                json!({"required": ["b"]}),
                "x {\"a\": 1} y {\"b\": 2}",
                true,
            ),
            ("contains-json", Value::Null, "no json here", false),
            ("not-contains-json", Value::Null, "no json here", true),
            ("levenshtein", json!("kitten"), "sitting", true),
            (
                "levenshtein",
                json!("kitten"),
                "completely different",
                false,
            ),
            (
                "rouge-n",
                json!("the cat sat on the mat"),
                "the cat sat on the mat",
                true,
            ),
            (
                "rouge-n",
                json!("the cat sat on the mat"),
                "a dog ran",
                false,
            ),
            (
                "bleu",
                json!("the quick brown fox jumps over the lazy dog"),
                "the quick brown fox jumps over the lazy dog",
                true,
            ),
            (
                "bleu",
                json!("the quick brown fox jumps over the lazy dog"),
                "hello there",
                false,
            ),
            ("word-count", json!(2), "hello world", true),
            ("word-count", json!({"min": 3}), "hello world", false),
            ("finish-reason", json!("stop"), "x", true),
            ("finish-reason", json!("length"), "x", false),
        ];
        for (label, value, text, expected) in rows {
            let (pass, _) = check(label, value.clone(), text);
            assert_eq!(pass, expected, "{label} {value} on {text:?}");
        }
    }

    #[test]
    fn negation_inverts_score() {
        assert_eq!(
            check("not-rouge-n", json!("a b c d"), "a b c d"),
            (false, 0.0)
        );
    }

    #[test]
    fn latency_and_cost_need_thresholds() {
        assert!(Assertion::resolve("latency", None, None, None, None, vec![]).is_err());
        let latency = Assertion::resolve("latency", None, Some(10.0), None, None, vec![]).unwrap();
        assert!(!latency.evaluate(&output("x"), &Map::new()).pass);
        let cost = Assertion::resolve("cost", None, Some(0.01), None, None, vec![]).unwrap();
        assert!(cost.evaluate(&output("x"), &Map::new()).pass);
    }

    #[test]
    fn unknown_and_unsupported_types_are_errors() {
        let (message, hint) = AssertionType::parse("contians").unwrap_err();
        assert_eq!(message, "unknown assertion type `contians`");
        assert_eq!(hint.as_deref(), Some("did you mean `contains`?"));
        let (message, _) = AssertionType::parse("not-icontain").unwrap_err();
        assert!(message.contains("not-icontain"));
        assert_eq!(
            AssertionType::parse("not-icontain")
                .unwrap_err()
                .1
                .as_deref(),
            Some("did you mean `not-icontains`?")
        );
        assert!(
            AssertionType::parse("javascript")
                .unwrap_err()
                .0
                .contains("not supported yet")
        );
        assert!(Assertion::resolve("regex", Some(json!("(")), None, None, None, vec![]).is_err());
    }

    #[test]
    fn assert_set_with_threshold_and_weights() {
        let children = vec![
            Assertion::resolve("contains", Some(json!("a")), None, None, None, vec![]).unwrap(),
            Assertion::resolve("contains", Some(json!("zzz")), None, None, None, vec![]).unwrap(),
        ];
        let set = Assertion::resolve("assert-set", None, Some(0.5), None, None, children.clone())
            .unwrap();
        let result = set.evaluate(&output("abc"), &Map::new());
        assert!(result.pass);
        assert_eq!(result.score, 0.5);
        let strict = Assertion::resolve("assert-set", None, None, None, None, children).unwrap();
        assert!(!strict.evaluate(&output("abc"), &Map::new()).pass);
    }

    #[test]
    fn weight_zero_never_gates() {
        let results = vec![
            AssertionResult {
                label: "a".into(),
                pass: true,
                score: 1.0,
                reason: String::new(),
                weight: 1.0,
                metric: None,
                unmeasured: false,
                judge: None,
            },
            AssertionResult {
                label: "b".into(),
                pass: false,
                score: 0.0,
                reason: String::new(),
                weight: 0.0,
                metric: None,
                unmeasured: false,
                judge: None,
            },
        ];
        assert_eq!(combine(&results), (1.0, true));
    }

    #[test]
    fn tools_call_checks_names_and_schemas() {
        let tools = vec![json!({"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})];
        let assertion =
            Assertion::resolve("is-valid-openai-tools-call", None, None, None, None, vec![])
                .unwrap();
        let call = |args: &str| ToolCall {
            id: "1".into(),
            kind: "function".into(),
            function: plumb_core::ToolCallFunction {
                name: "weather".into(),
                arguments: args.into(),
            },
        };
        let good = [call("{\"city\": \"Oslo\"}")];
        let bad = [call("{\"town\": \"Oslo\"}")];
        let out = |calls: &'static [ToolCall]| Output {
            tool_calls: calls,
            tools: &tools,
            ..output("")
        };
        let good: &'static [ToolCall] = Box::leak(Box::new(good));
        let bad: &'static [ToolCall] = Box::leak(Box::new(bad));
        assert!(assertion.evaluate(&out(good), &Map::new()).pass);
        assert!(!assertion.evaluate(&out(bad), &Map::new()).pass);
    }

    #[test]
    fn similar_uses_precomputed_embeddings() {
        let mut embeddings = Embeddings::new();
        let key = |text: &str| (DEFAULT_EMBEDDER.to_owned(), text.to_owned());
        embeddings.insert(key("a cat"), vec![1.0, 0.0]);
        embeddings.insert(key("a kitten"), vec![0.8, 0.6]);
        embeddings.insert(key("revenue"), vec![0.0, 1.0]);
        let assertion = Assertion::resolve(
            "similar",
            Some(json!(["revenue", "a kitten"])),
            Some(0.7),
            None,
            None,
            vec![],
        )
        .unwrap();
        let mut requests = Vec::new();
        assertion.embedding_requests("a cat", &Map::new(), &mut requests);
        assert_eq!(requests.len(), 3);
        let out = Output {
            embeddings: &embeddings,
            ..output("a cat")
        };
        let result = assertion.evaluate(&out, &Map::new());
        assert!(
            result.pass && (result.score - 0.8).abs() < 1e-6,
            "{result:?}"
        );
        let negated = Assertion::resolve(
            "not-similar",
            Some(json!("revenue")),
            None,
            None,
            None,
            vec![],
        )
        .unwrap();
        assert!(negated.evaluate(&out, &Map::new()).pass);
        // Without embeddings the assertion cannot pass.
        assert!(!assertion.evaluate(&output("a cat"), &Map::new()).pass);
    }

    #[test]
    fn csv_expected_shorthand() {
        let a = parse_expected_shorthand("icontains:hello").unwrap();
        assert_eq!((a.kind, a.negate), (AssertionType::Icontains, false));
        let a = parse_expected_shorthand("levenshtein(3):kitten").unwrap();
        assert_eq!(a.threshold, Some(3.0));
        let a = parse_expected_shorthand("plain expected text").unwrap();
        assert_eq!(a.kind, AssertionType::Equals);
        let a = parse_expected_shorthand("not-contains-any:a,b").unwrap();
        assert_eq!(a.value, Some(json!(["a", "b"])));
        let a = parse_expected_shorthand("grade:is polite").unwrap();
        assert_eq!(
            (a.kind, a.value),
            (AssertionType::LlmRubric, Some(json!("is polite")))
        );
        assert!(
            parse_expected_shorthand("python:file://x.py")
                .unwrap_err()
                .0
                .contains("not supported yet")
        );
    }
}
