//! Gateway traces: one record per request (searchable columns plus a JSON `detail` the gateway
//! owns: attempts, parameters, input and output), and feedback attached to them later.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::StoreError;

/// One request through the gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Position in the log (assigned by the store; 0 before it is written).
    #[serde(default)]
    pub seq: i64,
    /// W3C trace id: 32 lowercase hex digits.
    pub trace_id: String,
    /// The gateway's span: 16 hex digits.
    pub span_id: String,
    /// The caller's span, from an incoming `traceparent`.
    pub parent_span_id: Option<String>,
    /// The response id the client saw (`chatcmpl-…`).
    pub request_id: String,
    /// Unix milliseconds when the request arrived.
    pub started_at: i64,
    /// `chat` or `embeddings`.
    pub endpoint: String,
    pub key_id: Option<String>,
    /// The `model` the client asked for (an alias or `prompt:name@label`).
    pub model: String,
    pub prompt: Option<String>,
    pub prompt_version: Option<i64>,
    /// The target that answered (or failed last).
    pub target: Option<String>,
    /// The HTTP status the client got.
    pub status: u16,
    /// `ModelErrorKind` or a gateway reason (`circuit_open`, `rate_limited`, …); none on success.
    pub error: Option<String>,
    /// `miss`, `hit`, `semantic`, `bypass` or `off`.
    pub cache: String,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    /// Everything else, shaped by the gateway.
    pub detail: Value,
}

/// Which traces to list, newest last.
#[derive(Clone, Debug, Default)]
pub struct TraceFilter {
    /// Only traces written after this position (for `tail`).
    pub after_seq: Option<i64>,
    /// Only traces that started at or after this time (Unix ms).
    pub since: Option<i64>,
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub key_id: Option<String>,
    /// Only failed requests.
    pub errors_only: bool,
    /// The newest `limit` matches (0: no limit).
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub id: i64,
    pub trace_id: String,
    pub at: i64,
    pub score: Option<f64>,
    pub label: Option<String>,
    pub comment: Option<String>,
    pub key_id: Option<String>,
}

pub trait TraceStore: Send + Sync {
    /// Writes a batch in one transaction: all of it or none.
    fn insert_traces(&self, traces: &[TraceRecord]) -> Result<(), StoreError>;
    /// A trace by trace id, or by the response id the client saw.
    fn trace(&self, id: &str) -> Result<Option<TraceRecord>, StoreError>;
    fn list_traces(&self, filter: &TraceFilter) -> Result<Vec<TraceRecord>, StoreError>;
    /// Attaches feedback to a written trace (`NotFound` when there is none with that id).
    fn add_feedback(&self, feedback: &Feedback) -> Result<i64, StoreError>;
    fn feedback(&self, trace_id: &str) -> Result<Vec<Feedback>, StoreError>;
}
