//! The one error type of model calls, classified by kind so callers decide on retries and
//! exit codes without matching strings.

use std::time::Duration;

/// What went wrong, as far as a caller needs to know to react.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelErrorKind {
    /// The user's configuration is wrong (unknown model, missing API key, bad parameter).
    /// Retrying cannot help; the CLI exits 2.
    Config,
    /// The provider refused the request as malformed (HTTP 400, 404, 422...).
    BadRequest,
    /// Authentication failed (HTTP 401/403).
    Auth,
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx or an overloaded provider.
    Server,
    /// The request took longer than its timeout.
    Timeout,
    /// The endpoint could not be reached.
    Connect,
    /// The provider answered something plumb cannot understand.
    Protocol,
    /// The local model failed (load, decode, grammar).
    Local,
    /// A cache in read-only mode had no entry for this request.
    CacheMiss,
}

impl ModelErrorKind {
    /// A stable snake_case name, for traces and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelErrorKind::Config => "config",
            ModelErrorKind::BadRequest => "bad_request",
            ModelErrorKind::Auth => "auth",
            ModelErrorKind::RateLimited => "rate_limited",
            ModelErrorKind::Server => "server",
            ModelErrorKind::Timeout => "timeout",
            ModelErrorKind::Connect => "connect",
            ModelErrorKind::Protocol => "protocol",
            ModelErrorKind::Local => "local",
            ModelErrorKind::CacheMiss => "cache_miss",
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    pub kind: ModelErrorKind,
    pub message: String,
    /// HTTP status, when the error came from an HTTP answer.
    pub status: Option<u16>,
    /// How long the provider asked us to wait (Retry-After), if it said.
    pub retry_after: Option<Duration>,
    /// What the user can do about it, when known.
    pub hint: Option<String>,
}

impl ModelError {
    pub fn new(kind: ModelErrorKind, message: impl Into<String>) -> ModelError {
        ModelError {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
            hint: None,
        }
    }

    pub fn config(message: impl Into<String>) -> ModelError {
        ModelError::new(ModelErrorKind::Config, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ModelError {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_status(mut self, status: u16) -> ModelError {
        self.status = Some(status);
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> ModelError {
        self.retry_after = retry_after;
        self
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ModelErrorKind::RateLimited
                | ModelErrorKind::Server
                | ModelErrorKind::Timeout
                | ModelErrorKind::Connect
        )
    }

    /// Whether the error is the user's input or configuration (exit code 2), as opposed to a
    /// failure of the model or the network during a run.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self.kind,
            ModelErrorKind::Config | ModelErrorKind::Auth | ModelErrorKind::CacheMiss
        )
    }
}
