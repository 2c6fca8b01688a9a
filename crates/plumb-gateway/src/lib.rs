//! plumb's gateway: an OpenAI-compatible endpoint (`/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/models`) that
//! routes model aliases from `plumb.yaml` to provider targets, falling back to the next target
//! when one fails in a way a retry elsewhere can fix (timeouts, 429, 5xx, connection errors).
//!
//! This crate knows the OpenAI wire format and routing; authentication is the server's
//! (`plumb-server` mounts `router` behind its key check), providers are `plumb-provider`'s.

pub mod breaker;
pub mod cache;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod prompts;
mod route;
pub mod rules;
mod stream;
pub mod trace;
pub mod wire;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plumb_core::{ChatRequest, ModelError, Usage};
use plumb_store::{TraceRecord, TraceStore};
use serde_json::{Value, json};

pub use config::{EmbeddingRoute, GatewayConfig, Route, Target};
pub use metrics::Metrics;
use route::upstream_error;
pub use trace::{TraceContext, TraceOptions, Tracer};
use wire::OpenAiError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default)]
pub struct Gateway {
    pub config: GatewayConfig,
    pub metrics: Arc<Metrics>,
    /// Where traces go; none: requests are counted in metrics but not traced.
    pub tracing: Option<Tracing>,
    /// Registered prompts for `prompt:NAME@LABEL` models; none: such models are unknown.
    pub prompts: Option<Arc<dyn prompts::PromptSource>>,
    /// Cached answers of the routes that turn caching on.
    pub cache: Arc<cache::ResponseCache>,
    /// Where rate limits and budgets are counted; none when none are configured.
    pub limiter: Option<Arc<dyn limits::LimitStore>>,
    limit_error_log: trace::LogThrottle,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .field("tracing", &self.tracing)
            .field("prompts", &self.prompts.is_some())
            .field("limits", &self.limiter.is_some())
            .finish_non_exhaustive()
    }
}

/// The trace writer and the store it writes to (also read for feedback).
#[derive(Clone)]
pub struct Tracing {
    pub tracer: Arc<Tracer>,
    pub store: Arc<dyn TraceStore>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("tracer", &self.tracer)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Gateway {
        let limiter: Option<Arc<dyn limits::LimitStore>> = if config.limits.is_empty() {
            None
        } else {
            // Redis, when configured, is connected by `connect_limits`.
            Some(Arc::new(limits::MemoryLimits::default()))
        };
        Gateway {
            limiter,
            limit_error_log: trace::LogThrottle::default(),
            cache: Arc::new(cache::ResponseCache::new(config.cache_entries)),
            config,
            metrics: Arc::new(Metrics::default()),
            tracing: None,
            prompts: None,
        }
    }

    /// Connects to the Redis that `gateway.limits.redis` names, so limits are shared by every
    /// replica. Fails when it does not answer.
    pub async fn connect_limits(mut self) -> Result<Gateway, String> {
        if let Some(url) = &self.config.limits.redis
            && !self.config.limits.is_empty()
        {
            let store = limits::RedisLimits::connect(url).await?;
            self.limiter = Some(Arc::new(store));
        }
        Ok(self)
    }

    /// Counts a limit-store failure; logs at most one line every ten seconds.
    fn limit_store_failed(&self, error: &str) {
        if self.limit_error_log.allow(10_000) {
            eprintln!("plumb serve: the limits store failed ({error}); letting requests through");
        }
    }

    /// Serves `prompt:NAME@LABEL` models from `source`.
    pub fn with_prompts(mut self, source: Arc<dyn prompts::PromptSource>) -> Gateway {
        self.prompts = Some(source);
        self
    }

    /// Starts the trace writer on the current runtime; the handle ends once the gateway is
    /// dropped and the queue is written.
    pub fn with_traces(
        mut self,
        store: Arc<dyn TraceStore>,
    ) -> (Gateway, tokio::task::JoinHandle<()>) {
        if !self.config.traces.enabled {
            return (self, tokio::spawn(async {}));
        }
        let (tracer, writer) = Tracer::spawn(
            store.clone(),
            self.config.traces.clone(),
            self.metrics.clone(),
        );
        self.tracing = Some(Tracing { tracer, store });
        (self, writer)
    }
}

/// Who is calling, put on the request by the server's key check.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub key_id: Option<String>,
}

/// `/v1/...` routes and `/metrics`. Mount behind authentication.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/feedback", post(feedback))
        .route("/metrics", get(metrics_text))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(gateway)
}

/// The OpenAI-shaped 404 for unknown `/v1/...` paths.
pub fn unknown_endpoint() -> OpenAiError {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        "unknown endpoint; this gateway serves POST /v1/chat/completions, POST /v1/embeddings, \
         GET /v1/models and POST /v1/feedback",
    )
}

/// `PREFIX-` and a UUIDv7 (time-ordered, so the store's index on it stays append-mostly).
fn request_id(prefix: &str) -> String {
    format!("{prefix}-{}", trace::fast_uuid_v7().simple())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(gateway): State<Arc<Gateway>>) -> Json<Value> {
    let created = now_secs();
    let data: Vec<Value> = gateway
        .config
        .routes
        .keys()
        .chain(gateway.config.routers.keys())
        .chain(gateway.config.embeddings.keys())
        .map(|alias| json!({"id": alias, "object": "model", "created": created, "owned_by": "plumb"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn metrics_text(State(gateway): State<Arc<Gateway>>) -> Response {
    for route in gateway.config.routes.values() {
        for target in &route.targets {
            gateway
                .metrics
                .set_breaker(&target.id, target.breaker.is_open());
        }
    }
    if let Some(tracing) = &gateway.tracing {
        gateway
            .metrics
            .queue_depth
            .set(tracing.tracer.queue_depth() as i64);
    }
    let mut response = Response::new(Body::from(gateway.metrics.encode()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// One request's trace, filled in as the request goes.
struct Call {
    context: TraceContext,
    started: Instant,
    started_at: i64,
    endpoint: &'static str,
    request_id: String,
    key_id: Option<String>,
    model: String,
    prompt: Option<String>,
    prompt_version: Option<i64>,
    prompt_hash: Option<String>,
    /// The routing rule that chose the alias, if one did.
    rule: Option<String>,
    /// The client asked to skip the cache.
    bypass_cache: bool,
    /// How close a semantic cache hit was.
    similarity: Option<f32>,
    /// The limits this request counts against (charged its tokens and cost at the end).
    limit_scopes: Vec<limits::Scope>,
    target: Option<String>,
    attempts: Vec<Value>,
    status: u16,
    error: Option<String>,
    error_message: Option<String>,
    cache: &'static str,
    stream: bool,
    usage: Usage,
    cost_usd: Option<f64>,
    ttft_ms: Option<f64>,
    params: Value,
    input: Value,
    output: Value,
    finish_reason: Option<&'static str>,
    response_model: Option<String>,
    headers: Vec<(String, String)>,
}

impl Call {
    fn start(
        gateway: &Gateway,
        endpoint: &'static str,
        id_prefix: &str,
        headers: &HeaderMap,
        caller: Option<Extension<Caller>>,
    ) -> Call {
        let context =
            TraceContext::from_header(headers.get("traceparent").and_then(|v| v.to_str().ok()));
        let kept = gateway
            .config
            .traces
            .headers
            .iter()
            .filter_map(|name| {
                let value = headers.get(name.as_str())?.to_str().ok()?;
                Some((name.clone(), gateway.config.traces.redact_text(value)))
            })
            .collect();
        Call {
            request_id: request_id(id_prefix),
            context,
            started: Instant::now(),
            started_at: plumb_core::now_ms(),
            endpoint,
            key_id: caller.and_then(|Extension(c)| c.key_id),
            model: String::new(),
            prompt: None,
            prompt_version: None,
            prompt_hash: None,
            rule: None,
            bypass_cache: headers
                .get("x-plumb-cache")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("bypass"))
                || headers
                    .get("cache-control")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache")),
            similarity: None,
            limit_scopes: Vec::new(),
            target: None,
            attempts: Vec::new(),
            status: 200,
            error: None,
            error_message: None,
            cache: "off",
            stream: false,
            usage: Usage::default(),
            cost_usd: None,
            ttft_ms: None,
            params: Value::Null,
            input: Value::Null,
            output: Value::Null,
            finish_reason: None,
            response_model: None,
            headers: kept,
        }
    }

    fn fail(&mut self, error: &OpenAiError) {
        self.status = error.status.as_u16();
        self.error = Some(error.code.unwrap_or(error.kind).to_owned());
        self.error_message = Some(error.message.clone());
    }

    /// Adds the trace headers to `response`, then records the trace and the metrics.
    fn finish(self, gateway: &Gateway, mut response: Response) -> Response {
        self.stamp(&mut response);
        self.record(gateway);
        response
    }

    /// `traceparent` (this span) and `x-plumb-trace-id` on the response.
    fn stamp(&self, response: &mut Response) {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&self.context.header()) {
            headers.insert("traceparent", value);
        }
        if let Ok(value) = HeaderValue::from_str(&self.context.trace_id) {
            headers.insert("x-plumb-trace-id", value);
        }
    }

    fn record(mut self, gateway: &Gateway) {
        let latency = self.started.elapsed().as_secs_f64();
        gateway.metrics.observe(&metrics::Observation {
            model: &self.model,
            status: self.status,
            error: self.error.as_deref(),
            seconds: latency,
            ttft_seconds: self.ttft_ms.map(|ms| ms / 1000.0),
            prompt_tokens: self.usage.prompt_tokens,
            completion_tokens: self.usage.completion_tokens,
            cost_usd: self.cost_usd,
            cache: self.cache,
        });
        if let Some(limiter) = &gateway.limiter
            && !self.limit_scopes.is_empty()
            && (self.usage.total() > 0 || self.cost_usd.is_some_and(|c| c > 0.0))
        {
            let limiter = limiter.clone();
            let scopes = std::mem::take(&mut self.limit_scopes);
            let (tokens, usd) = (self.usage.total(), self.cost_usd.unwrap_or(0.0));
            let now = plumb_core::now_ms();
            tokio::spawn(async move {
                if let Err(error) = limiter.charge(&scopes, tokens, usd, now).await {
                    eprintln!("plumb serve: could not charge limits: {error}");
                }
            });
        }
        let Some(tracing) = &gateway.tracing else {
            return;
        };
        // The record (detail JSON, redaction) is built by the writer, off the request path.
        tracing
            .tracer
            .record(Box::new(move |options| self.into_trace(options, latency)));
    }

    /// The stored record of this request, its strings redacted.
    fn into_trace(self, options: &TraceOptions, latency: f64) -> TraceRecord {
        let mut detail = json!({
            "attempts": self.attempts,
            "params": self.params,
        });
        if let Some(object) = detail.as_object_mut() {
            let mut put = |key: &str, value: Value| {
                if !value.is_null() {
                    object.insert(key.to_owned(), value);
                }
            };
            if options.capture == trace::Capture::Full {
                put("input", self.input);
                put("output", self.output);
            }
            put("error_message", json!(self.error_message));
            put("finish_reason", json!(self.finish_reason));
            put("response_model", json!(self.response_model));
            put("prompt_hash", json!(self.prompt_hash));
            put("rule", json!(self.rule));
            put("cache_similarity", json!(self.similarity));
            if !self.headers.is_empty() {
                put(
                    "headers",
                    Value::Object(
                        self.headers
                            .into_iter()
                            .map(|(k, v)| (k, Value::String(v)))
                            .collect(),
                    ),
                );
            }
        }
        options.redact_value(&mut detail);
        TraceRecord {
            seq: 0,
            trace_id: self.context.trace_id,
            span_id: self.context.span_id,
            parent_span_id: self.context.parent_span_id,
            request_id: self.request_id,
            started_at: self.started_at,
            endpoint: self.endpoint.to_owned(),
            key_id: self.key_id,
            model: self.model,
            prompt: self.prompt,
            prompt_version: self.prompt_version,
            target: self.target,
            status: self.status,
            error: self.error,
            cache: self.cache.to_owned(),
            stream: self.stream,
            prompt_tokens: self.usage.prompt_tokens,
            completion_tokens: self.usage.completion_tokens,
            cost_usd: self.cost_usd,
            latency_ms: latency * 1000.0,
            ttft_ms: self.ttft_ms,
            detail,
        }
    }
}

async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut call = Call::start(&gateway, "embeddings", "emb", &headers, caller);
    let answer = embed(&gateway, body, &mut call).await.map(Answer::Ready);
    respond(gateway, call, answer)
}

async fn embed(
    gateway: &Gateway,
    body: Result<Bytes, BytesRejection>,
    call: &mut Call,
) -> Result<Response, OpenAiError> {
    let body = body.map_err(body_error)?;
    let parsed = wire::parse_embeddings(&body)?;
    call.model = parsed.model.clone();
    let route = gateway.config.embeddings.get(&parsed.model).ok_or_else(|| {
        let known: Vec<&str> = gateway.config.embeddings.keys().map(String::as_str).collect();
        let mut error = OpenAiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            if known.is_empty() {
                format!(
                    "embedding model `{}` is not served here: plumb.yaml defines no `gateway.embeddings`",
                    parsed.model
                )
            } else {
                format!(
                    "embedding model `{}` is not served here; embedding models: {}",
                    parsed.model,
                    known.join(", ")
                )
            },
        );
        error.param = Some("model".into());
        error
    })?;
    let alias = parsed.model.clone();
    admit(gateway, call, &alias).await?;
    call.target = Some(route.id.clone());
    call.params = json!({"inputs": parsed.input.len()});
    let began = Instant::now();
    let result = route.embedder.embed(&parsed.input).await;
    call.attempts
        .push(attempt_json(&route.id, began, result.as_ref().err()));
    let vectors = result.map_err(|error| upstream_error(&route.id, &error))?;
    let tokens: u64 = parsed
        .input
        .iter()
        .map(|text| plumb_provider::tokens::rough_count(text))
        .sum();
    call.usage.prompt_tokens = tokens;
    let mut response = Json(wire::embeddings_json(
        &parsed.model,
        &vectors,
        parsed.base64,
        tokens,
    ))
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&route.id) {
        response.headers_mut().insert("x-plumb-target", value);
    }
    Ok(response)
}

fn attempt_json(target: &str, began: Instant, error: Option<&ModelError>) -> Value {
    let ms = began.elapsed().as_secs_f64() * 1000.0;
    match error {
        None => json!({"target": target, "ms": ms, "outcome": "ok"}),
        Some(error) => json!({
            "target": target,
            "ms": ms,
            "outcome": error.kind.as_str(),
            "status": error.status,
            "message": error.message,
        }),
    }
}

fn body_error(rejection: BytesRejection) -> OpenAiError {
    let status = rejection.status();
    let mut error = OpenAiError::invalid(rejection.body_text(), None);
    error.status = status;
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        error.message = format!("the request body exceeds {MAX_BODY_BYTES} bytes");
    }
    error
}

async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut call = Call::start(&gateway, "chat", "chatcmpl", &headers, caller);
    let answer = complete(&gateway, body, &mut call).await;
    respond(gateway, call, answer)
}

/// The response for `answer`, with the trace headers; the trace is recorded now, or, for a
/// stream, once it ends.
fn respond(gateway: Arc<Gateway>, mut call: Call, answer: Result<Answer, OpenAiError>) -> Response {
    match answer {
        Ok(Answer::Ready(response)) => call.finish(&gateway, response),
        Ok(Answer::Streaming(mut response, tail)) => {
            // The status line and headers go out now; the rest of the answer and the trace
            // follow as the upstream produces them.
            call.stamp(&mut response);
            tokio::spawn(async move {
                let body = tail.run(&mut call).await;
                call.record(&gateway);
                drop(body);
            });
            response
        }
        Err(error) => {
            call.fail(&error);
            call.finish(&gateway, error.into_response())
        }
    }
}

/// What a request turned into.
enum Answer {
    /// A whole response.
    Ready(Response),
    /// An SSE response whose body `StreamTail::run` is still writing.
    Streaming(Response, Box<stream::StreamTail>),
}

async fn complete(
    gateway: &Arc<Gateway>,
    body: Result<Bytes, BytesRejection>,
    call: &mut Call,
) -> Result<Answer, OpenAiError> {
    let body = body.map_err(body_error)?;
    let mut parsed = wire::parse_request(&body)?;
    parsed.request.traceparent = Some(call.context.header());
    call.model = parsed.model.clone();
    call.stream = parsed.stream;
    let mut response_model = parsed.model.clone();
    let mut alias = parsed.model.clone();
    if let Some(reference) = parsed.model.strip_prefix("prompt:") {
        let rendered =
            prompts::render(gateway.prompts.as_ref(), reference, &mut parsed.request).await?;
        let prompt = &rendered.prompt;
        call.prompt = Some(prompt.name.clone());
        call.prompt_version = Some(prompt.version);
        call.prompt_hash = Some(prompt.hash.clone());
        response_model = format!("prompt:{}@{}", prompt.name, prompt.version);
        alias = rendered.alias;
    }
    if parsed.request.messages.is_empty() {
        return Err(OpenAiError::invalid(
            "`messages` is empty",
            Some("messages"),
        ));
    }
    if let Some(router) = gateway.config.routers.get(&alias) {
        let Some(rule) = router.pick(&parsed.request) else {
            return Err(OpenAiError::invalid(
                format!(
                    "no rule of `{alias}` matches this request; end its rules with one that has no `when`"
                ),
                Some("model"),
            ));
        };
        call.rule = Some(rule.name.clone());
        alias.clone_from(&rule.target);
    }
    let route = gateway.config.routes.get(&alias).ok_or_else(|| {
        if call.prompt.is_some() {
            let mut error = OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("model_not_found"),
                format!(
                    "prompt `{}` v{} runs on `{alias}`, which this gateway does not serve; add it under gateway.models",
                    call.prompt.as_deref().unwrap_or_default(),
                    call.prompt_version.unwrap_or_default()
                ),
            );
            error.param = Some("model".into());
            return error;
        }
        let known: Vec<&str> = gateway.config.routes.keys().map(String::as_str).collect();
        let mut error = OpenAiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            match plumb_core::did_you_mean(&parsed.model, known.iter().copied()) {
                Some(best) => format!(
                    "model `{}` is not served here; did you mean `{best}`?",
                    parsed.model
                ),
                None if known.is_empty() => format!(
                    "model `{}` is not served here: plumb.yaml defines no `gateway.models`",
                    parsed.model
                ),
                None => format!(
                    "model `{}` is not served here; models: {}",
                    parsed.model,
                    known.join(", ")
                ),
            },
        );
        error.param = Some("model".into());
        error
    })?;
    if gateway.tracing.is_some() {
        call.params = params_json(&parsed.request);
        call.input = serde_json::to_value(&parsed.request.messages).unwrap_or(Value::Null);
    }
    admit(gateway, call, &alias).await?;
    let mut cache_write = None;
    if let Some(policy) = &route.cache {
        if call.bypass_cache {
            call.cache = "bypass";
        } else {
            // Answers of a registered prompt are shared by every alias it runs on.
            let scope = match &call.prompt_hash {
                Some(hash) => format!("prompt:{hash}"),
                None => alias.clone(),
            };
            let keys = cache::keys(&scope, &parsed.request);
            if let Some(hit) = gateway.cache.get_exact(&keys) {
                call.cache = "hit";
                return Ok(cached_answer(gateway, call, &parsed, response_model, &hit));
            }
            let mut vector = None;
            if let Some(semantic) = &policy.semantic {
                match cache::ResponseCache::embed(semantic, &keys).await {
                    Some(Ok(embedded)) => {
                        if let Some((hit, similarity)) =
                            gateway
                                .cache
                                .get_semantic(&keys, &embedded, semantic.threshold)
                        {
                            call.cache = "semantic";
                            call.similarity = Some(similarity);
                            return Ok(cached_answer(gateway, call, &parsed, response_model, &hit));
                        }
                        vector = Some(embedded);
                    }
                    // The cache is an optimization: a failing embedder only costs the hit.
                    Some(Err(error)) => call.attempts.push(json!({
                        "target": semantic.embedder.id(),
                        "outcome": "cache_embedding_failed",
                        "message": error.message,
                    })),
                    None => {}
                }
            }
            call.cache = "miss";
            cache_write = Some(cache::Write {
                cache: gateway.cache.clone(),
                keys,
                vector,
                ttl: policy.ttl,
            });
        }
    }
    let (target, got) = route::call_route(route, &parsed.request, parsed.stream, call)
        .await
        .map_err(route::RouteFailure::into_error)?;
    let created = now_secs();
    let mut response = match got {
        route::Got::Whole(answer) => {
            call.usage = answer.usage;
            call.cost_usd = target.model.pricing().map(|p| p.cost(&answer.usage));
            call.finish_reason = Some(answer.finish_reason.map(|f| f.as_str()).unwrap_or("stop"));
            call.response_model = answer.model.clone();
            if gateway.tracing.is_some() {
                call.output = json!({"content": answer.content, "tool_calls": answer.tool_calls});
            }
            if let Some(write) = cache_write {
                write.store(&answer);
            }
            Json(wire::completion_json(
                &call.request_id,
                created,
                &response_model,
                &answer,
            ))
            .into_response()
        }
        route::Got::Stream { first, rest } => {
            call.ttft_ms = Some(call.started.elapsed().as_secs_f64() * 1000.0);
            let (tail, mut response) = stream_response(stream::StreamSetup {
                id: call.request_id.clone(),
                created,
                model: response_model,
                include_usage: parsed.include_usage,
                first,
                rest,
                deadline: target.timeout.map(|t| call.started + t),
                pricing: target.model.pricing(),
                capture: gateway.tracing.is_some(),
                cached: false,
                cache_write,
            });
            add_route_headers(&mut response, &target.id, call);
            return Ok(Answer::Streaming(response, Box::new(tail)));
        }
    };
    add_route_headers(&mut response, &target.id, call);
    Ok(Answer::Ready(response))
}

/// Checks the request against its key's and its model's limits (the requested name and the
/// alias it went to); on admission the call remembers them, to be charged when it ends.
async fn admit(gateway: &Gateway, call: &mut Call, alias: &str) -> Result<(), OpenAiError> {
    let Some(limiter) = &gateway.limiter else {
        return Ok(());
    };
    let scopes = gateway
        .config
        .limits
        .scopes(call.key_id.as_deref(), &[&call.model, alias]);
    if scopes.is_empty() {
        return Ok(());
    }
    match limiter.admit(&scopes, plumb_core::now_ms()).await {
        Ok(None) => call.limit_scopes = scopes,
        Ok(Some(denied)) => {
            let mut error = OpenAiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                denied.message(&scopes),
            );
            error.retry_after = Some(denied.retry_after.as_millis().div_ceil(1000) as u64);
            return Err(error);
        }
        Err(error) => gateway.limit_store_failed(&error),
    }
    Ok(())
}

/// An SSE response fed by the tail.
fn stream_response(setup: stream::StreamSetup) -> (stream::StreamTail, Response) {
    let (tail, body) = stream::StreamTail::new(setup);
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    (tail, response)
}

/// A cached answer, whole or replayed as a stream.
fn cached_answer(
    gateway: &Gateway,
    call: &mut Call,
    parsed: &wire::CompletionRequest,
    response_model: String,
    hit: &plumb_core::ChatResponse,
) -> Answer {
    call.target = Some("cache".into());
    call.finish_reason = Some(hit.finish_reason.map(|f| f.as_str()).unwrap_or("stop"));
    call.response_model = hit.model.clone();
    if gateway.tracing.is_some() {
        call.output = json!({"content": hit.content, "tool_calls": hit.tool_calls});
    }
    let created = now_secs();
    if parsed.stream {
        call.ttft_ms = Some(call.started.elapsed().as_secs_f64() * 1000.0);
        let (tail, mut response) = stream_response(stream::StreamSetup {
            id: call.request_id.clone(),
            created,
            model: response_model,
            include_usage: parsed.include_usage,
            first: plumb_core::ChatDelta::whole(hit.clone()),
            rest: Box::pin(futures_util::stream::empty()),
            deadline: None,
            pricing: None,
            capture: gateway.tracing.is_some(),
            cached: true,
            cache_write: None,
        });
        add_route_headers(&mut response, "cache", call);
        return Answer::Streaming(response, Box::new(tail));
    }
    let mut response = Json(wire::completion_json(
        &call.request_id,
        created,
        &response_model,
        hit,
    ))
    .into_response();
    add_route_headers(&mut response, "cache", call);
    Answer::Ready(response)
}

/// `x-plumb-target` (who answered: a target id or `cache`), `x-plumb-attempts` (calls made,
/// skipped circuits not counted), `x-plumb-cache`, `x-plumb-rule`, `x-plumb-prompt`.
fn add_route_headers(response: &mut Response, target: &str, call: &Call) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(target) {
        headers.insert("x-plumb-target", value);
    }
    if call.cache != "off" {
        headers.insert("x-plumb-cache", HeaderValue::from_static(call.cache));
    }
    let tried = call
        .attempts
        .iter()
        .filter(|a| a["outcome"] != "skipped" && a["outcome"] != "cache_embedding_failed")
        .count();
    headers.insert("x-plumb-attempts", HeaderValue::from(tried));
    if let Some(rule) = &call.rule
        && let Ok(value) = HeaderValue::from_str(rule)
    {
        headers.insert("x-plumb-rule", value);
    }
    if let (Some(name), Some(version), Some(hash)) =
        (&call.prompt, call.prompt_version, &call.prompt_hash)
    {
        if let Ok(value) = HeaderValue::from_str(&format!("{name}@{version}")) {
            headers.insert("x-plumb-prompt", value);
        }
        if let Ok(value) = HeaderValue::from_str(hash) {
            headers.insert("x-plumb-prompt-hash", value);
        }
    }
}

/// The sampling parameters a trace keeps (not the tools' schemas, not the messages).
fn params_json(request: &ChatRequest) -> Value {
    let p = &request.params;
    let mut params = json!({
        "temperature": p.temperature,
        "top_p": p.top_p,
        "max_tokens": p.max_tokens,
        "seed": p.seed,
    });
    if let Some(object) = params.as_object_mut() {
        object.retain(|_, v| !v.is_null());
        if !p.stop.is_empty() {
            object.insert("stop".into(), json!(p.stop));
        }
        if !p.tools.is_empty() {
            object.insert("tools".into(), json!(p.tools.len()));
        }
        if let Some(format) = &p.response_format {
            object.insert("response_format".into(), json!(format));
        }
    }
    params
}

/// `POST /v1/feedback`: `{"trace_id", "score"?, "label"?, "comment"?}` attaches a judgement to
/// a trace (by trace id or by the response id the client got).
async fn feedback(
    State(gateway): State<Arc<Gateway>>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match attach_feedback(&gateway, caller, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn attach_feedback(
    gateway: &Gateway,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body = body.map_err(body_error)?;
    let parsed = wire::parse_feedback(&body)?;
    let Some(tracing) = &gateway.tracing else {
        return Err(OpenAiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("tracing_off"),
            "this gateway keeps no traces, so feedback has nothing to attach to",
        ));
    };
    let record = plumb_store::Feedback {
        id: 0,
        trace_id: parsed.trace_id,
        at: plumb_core::now_ms(),
        score: parsed.score,
        label: parsed.label,
        comment: parsed
            .comment
            .map(|c| tracing.tracer.options.redact_text(&c)),
        key_id: caller.and_then(|Extension(c)| c.key_id),
    };
    let store = tracing.store.clone();
    let attach = |record: plumb_store::Feedback, store: Arc<dyn TraceStore>| async move {
        tokio::task::spawn_blocking(move || store.add_feedback(&record)).await
    };
    let mut result = attach(record.clone(), store.clone()).await;
    if matches!(result, Ok(Err(plumb_store::StoreError::NotFound(_)))) {
        // The trace may still be queued: write the queue, then look again.
        tracing.tracer.flush().await;
        result = attach(record.clone(), store).await;
    }
    match result {
        Ok(Ok(id)) => Ok((
            StatusCode::CREATED,
            Json(json!({"object": "feedback", "id": id, "trace_id": record.trace_id})),
        )
            .into_response()),
        Ok(Err(plumb_store::StoreError::NotFound(_))) => {
            let mut error = OpenAiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("trace_not_found"),
                format!(
                    "no trace `{}`: use the `x-plumb-trace-id` header or the response `id`",
                    record.trace_id
                ),
            );
            error.param = Some("trace_id".into());
            Err(error)
        }
        Ok(Err(error)) => {
            eprintln!("plumb serve: feedback not stored: {error}");
            Err(internal_error())
        }
        Err(error) => {
            eprintln!("plumb serve: feedback task failed: {error}");
            Err(internal_error())
        }
    }
}

fn internal_error() -> OpenAiError {
    OpenAiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        None,
        "internal error; the server log has the details",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefixed_uuid_v7() {
        let before = plumb_core::now_ms();
        let id = request_id("chatcmpl");
        let uuid = id
            .strip_prefix("chatcmpl-")
            .and_then(|hex| uuid::Uuid::try_parse(hex).ok());
        let Some(uuid) = uuid else {
            panic!("not chatcmpl-UUID: {id}");
        };
        assert_eq!(uuid.get_version_num(), 7, "{id}");
        let millis = uuid
            .get_timestamp()
            .map(|t| t.to_unix())
            .map(|(s, n)| i64::try_from(s).unwrap_or(0) * 1000 + i64::from(n / 1_000_000));
        assert!(
            millis.is_some_and(|ms| ms >= before && ms <= plumb_core::now_ms()),
            "{id}"
        );
        assert_ne!(request_id("chatcmpl"), request_id("chatcmpl"));
    }
}
