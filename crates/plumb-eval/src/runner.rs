//! The runner: every prompt × provider × test × repeat, concurrently within global and
//! per-provider limits, through the response cache, with results streamed to the store in
//! batches as they finish (memory stays flat however many cases there are).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plumb_core::{
    ChatModel, ChatRequest, ChatResponse, Embedder, FinishReason, Message, ModelError,
    ModelErrorKind, ToolCall, Usage, hash_hex, now_ms,
};
use plumb_store::{CaseKey, CaseRecord, RunRecord, RunStatus, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::assertion::{self, AssertionResult, AssertionType, Embeddings, Output};
use crate::judge::{Graders, JudgeContext, StepsMemo, Subject};
use crate::suite::{RegistryVersion, Suite, render_messages};

/// Results are written in one transaction per batch of this many, or sooner (`FLUSH_EVERY`).
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Read hits, record misses.
    ReadWrite,
    /// Replay only: a miss is an error (CI without API keys).
    ReadOnly,
    /// Neither read nor write.
    Off,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunOptions {
    /// Cases in flight at once, across providers.
    pub concurrency: usize,
    pub repeat: u32,
    pub cache: CacheMode,
    /// USD this run may spend (models and judges): a case starts only when its estimated cost
    /// (`plan::Estimator`) fits in what is left; then the run stops, resumable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
}

/// One evaluated case, as stored (payload) and reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub prompt_idx: u32,
    pub provider_idx: u32,
    pub test_idx: u32,
    pub repeat_idx: u32,
    pub prompt: String,
    /// The content hash of the prompt version this case ran.
    #[serde(default)]
    pub prompt_hash: String,
    pub provider: String,
    pub test: String,
    pub vars: Map<String, Value>,
    pub messages: Vec<Message>,
    pub output: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Why the case could not be measured (the model call failed). `pass` is `None` then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub assertions: Vec<AssertionResult>,
    pub pass: Option<bool>,
    pub score: f64,
    pub latency_ms: f64,
    pub usage: Usage,
    pub cost: f64,
    /// What the case's judge calls cost (measured verdicts only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub judge_cost: f64,
    pub cached: bool,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

impl CaseResult {
    pub fn key(&self) -> CaseKey {
        CaseKey {
            prompt_idx: self.prompt_idx,
            provider_idx: self.provider_idx,
            test_idx: self.test_idx,
            repeat_idx: self.repeat_idx,
        }
    }

    fn record(&self) -> Result<CaseRecord, StoreError> {
        Ok(CaseRecord {
            key: self.key(),
            pass: self.pass,
            score: self.score,
            latency_ms: self.latency_ms,
            cost: self.cost,
            tokens: self.usage.total(),
            payload: serde_json::to_string(self)
                .map_err(|e| StoreError::Internal(e.to_string()))?,
        })
    }
}

/// What the runner tells its caller as it goes (the CLI draws a progress bar from it).
pub trait Observer: Send + Sync {
    /// `total` cases to run now, `done` already finished by an earlier attempt (resume).
    fn started(&self, total: u64, done: u64);
    fn finished(&self, result: &CaseResult);
}

/// An observer that does nothing.
pub struct Silent;

impl Observer for Silent {
    fn started(&self, _total: u64, _done: u64) {}
    fn finished(&self, _result: &CaseResult) {}
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A model error that will not go away by itself (bad key, unknown model, cache miss in
    /// read-only mode): the run stops at once.
    #[error("{provider}: {error}")]
    Fatal { provider: String, error: ModelError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_id: String,
    pub status: RunStatus,
    pub elapsed: Duration,
    /// The run stopped because the next case would have exceeded `max_cost`.
    pub budget_reached: bool,
    /// What this run spent on models and judges (USD).
    pub spent: f64,
    pub select_best: SelectBestStats,
}

/// What the `select-best` pass did.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelectBestStats {
    /// Comparisons asked (one per test, repeat and select-best assertion; each in two orders).
    pub comparisons: u64,
    /// Comparisons whose two orders picked different outputs: left unmeasured.
    pub position_bias: u64,
    /// What the comparisons cost (USD).
    pub cost: f64,
}

/// `--max-cost`: what has been spent, and what the cases in flight may still spend.
#[derive(Default)]
struct Budget {
    spent: f64,
    reserved: f64,
}

/// What is stored with a run so it can be resumed and described later.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub suite_path: String,
    /// The suite's canonical absolute path: how promotion policies find runs of a suite
    /// whatever directory `plumb eval` ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite_abs: Option<String>,
    pub suite_hash: String,
    pub options: RunOptions,
    pub prompts: Vec<PromptInfo>,
    pub providers: Vec<String>,
    pub n_tests: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromptInfo {
    pub label: String,
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryVersion>,
}

impl RunConfig {
    pub fn new(suite: &Suite, options: &RunOptions) -> RunConfig {
        RunConfig {
            suite_path: suite.path.display().to_string(),
            suite_abs: std::fs::canonicalize(&suite.path)
                .ok()
                .map(|p| p.display().to_string()),
            suite_hash: suite.content_hash.clone(),
            options: options.clone(),
            prompts: suite
                .prompts
                .iter()
                .map(|p| PromptInfo {
                    label: p.label.clone(),
                    hash: p.hash.clone(),
                    registry: p.registry.clone(),
                })
                .collect(),
            providers: suite.providers.iter().map(|p| p.label.clone()).collect(),
            n_tests: suite.tests.len(),
        }
    }
}

/// Cached answers keep the latency of the call that produced them, so `latency` assertions
/// and reports stay meaningful on replay.
#[derive(Serialize, Deserialize)]
struct CachedAnswer {
    response: ChatResponse,
    latency_ms: f64,
}

/// The models a run talks to.
pub struct Backends {
    /// One per suite provider, in order.
    pub models: Vec<Arc<dyn ChatModel>>,
    /// By embedder id, for every id `Suite::embedders` names.
    pub embedders: HashMap<String, Arc<dyn Embedder>>,
    /// The graders of judged assertions, by `Suite::graders` key. A grader that could not be
    /// built is an `Err`: its assertions are unmeasured with that reason.
    pub graders: Graders,
}

impl Backends {
    pub fn models(models: Vec<Arc<dyn ChatModel>>) -> Backends {
        Backends {
            models,
            embedders: HashMap::new(),
            graders: Graders::default(),
        }
    }
}

/// Model calls through the run's response cache (judges' calls too).
#[derive(Clone)]
pub struct Caller {
    pub store: Arc<dyn Store>,
    pub cache: CacheMode,
    /// With repeats, each repeat gets its own cache entries (repeats measure variation).
    pub repeat: Option<u32>,
}

impl Caller {
    pub(crate) fn key(&self, model: &dyn ChatModel, request: &ChatRequest, salt: &str) -> String {
        let mut material = model.cache_identity();
        material.push('\n');
        material.push_str(&serde_json::to_string(request).unwrap_or_default());
        if let Some(repeat) = self.repeat {
            material.push_str(&format!("\nrepeat={repeat}"));
        }
        if !salt.is_empty() {
            material.push('\n');
            material.push_str(salt);
        }
        hash_hex(material.as_bytes())
    }

    /// (response, latency in ms, whether it came from the cache).
    pub async fn call(
        &self,
        model: &Arc<dyn ChatModel>,
        request: &ChatRequest,
        salt: &str,
    ) -> Result<(ChatResponse, f64, bool), ModelError> {
        let use_cache = self.cache != CacheMode::Off && model.cacheable();
        let key = use_cache.then(|| self.key(model.as_ref(), request, salt));
        if let Some(key) = &key {
            let store = self.store.clone();
            let lookup_key = key.clone();
            let hit = tokio::task::spawn_blocking(move || store.cache_get(&lookup_key))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .and_then(|text| serde_json::from_str::<CachedAnswer>(&text).ok());
            if let Some(hit) = hit {
                return Ok((hit.response, hit.latency_ms, true));
            }
            if self.cache == CacheMode::ReadOnly {
                return Err(ModelError::new(
                    ModelErrorKind::CacheMiss,
                    "no recorded answer for this request (cache is read-only)",
                )
                .with_hint("run once with `--cache read-write` (and the API key) to record it"));
            }
        }
        let started = Instant::now();
        let response = model.chat(request).await?;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Some(key) = key {
            let answer = CachedAnswer {
                response: response.clone(),
                latency_ms,
            };
            if let Ok(text) = serde_json::to_string(&answer) {
                let store = self.store.clone();
                // A failed cache write costs a future call, never this result.
                let _ = tokio::task::spawn_blocking(move || store.cache_put(&key, &text)).await;
            }
        }
        Ok((response, latency_ms, false))
    }
}

/// Runs `suite` with `backends`. With `resume`, the run with
/// that id continues and cases it already has are skipped.
pub async fn run(
    suite: Arc<Suite>,
    backends: Backends,
    store: Arc<dyn Store>,
    options: RunOptions,
    resume: Option<String>,
    observer: Arc<dyn Observer>,
    cancel: Arc<AtomicBool>,
) -> Result<RunOutcome, RunError> {
    let Backends {
        models,
        embedders,
        graders,
    } = backends;
    let graders = Arc::new(graders);
    let steps = Arc::new(StepsMemo::default());
    if models.len() != suite.providers.len() {
        return Err(RunError::Internal("one model per provider expected".into()));
    }
    if let Some(missing) = suite
        .embedders()
        .into_iter()
        .find(|id| !embedders.contains_key(id))
    {
        return Err(RunError::Internal(format!(
            "embedder `{missing}` was not provided"
        )));
    }
    let embedders = Arc::new(embedders);
    let started = Instant::now();
    let config = RunConfig::new(&suite, &options);
    let (run_id, done) = match resume {
        Some(run_id) => {
            let done = {
                let store = store.clone();
                let run_id = run_id.clone();
                tokio::task::spawn_blocking(move || store.completed_cases(&run_id))
                    .await
                    .map_err(|e| RunError::Internal(e.to_string()))??
            };
            (run_id, done)
        }
        None => {
            let run_id = plumb_core::RunId::new().to_string();
            let record = RunRecord {
                id: run_id.clone(),
                created_at: now_ms(),
                suite_path: config.suite_path.clone(),
                description: suite.description.clone(),
                status: RunStatus::Running,
                config: serde_json::to_string(&config)
                    .map_err(|e| RunError::Internal(e.to_string()))?,
                summary: None,
            };
            store.create_run(&record)?;
            (run_id, Vec::new())
        }
    };
    let done: std::collections::HashSet<CaseKey> = done.into_iter().collect();

    let n_prompts = suite.prompts.len() as u32;
    let n_providers = suite.providers.len() as u32;
    let n_tests = suite.tests.len() as u32;
    let repeat = options.repeat.max(1);
    let total = n_prompts as u64 * n_providers as u64 * n_tests as u64 * repeat as u64;
    observer.started(total - done.len() as u64, done.len() as u64);

    let (sender, receiver) = mpsc::channel::<CaseResult>(BATCH * 2);
    let writer = tokio::spawn(write_results(
        store.clone(),
        run_id.clone(),
        receiver,
        observer.clone(),
    ));

    let global = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let per_provider: Vec<Arc<Semaphore>> = models
        .iter()
        .map(|model| {
            Arc::new(Semaphore::new(
                model.max_concurrency().unwrap_or(usize::MAX >> 4).max(1),
            ))
        })
        .collect();
    let fatal: Arc<Mutex<Option<RunError>>> = Arc::new(Mutex::new(None));
    let mut tasks = tokio::task::JoinSet::new();
    let budget = Arc::new(std::sync::Mutex::new(Budget::default()));
    let mut budget_reached = false;
    let estimator = crate::plan::Estimator {
        suite: &suite,
        models: &models,
        graders: &graders,
        store: store.clone(),
        options: &options,
    };

    // Provider-major (`Suite::case_keys`).
    'dispatch: for key in suite.case_keys(repeat) {
        if done.contains(&key) {
            continue;
        }
        let permit = tokio::select! {
            permit = global.clone().acquire_owned() => permit.map_err(|e| RunError::Internal(e.to_string()))?,
            _ = wait_cancel(&cancel) => break 'dispatch,
        };
        if cancel.load(Ordering::Relaxed) {
            break 'dispatch;
        }
        // Reap finished tasks so the set does not grow with the case count.
        while tasks.try_join_next().is_some() {}
        let reserve = match options.max_cost {
            Some(limit) => {
                let estimate = estimator.case(key, None).await.cost();
                let mut budget = budget.lock().unwrap_or_else(|e| e.into_inner());
                if budget.spent + budget.reserved + estimate > limit + 1e-12 {
                    budget_reached = true;
                    break 'dispatch;
                }
                budget.reserved += estimate;
                estimate
            }
            None => 0.0,
        };
        let job = Job {
            suite: suite.clone(),
            model: models[key.provider_idx as usize].clone(),
            provider_gate: per_provider[key.provider_idx as usize].clone(),
            caller: Caller {
                store: store.clone(),
                cache: options.cache,
                repeat: (repeat > 1).then_some(key.repeat_idx),
            },
            embedders: embedders.clone(),
            key,
            graders: graders.clone(),
            steps: steps.clone(),
        };
        let sender = sender.clone();
        let fatal = fatal.clone();
        let cancel = cancel.clone();
        let budget = budget.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let result = job.run().await;
            {
                let mut budget = budget.lock().unwrap_or_else(|e| e.into_inner());
                budget.reserved -= reserve;
                if let Ok(result) = &result {
                    budget.spent += result.cost + result.judge_cost;
                }
            }
            match result {
                Ok(result) => {
                    let _ = sender.send(result).await;
                }
                Err(error) => {
                    cancel.store(true, Ordering::Relaxed);
                    let mut slot = fatal.lock().await;
                    if slot.is_none() {
                        *slot = Some(error);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    drop(sender);
    writer
        .await
        .map_err(|e| RunError::Internal(e.to_string()))??;

    let fatal = fatal.lock().await.take();
    let mut select_best = SelectBestStats::default();
    if fatal.is_none()
        && !cancel.load(Ordering::Relaxed)
        && !budget_reached
        && suite.has_select_best()
    {
        // The comparisons are spent now: with a budget, they must fit in what is left.
        if let Some(limit) = options.max_cost {
            let mut needed = 0.0;
            for test_idx in 0..suite.tests.len() as u32 {
                for repeat_idx in 0..repeat {
                    let key = CaseKey {
                        prompt_idx: 0,
                        provider_idx: 0,
                        test_idx,
                        repeat_idx,
                    };
                    needed += estimator.case(key, None).await.select_best;
                }
            }
            let spent = budget.lock().unwrap_or_else(|e| e.into_inner()).spent + select_best.cost;
            budget_reached = spent + needed > limit + 1e-12;
        }
    }
    if fatal.is_none()
        && !cancel.load(Ordering::Relaxed)
        && !budget_reached
        && suite.has_select_best()
    {
        let judges = SelectBestPass {
            suite: &suite,
            run_id: &run_id,
            store: store.clone(),
            graders: graders.clone(),
            embedders: embedders.clone(),
            cache: options.cache,
            repeat,
        };
        select_best = judges.run().await?;
    }
    let status = match (&fatal, cancel.load(Ordering::Relaxed) || budget_reached) {
        (Some(_), _) => RunStatus::Failed,
        (None, true) => RunStatus::Interrupted,
        (None, false) => RunStatus::Completed,
    };
    let spent = budget.lock().unwrap_or_else(|e| e.into_inner()).spent + select_best.cost;
    store.finish_run(&run_id, status, "{}")?;
    if let Some(error) = fatal {
        return Err(error);
    }
    Ok(RunOutcome {
        run_id,
        status,
        elapsed: started.elapsed(),
        budget_reached,
        spent,
        select_best,
    })
}

async fn wait_cancel(cancel: &AtomicBool) {
    while !cancel.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Job {
    suite: Arc<Suite>,
    model: Arc<dyn ChatModel>,
    provider_gate: Arc<Semaphore>,
    /// The model's and the judges' calls, through the run's cache.
    caller: Caller,
    embedders: Arc<HashMap<String, Arc<dyn Embedder>>>,
    key: CaseKey,
    graders: Arc<Graders>,
    steps: Arc<StepsMemo>,
}

impl Job {
    async fn run(self) -> Result<CaseResult, RunError> {
        let suite = &self.suite;
        let prompt = &suite.prompts[self.key.prompt_idx as usize];
        let provider = &suite.providers[self.key.provider_idx as usize];
        let test = &suite.tests[self.key.test_idx as usize];
        let request = case_request(suite, self.key).map_err(RunError::Internal)?;

        let _gate = self
            .provider_gate
            .acquire()
            .await
            .map_err(|e| RunError::Internal(e.to_string()))?;
        let answer = self.caller.call(&self.model, &request, "").await;
        let mut result = CaseResult {
            prompt_idx: self.key.prompt_idx,
            provider_idx: self.key.provider_idx,
            test_idx: self.key.test_idx,
            repeat_idx: self.key.repeat_idx,
            prompt: prompt.label.clone(),
            prompt_hash: prompt.hash.clone(),
            provider: provider.label.clone(),
            test: test.description.clone(),
            vars: test.vars.clone(),
            messages: request.messages.clone(),
            output: String::new(),
            tool_calls: Vec::new(),
            finish_reason: None,
            error: None,
            assertions: Vec::new(),
            pass: None,
            score: 0.0,
            latency_ms: 0.0,
            usage: Usage::default(),
            cost: 0.0,
            judge_cost: 0.0,
            cached: false,
        };
        match answer {
            Err(error) if error.is_user_error() => {
                return Err(RunError::Fatal {
                    provider: provider.label.clone(),
                    error,
                });
            }
            Err(error) => {
                result.error = Some(match &error.hint {
                    Some(hint) => format!("{error} ({hint})"),
                    None => error.to_string(),
                });
            }
            Ok((response, latency_ms, cached)) => {
                let cost = self
                    .model
                    .pricing()
                    .map(|p| p.cost(&response.usage))
                    .unwrap_or(0.0);
                let embeddings = match self.embed(&response.content, test).await {
                    Ok(embeddings) => embeddings,
                    Err(error) => {
                        if error.is_user_error() {
                            return Err(RunError::Fatal {
                                provider: "embedder".into(),
                                error,
                            });
                        }
                        result.error = Some(format!("embedding failed: {error}"));
                        result.output = response.content;
                        result.latency_ms = latency_ms;
                        result.usage = response.usage;
                        result.cost = cost;
                        return Ok(result);
                    }
                };
                let judges = JudgeContext {
                    graders: self.graders.clone(),
                    caller: self.caller.clone(),
                    steps: self.steps.clone(),
                    embedders: self.embedders.clone(),
                };
                let input = request
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == plumb_core::Role::User)
                    .map(|m| m.content.as_str())
                    .unwrap_or("");
                let subject = Subject {
                    output: &response.content,
                    input,
                    vars: &test.vars,
                };
                let judgements = judges.judge_all(&test.asserts, &subject).await;
                result.judge_cost = judgements
                    .values()
                    .filter_map(|verdict| verdict.as_ref().ok())
                    .map(|verdict| verdict.judge.cost)
                    .sum();
                let output = Output {
                    text: &response.content,
                    tool_calls: &response.tool_calls,
                    finish_reason: response.finish_reason,
                    latency_ms,
                    cost,
                    tools: &request.params.tools,
                    embeddings: &embeddings,
                    judgements: &judgements,
                };
                let results: Vec<AssertionResult> = test
                    .asserts
                    .iter()
                    .map(|a| a.evaluate(&output, &test.vars))
                    .collect();
                let (score, pass) = assertion::verdict(&results, test.threshold);
                result.pass = pass;
                if pass.is_none() {
                    result.error = Some(format!(
                        "judge: {}",
                        assertion::unmeasured_reasons(&results)
                    ));
                }
                result.score = score;
                result.assertions = results;
                result.latency_ms = latency_ms;
                result.cost = cost;
                result.cached = cached;
                result.usage = response.usage;
                result.finish_reason = response.finish_reason;
                result.tool_calls = response.tool_calls;
                result.output = response.content;
            }
        }
        Ok(result)
    }

    /// Embeds what this case's `similar` assertions compare, one call per embedder.
    async fn embed(
        &self,
        output: &str,
        test: &crate::suite::TestCase,
    ) -> Result<Embeddings, ModelError> {
        let mut requests = Vec::new();
        for assertion in &test.asserts {
            assertion.embedding_requests(output, &test.vars, &mut requests);
        }
        let mut embeddings = Embeddings::new();
        if requests.is_empty() {
            return Ok(embeddings);
        }
        let mut by_embedder: HashMap<&str, Vec<String>> = HashMap::new();
        for (embedder, text) in &requests {
            let texts = by_embedder.entry(embedder.as_str()).or_default();
            if !texts.contains(text) {
                texts.push(text.clone());
            }
        }
        for (id, texts) in by_embedder {
            let embedder = self
                .embedders
                .get(id)
                .ok_or_else(|| ModelError::config(format!("embedder `{id}` is not available")))?;
            let vectors = embedder.embed(&texts).await?;
            for (text, vector) in texts.into_iter().zip(vectors) {
                embeddings.insert((id.to_owned(), text), vector);
            }
        }
        Ok(embeddings)
    }
}

/// After the cases: each test's `select-best` assertions compare the outputs of every prompt
/// and provider (read back from the store), and the members' results are rewritten with the
/// outcome.
struct SelectBestPass<'a> {
    suite: &'a Suite,
    run_id: &'a str,
    store: Arc<dyn Store>,
    graders: Arc<Graders>,
    embedders: Arc<HashMap<String, Arc<dyn Embedder>>>,
    cache: CacheMode,
    repeat: u32,
}

impl SelectBestPass<'_> {
    async fn run(&self) -> Result<SelectBestStats, RunError> {
        let suite = self.suite;
        let wanted: Vec<bool> = suite
            .tests
            .iter()
            .map(|t| {
                t.asserts
                    .iter()
                    .any(|a| a.kind == AssertionType::SelectBest)
            })
            .collect();
        let groups = {
            let store = self.store.clone();
            let run_id = self.run_id.to_owned();
            tokio::task::spawn_blocking(move || {
                let mut groups: std::collections::BTreeMap<(u32, u32), Vec<CaseResult>> =
                    std::collections::BTreeMap::new();
                store.for_each_result(&run_id, &mut |record| {
                    if wanted.get(record.key.test_idx as usize) == Some(&true) {
                        let result: CaseResult =
                            serde_json::from_str(&record.payload).map_err(|e| {
                                StoreError::Internal(format!("bad result payload: {e}"))
                            })?;
                        groups
                            .entry((result.test_idx, result.repeat_idx))
                            .or_default()
                            .push(result);
                    }
                    Ok(())
                })?;
                Ok::<_, StoreError>(groups)
            })
            .await
            .map_err(|e| RunError::Internal(e.to_string()))??
        };
        let members = suite.prompts.len() * suite.providers.len();
        let steps = Arc::new(StepsMemo::default());
        let mut stats = SelectBestStats::default();
        let mut updated = Vec::new();
        for ((test_idx, repeat_idx), mut group) in groups {
            let test = &suite.tests[test_idx as usize];
            group.sort_by_key(|r| (r.provider_idx, r.prompt_idx));
            let missing: Vec<String> = group
                .iter()
                .filter(|r| r.assertions.is_empty())
                .map(|r| format!("`{} · {}`", r.prompt, r.provider))
                .collect();
            let incomplete = if group.len() < members {
                Some(format!(
                    "select-best needs every prompt's and provider's output for this test;                      {} of {members} are in",
                    group.len()
                ))
            } else if !missing.is_empty() {
                Some(format!(
                    "select-best needs every output of this test; {} had none (model error)",
                    missing.join(", ")
                ))
            } else {
                None
            };
            let judges = JudgeContext {
                graders: self.graders.clone(),
                caller: Caller {
                    store: self.store.clone(),
                    cache: self.cache,
                    repeat: (self.repeat > 1).then_some(repeat_idx),
                },
                steps: steps.clone(),
                embedders: self.embedders.clone(),
            };
            let outputs: Vec<(String, String)> = group
                .iter()
                .map(|r| (format!("{} · {}", r.prompt, r.provider), r.output.clone()))
                .collect();
            for (index, assertion) in test.asserts.iter().enumerate() {
                if assertion.kind != AssertionType::SelectBest {
                    continue;
                }
                let outcome = match &incomplete {
                    Some(reason) => Err(reason.clone()),
                    None => {
                        stats.comparisons += 1;
                        judges.select_best(assertion, &test.vars, &outputs).await
                    }
                };
                if let Err(reason) = &outcome
                    && reason.starts_with(crate::judge::select::POSITION_BIAS)
                {
                    stats.position_bias += 1;
                }
                for (member, result) in group.iter_mut().enumerate() {
                    if result.assertions.len() <= index {
                        continue;
                    }
                    result.assertions[index] = match &outcome {
                        Err(reason) => assertion.unmeasured(reason.clone()),
                        Ok(pick) => {
                            let judge = if member == 0 {
                                pick.judge.clone()
                            } else {
                                // The comparison's cost is counted once, on the first output.
                                crate::judge::JudgeInfo {
                                    calls: 0,
                                    cost: 0.0,
                                    usage: Usage::default(),
                                    ..pick.judge.clone()
                                }
                            };
                            result.judge_cost += judge.cost;
                            stats.cost += judge.cost;
                            let chosen = pick.winner == member;
                            let reason = if chosen {
                                format!(
                                    "picked as the best of {} in both orders: {}",
                                    outputs.len(),
                                    pick.reason
                                )
                            } else {
                                format!(
                                    "not picked: the judge chose `{}` in both orders: {}",
                                    outputs[pick.winner].0, pick.reason
                                )
                            };
                            assertion.decided(
                                chosen,
                                f64::from(u8::from(chosen)),
                                reason,
                                Some(judge),
                            )
                        }
                    };
                }
            }
            for result in &mut group {
                if result.assertions.is_empty() {
                    continue;
                }
                let (score, pass) = assertion::verdict(&result.assertions, test.threshold);
                result.score = score;
                result.pass = pass;
                result.error = pass.is_none().then(|| {
                    format!(
                        "judge: {}",
                        assertion::unmeasured_reasons(&result.assertions)
                    )
                });
                updated.push(result.record()?);
            }
        }
        let store = self.store.clone();
        let run_id = self.run_id.to_owned();
        tokio::task::spawn_blocking(move || store.append_results(&run_id, &updated))
            .await
            .map_err(|e| RunError::Internal(e.to_string()))??;
        Ok(stats)
    }
}

/// The request a case sends to its model: the prompt rendered with the test's vars, the
/// prompt's parameters overridden by the provider's.
pub(crate) fn case_request(suite: &Suite, key: CaseKey) -> Result<ChatRequest, String> {
    let prompt = &suite.prompts[key.prompt_idx as usize];
    let provider = &suite.providers[key.provider_idx as usize];
    let test = &suite.tests[key.test_idx as usize];
    Ok(ChatRequest {
        messages: render_messages(prompt, &test.vars)?,
        params: prompt.template.file().params.merged_with(&provider.params),
        ..ChatRequest::default()
    })
}

async fn write_results(
    store: Arc<dyn Store>,
    run_id: String,
    mut receiver: mpsc::Receiver<CaseResult>,
    observer: Arc<dyn Observer>,
) -> Result<(), StoreError> {
    let mut batch: Vec<CaseRecord> = Vec::with_capacity(BATCH);
    let mut last_flush = Instant::now();
    loop {
        let next = tokio::time::timeout(FLUSH_EVERY, receiver.recv()).await;
        let closed = match next {
            Ok(Some(result)) => {
                observer.finished(&result);
                batch.push(result.record()?);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        };
        if !batch.is_empty()
            && (closed || batch.len() >= BATCH || last_flush.elapsed() >= FLUSH_EVERY)
        {
            let records = std::mem::take(&mut batch);
            let store = store.clone();
            let run_id = run_id.clone();
            tokio::task::spawn_blocking(move || store.append_results(&run_id, &records))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))??;
            last_flush = Instant::now();
        }
        if closed {
            return Ok(());
        }
    }
}
