//! The registry's one error type. Each variant says what kind of problem it is, so the CLI can
//! pick its exit code and the server its HTTP status without matching on text.

use plumb_core::SourceError;
use plumb_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A prompt, version, label or key that does not exist.
    #[error("{message}")]
    NotFound {
        message: String,
        hint: Option<String>,
    },
    /// Malformed input; `field` names the offending field where there is one.
    #[error("{message}")]
    Invalid {
        message: String,
        field: Option<String>,
        hint: Option<String>,
    },
    /// A prompt file with a problem at a known place.
    #[error("{0}")]
    Source(SourceError),
    /// The promotion policy refuses the move; `missing` lists every piece of missing evidence.
    #[error("{message}")]
    Policy {
        message: String,
        missing: Vec<String>,
        hint: Option<String>,
    },
    /// The caller's role is below what the action needs.
    #[error("{message}")]
    Forbidden { message: String },
    /// Someone else changed the same thing first.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    pub fn not_found(message: impl Into<String>, hint: Option<String>) -> RegistryError {
        RegistryError::NotFound {
            message: message.into(),
            hint,
        }
    }

    pub fn invalid(message: impl Into<String>, field: Option<&str>) -> RegistryError {
        RegistryError::Invalid {
            message: message.into(),
            field: field.map(str::to_owned),
            hint: None,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            RegistryError::NotFound { hint, .. }
            | RegistryError::Invalid { hint, .. }
            | RegistryError::Policy { hint, .. } => hint.as_deref(),
            RegistryError::Source(source) => source.hint.as_deref(),
            _ => None,
        }
    }

    /// Whether the caller can fix it by changing the request (exit 2 / HTTP 4xx), as opposed to
    /// a fault of the store or of plumb itself.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, RegistryError::Store(_) | RegistryError::Internal(_))
    }
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> RegistryError {
        match error {
            StoreError::Conflict(message) => RegistryError::Conflict(message),
            StoreError::NotFound(message) => RegistryError::not_found(message, None),
            other => RegistryError::Store(other),
        }
    }
}

impl From<SourceError> for RegistryError {
    fn from(error: SourceError) -> RegistryError {
        RegistryError::Source(error)
    }
}
