//! Model-graded assertions: the judge prompts, the JSON Schema each verdict must satisfy, and the
//! one way plumb asks a grader for a verdict.
//!
//! A verdict is requested with `response_format: json_schema`: local models decode it under the
//! schema's grammar (so it always parses), API models get the schema and are checked against it;
//! an answer that does not fit is asked again once with the error, then the assertion is
//! *unmeasured* with the reason. `pass` is derived from `score` and the threshold (graded
//! rubrics) or asked for alone (binary rubrics), so the two never disagree.

use std::collections::HashMap;
use std::sync::Arc;

use plumb_core::{
    ChatModel, ChatRequest, Embedder, JsonSchemaFormat, Message, ModelErrorKind, ModelParams,
    ResponseFormat, Role, TokenLogprob, Usage, hash_hex,
};
use plumb_prompt::template;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Mutex, OnceCell};

use crate::assertion::{Assertion, AssertionType};
use crate::metrics;
use crate::runner::Caller;

pub mod rag;
pub mod select;

/// How many times a verdict that does not fit its schema is asked again.
const REASKS: u32 = 1;
/// Room for a verdict; local judges stop here at the latest. The schemas bound every free
/// text (`REASON_CHARS`), so a grammar-constrained answer ends well before it.
const JUDGE_MAX_TOKENS: u32 = 640;
/// The longest reason a verdict may give (a `maxLength` in its schema).
const REASON_CHARS: u32 = 240;

/// What was asked, of whom, at what cost: stored with every judged score.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeInfo {
    /// The grader's provider id.
    pub model: String,
    /// Hash of the judge prompt (templates and schema) the verdict came from.
    pub prompt_hash: String,
    pub params: ModelParams,
    pub calls: u32,
    pub usage: Usage,
    pub cost: f64,
    /// Every call was answered from the response cache.
    pub cached: bool,
}

/// A judge's verdict on one assertion (before `not-` is applied).
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub pass: bool,
    pub score: f64,
    pub reason: String,
    pub judge: JudgeInfo,
}

/// Verdicts by assertion id for one case; `Err` is why the assertion was not measured.
pub type Judgements = HashMap<u64, Result<Verdict, String>>;

/// The messages of a judge prompt, before rendering: `rubricPrompt` or a built-in one.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgePrompt {
    pub messages: Vec<(Role, String)>,
}

impl JudgePrompt {
    /// `rubricPrompt` as written: a list of `{role, content}`, a string holding such a list as
    /// JSON (promptfoo's chat format), or one user message.
    pub fn parse(value: &Value) -> Result<JudgePrompt, String> {
        let list = match value {
            Value::String(text) => match serde_json::from_str::<Value>(text.trim()) {
                Ok(Value::Array(items)) if text.trim_start().starts_with('[') => items,
                _ => {
                    return Ok(JudgePrompt {
                        messages: vec![(Role::User, text.clone())],
                    });
                }
            },
            Value::Array(items) => items.clone(),
            _ => {
                return Err("`rubricPrompt` must be a string or a list of {role, content}".into());
            }
        };
        let mut messages = Vec::new();
        for item in list {
            let role = item
                .get("role")
                .and_then(Value::as_str)
                .and_then(Role::parse)
                .ok_or("each `rubricPrompt` message needs a `role` (system, user or assistant)")?;
            let content = item
                .get("content")
                .and_then(Value::as_str)
                .ok_or("each `rubricPrompt` message needs a string `content`")?;
            messages.push((role, content.to_owned()));
        }
        if messages.is_empty() {
            return Err("`rubricPrompt` has no messages".into());
        }
        Ok(JudgePrompt { messages })
    }

    /// Every variable the prompt's templates read.
    pub fn variables(&self) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        for (_, content) in &self.messages {
            for name in template::free_variables(content).map_err(|e| e.to_string())? {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn render(&self, vars: &Map<String, Value>) -> Result<Vec<Message>, String> {
        self.messages
            .iter()
            .map(|(role, content)| {
                template::render_str(content, vars)
                    .map(|text| Message::new(*role, text))
                    .map_err(|e| format!("judge prompt: {e}"))
            })
            .collect()
    }

    fn hash_material(&self) -> String {
        self.messages
            .iter()
            .map(|(role, content)| format!("{}\n{content}\n", role.as_str()))
            .collect()
    }
}

fn prompt(system: &str, user: &str) -> JudgePrompt {
    JudgePrompt {
        messages: vec![
            (Role::System, system.to_owned()),
            (Role::User, user.to_owned()),
        ],
    }
}

const RUBRIC_SYSTEM: &str = "You grade the output of an AI system against a rubric its developers wrote. \
Judge only what the rubric asks, and be strict: when the output does not clearly meet the rubric, it does not. \
Answer with one JSON object and nothing else.";
const RUBRIC_USER_BINARY: &str = "<output>\n{{ output }}\n</output>\n\n<rubric>\n{{ rubric }}\n</rubric>\n\n\
Reply with {\"reason\": \"<one or two sentences that cite the output>\", \"pass\": <true if the output meets the rubric, else false>}.";
const RUBRIC_USER_GRADED: &str = "<output>\n{{ output }}\n</output>\n\n<rubric>\n{{ rubric }}\n</rubric>\n\n\
Reply with {\"reason\": \"<one or two sentences that cite the output>\", \"score\": <a number from 0 (fails the rubric entirely) to 1 (meets it fully), in steps of 0.05>}.";

const CLOSEDQA_SYSTEM: &str = "You check whether a submitted answer meets a criterion. \
Reason step by step first, then answer Y if the submission meets the criterion and N if it does not. \
Answer with one JSON object and nothing else.";
const CLOSEDQA_USER: &str = "[Task]\n{{ input }}\n\n[Submission]\n{{ completion }}\n\n[Criterion]\n{{ criteria }}\n\n\
Reply with {\"reasoning\": \"<your step-by-step reasoning>\", \"answer\": \"Y\" or \"N\"}.";

const FACTUALITY_SYSTEM: &str = "You compare the factual content of a submitted answer with an expert answer to the same question. \
Ignore differences in style, grammar and punctuation. Answer with one JSON object and nothing else.";
const FACTUALITY_USER: &str = "[Question]\n{{ input }}\n\n[Expert answer]\n{{ ideal }}\n\n[Submission]\n{{ completion }}\n\n\
Pick the one option that describes the submission:\n\
(A) it is a subset of the expert answer and fully consistent with it;\n\
(B) it is a superset of the expert answer and fully consistent with it;\n\
(C) it contains all the same details as the expert answer;\n\
(D) it disagrees with the expert answer;\n\
(E) the two differ, but the differences do not matter for factuality.\n\n\
Reply with {\"reasoning\": \"<why>\", \"choice\": \"A\", \"B\", \"C\", \"D\" or \"E\"}.";

const GEVAL_STEPS_SYSTEM: &str = "You write evaluation steps for grading AI outputs. \
Given a criterion, write 3 or 4 short, concrete steps a grader follows to decide how well an output meets it. \
Answer with one JSON object and nothing else.";
const GEVAL_STEPS_USER: &str =
    "[Criterion]\n{{ criteria }}\n\nReply with {\"steps\": [\"<step 1>\", \"<step 2>\", ...]}.";
const GEVAL_SCORE_SYSTEM: &str = "You grade an AI output on one criterion by following the given evaluation steps. \
Answer with one JSON object and nothing else.";
const GEVAL_SCORE_USER: &str = "[Criterion]\n{{ criteria }}\n\n[Evaluation steps]\n{{ steps }}\n\n[Input]\n{{ input }}\n\n[Output]\n{{ output }}\n\n\
Reply with {\"reason\": \"<one or two sentences>\", \"score\": <an integer from 0 (does not meet the criterion) to 10 (meets it fully)>}.";

/// The variables a judge prompt of `kind` is given (besides the test's own vars).
pub fn prompt_variables(kind: AssertionType) -> &'static [&'static str] {
    use AssertionType as T;
    match kind {
        T::LlmRubric => &["output", "rubric"],
        T::ModelGradedClosedqa => &["input", "completion", "output", "criteria"],
        T::Factuality => &["input", "ideal", "completion", "output"],
        T::GEval => &["input", "output", "criteria", "steps"],
        _ => &[],
    }
}

/// The default score of each factuality category (promptfoo's: only a disagreement fails).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactualityScores {
    #[serde(default = "one")]
    pub subset: f64,
    #[serde(default = "one")]
    pub superset: f64,
    #[serde(default = "one")]
    pub agree: f64,
    #[serde(default)]
    pub disagree: f64,
    #[serde(default = "one", rename = "differButFactual")]
    pub differ_but_factual: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for FactualityScores {
    fn default() -> FactualityScores {
        FactualityScores {
            subset: 1.0,
            superset: 1.0,
            agree: 1.0,
            disagree: 0.0,
            differ_but_factual: 1.0,
        }
    }
}

impl FactualityScores {
    fn of(&self, choice: &str) -> Option<(f64, &'static str)> {
        Some(match choice {
            "A" => (self.subset, "a consistent subset of the reference"),
            "B" => (self.superset, "a consistent superset of the reference"),
            "C" => (self.agree, "the same details as the reference"),
            "D" => (self.disagree, "in disagreement with the reference"),
            "E" => (
                self.differ_but_factual,
                "different from the reference in ways that do not matter for factuality",
            ),
            _ => return None,
        })
    }
}

/// The graders a run can ask, by the key `Suite::graders` gives them.
#[derive(Clone, Default)]
pub struct Graders {
    pub models: HashMap<String, Result<Arc<dyn ChatModel>, String>>,
    /// `--grader`, or `defaultTest.options.provider`: used where an assertion names none.
    pub default: Option<String>,
    /// Sampling a grader's `config` sets (temperature, max_tokens, …): it wins over the
    /// judges' defaults (temperature 0, room for the verdict).
    pub params: HashMap<String, ModelParams>,
}

impl Graders {
    /// The key of `assertion`'s grader: its own, else the run's default.
    pub fn key_for<'a>(&'a self, assertion: &'a Assertion) -> Option<&'a str> {
        assertion
            .grader
            .as_ref()
            .map(|grader| grader.key.as_str())
            .or(self.default.as_deref())
    }
}

/// One case's view of the judges: the graders, the response cache, and the g-eval steps
/// generated so far (once per grader and criterion for the whole run).
pub struct JudgeContext {
    pub graders: Arc<Graders>,
    pub caller: Caller,
    pub steps: Arc<StepsMemo>,
    /// For answer-relevance's question embeddings, by embedder id.
    pub embedders: Arc<HashMap<String, Arc<dyn Embedder>>>,
}

/// Generated steps and what generating them cost, or why it failed.
type Steps = Result<(Vec<String>, JudgeInfo), String>;
/// One (grader, criterion)'s steps, generated by whichever case asks first.
type StepsCell = Arc<OnceCell<Steps>>;

/// g-eval's generated steps by (grader, criterion).
#[derive(Default)]
pub struct StepsMemo {
    cells: Mutex<HashMap<(String, String), StepsCell>>,
}

/// One question to a judge: what `JudgeContext::ask_with` sends.
pub(crate) struct Ask<'a> {
    pub prompt: &'a JudgePrompt,
    pub vars: &'a Map<String, Value>,
    /// The JSON Schema the answer must fit.
    pub schema: Value,
    /// Ask for the answer tokens' probabilities (g-eval).
    pub logprobs: bool,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Tells apart otherwise identical questions in the response cache (answer-relevance's n
    /// generations); empty for the rest, whose cache keys it leaves unchanged.
    pub salt: String,
}

impl<'a> Ask<'a> {
    pub fn new(prompt: &'a JudgePrompt, vars: &'a Map<String, Value>, schema: Value) -> Ask<'a> {
        Ask {
            prompt,
            vars,
            schema,
            logprobs: false,
            temperature: 0.0,
            max_tokens: JUDGE_MAX_TOKENS,
            salt: String::new(),
        }
    }
}

/// What a case's judged assertions see: the output and the test's vars.
pub struct Subject<'a> {
    pub output: &'a str,
    /// The rendered prompt's last user message (`input` in judge prompts).
    pub input: &'a str,
    pub vars: &'a Map<String, Value>,
}

impl JudgeContext {
    /// Verdicts for every judged assertion in `asserts` (children of `assert-set` included),
    /// asked concurrently.
    pub async fn judge_all(&self, asserts: &[Assertion], subject: &Subject<'_>) -> Judgements {
        let mut judged = Vec::new();
        collect_judged(asserts, &mut judged);
        let futures = judged
            .into_iter()
            .map(|assertion| async move { (assertion.id, self.judge(assertion, subject).await) });
        futures_util::future::join_all(futures)
            .await
            .into_iter()
            .collect()
    }

    /// The grader of `assertion` (its own, else the run's default) and its key.
    fn grader_of<'a>(
        &'a self,
        assertion: &'a Assertion,
    ) -> Result<(&'a str, Arc<dyn ChatModel>), String> {
        let grader = self.graders.key_for(assertion).ok_or_else(|| {
            format!(
                "`{}` has no grader: name one with `provider:` on the assertion, \
                     `defaultTest.options.provider`, or `plumb eval --grader <provider>` \
                     (e.g. local:smollm2-135m or openai:gpt-4.1-mini)",
                assertion.label
            )
        })?;
        match self.graders.models.get(grader) {
            Some(Ok(model)) => Ok((grader, model.clone())),
            Some(Err(error)) => Err(format!("grader `{grader}`: {error}")),
            None => Err(format!("grader `{grader}` was not built")),
        }
    }

    async fn judge(&self, assertion: &Assertion, subject: &Subject<'_>) -> Result<Verdict, String> {
        let (grader, model) = self.grader_of(assertion)?;
        if assertion.kind.is_rag() {
            return self.rag(assertion, &model, grader, subject).await;
        }
        let mut vars = subject.vars.clone();
        vars.insert("output".into(), Value::String(subject.output.to_owned()));
        vars.insert(
            "completion".into(),
            Value::String(subject.output.to_owned()),
        );
        if !vars.contains_key("input") {
            vars.insert("input".into(), Value::String(subject.input.to_owned()));
        }
        let value = assertion.rendered_value(subject.vars)?;
        use AssertionType as T;
        if assertion.kind == T::GEval {
            return self.g_eval(assertion, &model, grader, &value, vars).await;
        }
        let graded = assertion.threshold.is_some();
        // The variable the value fills, the built-in prompt, and the answer's decisive field.
        let (name, (system, user), decision) = match assertion.kind {
            T::LlmRubric if graded => (
                "rubric",
                (RUBRIC_SYSTEM, RUBRIC_USER_GRADED),
                ("score", unit_score_schema()),
            ),
            T::LlmRubric => (
                "rubric",
                (RUBRIC_SYSTEM, RUBRIC_USER_BINARY),
                ("pass", json!({"type": "boolean"})),
            ),
            T::ModelGradedClosedqa => (
                "criteria",
                (CLOSEDQA_SYSTEM, CLOSEDQA_USER),
                ("answer", json!({"type": "string", "enum": ["Y", "N"]})),
            ),
            T::Factuality => (
                "ideal",
                (FACTUALITY_SYSTEM, FACTUALITY_USER),
                (
                    "choice",
                    json!({"type": "string", "enum": ["A", "B", "C", "D", "E"]}),
                ),
            ),
            other => return Err(format!("`{}` is not a judged assertion", other.name())),
        };
        let because = if assertion.kind == T::LlmRubric {
            "reason"
        } else {
            "reasoning"
        };
        vars.insert(name.into(), Value::String(value_text(&value)));
        let prompt = assertion
            .rubric_prompt
            .clone()
            .unwrap_or_else(|| prompt(system, user));
        let field = decision.0;
        let schema = object_schema(&[(because, reason_schema()), decision]);
        let (answer, judge) = self.ask(&model, grader, &prompt, &vars, schema).await?;
        let reason = text_field(&answer, because);
        let binary = |pass: bool, reason: String| Verdict {
            pass,
            score: if pass { 1.0 } else { 0.0 },
            reason,
            judge: judge.clone(),
        };
        match (assertion.kind, answer.get(field)) {
            (T::LlmRubric, Some(Value::Bool(pass))) => Ok(binary(*pass, reason)),
            (T::LlmRubric, Some(score)) if graded => {
                let score = score
                    .as_f64()
                    .ok_or("the judge's answer has no number `score`")?
                    .clamp(0.0, 1.0);
                let threshold = assertion.threshold.unwrap_or(0.5);
                Ok(Verdict {
                    pass: score >= threshold,
                    score,
                    reason: format!("score {score:.2} (threshold {threshold}): {reason}"),
                    judge,
                })
            }
            (T::ModelGradedClosedqa, Some(Value::String(answer)))
                if answer == "Y" || answer == "N" =>
            {
                Ok(binary(answer == "Y", reason))
            }
            (T::Factuality, Some(Value::String(choice))) => {
                let scores = assertion.factuality.clone().unwrap_or_default();
                let (score, meaning) = scores
                    .of(choice)
                    .ok_or("the judge's answer has no `choice` between A and E")?;
                let pass = match assertion.threshold {
                    Some(threshold) => score >= threshold,
                    None => score > 0.0,
                };
                Ok(Verdict {
                    pass,
                    score,
                    reason: format!("({choice}) the output is {meaning}: {reason}"),
                    judge,
                })
            }
            _ => Err(format!("the judge's answer has no usable `{field}`")),
        }
    }

    /// G-Eval: evaluation steps generated once per criterion, then a 0–10 score per output,
    /// weighted by the score token's probabilities when the grader returns logprobs. Several
    /// criteria are averaged.
    async fn g_eval(
        &self,
        assertion: &Assertion,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        value: &Value,
        mut vars: Map<String, Value>,
    ) -> Result<Verdict, String> {
        let criteria: Vec<String> = match value {
            Value::Array(items) => items.iter().map(value_text).collect(),
            other => vec![value_text(other)],
        };
        let threshold = assertion.threshold.unwrap_or(0.7);
        let mut total = JudgeInfo::default();
        let mut scores = Vec::new();
        let mut reasons = Vec::new();
        for criterion in &criteria {
            let (steps, steps_info) = self.g_eval_steps(model, grader, criterion).await?;
            add_info(&mut total, &steps_info);
            vars.insert("criteria".into(), Value::String(criterion.clone()));
            let numbered: Vec<String> = steps
                .iter()
                .enumerate()
                .map(|(i, step)| format!("{}. {step}", i + 1))
                .collect();
            vars.insert("steps".into(), Value::String(numbered.join("\n")));
            let prompt = assertion
                .rubric_prompt
                .clone()
                .unwrap_or_else(|| prompt(GEVAL_SCORE_SYSTEM, GEVAL_SCORE_USER));
            let schema = object_schema(&[
                ("reason", reason_schema()),
                (
                    "score",
                    json!({"type": "integer", "minimum": 0, "maximum": 10}),
                ),
            ]);
            let ask = Ask {
                logprobs: true,
                ..Ask::new(&prompt, &vars, schema)
            };
            let (answer, info, logprobs) = self.ask_with(model, grader, &ask).await?;
            add_info(&mut total, &info);
            let raw = number_field(&answer, "score")?.clamp(0.0, 10.0);
            let weighted = logprobs
                .as_deref()
                .and_then(|tokens| weighted_score(tokens, raw));
            let score = weighted.unwrap_or(raw) / 10.0;
            scores.push(score);
            reasons.push(format!(
                "{}{:.2}: {}",
                if criteria.len() > 1 {
                    format!("{criterion}: ")
                } else {
                    String::new()
                },
                score,
                text_field(&answer, "reason")
            ));
        }
        let score = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        Ok(Verdict {
            pass: score >= threshold,
            score,
            reason: format!(
                "score {score:.2} (threshold {threshold}): {}",
                reasons.join("; ")
            ),
            judge: total,
        })
    }

    async fn g_eval_steps(
        &self,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        criterion: &str,
    ) -> Result<(Vec<String>, JudgeInfo), String> {
        let cell = {
            let mut cells = self.steps.cells.lock().await;
            cells
                .entry((grader.to_owned(), criterion.to_owned()))
                .or_default()
                .clone()
        };
        let first = std::sync::atomic::AtomicBool::new(false);
        let result = cell
            .get_or_init(|| async {
                first.store(true, std::sync::atomic::Ordering::Relaxed);
                let mut vars = Map::new();
                vars.insert("criteria".into(), Value::String(criterion.to_owned()));
                let schema = object_schema(&[(
                    "steps",
                    json!({"type": "array", "items": {"type": "string", "maxLength": 160}, "minItems": 1, "maxItems": 5}),
                )]);
                let prompt = prompt(GEVAL_STEPS_SYSTEM, GEVAL_STEPS_USER);
                let (answer, info) = self.ask(model, grader, &prompt, &vars, schema).await?;
                let steps = text_list(&answer, "steps");
                if steps.is_empty() {
                    return Err("the judge wrote no evaluation steps".to_owned());
                }
                Ok((steps, info))
            })
            .await
            .clone();
        // The steps' cost is counted once, by the case that generated them.
        result.map(|(steps, info)| {
            if first.load(std::sync::atomic::Ordering::Relaxed) {
                (steps, info)
            } else {
                (steps, JudgeInfo::default())
            }
        })
    }

    pub(crate) async fn ask(
        &self,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        prompt: &JudgePrompt,
        vars: &Map<String, Value>,
        schema: Value,
    ) -> Result<(Value, JudgeInfo), String> {
        self.ask_with(model, grader, &Ask::new(prompt, vars, schema))
            .await
            .map(|(answer, info, _)| (answer, info))
    }

    /// One verdict: the rendered prompt under the schema (at temperature 0 unless `ask` says
    /// otherwise), checked against the schema, asked again once with the error when it does
    /// not fit. Retryable provider errors (timeouts, 429, 5xx) were already retried by the
    /// provider; they end here as unmeasured.
    pub(crate) async fn ask_with(
        &self,
        model: &Arc<dyn ChatModel>,
        grader: &str,
        ask: &Ask<'_>,
    ) -> Result<(Value, JudgeInfo, Option<Vec<TokenLogprob>>), String> {
        let Ask {
            prompt,
            vars,
            schema,
            logprobs,
            temperature,
            max_tokens,
            salt,
        } = ask;
        let (schema, logprobs, max_tokens) = (schema.clone(), *logprobs, *max_tokens);
        let mut messages = prompt.render(vars)?;
        let defaults = ModelParams {
            temperature: Some(*temperature),
            max_tokens: Some(max_tokens),
            response_format: Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchemaFormat {
                    name: "verdict".into(),
                    schema: schema.clone(),
                    strict: Some(true),
                },
            }),
            logprobs: logprobs.then_some(true),
            top_logprobs: logprobs.then_some(20),
            ..ModelParams::default()
        };
        let params = match self.graders.params.get(grader) {
            Some(tuning) => defaults.merged_with(tuning),
            None => defaults,
        };
        let max_tokens = params.max_tokens.unwrap_or(max_tokens);
        let mut info = JudgeInfo {
            model: grader.to_owned(),
            prompt_hash: hash_hex(format!("{}\n{schema}", prompt.hash_material()).as_bytes()),
            params: ModelParams {
                response_format: None,
                ..params.clone()
            },
            cached: true,
            ..JudgeInfo::default()
        };
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| format!("internal: judge schema: {e}"))?;
        let mut last_problem = String::new();
        for attempt in 0..=REASKS {
            let request = ChatRequest {
                messages: messages.clone(),
                params: params.clone(),
                ..ChatRequest::default()
            };
            let (response, _, cached) = self
                .caller
                .call(model, &request, &format!("judge-attempt={attempt}{salt}"))
                .await
                .map_err(|error| {
                    let kind = match error.kind {
                        ModelErrorKind::Timeout => "timed out",
                        _ => "failed",
                    };
                    format!("grader `{grader}` {kind}: {error}")
                })?;
            info.calls += 1;
            info.usage.prompt_tokens += response.usage.prompt_tokens;
            info.usage.completion_tokens += response.usage.completion_tokens;
            info.cost += model
                .pricing()
                .map(|p| p.cost(&response.usage))
                .unwrap_or(0.0);
            info.cached &= cached;
            let candidates = metrics::extract_json(&response.content);
            let fitting = candidates
                .iter()
                .find(|value| validator.is_valid(value))
                .cloned();
            if let Some(answer) = fitting {
                let logprobs = (!response.logprobs.is_empty()).then_some(response.logprobs);
                return Ok((answer, info, logprobs));
            }
            last_problem = match candidates.first() {
                None if response.finish_reason == Some(plumb_core::FinishReason::Length) => {
                    format!("its answer was cut off at {max_tokens} tokens")
                }
                None => "its answer holds no JSON object".to_owned(),
                Some(value) => {
                    let errors: Vec<String> = validator
                        .iter_errors(value)
                        .take(3)
                        .map(|e| e.to_string())
                        .collect();
                    format!(
                        "its answer does not fit the verdict schema: {}",
                        errors.join("; ")
                    )
                }
            };
            messages.push(Message::new(Role::Assistant, response.content.clone()));
            messages.push(Message::new(
                Role::User,
                format!(
                    "That answer cannot be used: {last_problem}. Reply again with only a JSON \
                     object that matches this schema: {schema}"
                ),
            ));
        }
        Err(format!(
            "grader `{grader}`: {last_problem} (asked {} times)",
            REASKS + 1
        ))
    }
}

/// Adds what `part` cost to `total`; a part that made calls also names the judge (model,
/// parameters, prompt hash): the last one asked stands for the verdict.
fn add_info(total: &mut JudgeInfo, part: &JudgeInfo) {
    if part.calls > 0 {
        total.model = part.model.clone();
        total.params = part.params.clone();
        total.prompt_hash = part.prompt_hash.clone();
    }
    total.calls += part.calls;
    total.usage.prompt_tokens += part.usage.prompt_tokens;
    total.usage.completion_tokens += part.usage.completion_tokens;
    total.cost += part.cost;
    total.cached = if total.calls == part.calls {
        part.cached
    } else {
        total.cached && (part.calls == 0 || part.cached)
    };
}

/// The assertions judged per case (`select-best` is judged per test, after the run).
pub(crate) fn collect_judged<'a>(asserts: &'a [Assertion], into: &mut Vec<&'a Assertion>) {
    for assertion in asserts {
        if assertion.kind.is_judged() && assertion.kind != AssertionType::SelectBest {
            into.push(assertion);
        }
        collect_judged(&assertion.children, into);
    }
}

/// A score in [0, 1] in steps of 0.05, as an enum: a grammar enforces an enum where it cannot
/// enforce a number's range (llama.cpp bounds integers, not numbers), so a local judge cannot
/// answer 1.5.
fn unit_score_schema() -> Value {
    let values: Vec<Value> = (0..=20)
        .map(|step| json!((f64::from(step) * 5.0).round() / 100.0))
        .collect();
    json!({ "enum": values })
}

fn reason_schema() -> Value {
    json!({"type": "string", "maxLength": REASON_CHARS})
}

fn object_schema(fields: &[(&str, Value)]) -> Value {
    let properties: Map<String, Value> = fields
        .iter()
        .map(|(name, schema)| ((*name).to_owned(), schema.clone()))
        .collect();
    let required: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn text_field(answer: &Value, name: &str) -> String {
    answer
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The non-empty strings of the list `name`, trimmed.
fn text_list(answer: &Value, name: &str) -> Vec<String> {
    answer
        .get(name)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn number_field(answer: &Value, name: &str) -> Result<f64, String> {
    answer
        .get(name)
        .and_then(Value::as_f64)
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("the judge's answer has no number `{name}`"))
}

/// G-Eval's probability-weighted score: the last generated token that spells the raw score,
/// and over its top alternatives that are integers 0–10 with p ≥ 1 %, Σ value·p / Σ p.
/// `None` when the grader gave no usable probabilities (the raw score stands).
pub fn weighted_score(tokens: &[TokenLogprob], raw: f64) -> Option<f64> {
    let spelled = format!("{}", raw.round() as i64);
    let token = tokens.iter().rev().find(|t| t.token.trim() == spelled)?;
    let mut alternatives: Vec<(String, f64)> = token.top.clone();
    if !alternatives.iter().any(|(t, _)| t.trim() == spelled) {
        alternatives.push((token.token.clone(), token.logprob));
    }
    let (mut weighted, mut mass) = (0.0, 0.0);
    for (text, logprob) in alternatives {
        let p = logprob.exp();
        if p < 0.01 {
            continue;
        }
        if let Ok(value) = text.trim().parse::<u32>()
            && value <= 10
        {
            weighted += f64::from(value) * p;
            mass += p;
        }
    }
    (mass > 0.0).then(|| weighted / mass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenLogprob;

    #[test]
    fn weighted_score_averages_the_score_tokens_by_probability() {
        let tokens = vec![
            TokenLogprob {
                token: "{\"score\": ".into(),
                logprob: 0.0,
                top: vec![],
            },
            TokenLogprob {
                token: "7".into(),
                logprob: 0.6f64.ln(),
                top: vec![
                    ("7".into(), 0.6f64.ln()),
                    ("8".into(), 0.3f64.ln()),
                    ("x".into(), 0.05f64.ln()),
                    ("2".into(), 0.005f64.ln()),
                ],
            },
        ];
        let score = weighted_score(&tokens, 7.0).unwrap();
        assert!(
            (score - (7.0 * 0.6 + 8.0 * 0.3) / 0.9).abs() < 1e-9,
            "{score}"
        );
        assert_eq!(weighted_score(&tokens, 9.0), None);
        assert_eq!(weighted_score(&[], 7.0), None);
    }

    #[test]
    fn rubric_prompts_parse_from_text_lists_and_chat_json() {
        let one = JudgePrompt::parse(&json!("Grade {{ output }} by {{ rubric }}")).unwrap();
        assert_eq!(one.messages.len(), 1);
        assert_eq!(one.variables().unwrap(), vec!["output", "rubric"]);
        let chat = JudgePrompt::parse(&json!(
            "[{\"role\": \"system\", \"content\": \"be fair\"}, {\"role\": \"user\", \"content\": \"{{ output }}\"}]"
        ))
        .unwrap();
        assert_eq!(chat.messages[0].0, Role::System);
        let listed = JudgePrompt::parse(&json!([{"role": "user", "content": "{{ x }}"}])).unwrap();
        assert_eq!(listed.variables().unwrap(), vec!["x"]);
        assert!(JudgePrompt::parse(&json!([{"role": "judge", "content": "x"}])).is_err());
        assert!(JudgePrompt::parse(&json!(3)).is_err());
    }

    #[test]
    fn graded_scores_are_an_enum_a_grammar_can_enforce() {
        let schema = unit_score_schema();
        let values = schema["enum"].as_array().unwrap();
        assert_eq!(values.len(), 21);
        assert_eq!(values[11], json!(0.55));
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(validator.is_valid(&json!(0.55)) && validator.is_valid(&json!(1)));
        assert!(!validator.is_valid(&json!(1.5)) && !validator.is_valid(&json!(0.33)));
    }

    #[test]
    fn factuality_scores_default_to_promptfoos() {
        let scores = FactualityScores::default();
        assert_eq!(scores.of("D").unwrap().0, 0.0);
        for choice in ["A", "B", "C", "E"] {
            assert_eq!(scores.of(choice).unwrap().0, 1.0);
        }
        assert!(scores.of("F").is_none());
    }
}
