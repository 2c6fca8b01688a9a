//! `/api/v1`: prompts, versions, labels, resolution with ETags, and the audit log.

use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use plumb_prompt::{PromptFile, PromptRef, PromptTemplate, Selector};
use plumb_registry::{Actor, MoveOptions, PushOptions, RegistryError, Role, auth, prompt_json};
use plumb_store::{AuditFilter, PromptRecord, TraceFilter, TraceStore, VersionRecord};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::{AuthMode, ServerState};

type AppState = Arc<ServerState>;
type ApiResult = Result<Response, ApiError>;

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/prompts", get(list_prompts))
        .route("/prompts/{name}", get(get_prompt))
        .route(
            "/prompts/{name}/versions",
            get(list_versions).post(push_version),
        )
        .route("/prompts/{name}/versions/{version}", get(get_version))
        .route("/prompts/{name}/labels", get(list_labels))
        .route(
            "/prompts/{name}/labels/{label}",
            put(move_label).delete(remove_label),
        )
        .route(
            "/prompts/{name}/labels/{label}/rollback",
            post(rollback_label),
        )
        .route("/resolve/{reference}", get(resolve))
        .route("/resolve/{reference}/render", post(render))
        .route("/audit", get(audit))
        .route("/traces", get(list_traces))
        .route("/traces/{id}", get(get_trace))
        .route("/whoami", get(whoami))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let api = Router::new().route("/health", get(health)).merge(protected);
    let gateway = plumb_gateway::router(state.gateway.clone()).route_layer(
        middleware::from_fn_with_state(state.clone(), authenticate_openai),
    );
    Router::new()
        .nest("/api/v1", api)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .merge(gateway)
        .fallback(fallback)
}

/// Unknown paths: OpenAI's error shape under `/v1`, plumb's elsewhere.
async fn fallback(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/v1/") || uri.path() == "/v1" {
        plumb_gateway::unknown_endpoint().into_response()
    } else {
        not_found().await.into_response()
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        .with_hint("the API lives under /api/v1: prompts, resolve/{name@label}, audit")
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Finds the caller's key and puts its `Actor` on the request.
async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let actor = match state.auth {
        AuthMode::Dev => Actor {
            name: "dev (no key)".into(),
            role: Role::Admin,
            key_id: None,
        },
        AuthMode::Keys => {
            let headers = request.headers();
            let presented = bearer(headers).or_else(|| {
                headers
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
            });
            let Some(secret) = presented else {
                return Err(ApiError::unauthorized("missing API key"));
            };
            let found = verify(&state, secret).await?;
            found.ok_or_else(|| ApiError::unauthorized("invalid or revoked API key"))?
        }
    };
    request.extensions_mut().insert(actor);
    let mut response = next.run(request).await;
    if state.auth == AuthMode::Dev {
        response
            .headers_mut()
            .insert("x-plumb-dev-mode", HeaderValue::from_static("no-auth"));
    }
    Ok(response)
}

/// The key in `Authorization: Bearer …`, if any.
fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The actor behind `secret`: from the key cache, else from the database (then cached).
async fn verify(state: &AppState, secret: String) -> Result<Option<Actor>, ApiError> {
    if let Some(actor) = state.keys.get(&secret) {
        return Ok(Some(actor));
    }
    let lookup = state.clone();
    let key = secret.clone();
    let found = blocking(move || auth::authenticate(lookup.registry.db(), &key)).await?;
    if let Some(actor) = &found {
        state.keys.put(&secret, actor);
    }
    Ok(found)
}

/// The gateway's key check: any active key may call models; failures in OpenAI's error shape,
/// so SDKs show them as they would OpenAI's own.
async fn authenticate_openai(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.auth == AuthMode::Dev {
        let mut response = next.run(request).await;
        response
            .headers_mut()
            .insert("x-plumb-dev-mode", HeaderValue::from_static("no-auth"));
        return response;
    }
    let presented = bearer(request.headers());
    let unauthorized = |message: &str| {
        plumb_gateway::wire::OpenAiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
        .into_response()
    };
    let Some(secret) = presented else {
        return unauthorized("missing API key: send `Authorization: Bearer <plumb key>`");
    };
    match verify(&state, secret).await {
        Ok(Some(actor)) => {
            let mut request = request;
            request.extensions_mut().insert(plumb_gateway::Caller {
                key_id: actor.key_id,
            });
            next.run(request).await
        }
        Ok(None) => unauthorized("invalid or revoked API key"),
        Err(error) => error.into_response(),
    }
}

/// Registry calls touch SQLite: run them off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => {
            eprintln!("plumb serve: request task failed: {error}");
            Err(ApiError::internal())
        }
    }
}

/// Parses a JSON body, naming the offending field when serde says which one it is.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send JSON",
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        let message = error.to_string();
        let mut api = ApiError::bad_request(format!("invalid JSON body: {message}"));
        if let Some(field) = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field"))
        {
            api = api.with_field(field);
        }
        api
    })
}

/// Like `parse_body`, for endpoints whose body may be left out.
fn parse_optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        parse_body(body)
    }
}

fn need_viewer(actor: &Actor) -> Result<(), ApiError> {
    actor
        .require(Role::Viewer, "reading")
        .map_err(ApiError::from)
}

/// Every version of `prompt`, without content, with the labels on each.
fn versions_json(prompt: &PromptRecord, versions: &[VersionRecord]) -> Vec<Value> {
    versions
        .iter()
        .map(|v| version_json(v, &prompt.labels_at(v.version), None))
        .collect()
}

fn version_json(version: &VersionRecord, labels: &[String], file: Option<&PromptFile>) -> Value {
    let mut value = json!({
        "name": version.name,
        "version": version.version,
        "hash": version.hash,
        "semver": version.semver,
        "message": version.message,
        "author": version.author,
        "created_at": version.created_at,
        "labels": labels,
    });
    if let (Some(file), Some(object)) = (file, value.as_object_mut()) {
        object.insert(
            "prompt".into(),
            plumb_prompt::to_value(file, plumb_prompt::YamlScope::Full),
        );
    }
    value
}

async fn whoami(Extension(actor): Extension<Actor>) -> Json<Value> {
    Json(json!({"actor": actor.name, "role": actor.role.as_str()}))
}

async fn list_prompts(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult {
    need_viewer(&actor)?;
    let prompts = blocking(move || state.registry.list()).await?;
    let list: Vec<Value> = prompts.iter().map(prompt_json).collect();
    Ok(Json(json!({ "prompts": list })).into_response())
}

async fn get_prompt(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    need_viewer(&actor)?;
    let (prompt, versions) = blocking(move || {
        let prompt = state.registry.prompt(&name)?;
        let versions = state.registry.db().versions(&name)?;
        Ok((prompt, versions))
    })
    .await?;
    let mut value = prompt_json(&prompt);
    if let Some(object) = value.as_object_mut() {
        object.insert("versions".into(), versions_json(&prompt, &versions).into());
    }
    Ok(Json(value).into_response())
}

async fn list_versions(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    need_viewer(&actor)?;
    let (prompt, versions) = blocking(move || {
        Ok((
            state.registry.prompt(&name)?,
            state.registry.db().versions(&name)?,
        ))
    })
    .await?;
    Ok(Json(json!({ "versions": versions_json(&prompt, &versions) })).into_response())
}

async fn get_version(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> ApiResult {
    need_viewer(&actor)?;
    let reference = PromptRef::parse(&format!("{name}@{version}"))
        .map_err(|m| ApiError::from(RegistryError::invalid(m, Some("version"))))?;
    let resolved = blocking(move || state.registry.resolve(&reference)).await?;
    Ok(Json(version_json(
        &resolved.version,
        &resolved.prompt.labels_at(resolved.version.version),
        Some(&resolved.file),
    ))
    .into_response())
}

async fn list_labels(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    need_viewer(&actor)?;
    let (prompt, history) = blocking(move || {
        Ok((
            state.registry.prompt(&name)?,
            state.registry.db().label_history(&name)?,
        ))
    })
    .await?;
    let labels: Map<String, Value> = prompt
        .labels
        .iter()
        .map(|l| {
            (
                l.label.clone(),
                json!({"version": l.version, "updated_at": l.updated_at, "updated_by": l.updated_by}),
            )
        })
        .collect();
    Ok(Json(json!({ "labels": labels, "history": history })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    prompt: Value,
    #[serde(default)]
    message: String,
    #[serde(default)]
    semver: Option<String>,
}

async fn push_version(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let body: PushBody = parse_body(&body)?;
    let mut prompt = body.prompt;
    let Some(object) = prompt.as_object_mut() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_prompt",
            "`prompt` must be an object: a prompt file as JSON",
        )
        .with_field("prompt"));
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), Value::String(name.clone()));
        }
        Some(Value::String(given)) if *given == name => {}
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_prompt",
                format!("prompt.name is {other} but the URL names `{name}`"),
            )
            .with_field("prompt.name"));
        }
    }
    let options = PushOptions {
        message: body.message,
        semver: body.semver,
    };
    let report = blocking(move || {
        let file = PromptFile::from_json(prompt, Path::new("request body: prompt"))?;
        state.registry.push(&file, &options, &actor, None)
    })
    .await?;
    let status = if report.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(report))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelBody {
    version: Value,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    reason: Option<String>,
}

async fn move_label(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath((name, label)): UrlPath<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body: LabelBody = parse_body(&body)?;
    let selector = match &body.version {
        Value::Number(number) => match number.as_u64().filter(|v| *v > 0) {
            Some(version) => Selector::Version(version),
            None => {
                return Err(ApiError::bad_request(format!(
                    "version must be a positive integer, got {number}"
                ))
                .with_field("version"));
            }
        },
        Value::String(text) => {
            PromptRef::parse(&format!("{name}@{text}"))
                .map_err(|m| ApiError::bad_request(m).with_field("version"))?
                .selector
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "version must be a number or a label, got {other}"
            ))
            .with_field("version"));
        }
    };
    let options = MoveOptions {
        force: body.force,
        reason: body.reason,
    };
    let outcome = blocking(move || {
        state
            .registry
            .set_label(&name, &label, &selector, &actor, &options)
    })
    .await?;
    Ok(Json(json!(outcome)).into_response())
}

async fn remove_label(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath((name, label)): UrlPath<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body: RollbackBody = parse_optional_body(&body)?;
    let outcome = blocking(move || {
        state
            .registry
            .remove_label(&name, &label, &actor, body.reason)
    })
    .await?;
    Ok(Json(json!(outcome)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn rollback_label(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath((name, label)): UrlPath<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body: RollbackBody = parse_optional_body(&body)?;
    let outcome =
        blocking(move || state.registry.rollback(&name, &label, &actor, body.reason)).await?;
    Ok(Json(json!(outcome)).into_response())
}

fn etag_of(version: &VersionRecord) -> String {
    format!(
        "\"{}-v{}\"",
        version.hash.get(..16).unwrap_or(&version.hash),
        version.version
    )
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*")
        })
}

fn parse_reference(text: &str) -> Result<PromptRef, ApiError> {
    PromptRef::parse(text).map_err(|m| {
        ApiError::bad_request(m)
            .with_field("reference")
            .with_hint("write name@label, name@3 or name@latest")
    })
}

/// `name@label` → the compiled prompt, with an ETag so pollers pay only for a 304 until the
/// label moves.
async fn resolve(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(reference): UrlPath<String>,
    headers: HeaderMap,
) -> ApiResult {
    need_viewer(&actor)?;
    let reference = parse_reference(&reference)?;
    let resolved = blocking(move || state.registry.resolve(&reference)).await?;
    let etag = etag_of(&resolved.version);
    let etag_value = HeaderValue::from_str(&etag).map_err(|_| ApiError::internal())?;
    if etag_matches(&headers, &etag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(ETAG, etag_value);
        return Ok(response);
    }
    let body = json!({
        "name": resolved.prompt.name,
        "version": resolved.version.version,
        "hash": resolved.version.hash,
        "semver": resolved.version.semver,
        "labels": resolved.prompt.labels_at(resolved.version.version),
        "deprecated": resolved.prompt.deprecation.as_ref().map(|d| json!({"replacement": d.replacement, "reason": d.reason})),
        "prompt": plumb_prompt::to_value(&resolved.file, plumb_prompt::YamlScope::Full),
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(ETAG, etag_value);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RenderBody {
    #[serde(default)]
    vars: Map<String, Value>,
}

/// Renders `name@label` with the given variables: the messages a gateway would send.
async fn render(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(reference): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    need_viewer(&actor)?;
    let reference = parse_reference(&reference)?;
    let body: RenderBody = parse_optional_body(&body)?;
    let resolved = blocking(move || state.registry.resolve(&reference)).await?;
    let version = resolved.version.version;
    let template = PromptTemplate::compile(resolved.file).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_prompt",
            e.to_string(),
        )
    })?;
    let messages = template.render(&body.vars).map_err(|error| {
        let mut api = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "render_failed",
            error.to_string(),
        );
        if let plumb_prompt::RenderError::UndefinedVariable { name }
        | plumb_prompt::RenderError::WrongType { name, .. } = &error
        {
            api = api.with_field(format!("vars.{name}"));
        }
        api
    })?;
    Ok(Json(json!({
        "name": resolved.version.name,
        "version": version,
        "messages": messages,
        "params": template.file().params,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn audit(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    need_viewer(&actor)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = AuditFilter {
        target: query.prompt,
        action: query.action,
        after_id: query.after,
        limit: query.limit.unwrap_or(100).min(1000),
    };
    let entries = blocking(move || state.registry.audit(&filter)).await?;
    Ok(Json(json!({ "entries": entries })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceQuery {
    #[serde(default)]
    after: Option<i64>,
    /// Unix milliseconds.
    #[serde(default)]
    since: Option<i64>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    errors: Option<bool>,
    #[serde(default)]
    limit: Option<usize>,
}

fn trace_store(state: &AppState) -> Result<Arc<dyn TraceStore>, ApiError> {
    state
        .gateway
        .tracing
        .as_ref()
        .map(|t| t.store.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "tracing_off",
                "this server keeps no traces",
            )
        })
}

/// Traces, oldest first: the newest `limit` (default 100, at most 1000) that match. Poll with
/// `after=<last seq>` to follow.
async fn list_traces(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    query: Result<Query<TraceQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    need_viewer(&actor)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = TraceFilter {
        after_seq: query.after,
        since: query.since,
        model: query.model,
        prompt: query.prompt,
        key_id: query.key,
        errors_only: query.errors.unwrap_or(false),
        limit: query.limit.unwrap_or(100).clamp(1, 1000),
    };
    let store = trace_store(&state)?;
    let traces = store_blocking(move || store.list_traces(&filter)).await?;
    Ok(Json(json!({ "traces": traces })).into_response())
}

/// One trace (by trace id or response id) with its feedback.
async fn get_trace(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    need_viewer(&actor)?;
    let store = trace_store(&state)?;
    let lookup = id.clone();
    let found = store_blocking(move || {
        let Some(trace) = store.trace(&lookup)? else {
            return Ok(None);
        };
        let feedback = store.feedback(&trace.trace_id)?;
        Ok(Some((trace, feedback)))
    })
    .await?;
    let Some((trace, feedback)) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no trace `{id}`"),
        )
        .with_hint("pass a trace id (x-plumb-trace-id) or a response id (chatcmpl-…)"));
    };
    let mut body = serde_json::to_value(&trace).unwrap_or(Value::Null);
    if let Some(object) = body.as_object_mut() {
        object.insert("feedback".into(), json!(feedback));
    }
    Ok(Json(body).into_response())
}

/// Trace store calls touch SQLite: run them off the async workers.
async fn store_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, plumb_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            eprintln!("plumb serve: trace store: {error}");
            Err(ApiError::internal())
        }
        Err(error) => {
            eprintln!("plumb serve: request task failed: {error}");
            Err(ApiError::internal())
        }
    }
}
