//! One request through a route: targets in the route's order (weighted or as listed),
//! circuits checked, retryable failures retried with backoff (or the upstream's Retry-After)
//! and then handed to the next target, every attempt written into the call's trace.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures_util::StreamExt as _;
use plumb_core::{ChatDelta, ChatRequest, ChatResponse, ChatStream, ModelError, ModelErrorKind};
use serde_json::json;

use crate::config::{Route, Target};
use crate::wire::OpenAiError;
use crate::{Call, attempt_json, breaker};

/// What a target produced.
pub(crate) enum Got {
    Whole(ChatResponse),
    /// A stream that has produced its first delta (so it can no longer fall back).
    Stream {
        first: ChatDelta,
        rest: ChatStream,
    },
}

/// Why a route produced no answer.
pub(crate) enum RouteFailure {
    /// The last target tried failed with this error.
    Upstream { target: String, error: ModelError },
    /// Every target's circuit is open; the soonest may be tried again after this long.
    AllOpen {
        alias: String,
        retry_after: Duration,
    },
}

impl RouteFailure {
    pub(crate) fn into_error(self) -> OpenAiError {
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

/// Tries the route's targets until one answers. Moves on only when the error is one another
/// target can avoid (timeouts, 429, 5xx, connection errors, a stream broken before its first
/// token); a request the upstream refused as malformed fails at once.
pub(crate) async fn call_route<'r>(
    route: &'r Route,
    request: &ChatRequest,
    stream: bool,
    call: &mut Call,
) -> Result<(&'r Target, Got), RouteFailure> {
    let mut last = None;
    let mut soonest_retry: Option<Duration> = None;
    'targets: for target in route.order() {
        let mut retry = 0;
        loop {
            if let breaker::Admission::Open(wait) = target.breaker.admit() {
                soonest_retry = Some(soonest_retry.map_or(wait, |w| w.min(wait)));
                call.attempts.push(
                    json!({"target": target.id, "outcome": "skipped", "reason": "circuit_open"}),
                );
                continue 'targets;
            }
            let began = Instant::now();
            let result = attempt(target, request, stream).await;
            call.attempts
                .push(attempt_json(&target.id, began, result.as_ref().err()));
            call.target = Some(target.id.clone());
            let error = match result {
                Ok(got) => {
                    target.breaker.succeeded();
                    return Ok((target, got));
                }
                Err(error) => error,
            };
            if !error.is_retryable() {
                target.breaker.released();
                last = Some((target.id.clone(), error));
                break 'targets;
            }
            target.breaker.failed();
            let wait = route.retry.wait(retry, error.retry_after);
            last = Some((target.id.clone(), error));
            match wait {
                Some(wait) => {
                    retry += 1;
                    tokio::time::sleep(wait).await;
                }
                None => continue 'targets,
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

/// One call to one target under its timeouts: the total for a whole answer; for a stream, the
/// time to the first token (or the total, if shorter).
async fn attempt(target: &Target, request: &ChatRequest, stream: bool) -> Result<Got, ModelError> {
    if !stream {
        let call = target.model.chat(request);
        let answer = match target.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_| timed_out(&target.id, "answer", limit))?,
            None => call.await,
        }?;
        return Ok(Got::Whole(answer));
    }
    let open = async {
        let mut rest = target.model.chat_stream(request).await?;
        match rest.next().await {
            Some(Ok(first)) => Ok(Got::Stream { first, rest }),
            Some(Err(error)) => Err(error),
            None => Err(ModelError::new(
                ModelErrorKind::Server,
                "the stream ended before its first token",
            )),
        }
    };
    let limit = match (target.ttft, target.timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match limit {
        Some(limit) => tokio::time::timeout(limit, open)
            .await
            .map_err(|_| timed_out(&target.id, "first token", limit))?,
        None => open.await,
    }
}

fn timed_out(target: &str, what: &str, limit: Duration) -> ModelError {
    ModelError::new(
        ModelErrorKind::Timeout,
        format!("no {what} from {target} within {} ms", limit.as_millis()),
    )
}

/// An upstream failure in OpenAI's shape. Messages come from `ModelError`, which never holds
/// credentials.
pub(crate) fn upstream_error(target: &str, error: &ModelError) -> OpenAiError {
    // Upstreams sometimes quote the credential they refused; it must not reach the client.
    let message = crate::trace::redact_secrets(&format!("{target}: {}", error.message));
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
