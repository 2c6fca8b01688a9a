//! plumb's gateway: an OpenAI-compatible endpoint (`/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/models`) that
//! routes model aliases from `plumb.yaml` to provider targets, falling back to the next target
//! when one fails in a way a retry elsewhere can fix (timeouts, 429, 5xx, connection errors).
//!
//! This crate knows the OpenAI wire format and routing; authentication is the server's
//! (`plumb-server` mounts `router` behind its key check), providers are `plumb-provider`'s.

pub mod breaker;
pub mod config;
pub mod wire;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plumb_core::{ChatResponse, ModelError, ModelErrorKind};
use serde_json::json;

pub use config::{EmbeddingRoute, GatewayConfig, Route, Target};
use wire::OpenAiError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Gateway {
    pub config: GatewayConfig,
}

/// `/v1/...` routes. Mount behind authentication.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(gateway)
}

/// The OpenAI-shaped 404 for unknown `/v1/...` paths.
pub fn unknown_endpoint() -> OpenAiError {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        "unknown endpoint; this gateway serves POST /v1/chat/completions and GET /v1/models",
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(gateway): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    let created = now_secs();
    let data: Vec<serde_json::Value> = gateway
        .config
        .routes
        .keys()
        .chain(gateway.config.embeddings.keys())
        .map(|alias| json!({"id": alias, "object": "model", "created": created, "owned_by": "plumb"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embed(&gateway, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn embed(
    gateway: &Gateway,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body = body.map_err(body_error)?;
    let parsed = wire::parse_embeddings(&body)?;
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
    let vectors = route
        .embedder
        .embed(&parsed.input)
        .await
        .map_err(|error| upstream_error(&route.id, &error))?;
    let tokens: u64 = parsed
        .input
        .iter()
        .map(|text| plumb_provider::tokens::rough_count(text))
        .sum();
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(&gateway, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn complete(
    gateway: &Gateway,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body = body.map_err(body_error)?;
    let parsed = wire::parse_request(&body)?;
    let route = gateway.config.routes.get(&parsed.model).ok_or_else(|| {
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
    let (target, answer, attempts) = call_route(route, &parsed.request)
        .await
        .map_err(RouteFailure::into_error)?;
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let created = now_secs();
    let mut response = if parsed.stream {
        let events =
            wire::completion_events(&id, created, &parsed.model, &answer, parsed.include_usage);
        let mut text = String::new();
        for event in events {
            text.push_str("data: ");
            text.push_str(&event);
            text.push_str("\n\n");
        }
        let mut response = Response::new(Body::from(text));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        response
    } else {
        Json(wire::completion_json(&id, created, &parsed.model, &answer)).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&target) {
        headers.insert("x-plumb-target", value);
    }
    headers.insert("x-plumb-attempts", HeaderValue::from(attempts));
    Ok(response)
}

/// Why a route produced no answer.
enum RouteFailure {
    /// The last target tried failed with this error.
    Upstream { target: String, error: ModelError },
    /// Every target's circuit is open; the soonest may be tried again after this long.
    AllOpen {
        alias: String,
        retry_after: std::time::Duration,
    },
}

impl RouteFailure {
    fn into_error(self) -> OpenAiError {
        match self {
            RouteFailure::Upstream { target, error } => upstream_error(&target, &error),
            RouteFailure::AllOpen { alias, retry_after } => {
                let mut error = OpenAiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    Some("circuit_open"),
                    format!("every target of `{alias}` has been failing; their circuits are open"),
                );
                error.retry_after = Some(retry_after.as_secs().max(1));
                error
            }
        }
    }
}

/// Tries the route's targets in order, skipping those whose circuit is open; moves on only
/// when the error is one another target can avoid. Returns the target that answered, the
/// answer and the number of attempts.
async fn call_route(
    route: &Route,
    request: &plumb_core::ChatRequest,
) -> Result<(String, ChatResponse, u32), RouteFailure> {
    let mut attempts = 0;
    let mut last = None;
    let mut soonest_retry: Option<std::time::Duration> = None;
    for target in &route.targets {
        if let breaker::Admission::Open(wait) = target.breaker.admit() {
            soonest_retry = Some(soonest_retry.map_or(wait, |w| w.min(wait)));
            continue;
        }
        attempts += 1;
        match target.model.chat(request).await {
            Ok(answer) => {
                target.breaker.succeeded();
                return Ok((target.id.clone(), answer, attempts));
            }
            Err(error) => {
                let retryable = error.is_retryable();
                if retryable {
                    target.breaker.failed();
                } else {
                    target.breaker.released();
                }
                last = Some((target.id.clone(), error));
                if !retryable {
                    break;
                }
            }
        }
    }
    Err(match last {
        Some((target, error)) => RouteFailure::Upstream { target, error },
        None => RouteFailure::AllOpen {
            alias: route.alias.clone(),
            retry_after: soonest_retry.unwrap_or_default(),
        },
    })
}

/// An upstream failure in OpenAI's shape. Messages come from `ModelError`, which never holds
/// credentials.
fn upstream_error(target: &str, error: &ModelError) -> OpenAiError {
    let message = format!("{target}: {}", error.message);
    match error.kind {
        ModelErrorKind::BadRequest => {
            let mut e = OpenAiError::invalid(message, None);
            e.status = error
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_REQUEST);
            e
        }
        ModelErrorKind::RateLimited => {
            let mut e = OpenAiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                message,
            );
            e.retry_after = error.retry_after.map(|d| d.as_secs().max(1));
            e
        }
        ModelErrorKind::Timeout => OpenAiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            Some("upstream_timeout"),
            message,
        ),
        _ => OpenAiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            Some("upstream_error"),
            message,
        ),
    }
}
