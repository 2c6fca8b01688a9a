//! Evaluation: promptfoo-shaped suites, deterministic assertions, the concurrent runner with its
//! response cache, statistics for honest comparisons, and reports.
//!
//! This crate sees models only through `plumb_core::ChatModel` and storage only through
//! `plumb_store::Store`: it knows no provider, HTTP client or SQL.

pub mod assertion;
pub mod calibrate;
pub mod judge;
pub mod metrics;
pub mod plan;
mod raw;
pub mod report;
pub mod retrieval;
pub mod retrieval_eval;
pub mod runner;
pub mod stats;
pub mod suite;
pub mod summary;

pub use runner::{
    Backends, CacheMode, CaseResult, Observer, RunError, RunOptions, RunOutcome, Silent, run,
};
pub use suite::{
    NoRegistry, PromptSource, ProviderSpec, RegistryVersion, ResolvedPrompt, Suite, TestCase,
    Thresholds,
};
pub use summary::{Summary, gate, summarize};
