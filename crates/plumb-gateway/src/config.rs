//! The `gateway:` section of `plumb.yaml`: model aliases clients send as `model`, each an
//! ordered list of provider targets tried in turn.
//!
//! ```yaml
//! gateway:
//!   models:
//!     fast:
//!       targets:
//!         - provider: openai:gpt-4o-mini
//!           config: {api_key_env: OPENAI_API_KEY, timeout_ms: 20000}
//!         - provider: local:gemma3-270m     # fallback when the first fails retryably
//!       breaker: {failures: 5, cooldown_ms: 30000}   # the defaults
//!   embeddings:
//!     minilm: {provider: local:all-minilm-l6-v2}
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use plumb_core::{ChatModel, Embedder, SourceError};

use crate::breaker::{Breaker, BreakerPolicy};
use crate::cache::{CachePolicy, SemanticPolicy};
use crate::limits::{Limits, Scope};
use crate::rules::{Condition, Rule, RuleRouter};
use crate::trace::{Capture, OtlpOptions, SECRET_HEADERS, TraceOptions};
use plumb_provider::{ProviderContext, ProviderOptions};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

/// `plumb.yaml` as the gateway reads it: its own section, the others skipped (each crate
/// checks its own section strictly).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "the registry's section, checked by plumb-registry"
    )]
    promotion: Option<IgnoredAny>,
    #[serde(default)]
    gateway: Option<RawGateway>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    #[serde(default)]
    models: IndexMap<String, RawModel>,
    #[serde(default)]
    embeddings: IndexMap<String, RawTarget>,
    #[serde(default)]
    traces: Option<RawTraces>,
    #[serde(default)]
    cache: Option<RawCacheLimits>,
    #[serde(default)]
    limits: Option<RawLimitsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimitsSection {
    #[serde(default)]
    redis: Option<String>,
    #[serde(default)]
    keys: IndexMap<String, RawLimits>,
    #[serde(default)]
    models: IndexMap<String, RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    requests_per_min: Option<u64>,
    #[serde(default)]
    tokens_per_min: Option<u64>,
    #[serde(default)]
    usd_per_day: Option<f64>,
    #[serde(default)]
    usd_per_month: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraces {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    capture: Option<String>,
    #[serde(default)]
    redact: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    queue: Option<usize>,
    #[serde(default)]
    batch: Option<usize>,
    #[serde(default)]
    flush_ms: Option<u64>,
    #[serde(default)]
    otlp: Option<RawOtlp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: String,
    #[serde(default)]
    headers: IndexMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    breaker: Option<RawBreaker>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    cache: Option<RawCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default)]
    ttl_s: Option<u64>,
    #[serde(default)]
    semantic: Option<RawSemantic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSemantic {
    #[serde(default)]
    threshold: Option<f32>,
    #[serde(default)]
    embedder: Option<String>,
    #[serde(default)]
    config: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheLimits {
    #[serde(default)]
    max_entries: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    when: Option<RawCondition>,
    #[serde(rename = "use")]
    target: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    #[serde(default)]
    min_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    matches: Option<String>,
    #[serde(default)]
    tools: Option<bool>,
    #[serde(default)]
    min_messages: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    base_ms: Option<u64>,
    #[serde(default)]
    max_wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default)]
    failures: Option<u32>,
    #[serde(default)]
    cooldown_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    provider: String,
    #[serde(default)]
    config: Map<String, Value>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    ttft_ms: Option<u64>,
}

/// One provider a model alias can send a request to, with its circuit breaker.
#[derive(Clone)]
pub struct Target {
    pub id: String,
    pub model: Arc<dyn ChatModel>,
    pub breaker: Arc<Breaker>,
    /// Share of first tries when the route balances by weight (0: fallback only).
    pub weight: u32,
    /// Longest a whole answer may take, streamed or not.
    pub timeout: Option<Duration>,
    /// Longest a streamed answer may take to produce its first token.
    pub ttft: Option<Duration>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("id", &self.id).finish()
    }
}

/// A model alias: its targets, in fallback order.
#[derive(Clone, Debug)]
pub struct Route {
    pub alias: String,
    pub targets: Vec<Target>,
    /// Whether any target has a `weight`: then each request draws its order by weight.
    pub weighted: bool,
    pub retry: RetryPolicy,
    /// None: answers are not cached.
    pub cache: Option<CachePolicy>,
}

/// Retries of the same target before falling back to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra tries per target after a retryable failure.
    pub attempts: u32,
    /// First backoff; doubles each retry, with full jitter.
    pub base: Duration,
    /// A longer wait (backoff or the upstream's Retry-After) moves on to the next target.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 0,
            base: Duration::from_millis(100),
            max_wait: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before retry `n` (0-based), or `None` to move on: the upstream's
    /// Retry-After when it gave one, else jittered exponential backoff.
    pub fn wait(&self, n: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if n >= self.attempts {
            return None;
        }
        let wait = match retry_after {
            Some(wait) => wait,
            None => {
                let ceiling = self.base.saturating_mul(1 << n.min(16));
                ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
            }
        };
        (wait <= self.max_wait).then_some(wait)
    }
}

impl Route {
    /// The order to try targets in for one request: as listed, or, on a weighted route, drawn
    /// by weight (targets of weight 0 last, as listed).
    pub fn order(&self) -> Vec<&Target> {
        if !self.weighted {
            return self.targets.iter().collect();
        }
        let mut pool: Vec<&Target> = self.targets.iter().filter(|t| t.weight > 0).collect();
        let mut order = Vec::with_capacity(self.targets.len());
        while !pool.is_empty() {
            let total: u64 = pool.iter().map(|t| u64::from(t.weight)).sum();
            let mut pick = fastrand::u64(..total.max(1));
            let index = pool
                .iter()
                .position(|t| {
                    let weight = u64::from(t.weight);
                    if pick < weight {
                        true
                    } else {
                        pick -= weight;
                        false
                    }
                })
                .unwrap_or(0);
            order.push(pool.remove(index));
        }
        order.extend(self.targets.iter().filter(|t| t.weight == 0));
        order
    }
}

/// An embedding model alias (`POST /v1/embeddings`).
#[derive(Clone)]
pub struct EmbeddingRoute {
    pub alias: String,
    pub id: String,
    pub embedder: Arc<dyn Embedder>,
}

impl std::fmt::Debug for EmbeddingRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingRoute")
            .field("alias", &self.alias)
            .field("id", &self.id)
            .finish()
    }
}

#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    pub routes: IndexMap<String, Route>,
    pub embeddings: IndexMap<String, EmbeddingRoute>,
    /// Aliases that pick another alias by rules (complexity routing).
    pub routers: IndexMap<String, RuleRouter>,
    pub traces: TraceOptions,
    /// Most cached answers kept (exact and semantic each).
    pub cache_entries: usize,
    pub limits: LimitsConfig,
}

/// `gateway.limits`: per key id (`"*"`: every key without its own entry) and per model alias.
#[derive(Clone, Debug, Default)]
pub struct LimitsConfig {
    /// Share counters through this Redis (`redis://host:port/db`); none: in-process.
    pub redis: Option<String>,
    pub keys: IndexMap<String, Limits>,
    pub models: IndexMap<String, Limits>,
}

impl LimitsConfig {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.models.is_empty()
    }

    /// The scopes a request by `key_id` for `models` (requested name, then the alias it went
    /// to) is limited by.
    pub fn scopes(&self, key_id: Option<&str>, models: &[&str]) -> Vec<Scope> {
        let mut scopes = Vec::new();
        let key = key_id.unwrap_or("dev");
        if let Some(limits) = self.keys.get(key).or_else(|| self.keys.get("*")) {
            scopes.push(Scope {
                name: format!("key:{key}"),
                limits: limits.clone(),
            });
        }
        for model in models {
            let name = format!("model:{model}");
            if let Some(limits) = self.models.get(*model)
                && !scopes.iter().any(|s| s.name == name)
            {
                scopes.push(Scope {
                    name,
                    limits: limits.clone(),
                });
            }
        }
        scopes
    }
}

impl GatewayConfig {
    /// Reads the `gateway:` section of `path` (a project without the file or the section has
    /// no routes) and builds every target, so a typo fails at start, not on the first request.
    pub fn load(path: &Path, ctx: &ProviderContext) -> Result<GatewayConfig, SourceError> {
        if !path.is_file() {
            return Ok(GatewayConfig::default());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|error| SourceError::in_file(path, format!("cannot read: {error}")))?;
        GatewayConfig::parse(&text, path, ctx)
    }

    pub fn parse(
        text: &str,
        path: &Path,
        ctx: &ProviderContext,
    ) -> Result<GatewayConfig, SourceError> {
        if text.trim().is_empty() {
            return Ok(GatewayConfig::default());
        }
        let raw: RawProject = plumb_prompt::yaml::from_str(text, path)?;
        let gateway = raw.gateway.unwrap_or_default();
        let mut embeddings = IndexMap::new();
        for (alias, target) in gateway.embeddings {
            let at = |message: String| {
                SourceError::in_file(path, format!("gateway.embeddings.{alias}: {message}"))
            };
            let options: ProviderOptions = serde_json::from_value(Value::Object(target.config))
                .map_err(|error| at(format!("config: {error}")))?;
            let embedder = plumb_provider::build_embedder(&target.provider, &options, ctx)
                .map_err(|error| {
                    let mut located = at(error.message.clone());
                    located.hint = error.hint.clone();
                    located
                })?;
            embeddings.insert(
                alias.clone(),
                EmbeddingRoute {
                    alias,
                    id: target.provider,
                    embedder,
                },
            );
        }
        let mut routes = IndexMap::new();
        let mut rule_sets = Vec::new();
        for (alias, model) in gateway.models {
            let at = |message: String| {
                SourceError::in_file(path, format!("gateway.models.{alias}: {message}"))
            };
            if alias.is_empty() || alias.starts_with("prompt:") {
                return Err(at("an alias cannot be empty or start with `prompt:`".into()));
            }
            if !model.rules.is_empty() {
                if !model.targets.is_empty()
                    || model.retry.is_some()
                    || model.breaker.is_some()
                    || model.cache.is_some()
                {
                    return Err(at(
                        "give either `rules` (route to other aliases) or `targets`, not both"
                            .into(),
                    ));
                }
                rule_sets.push((alias.clone(), model.rules));
                continue;
            }
            if model.targets.is_empty() {
                return Err(at("`targets` is empty".into()).with_hint(
                    "list at least one provider, e.g. `targets: [{provider: openai:gpt-4o-mini}]`",
                ));
            }
            let defaults = BreakerPolicy::default();
            let policy = match model.breaker {
                Some(raw) => BreakerPolicy {
                    failures: raw.failures.unwrap_or(defaults.failures),
                    cooldown: raw
                        .cooldown_ms
                        .map(std::time::Duration::from_millis)
                        .unwrap_or(defaults.cooldown),
                },
                None => defaults,
            };
            if policy.failures == 0 {
                return Err(at("breaker.failures must be at least 1".into()));
            }
            let retry = match model.retry {
                Some(raw) => {
                    let defaults = RetryPolicy::default();
                    RetryPolicy {
                        attempts: raw.attempts.unwrap_or(defaults.attempts),
                        base: raw
                            .base_ms
                            .map(Duration::from_millis)
                            .unwrap_or(defaults.base),
                        max_wait: raw
                            .max_wait_ms
                            .map(Duration::from_millis)
                            .unwrap_or(defaults.max_wait),
                    }
                }
                None => RetryPolicy::default(),
            };
            let cache = match model.cache {
                None => None,
                Some(raw) => {
                    let semantic = match raw.semantic {
                        None => None,
                        Some(semantic) => {
                            let threshold = semantic.threshold.unwrap_or(0.95);
                            if !(threshold > 0.0 && threshold <= 1.0) {
                                return Err(at(format!(
                                    "cache.semantic.threshold is {threshold}; it is a cosine similarity in (0, 1]"
                                )));
                            }
                            let id = semantic
                                .embedder
                                .unwrap_or_else(|| plumb_provider::DEFAULT_EMBEDDER.to_owned());
                            let options: ProviderOptions = serde_json::from_value(Value::Object(
                                semantic.config,
                            ))
                            .map_err(|error| at(format!("cache.semantic.config: {error}")))?;
                            let embedder = plumb_provider::build_embedder(&id, &options, ctx)
                                .map_err(|error| {
                                    let mut located =
                                        at(format!("cache.semantic: {}", error.message));
                                    located.hint = error.hint.clone();
                                    located
                                })?;
                            Some(SemanticPolicy {
                                threshold,
                                embedder,
                            })
                        }
                    };
                    Some(CachePolicy {
                        ttl: Duration::from_secs(raw.ttl_s.unwrap_or(3600).max(1)),
                        semantic,
                    })
                }
            };
            let weighted = model.targets.iter().any(|t| t.weight.is_some());
            if weighted && model.targets.iter().all(|t| t.weight == Some(0)) {
                return Err(at(
                    "every target has weight 0; give at least one a weight".into()
                ));
            }
            let mut targets = Vec::with_capacity(model.targets.len());
            for (index, target) in model.targets.into_iter().enumerate() {
                let mut options: ProviderOptions =
                    serde_json::from_value(Value::Object(target.config))
                        .map_err(|error| at(format!("targets[{index}].config: {error}")))?;
                // The route's retry policy decides retries; the provider's own would multiply
                // them (and hide failures from the breaker) unless asked for explicitly.
                options.max_retries = Some(options.max_retries.unwrap_or(0));
                let millis = |value: Option<u64>, name: &str| match value {
                    Some(0) => Err(at(format!("targets[{index}].{name} must be positive"))),
                    other => Ok(other.map(Duration::from_millis)),
                };
                let timeout = millis(target.timeout_ms, "timeout_ms")?;
                let ttft = millis(target.ttft_ms, "ttft_ms")?;
                let built =
                    plumb_provider::build(&target.provider, &options, ctx).map_err(|error| {
                        let mut located = at(format!("targets[{index}]: {}", error.message));
                        located.hint = error.hint.clone();
                        located
                    })?;
                targets.push(Target {
                    id: target.provider,
                    model: built,
                    breaker: Arc::new(Breaker::new(policy)),
                    // Unweighted targets of a weighted route share evenly.
                    weight: target.weight.unwrap_or(1),
                    timeout,
                    ttft,
                });
            }
            routes.insert(
                alias.clone(),
                Route {
                    alias,
                    targets,
                    weighted,
                    retry,
                    cache,
                },
            );
        }
        let mut routers = IndexMap::new();
        for (alias, raw_rules) in rule_sets {
            let at = |message: String| {
                SourceError::in_file(path, format!("gateway.models.{alias}.{message}"))
            };
            let mut rules = Vec::with_capacity(raw_rules.len());
            for (index, raw) in raw_rules.into_iter().enumerate() {
                if !routes.contains_key(&raw.target) {
                    let known: Vec<&str> = routes.keys().map(String::as_str).collect();
                    let mut error = at(format!(
                        "rules[{index}].use: `{}` is not an alias with targets",
                        raw.target
                    ));
                    if let Some(best) = plumb_core::did_you_mean(&raw.target, known.iter().copied())
                    {
                        error = error.with_hint(format!("did you mean `{best}`?"));
                    } else if !known.is_empty() {
                        error = error.with_hint(format!("aliases: {}", known.join(", ")));
                    }
                    return Err(error);
                }
                let condition = raw.when.unwrap_or_default();
                let matches = match condition.matches {
                    Some(pattern) => Some(regex::Regex::new(&pattern).map_err(|error| {
                        at(format!(
                            "rules[{index}].when.matches: invalid regex: {error}"
                        ))
                    })?),
                    None => None,
                };
                rules.push(Rule {
                    name: raw.name,
                    when: Condition {
                        min_tokens: condition.min_tokens,
                        max_tokens: condition.max_tokens,
                        matches,
                        tools: condition.tools,
                        min_messages: condition.min_messages,
                    },
                    target: raw.target,
                });
            }
            routers.insert(alias.clone(), RuleRouter { alias, rules });
        }
        let traces = match gateway.traces {
            Some(raw) => trace_options(raw, path)?,
            None => TraceOptions::default(),
        };
        let cache_entries = gateway
            .cache
            .and_then(|c| c.max_entries)
            .unwrap_or(10_000)
            .max(1);
        let limits = match gateway.limits {
            Some(raw) => {
                let aliases: Vec<&str> = routes
                    .keys()
                    .chain(routers.keys())
                    .chain(embeddings.keys())
                    .map(String::as_str)
                    .collect();
                limits_config(raw, path, &aliases)?
            }
            None => LimitsConfig::default(),
        };
        Ok(GatewayConfig {
            routes,
            embeddings,
            routers,
            traces,
            cache_entries,
            limits,
        })
    }
}

fn trace_options(raw: RawTraces, path: &Path) -> Result<TraceOptions, SourceError> {
    let at = |message: String| SourceError::in_file(path, format!("gateway.traces.{message}"));
    let capture = match raw.capture.as_deref() {
        None | Some("full") => Capture::Full,
        Some("metadata") => Capture::Metadata,
        Some(other) => {
            return Err(at(format!(
                "capture: `{other}` is not a capture mode; expected `full` or `metadata`"
            )));
        }
    };
    let mut options = TraceOptions {
        enabled: raw.enabled.unwrap_or(true),
        capture,
        ..TraceOptions::default()
    };
    for (index, pattern) in raw.redact.iter().enumerate() {
        let regex = regex::Regex::new(pattern)
            .map_err(|error| at(format!("redact[{index}]: invalid regex: {error}")))?;
        options.redact.push(regex);
    }
    for header in raw.headers {
        let name = header.to_ascii_lowercase();
        if SECRET_HEADERS.contains(&name.as_str()) {
            return Err(at(format!(
                "headers: `{header}` carries credentials and is never kept in traces"
            )));
        }
        options.headers.push(name);
    }
    if let Some(queue) = raw.queue {
        if queue == 0 {
            return Err(at("queue must be at least 1".into()));
        }
        options.queue = queue;
    }
    if let Some(batch) = raw.batch {
        if batch == 0 {
            return Err(at("batch must be at least 1".into()));
        }
        options.batch = batch;
    }
    if let Some(flush) = raw.flush_ms {
        options.flush = std::time::Duration::from_millis(flush.max(1));
    }
    if let Some(otlp) = raw.otlp {
        if !(otlp.endpoint.starts_with("http://") || otlp.endpoint.starts_with("https://")) {
            return Err(at(format!(
                "otlp.endpoint: `{}` is not an http(s) URL",
                otlp.endpoint
            ))
            .with_hint("e.g. `otlp: {endpoint: http://127.0.0.1:4318}` (OTLP/HTTP, JSON)"));
        }
        options.otlp = Some(OtlpOptions {
            endpoint: otlp.endpoint,
            headers: otlp.headers.into_iter().collect(),
        });
    }
    Ok(options)
}

fn limits_config(
    raw: RawLimitsSection,
    path: &Path,
    aliases: &[&str],
) -> Result<LimitsConfig, SourceError> {
    let at = |message: String| SourceError::in_file(path, format!("gateway.limits.{message}"));
    let convert = |place: String, raw: RawLimits| -> Result<Limits, SourceError> {
        for (name, value) in [
            ("usd_per_day", raw.usd_per_day),
            ("usd_per_month", raw.usd_per_month),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(at(format!("{place}.{name} must be a non-negative number")));
            }
        }
        let limits = Limits {
            requests_per_min: raw.requests_per_min,
            tokens_per_min: raw.tokens_per_min,
            usd_per_day: raw.usd_per_day,
            usd_per_month: raw.usd_per_month,
        };
        if limits.is_empty() {
            return Err(at(format!("{place} sets no limit"))
                .with_hint("set requests_per_min, tokens_per_min, usd_per_day or usd_per_month"));
        }
        Ok(limits)
    };
    if let Some(url) = &raw.redis
        && !(url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        return Err(at(format!("redis: `{url}` is not a redis:// URL"))
            .with_hint("e.g. `redis: redis://127.0.0.1:6379/0`"));
    }
    let mut keys = IndexMap::new();
    for (id, limits) in raw.keys {
        let converted = convert(format!("keys.{id}"), limits)?;
        keys.insert(id, converted);
    }
    let mut models = IndexMap::new();
    for (alias, limits) in raw.models {
        if !aliases.contains(&alias.as_str()) {
            let mut error = at(format!("models.{alias}: no such model alias"));
            if let Some(best) = plumb_core::did_you_mean(&alias, aliases.iter().copied()) {
                error = error.with_hint(format!("did you mean `{best}`?"));
            }
            return Err(error);
        }
        let converted = convert(format!("models.{alias}"), limits)?;
        models.insert(alias, converted);
    }
    Ok(LimitsConfig {
        redis: raw.redis,
        keys,
        models,
    })
}
