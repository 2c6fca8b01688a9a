//! Traces: one record per request, written off the request path.
//!
//! A request hands its record to `Tracer::record`, which never waits: the record goes into a
//! bounded queue, or, when the queue is full, is counted (`plumb_traces_dropped_total`) and
//! dropped with a log line at most every ten seconds. One writer task drains the queue in
//! batches (up to `batch` records, or whatever arrived within `flush_ms` of the first) and
//! commits each batch in one transaction.
//!
//! Durability contract: a trace is *acknowledged* once its batch has committed; from then on it
//! is visible to the query API, counted in `plumb_traces_written_total`, and survives a crash
//! of the process (SQLite WAL). A `kill -9` loses what was still queued: at most the queue,
//! normally the last `flush_ms`. A graceful shutdown (`SIGINT`/`SIGTERM`) drains the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use plumb_core::now_ms;
use plumb_store::{TraceRecord, TraceStore};
use regex::Regex;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// What traces keep of the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Messages and answers, after redaction.
    Full,
    /// Only ids, counts, timings and errors.
    Metadata,
}

#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// `false`: no traces are kept (metrics still count every request).
    pub enabled: bool,
    pub queue: usize,
    pub batch: usize,
    pub flush: Duration,
    pub capture: Capture,
    /// Matches are replaced by `[REDACTED]` in everything a trace keeps as text.
    pub redact: Vec<Regex>,
    /// Request headers to keep (never credentials).
    pub headers: Vec<String>,
    pub otlp: Option<OtlpOptions>,
}

#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// The collector's base URL; spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
}

/// Secrets that must never reach a trace, whatever the configuration says.
pub const DEFAULT_REDACTIONS: &[&str] = &[
    r"sk-[A-Za-z0-9_\-]{16,}",
    r"sk-ant-[A-Za-z0-9_\-]{16,}",
    r"plumb_[A-Za-z0-9]+_[A-Za-z0-9]{16,}",
    r"(?i)bearer\s+[A-Za-z0-9._\-]{8,}",
    r"AKIA[0-9A-Z]{16}",
    r"gh[pousr]_[A-Za-z0-9]{30,}",
];

/// Headers a trace never keeps, even when listed.
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "api-key",
];

impl Default for TraceOptions {
    fn default() -> TraceOptions {
        TraceOptions {
            enabled: true,
            queue: 10_000,
            batch: 256,
            flush: Duration::from_millis(50),
            capture: Capture::Full,
            redact: default_redactions(),
            headers: Vec::new(),
            otlp: None,
        }
    }
}

/// `text` with the built-in secret patterns redacted (for messages that leave the gateway
/// outside traces, such as an upstream's error message).
pub fn redact_secrets(text: &str) -> String {
    static PATTERNS: std::sync::OnceLock<Vec<Regex>> = std::sync::OnceLock::new();
    redact_with(PATTERNS.get_or_init(default_redactions), text)
}

fn redact_with(patterns: &[Regex], text: &str) -> String {
    let mut out = std::borrow::Cow::Borrowed(text);
    for pattern in patterns {
        if pattern.is_match(&out) {
            out = std::borrow::Cow::Owned(pattern.replace_all(&out, "[REDACTED]").into_owned());
        }
    }
    out.into_owned()
}

pub fn default_redactions() -> Vec<Regex> {
    DEFAULT_REDACTIONS
        .iter()
        .filter_map(|pattern| Regex::new(pattern).ok())
        .collect()
}

impl TraceOptions {
    /// `text` with every redaction pattern's matches replaced.
    pub fn redact_text(&self, text: &str) -> String {
        let mut out = std::borrow::Cow::Borrowed(text);
        for pattern in &self.redact {
            if pattern.is_match(&out) {
                out = std::borrow::Cow::Owned(pattern.replace_all(&out, "[REDACTED]").into_owned());
            }
        }
        out.into_owned()
    }

    /// Every string inside `value`, redacted.
    pub fn redact_value(&self, value: &mut Value) {
        match value {
            Value::String(text) if self.redact.iter().any(|p| p.is_match(text)) => {
                *text = self.redact_text(text);
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.redact_value(v)),
            _ => {}
        }
    }
}

/// A request's trace, made into its record by the writer: building the detail JSON and
/// redacting it would otherwise sit between the upstream's answer and the client.
pub type TraceDraft = Box<dyn FnOnce(&TraceOptions) -> TraceRecord + Send>;

enum Message {
    Trace(TraceDraft),
    /// Answered once everything queued before it has been committed (or failed).
    Flush(oneshot::Sender<()>),
}

/// Lets a repeated log line through at most once per period.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    /// Unix ms of the last line let through (0: none yet).
    last: AtomicI64,
}

impl LogThrottle {
    pub(crate) fn allow(&self, period_ms: i64) -> bool {
        let now = now_ms();
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now - last >= period_ms)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

pub struct Tracer {
    sender: mpsc::Sender<Message>,
    pub options: TraceOptions,
    metrics: Arc<Metrics>,
    queue_full_log: LogThrottle,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Starts the writer task on the current runtime. It ends when every `Tracer` is dropped
    /// and the queue is empty.
    pub fn spawn(
        store: Arc<dyn TraceStore>,
        options: TraceOptions,
        metrics: Arc<Metrics>,
    ) -> (Arc<Tracer>, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(options.queue.max(1));
        let exporter = options.otlp.clone().map(Exporter::spawn);
        let writer = tokio::spawn(write_loop(
            receiver,
            StoreThread::start(store, Arc::new(options.clone())),
            options.batch.max(1),
            options.flush,
            metrics.clone(),
            exporter,
        ));
        let tracer = Arc::new(Tracer {
            sender,
            options,
            metrics,
            queue_full_log: LogThrottle::default(),
        });
        (tracer, writer)
    }

    /// Queues `trace` for writing; never waits.
    pub fn record(&self, trace: TraceDraft) {
        match self.sender.try_send(Message::Trace(trace)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.traces_dropped.inc();
                if self.queue_full_log.allow(10_000) {
                    eprintln!(
                        "plumb serve: the trace queue is full ({} traces); dropping traces \
                         (total dropped: {}). Raise gateway.traces.queue or check the store.",
                        self.options.queue,
                        self.metrics.traces_dropped.get()
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.traces_dropped.inc();
            }
        }
    }

    /// Waits until every trace queued before this call has been committed (or refused).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }
}

type Batch = (
    Vec<TraceDraft>,
    oneshot::Sender<(Result<(), String>, Vec<TraceRecord>)>,
);

/// The thread that writes batches, at the lowest priority (nice 19): on a busy core, requests
/// go first and the queue absorbs the wait.
///
/// When the queue is over half full the low priority is not keeping up (a saturated core), so
/// batches are written from the runtime's blocking pool at normal priority until it drains:
/// traces are dropped only when even that cannot keep up.
struct StoreThread {
    batches: std::sync::mpsc::SyncSender<Batch>,
    store: Arc<dyn TraceStore>,
    options: Arc<TraceOptions>,
}

/// Builds the records of `drafts` and writes them in one transaction.
///
/// The writer yields its core every few records: this kernel (EEVDF, no kernel preemption)
/// switches from a running nice-19 thread to a woken request thread only at a system call or
/// the next tick (4 ms at HZ 250), so a 200-record batch held a request up for milliseconds
/// (c=1 p99.9 2.2 ms with it, ~0.9 ms with the yields, measured with the gateway bench). A
/// yield with nothing else to run returns at once. The SQLite store yields between rows too.
fn build_and_insert(
    store: &dyn TraceStore,
    options: &TraceOptions,
    drafts: Vec<TraceDraft>,
) -> (Result<(), String>, Vec<TraceRecord>) {
    let traces: Vec<TraceRecord> = drafts
        .into_iter()
        .enumerate()
        .map(|(i, draft)| {
            if i % 4 == 3 {
                std::thread::yield_now();
            }
            draft(options)
        })
        .collect();
    let result = store.insert_traces(&traces).map_err(|e| e.to_string());
    (result, traces)
}

impl StoreThread {
    fn start(store: Arc<dyn TraceStore>, options: Arc<TraceOptions>) -> StoreThread {
        let (batches, receiver) = std::sync::mpsc::sync_channel::<Batch>(1);
        let thread_store = store.clone();
        let thread_options = options.clone();
        let spawned = std::thread::Builder::new()
            .name("plumb-traces".into())
            .spawn(move || {
                lower_priority();
                while let Ok((drafts, reply)) = receiver.recv() {
                    let _ = reply.send(build_and_insert(&*thread_store, &thread_options, drafts));
                }
            });
        if let Err(error) = spawned {
            eprintln!("plumb serve: cannot start the trace writer thread: {error}");
        }
        StoreThread {
            batches,
            store,
            options,
        }
    }

    /// Builds and writes `drafts` (at normal priority when `urgent`); gives the records back
    /// with the outcome.
    async fn write(
        &self,
        drafts: Vec<TraceDraft>,
        urgent: bool,
    ) -> (Result<(), String>, Vec<TraceRecord>) {
        if urgent {
            let store = self.store.clone();
            let options = self.options.clone();
            return match tokio::task::spawn_blocking(move || {
                build_and_insert(&*store, &options, drafts)
            })
            .await
            {
                Ok(outcome) => outcome,
                Err(error) => (Err(error.to_string()), Vec::new()),
            };
        }
        let (reply, outcome) = oneshot::channel();
        // The loop waits for each batch before sending the next, so the one-slot channel is
        // always free here and the send never blocks.
        match self.batches.try_send((drafts, reply)) {
            Ok(()) => outcome
                .await
                .unwrap_or_else(|_| (Err("the trace writer thread stopped".into()), Vec::new())),
            Err(
                std::sync::mpsc::TrySendError::Full(_)
                | std::sync::mpsc::TrySendError::Disconnected(_),
            ) => (
                Err("the trace writer thread is not taking batches".into()),
                Vec::new(),
            ),
        }
    }
}

/// Nice 19 for the calling thread (Linux sets niceness per thread). A failure leaves it at
/// normal priority, which only costs latency under load. (`SCHED_IDLE` was measured worse: the
/// kernel work its writes trigger then runs elsewhere and still competes with requests.)
fn lower_priority() {
    let _ = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min);
}

async fn write_loop(
    mut receiver: mpsc::Receiver<Message>,
    store: StoreThread,
    batch_size: usize,
    flush: Duration,
    metrics: Arc<Metrics>,
    exporter: Option<Exporter>,
) {
    let mut batch: Vec<TraceDraft> = Vec::with_capacity(batch_size);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = receiver.recv().await {
        let take = |message: Message,
                    batch: &mut Vec<TraceDraft>,
                    waiting: &mut Vec<oneshot::Sender<()>>| match message {
            Message::Trace(trace) => batch.push(trace),
            Message::Flush(done) => waiting.push(done),
        };
        take(first, &mut batch, &mut waiting);
        let deadline = tokio::time::Instant::now() + flush;
        while batch.len() < batch_size && waiting.is_empty() {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(message)) => take(message, &mut batch, &mut waiting),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let traces = std::mem::take(&mut batch);
            let count = traces.len() as u64;
            // Over half full: the low-priority thread is not keeping up.
            let urgent = receiver.len() * 2 > receiver.max_capacity();
            match store.write(traces, urgent).await {
                (Ok(()), traces) => {
                    metrics.traces_written.inc_by(count);
                    if let Some(exporter) = &exporter {
                        exporter.send(traces);
                    }
                }
                (Err(error), _) => {
                    metrics.trace_write_errors.inc();
                    eprintln!("plumb serve: {count} traces lost: {error}");
                }
            }
            batch = Vec::with_capacity(batch_size);
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// W3C trace context: the ids this request's span uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the caller's trace when `traceparent` is valid, else starts one.
    pub fn from_header(traceparent: Option<&str>) -> TraceContext {
        let span_id = random_hex(8);
        if let Some((trace_id, parent, flags)) = traceparent.and_then(parse_traceparent) {
            return TraceContext {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                sampled: flags & 1 == 1,
            };
        }
        TraceContext {
            trace_id: new_trace_id(),
            span_id,
            parent_span_id: None,
            sampled: true,
        }
    }

    /// The `traceparent` naming this span.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `version-traceid-parentid-flags` as the W3C spec reads it: version `ff` and all-zero ids are
/// invalid; a future version may add fields after the flags.
fn parse_traceparent(header: &str) -> Option<(String, String, u8)> {
    let mut parts = header.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if !is_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !is_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_hex(parent, 16) || parent.bytes().all(|b| b == b'0') || !is_hex(flags, 2) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_owned(), parent.to_owned(), flags))
}

/// A UUIDv7 (Unix milliseconds, then random bits) whose random bits come from the thread's
/// fast generator: `Uuid::now_v7` asks the kernel for them on every call, a system call per
/// request.
pub(crate) fn fast_uuid_v7() -> uuid::Uuid {
    let millis = u64::try_from(plumb_core::now_ms()).unwrap_or(0);
    let random = fastrand::u128(..).to_le_bytes();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}

/// A new trace id: a UUIDv7's 32 hex digits, so the Unix time in milliseconds leads. W3C allows
/// any id that is not all zeros (only the `random` flag, which plumb does not set, promises
/// random leading bytes); time-ordered ids keep the store's unique index on `trace_id`
/// appending at its end instead of touching a random page per trace, which made each trace
/// cost several page writes.
fn new_trace_id() -> String {
    fast_uuid_v7().simple().to_string()
}

/// `bytes` random bytes as lower-case hex, never all zeros (W3C forbids all-zero ids). From
/// the thread's fast generator: no system call on the request path.
fn random_hex(bytes: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes * 2);
    loop {
        out.clear();
        for _ in 0..bytes {
            let byte = fastrand::u8(..);
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        if out.bytes().any(|b| b != b'0') {
            return out;
        }
    }
}

/// Sends committed traces to an OTLP/HTTP collector as spans with the OpenTelemetry GenAI
/// attribute names, from a task of its own (a slow collector never slows the store).
struct Exporter {
    sender: mpsc::Sender<Vec<TraceRecord>>,
}

impl Exporter {
    fn spawn(options: OtlpOptions) -> Exporter {
        let (sender, mut receiver) = mpsc::channel::<Vec<TraceRecord>>(64);
        tokio::spawn(async move {
            let url = format!("{}/v1/traces", options.endpoint.trim_end_matches('/'));
            let client = match plumb_provider::http_client() {
                Ok(client) => client,
                Err(error) => {
                    eprintln!("plumb serve: OTLP export off: {}", error.message);
                    return;
                }
            };
            let mut last_error_log: Option<Instant> = None;
            while let Some(traces) = receiver.recv().await {
                let mut request = client
                    .post(&url)
                    .timeout(Duration::from_secs(10))
                    .json(&otlp_body(&traces));
                for (name, value) in &options.headers {
                    request = request.header(name, value);
                }
                let outcome = match request.send().await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("the collector answered {}", response.status())),
                    Err(error) => Err(error.without_url().to_string()),
                };
                if let Err(message) = outcome
                    && last_error_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                {
                    last_error_log = Some(Instant::now());
                    eprintln!(
                        "plumb serve: OTLP export to {url} failed ({message}); {} spans not exported",
                        traces.len()
                    );
                }
            }
        });
        Exporter { sender }
    }

    fn send(&self, traces: Vec<TraceRecord>) {
        let _ = self.sender.try_send(traces);
    }
}

fn attribute(key: &str, value: Value) -> Value {
    let typed = match value {
        Value::String(s) => json!({"stringValue": s}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n}),
        Value::Array(items) => json!({"arrayValue": {"values": items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => json!({"stringValue": s}),
                other => json!({"stringValue": other.to_string()}),
            })
            .collect::<Vec<_>>()}}),
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": typed})
}

/// The OTLP/HTTP JSON body (`ExportTraceServiceRequest`) for `traces`.
pub fn otlp_body(traces: &[TraceRecord]) -> Value {
    let spans: Vec<Value> = traces.iter().map(otlp_span).collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [attribute("service.name", json!("plumb-gateway"))]},
        "scopeSpans": [{
            "scope": {"name": "plumb-gateway", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans,
        }],
    }]})
}

fn otlp_span(trace: &TraceRecord) -> Value {
    let start_ns = (trace.started_at.max(0) as u128) * 1_000_000;
    let end_ns = start_ns + (trace.latency_ms.max(0.0) * 1_000_000.0) as u128;
    let operation = if trace.endpoint == "embeddings" {
        "embeddings"
    } else {
        "chat"
    };
    let mut attributes = vec![
        attribute("gen_ai.operation.name", json!(operation)),
        attribute("gen_ai.request.model", json!(trace.model)),
        attribute("gen_ai.response.id", json!(trace.request_id)),
        attribute("http.response.status_code", json!(trace.status)),
        attribute("plumb.cache", json!(trace.cache)),
    ];
    if let Some(target) = &trace.target {
        let (provider, model) = target.split_once(':').unwrap_or((target, ""));
        attributes.push(attribute("gen_ai.provider.name", json!(provider)));
        attributes.push(attribute("gen_ai.system", json!(provider)));
        attributes.push(attribute("plumb.target", json!(target)));
        if let Some(reported) = trace.detail.get("response_model").and_then(Value::as_str) {
            attributes.push(attribute("gen_ai.response.model", json!(reported)));
        } else if !model.is_empty() {
            attributes.push(attribute("gen_ai.response.model", json!(model)));
        }
    }
    if trace.prompt_tokens > 0 || trace.completion_tokens > 0 {
        attributes.push(attribute(
            "gen_ai.usage.input_tokens",
            json!(trace.prompt_tokens),
        ));
        attributes.push(attribute(
            "gen_ai.usage.output_tokens",
            json!(trace.completion_tokens),
        ));
    }
    if let Some(params) = trace.detail.get("params").and_then(Value::as_object) {
        for (name, key) in [
            ("temperature", "gen_ai.request.temperature"),
            ("top_p", "gen_ai.request.top_p"),
            ("max_tokens", "gen_ai.request.max_tokens"),
            ("seed", "gen_ai.request.seed"),
        ] {
            if let Some(value) = params.get(name).filter(|v| !v.is_null()) {
                attributes.push(attribute(key, value.clone()));
            }
        }
    }
    if let Some(finish) = trace.detail.get("finish_reason").and_then(Value::as_str) {
        attributes.push(attribute("gen_ai.response.finish_reasons", json!([finish])));
    }
    if let Some(prompt) = &trace.prompt {
        attributes.push(attribute("plumb.prompt.name", json!(prompt)));
    }
    if let Some(version) = trace.prompt_version {
        attributes.push(attribute("plumb.prompt.version", json!(version)));
    }
    if let Some(cost) = trace.cost_usd {
        attributes.push(attribute("plumb.cost_usd", json!(cost)));
    }
    if let Some(ttft) = trace.ttft_ms {
        attributes.push(attribute("plumb.ttft_ms", json!(ttft)));
    }
    let status = match &trace.error {
        Some(kind) => {
            attributes.push(attribute("error.type", json!(kind)));
            json!({"code": 2, "message": kind})
        }
        None => json!({"code": 1}),
    };
    let mut span = json!({
        "traceId": trace.trace_id,
        "spanId": trace.span_id,
        "name": format!("{operation} {}", trace.model),
        "kind": 2,
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": end_ns.to_string(),
        "attributes": attributes,
        "status": status,
    });
    if let (Some(parent), Some(object)) = (&trace.parent_span_id, span.as_object_mut()) {
        object.insert("parentSpanId".into(), json!(parent));
    }
    span
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn traceparent_is_continued_when_valid_and_replaced_when_not() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::from_header(Some(incoming));
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(context.span_id, "00f067aa0ba902b7");
        assert!(
            context
                .header()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let fresh = TraceContext::from_header(Some(bad));
            assert!(fresh.parent_span_id.is_none(), "{bad}");
            assert!(is_hex(&fresh.trace_id, 32));
        }
    }

    #[test]
    fn new_trace_ids_are_time_ordered_w3c_ids() {
        let before = format!("{:012x}", plumb_core::now_ms());
        let first = TraceContext::from_header(None).trace_id;
        let second = TraceContext::from_header(None).trace_id;
        let after = format!("{:012x}", plumb_core::now_ms());
        for id in [&first, &second] {
            assert!(is_hex(id, 32), "{id}");
            assert!(
                before.as_str() <= &id[..12] && &id[..12] <= after.as_str(),
                "{id}"
            );
        }
        assert!(first[..12] <= second[..12], "{first} {second}");
        assert_ne!(first, second);
    }

    #[test]
    fn secrets_are_redacted_by_default() {
        let options = TraceOptions::default();
        let mut value = json!({"messages": [{"content":
            "key sk-abcdefghijklmnopqrstuv and Bearer abc.def-123456 and plumb_k1_abcdefghijklmnopqrst"}]});
        options.redact_value(&mut value);
        let text = value.to_string();
        assert!(!text.contains("sk-abc"), "{text}");
        assert!(!text.contains("abc.def"), "{text}");
        assert!(!text.contains("plumb_k1"), "{text}");
        assert_eq!(text.matches("[REDACTED]").count(), 3, "{text}");
    }
}
