//! Persistence for plumb: eval runs, their case results, the response cache, and the prompt
//! registry (versions, labels, audit log, API keys).
//!
//! The `Store` trait is what the rest of plumb sees; `SqliteStore` (WAL, at `.plumb/plumb.db`)
//! is the embedded default. Case results are stored as indexed columns (what queries and
//! comparisons need) plus an opaque JSON payload owned by the eval crate, so this crate knows
//! nothing of assertions or reports.

mod registry;
mod sqlite;
mod sqlite_registry;
mod sqlite_traces;
mod traces;

use std::path::PathBuf;

pub use registry::{
    ApiKeyRecord, AuditEntry, AuditFilter, Deprecation, ImportOutcome, LabelMove, LabelRecord,
    MoveKind, NewAudit, NewLabelMove, NewVersion, PromptBundle, PromptMeta, PromptRecord,
    PushOutcome, RegistryStore, VersionRecord,
};
pub use sqlite::SqliteStore;
pub use traces::{Feedback, TraceFilter, TraceRecord, TraceStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run `{0}` not found")]
    RunNotFound(String),
    #[error("run id prefix `{prefix}` is ambiguous ({count} runs match)")]
    AmbiguousRun { prefix: String, count: usize },
    #[error(
        "database {path} was written by a newer plumb (schema {found}, this plumb knows {known})"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("internal store error: {0}")]
    Internal(String),
    /// A concurrent writer changed what the caller based its write on.
    #[error("{0}")]
    Conflict(String),
    /// The write refers to something that is not there (a prompt, version or key).
    #[error("{0}")]
    NotFound(String),
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Completed,
    Interrupted,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> RunStatus {
        match text {
            "completed" => RunStatus::Completed,
            "interrupted" => RunStatus::Interrupted,
            "failed" => RunStatus::Failed,
            _ => RunStatus::Running,
        }
    }
}

/// One eval run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub suite_path: String,
    pub description: String,
    pub status: RunStatus,
    /// What is needed to resume or re-describe the run (JSON, owned by the eval crate).
    pub config: String,
    /// The run's summary once finished (JSON, owned by the eval crate).
    pub summary: Option<String>,
}

/// The coordinates of one case in a run: prompt × provider × test × repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseKey {
    pub prompt_idx: u32,
    pub provider_idx: u32,
    pub test_idx: u32,
    pub repeat_idx: u32,
}

/// One evaluated case.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseRecord {
    pub key: CaseKey,
    /// `None` when the case could not be measured (the model call failed).
    pub pass: Option<bool>,
    pub score: f64,
    pub latency_ms: f64,
    pub cost: f64,
    pub tokens: u64,
    /// The full result (JSON, owned by the eval crate).
    pub payload: String,
}

pub trait Store: Send + Sync {
    fn create_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    /// Appends results in one transaction. A case written twice (a resumed run) keeps the last.
    fn append_results(&self, run_id: &str, results: &[CaseRecord]) -> Result<(), StoreError>;
    fn finish_run(&self, run_id: &str, status: RunStatus, summary: &str) -> Result<(), StoreError>;
    /// A run by full id, a unique prefix or suffix of it, or `latest`.
    fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord, StoreError>;
    /// Newest first.
    fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError>;
    /// Calls `visit` with each result of the run in case order, without loading them all.
    fn for_each_result(
        &self,
        run_id: &str,
        visit: &mut dyn FnMut(CaseRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    fn completed_cases(&self, run_id: &str) -> Result<Vec<CaseKey>, StoreError>;
    fn cache_get(&self, key: &str) -> Result<Option<String>, StoreError>;
    fn cache_put(&self, key: &str, value: &str) -> Result<(), StoreError>;
}
