//! Cost before spend: what a run would call, how many tokens and what it would cost, estimated
//! without calling anything (`plumb eval --dry-run`), and the per-case bound that `--max-cost`
//! reserves before starting a case.
//!
//! Prompt tokens are counted with each model's tokenizer where the provider has one (tiktoken
//! for OpenAI models; about four characters a token otherwise). Completion tokens are each
//! call's `max_tokens` (`UNSET_MAX_TOKENS` when unset), so model costs are upper estimates. A
//! judge's prompt holds an output not produced yet: its size assumes an output of the model's
//! `max_tokens`, and whether it will come from the cache cannot be known in advance.

use std::collections::HashSet;
use std::sync::Arc;

use indexmap::IndexMap;
use plumb_core::{ChatModel, Pricing, Usage};
use plumb_store::{CaseKey, Store};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::assertion::{Assertion, AssertionType};
use crate::judge::rag::RELEVANCE_QUESTIONS;
use crate::judge::{Graders, collect_judged};
use crate::runner::{CacheMode, Caller, RunOptions, case_request};
use crate::suite::Suite;

/// The completion tokens assumed for a call whose `max_tokens` is unset.
pub const UNSET_MAX_TOKENS: u32 = 512;
/// A built-in judge prompt's own text, about.
const JUDGE_PROMPT_TOKENS: u64 = 220;
/// A verdict (schema-bound: a reason of at most 240 characters and a decision), about.
const VERDICT_TOKENS: u64 = 100;
/// A list answer (statements, verdicts per statement), about.
const LIST_TOKENS: u64 = 400;

/// Calls to one model (or grader): how many, how many the cache answers, tokens and cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Line {
    pub calls: u64,
    /// Answered from the response cache: no tokens, no cost.
    pub cached: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
    /// The model has a known price (local and mock models have none and cost nothing).
    pub priced: bool,
}

impl Line {
    fn add(&mut self, other: &Line) {
        self.calls += other.calls;
        self.cached += other.cached;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost += other.cost;
        self.priced |= other.priced;
    }
}

/// What a run would do.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub cases: u64,
    /// `model <provider label>` and `judge <grader>`, in first-use order.
    pub lines: IndexMap<String, Line>,
}

impl Plan {
    pub fn total(&self) -> Line {
        let mut total = Line::default();
        for line in self.lines.values() {
            total.add(line);
        }
        total
    }
}

/// One case's estimate: its model call and its judges' calls.
#[derive(Clone, Debug, Default)]
pub(crate) struct CaseEstimate {
    pub model: Line,
    /// By grader key.
    pub judges: Vec<(String, Line)>,
    /// The part of `judges` that the test's `select-best` comparisons cost (spent after the
    /// cases, so `--max-cost` checks it again then).
    pub select_best: f64,
}

impl CaseEstimate {
    pub fn cost(&self) -> f64 {
        self.model.cost + self.judges.iter().map(|(_, line)| line.cost).sum::<f64>()
    }
}

/// Estimates cases of one run.
pub(crate) struct Estimator<'a> {
    pub suite: &'a Suite,
    pub models: &'a [Arc<dyn ChatModel>],
    pub graders: &'a Graders,
    pub store: Arc<dyn Store>,
    pub options: &'a RunOptions,
}

impl Estimator<'_> {
    /// The assertion's grader (its own, else the run's default), when it could be built.
    fn grader(&self, assertion: &Assertion) -> Option<(String, Arc<dyn ChatModel>)> {
        let key = self.graders.key_for(assertion)?;
        match self.graders.models.get(key) {
            Some(Ok(grader)) => Some((key.to_owned(), grader.clone())),
            _ => None,
        }
    }

    /// The case's calls. `steps_seen` holds the (grader, criterion) pairs whose g-eval steps are
    /// already counted (they are generated once per run); `None` counts them every time.
    pub async fn case(
        &self,
        key: CaseKey,
        steps_seen: Option<&mut HashSet<(String, String)>>,
    ) -> CaseEstimate {
        let model = &self.models[key.provider_idx as usize];
        let test = &self.suite.tests[key.test_idx as usize];
        let mut estimate = CaseEstimate::default();
        let Ok(request) = case_request(self.suite, key) else {
            return estimate;
        };
        let output_tokens = u64::from(request.params.max_tokens.unwrap_or(UNSET_MAX_TOKENS));
        let caller = Caller {
            store: self.store.clone(),
            cache: self.options.cache,
            repeat: (self.options.repeat > 1).then_some(key.repeat_idx),
        };
        let cached = self.options.cache != CacheMode::Off && model.cacheable() && {
            let store = self.store.clone();
            let cache_key = caller.key(model.as_ref(), &request, "");
            tokio::task::spawn_blocking(move || store.cache_get(&cache_key))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .is_some()
        };
        estimate.model.calls = 1;
        estimate.model.priced = model.pricing().is_some();
        if cached {
            estimate.model.cached = 1;
        } else {
            let prompt: u64 = request
                .messages
                .iter()
                .map(|m| model.count_tokens(&m.content) + 3)
                .sum::<u64>()
                + 3;
            estimate.model.prompt_tokens = prompt;
            estimate.model.completion_tokens = output_tokens;
            estimate.model.cost = cost(model.pricing(), prompt, output_tokens);
        }
        let mut seen = steps_seen;
        let mut judged = Vec::new();
        collect_judged(&test.asserts, &mut judged);
        // select-best: two calls per test (both orders) over every output, counted on the
        // test's first case.
        let outputs = (self.suite.prompts.len() * self.suite.providers.len()) as u64;
        if key.prompt_idx == 0 && key.provider_idx == 0 {
            for assertion in &test.asserts {
                if assertion.kind != AssertionType::SelectBest {
                    continue;
                }
                let Some((grader_key, grader)) = self.grader(assertion) else {
                    continue;
                };
                let prompt = JUDGE_PROMPT_TOKENS
                    + grader.count_tokens(&reads_text(assertion, &test.vars))
                    + outputs * output_tokens;
                estimate.select_best += 2.0 * cost(grader.pricing(), prompt, VERDICT_TOKENS);
                estimate.judges.push((
                    grader_key,
                    Line {
                        calls: 2,
                        prompt_tokens: 2 * prompt,
                        completion_tokens: 2 * VERDICT_TOKENS,
                        cost: 2.0 * cost(grader.pricing(), prompt, VERDICT_TOKENS),
                        priced: grader.pricing().is_some(),
                        cached: 0,
                    },
                ));
            }
        }
        for assertion in judged {
            let Some((grader_key, grader)) = self.grader(assertion) else {
                continue;
            };
            let calls = judge_calls(assertion, &test.vars);
            let reads = grader.count_tokens(&reads_text(assertion, &test.vars));
            let mut line = Line {
                priced: grader.pricing().is_some(),
                ..Line::default()
            };
            for call in calls {
                if let JudgeCall::Steps(criterion) = &call
                    && let Some(seen) = seen.as_deref_mut()
                    && !seen.insert((grader_key.clone(), criterion.clone()))
                {
                    continue;
                }
                let (prompt, completion) = match call {
                    JudgeCall::Verdict => {
                        (JUDGE_PROMPT_TOKENS + reads + output_tokens, VERDICT_TOKENS)
                    }
                    JudgeCall::List => (JUDGE_PROMPT_TOKENS + reads + output_tokens, LIST_TOKENS),
                    JudgeCall::Steps(_) => (JUDGE_PROMPT_TOKENS, LIST_TOKENS),
                };
                line.calls += 1;
                line.prompt_tokens += prompt;
                line.completion_tokens += completion;
                line.cost += cost(grader.pricing(), prompt, completion);
            }
            estimate.judges.push((grader_key, line));
        }
        estimate
    }
}

/// Everything a run of `suite` would call, without calling it.
pub async fn plan(
    suite: &Suite,
    models: &[Arc<dyn ChatModel>],
    graders: &Graders,
    store: Arc<dyn Store>,
    options: &RunOptions,
) -> Plan {
    let estimator = Estimator {
        suite,
        models,
        graders,
        store,
        options,
    };
    let mut plan = Plan::default();
    let mut steps_seen = HashSet::new();
    for key in suite.case_keys(options.repeat) {
        let estimate = estimator.case(key, Some(&mut steps_seen)).await;
        plan.cases += 1;
        let label = format!("model {}", suite.providers[key.provider_idx as usize].label);
        plan.lines.entry(label).or_default().add(&estimate.model);
        for (grader, line) in &estimate.judges {
            plan.lines
                .entry(format!("judge {grader}"))
                .or_default()
                .add(line);
        }
    }
    plan
}

fn cost(pricing: Option<Pricing>, prompt_tokens: u64, completion_tokens: u64) -> f64 {
    pricing
        .map(|p| {
            p.cost(&Usage {
                prompt_tokens,
                completion_tokens,
            })
        })
        .unwrap_or(0.0)
}

enum JudgeCall {
    Verdict,
    List,
    /// g-eval's evaluation steps for one criterion (once per run and grader).
    Steps(String),
}

/// The calls a judged assertion makes for one case.
fn judge_calls(assertion: &Assertion, vars: &Map<String, Value>) -> Vec<JudgeCall> {
    use AssertionType as T;
    match assertion.kind {
        T::GEval => {
            let criteria: Vec<String> = match &assertion.value {
                Some(Value::Array(items)) => items.iter().map(|v| v.to_string()).collect(),
                Some(other) => vec![other.to_string()],
                None => Vec::new(),
            };
            criteria
                .into_iter()
                .flat_map(|criterion| [JudgeCall::Steps(criterion), JudgeCall::Verdict])
                .collect()
        }
        T::ContextFaithfulness => vec![JudgeCall::List, JudgeCall::List],
        T::AnswerRelevance => (0..RELEVANCE_QUESTIONS)
            .map(|_| JudgeCall::Verdict)
            .collect(),
        T::ContextPrecision => {
            let chunks = match vars.get("context").or_else(|| vars.get("contexts")) {
                Some(Value::Array(items)) => items.len().max(1),
                _ => 1,
            };
            (0..chunks).map(|_| JudgeCall::Verdict).collect()
        }
        T::ContextRecall => vec![JudgeCall::List],
        _ => vec![JudgeCall::Verdict],
    }
}

/// What a judge prompt includes besides the output: the assertion's value and, for RAG
/// metrics, the context.
fn reads_text(assertion: &Assertion, vars: &Map<String, Value>) -> String {
    let mut text = match &assertion.value {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    if assertion.kind.is_rag()
        && let Some(context) = vars.get("context").or_else(|| vars.get("contexts"))
    {
        text.push_str(&context.to_string());
    }
    text
}
