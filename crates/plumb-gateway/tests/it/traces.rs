//! Every request leaves one trace, written off the request path; feedback attaches to it;
//! `/metrics` counts it; secrets never reach it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use plumb_gateway::{Gateway, GatewayConfig, router};
use plumb_provider::ProviderContext;
use plumb_store::{Feedback, SqliteStore, StoreError, TraceFilter, TraceRecord, TraceStore};
use plumb_test::{MockServer, Reply};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ask, two_targets};

struct Traced {
    gateway: Arc<Gateway>,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

fn traced(config: &str) -> Traced {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
    let ctx = ProviderContext::new(dir.path());
    let config = GatewayConfig::parse(config, &dir.path().join("plumb.yaml"), &ctx).unwrap();
    let (gateway, _writer) = Gateway::new(config).with_traces(store.clone());
    Traced {
        gateway: Arc::new(gateway),
        store,
        _dir: dir,
    }
}

async fn send(
    gateway: &Arc<Gateway>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = router(gateway.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn flushed(traced: &Traced) -> Vec<TraceRecord> {
    traced
        .gateway
        .tracing
        .as_ref()
        .unwrap()
        .tracer
        .flush()
        .await;
    traced.store.list_traces(&TraceFilter::default()).unwrap()
}

fn priced_targets(mock: &MockServer) -> String {
    two_targets(mock).replace(
        "config: {api_key: test, max_retries: 0}",
        "config: {api_key: test, max_retries: 0, input_cost_per_mtok: 1.0, output_cost_per_mtok: 2.0}",
    )
}

#[tokio::test]
async fn a_fallback_request_leaves_one_trace_with_every_attempt() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_error(503, "overloaded"));
    let traced = traced(&priced_targets(&mock));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, headers, body) = send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[("traceparent", incoming)],
        Some(ask("hello there")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "a new span of the same trace"
    );
    let traces = flushed(&traced).await;
    assert_eq!(traces.len(), 1);
    let trace = &traces[0];
    let response: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(trace.request_id, response["id"].as_str().unwrap());
    assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(trace.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(trace.target.as_deref(), Some("echo"));
    assert_eq!(trace.status, 200);
    assert_eq!(trace.error, None);
    let attempts = trace.detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "server");
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(attempts[1]["outcome"], "ok");
    assert_eq!(trace.detail["input"][0]["content"], "hello there");
    assert!(trace.detail["output"]["content"].as_str().is_some());
    assert!(trace.latency_ms > 0.0);
}

#[tokio::test]
async fn failures_are_traced_with_status_and_kind() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_error(400, "bad thing"));
    let traced = traced(&priced_targets(&mock));
    let (status, _, _) = send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(ask("x")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown models and malformed bodies are traced too: every request has a record.
    let (status, _, _) = send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let traces = flushed(&traced).await;
    assert_eq!(traces.len(), 2);
    assert_eq!(traces[0].status, 400);
    assert_eq!(traces[0].error.as_deref(), Some("invalid_request_error"));
    assert_eq!(traces[1].status, 404);
    assert_eq!(traces[1].error.as_deref(), Some("model_not_found"));
    assert_eq!(traces[1].model, "nope");
}

#[tokio::test]
async fn usage_and_cost_come_from_the_answering_target() {
    let mock = MockServer::start().await;
    let traced = traced(&priced_targets(&mock));
    let (status, _, body) = send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(ask("count me")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response: Value = serde_json::from_str(&body).unwrap();
    let traces = flushed(&traced).await;
    let trace = &traces[0];
    assert_eq!(
        trace.prompt_tokens,
        response["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    let expected = (trace.prompt_tokens as f64 * 1.0 + trace.completion_tokens as f64 * 2.0) / 1e6;
    assert!((trace.cost_usd.unwrap() - expected).abs() < 1e-12);
}

#[tokio::test]
async fn secrets_and_credential_headers_never_reach_a_trace() {
    let mock = MockServer::start().await;
    let config = format!(
        "{}  traces:\n    headers: [x-team]\n    redact: ['\\d{{4}}-\\d{{4}}-\\d{{4}}-\\d{{4}}']\n",
        priced_targets(&mock)
    );
    let traced = traced(&config);
    let (status, _, _) = send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[
            ("x-team", "support"),
            ("authorization", "Bearer sk-secretsecretsecretsecret"),
        ],
        Some(ask(
            "my key is sk-abcdefghijklmnopqrstuvwx and card 1234-5678-9012-3456",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let traces = flushed(&traced).await;
    let stored = serde_json::to_string(&traces[0]).unwrap();
    assert!(!stored.contains("sk-abc"), "{stored}");
    assert!(!stored.contains("sk-secret"), "{stored}");
    assert!(!stored.contains("1234-5678"), "{stored}");
    assert!(stored.contains("[REDACTED]"), "{stored}");
    assert_eq!(traces[0].detail["headers"]["x-team"], "support");
    // The upstream still got the real text: redaction is for traces only.
    assert!(
        mock.received()[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("1234-5678")
    );
    // Credential headers cannot be configured for capture.
    let refused = GatewayConfig::parse(
        "gateway:\n  traces:\n    headers: [Authorization]\n",
        std::path::Path::new("plumb.yaml"),
        &ProviderContext::new(std::path::Path::new(".")),
    )
    .unwrap_err();
    assert!(refused.to_string().contains("credentials"), "{refused}");
}

#[tokio::test]
async fn metadata_capture_keeps_no_conversation() {
    let mock = MockServer::start().await;
    let config = format!("{}  traces: {{capture: metadata}}\n", priced_targets(&mock));
    let traced = traced(&config);
    send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(ask("private words")),
    )
    .await;
    let traces = flushed(&traced).await;
    assert!(traces[0].detail.get("input").is_none());
    assert!(traces[0].detail.get("output").is_none());
    assert!(
        !serde_json::to_string(&traces[0])
            .unwrap()
            .contains("private words")
    );
}

#[tokio::test]
async fn feedback_attaches_by_trace_or_response_id() {
    let mock = MockServer::start().await;
    let traced = traced(&priced_targets(&mock));
    let (_, headers, body) = send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(ask("rate me")),
    )
    .await;
    let trace_id = headers["x-plumb-trace-id"].to_str().unwrap().to_owned();
    let response_id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Sent at once: the trace may still be queued, and feedback waits for it.
    let (status, _, body) = send(
        &traced.gateway,
        "POST",
        "/v1/feedback",
        &[],
        Some(json!({"trace_id": trace_id, "score": 1, "label": "helpful"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, _) = send(
        &traced.gateway,
        "POST",
        "/v1/feedback",
        &[],
        Some(json!({"trace_id": response_id, "comment": "good"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let attached = traced.store.feedback(&trace_id).unwrap();
    assert_eq!(attached.len(), 2);
    assert_eq!(attached[0].score, Some(1.0));
    assert_eq!(attached[1].comment.as_deref(), Some("good"));

    for (body, status, needle) in [
        (json!({"trace_id": "0123"}), 400, "needs a `score`"),
        (json!({"score": 1}), 400, "trace_id"),
        (
            json!({"trace_id": trace_id, "score": "high"}),
            400,
            "`score` must be a number",
        ),
        (
            json!({"trace_id": trace_id, "stars": 5}),
            400,
            "unknown field `stars`",
        ),
        (
            json!({"trace_id": "nope", "score": 0}),
            404,
            "no trace `nope`",
        ),
    ] {
        let (got, _, text) = send(&traced.gateway, "POST", "/v1/feedback", &[], Some(body)).await;
        assert_eq!(got.as_u16(), status, "{text}");
        assert!(text.contains(needle), "{text}");
    }
}

#[tokio::test]
async fn metrics_count_requests_tokens_cost_and_breakers() {
    let mock = MockServer::start().await;
    let traced = traced(&priced_targets(&mock));
    for _ in 0..3 {
        send(
            &traced.gateway,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(ask("m")),
        )
        .await;
    }
    mock.push(Reply::openai_error(400, "no"));
    send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(ask("m")),
    )
    .await;
    let (status, headers, text) = send(&traced.gateway, "GET", "/metrics", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for needle in [
        "plumb_gateway_requests_total{model=\"fast\",status=\"200\"} 3",
        "plumb_gateway_requests_total{model=\"fast\",status=\"400\"} 1",
        "plumb_gateway_errors_total{model=\"fast\",kind=\"invalid_request_error\"} 1",
        "plumb_gateway_request_duration_seconds_count{model=\"fast\"} 4",
        "plumb_gateway_tokens_total{model=\"fast\",direction=\"prompt\"}",
        "plumb_gateway_cost_usd_total{model=\"fast\"}",
        "plumb_gateway_breaker_open{target=\"echo\"} 0",
        "plumb_traces_queue_depth",
        "plumb_traces_dropped_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

/// A store that blocks every write until released.
struct StuckStore {
    gate: Mutex<()>,
    written: Mutex<usize>,
}

impl TraceStore for StuckStore {
    fn insert_traces(&self, traces: &[TraceRecord]) -> Result<(), StoreError> {
        let _held = self.gate.lock().unwrap();
        *self.written.lock().unwrap() += traces.len();
        Ok(())
    }
    fn trace(&self, _: &str) -> Result<Option<TraceRecord>, StoreError> {
        Ok(None)
    }
    fn list_traces(&self, _: &TraceFilter) -> Result<Vec<TraceRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn add_feedback(&self, _: &Feedback) -> Result<i64, StoreError> {
        Err(StoreError::NotFound("none".into()))
    }
    fn feedback(&self, _: &str) -> Result<Vec<Feedback>, StoreError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::await_holding_lock,
    reason = "the held lock is the stuck store: it blocks the writer's thread, never a request"
)]
async fn a_stuck_store_never_blocks_requests_and_drops_are_counted() {
    let store = Arc::new(StuckStore {
        gate: Mutex::new(()),
        written: Mutex::new(0),
    });
    let held = store.gate.lock().unwrap();
    let config = GatewayConfig::parse(
        "gateway:\n  models:\n    fast:\n      targets: [{provider: echo}]\n  traces: {queue: 4, batch: 2, flush_ms: 1}\n",
        std::path::Path::new("plumb.yaml"),
        &ProviderContext::new(std::path::Path::new(".")),
    )
    .unwrap();
    let (gateway, _writer) = Gateway::new(config).with_traces(store.clone());
    let gateway = Arc::new(gateway);
    let began = Instant::now();
    for _ in 0..50 {
        let (status, _, _) = send(
            &gateway,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(ask("q")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "requests waited on the store: {:?}",
        began.elapsed()
    );
    let (_, _, text) = send(&gateway, "GET", "/metrics", &[], None).await;
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("plumb_traces_dropped_total "))
        .unwrap()
        .parse()
        .unwrap();
    // At most one batch in the writer and four queued got through.
    assert!(dropped >= 50 - 2 - 4, "dropped {dropped}\n{text}");
    drop(held);
    gateway.tracing.as_ref().unwrap().tracer.flush().await;
    assert_eq!(*store.written.lock().unwrap() as u64, 50 - dropped);
}

#[test]
fn otlp_spans_carry_the_genai_attributes() {
    let trace = TraceRecord {
        seq: 1,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        parent_span_id: Some("1111111111111111".into()),
        request_id: "chatcmpl-1".into(),
        started_at: 1_700_000_000_000,
        endpoint: "chat".into(),
        key_id: None,
        model: "fast".into(),
        prompt: None,
        prompt_version: None,
        target: Some("openai:gpt-4o-mini".into()),
        status: 200,
        error: None,
        cache: "miss".into(),
        stream: false,
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_usd: None,
        latency_ms: 12.5,
        ttft_ms: None,
        detail: json!({"params": {"temperature": 0.2, "max_tokens": 64}, "finish_reason": "stop"}),
    };
    let body = plumb_gateway::trace::otlp_body(&[trace]);
    let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["parentSpanId"], "1111111111111111");
    assert_eq!(span["name"], "chat fast");
    assert_eq!(span["startTimeUnixNano"], "1700000000000000000");
    assert_eq!(span["endTimeUnixNano"], "1700000000012500000");
    let attributes: std::collections::HashMap<String, Value> = span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"].clone()))
        .collect();
    assert_eq!(attributes["gen_ai.operation.name"]["stringValue"], "chat");
    assert_eq!(attributes["gen_ai.provider.name"]["stringValue"], "openai");
    assert_eq!(attributes["gen_ai.request.model"]["stringValue"], "fast");
    assert_eq!(
        attributes["gen_ai.response.model"]["stringValue"],
        "gpt-4o-mini"
    );
    assert_eq!(attributes["gen_ai.usage.input_tokens"]["intValue"], "10");
    assert_eq!(attributes["gen_ai.usage.output_tokens"]["intValue"], "5");
    assert_eq!(attributes["gen_ai.request.temperature"]["doubleValue"], 0.2);
    assert_eq!(attributes["gen_ai.request.max_tokens"]["intValue"], "64");
    assert_eq!(
        attributes["gen_ai.response.finish_reasons"]["arrayValue"]["values"][0]["stringValue"],
        "stop"
    );
}

#[tokio::test]
async fn a_streamed_answer_is_traced_when_it_ends() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_stream(&["a ", "b"]).gap(Duration::from_millis(20)));
    mock.push(Reply::broken_stream(&["cut "]));
    let traced = traced(&priced_targets(&mock));
    for _ in 0..2 {
        let mut request = ask("s");
        request["stream"] = json!(true);
        let (status, _, _) = send(
            &traced.gateway,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(request),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let traces = flushed(&traced).await;
    assert_eq!(traces.len(), 2);
    let whole = &traces[0];
    assert!(whole.stream);
    assert_eq!(whole.detail["output"]["content"], "a b");
    assert_eq!(whole.completion_tokens, 2);
    let ttft = whole.ttft_ms.unwrap();
    assert!(
        ttft > 0.0 && ttft < whole.latency_ms,
        "{ttft} vs {}",
        whole.latency_ms
    );
    assert_eq!(whole.error, None);
    let broken = &traces[1];
    assert_eq!(broken.error.as_deref(), Some("stream_broken"));
    assert_eq!(broken.detail["output"]["content"], "cut ");
}

#[tokio::test]
async fn committed_traces_are_exported_to_an_otlp_collector() {
    use axum::routing::post;
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let mock = MockServer::start().await;
    let config = format!(
        "{}  traces:\n    otlp: {{endpoint: 'http://{address}'}}\n",
        priced_targets(&mock)
    );
    let traced = traced(&config);
    let (_, headers, _) = send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(ask("export me")),
    )
    .await;
    let trace_id = headers["x-plumb-trace-id"].to_str().unwrap().to_owned();
    flushed(&traced).await;
    let began = Instant::now();
    while received.lock().unwrap().is_empty() && began.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bodies = received.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let span = &bodies[0]["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], trace_id.as_str());
    assert_eq!(span["name"], "chat fast");
    assert!(
        span["attributes"]
            .to_string()
            .contains("gen_ai.usage.input_tokens")
    );
}

#[tokio::test]
async fn tracing_can_be_turned_off() {
    let mock = MockServer::start().await;
    let config = format!("{}  traces: {{enabled: false}}\n", priced_targets(&mock));
    let traced = traced(&config);
    assert!(traced.gateway.tracing.is_none());
    let (status, headers, _) = send(
        &traced.gateway,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(ask("untraced")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The trace context is still continued and returned; nothing is stored.
    assert!(headers.contains_key("traceparent"));
    assert!(
        traced
            .store
            .list_traces(&TraceFilter::default())
            .unwrap()
            .is_empty()
    );
    let (status, _, body) = send(
        &traced.gateway,
        "POST",
        "/v1/feedback",
        &[],
        Some(json!({"trace_id": "x", "score": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("tracing_off"), "{body}");
}
