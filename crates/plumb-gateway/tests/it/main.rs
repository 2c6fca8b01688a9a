#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

//! The gateway's router against a mock OpenAI upstream on loopback: fallback on retryable
//! errors only, OpenAI-shaped upstream errors, and streamed answers as SSE chunks.

mod cache;
mod limits;
mod routing;
mod traces;

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use plumb_gateway::{Gateway, GatewayConfig, router};
use plumb_provider::ProviderContext;
use plumb_test::{MockServer, Reply};
use serde_json::{Value, json};
use tower::ServiceExt;

fn gateway(config: &str) -> Arc<Gateway> {
    let ctx = ProviderContext::new(Path::new("."));
    Arc::new(Gateway::new(
        GatewayConfig::parse(config, Path::new("plumb.yaml"), &ctx).unwrap(),
    ))
}

fn two_targets(mock: &MockServer) -> String {
    format!(
        "gateway:\n  models:\n    fast:\n      targets:\n        - provider: openai-compatible:{}#up-model\n          config: {{api_key: test, max_retries: 0}}\n        - provider: echo\n",
        mock.openai_base()
    )
}

async fn post(gateway: Arc<Gateway>, body: Value) -> (StatusCode, axum::http::HeaderMap, String) {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router(gateway).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

fn ask(text: &str) -> Value {
    json!({"model": "fast", "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn the_first_target_answers_when_healthy() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_text("from upstream"));
    let mut request = ask("hi");
    request["user"] = json!("customer-7");
    request["metadata"] = json!({"team": "support"});
    let (status, headers, body) = post(gateway(&two_targets(&mock)), request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "from upstream");
    assert_eq!(headers["x-plumb-attempts"], "1");
    let sent = &mock.received()[0].body;
    assert_eq!(sent["model"], "up-model");
    // Fields plumb has no name for go through unchanged.
    assert_eq!(sent["user"], "customer-7");
    assert_eq!(sent["metadata"]["team"], "support");
}

#[tokio::test]
async fn retryable_failures_fall_back_to_the_next_target() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_error(503, "overloaded"));
    let (status, headers, body) = post(gateway(&two_targets(&mock)), ask("fallback please")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-plumb-target"], "echo");
    assert_eq!(headers["x-plumb-attempts"], "2");
    assert!(body.contains("fallback please"), "{body}");

    mock.push(Reply::openai_error(429, "slow down").header("retry-after", "7"));
    let (status, headers, _) = post(gateway(&two_targets(&mock)), ask("again")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-plumb-attempts"], "2");
}

#[tokio::test]
async fn a_bad_request_is_not_retried_elsewhere() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_error(400, "context length exceeded"));
    let (status, headers, body) = post(gateway(&two_targets(&mock)), ask("too long")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(!headers.contains_key("x-plumb-attempts"));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context length exceeded")
    );
    assert!(
        !body.to_string().contains("test"),
        "no credentials in errors: {body}"
    );
}

#[tokio::test]
async fn an_exhausted_route_says_which_target_failed_last() {
    let mock = MockServer::start().await;
    let config = format!(
        "gateway:\n  models:\n    fast:\n      targets:\n        - provider: openai-compatible:{}#m\n          config: {{api_key: secret-key-123, max_retries: 0}}\n",
        mock.openai_base()
    );
    mock.push(Reply::openai_error(429, "slow down").header("retry-after", "7"));
    let (status, headers, body) = post(gateway(&config), ask("x")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers["retry-after"], "7");
    assert!(!body.contains("secret-key-123"), "{body}");
    mock.push(Reply::openai_error(500, "boom"));
    let (status, _, body) = post(gateway(&config), ask("x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn stream_true_answers_in_server_sent_events() {
    let config = "gateway:\n  models:\n    fast:\n      targets: [{provider: echo}]\n";
    let mut request = ask("stream me");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let (status, headers, body) = post(gateway(config), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(text.contains("stream me"), "{text}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn config_errors_are_located() {
    let ctx = ProviderContext::new(Path::new("."));
    let error = GatewayConfig::parse(
        "gateway:\n  models:\n    fast:\n      targets: [{provider: opneai:gpt-4o-mini}]\n",
        Path::new("plumb.yaml"),
        &ctx,
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("gateway.models.fast: targets[0]"),
        "{error}"
    );
    let error = GatewayConfig::parse("gateway:\n  modles: {}\n", Path::new("plumb.yaml"), &ctx)
        .unwrap_err();
    assert_eq!(error.line, Some(2));
    let error = GatewayConfig::parse(
        "gateway:\n  models:\n    fast:\n      targets: []\n",
        Path::new("plumb.yaml"),
        &ctx,
    )
    .unwrap_err();
    assert!(error.to_string().contains("`targets` is empty"), "{error}");
    // The registry's section is not the gateway's business.
    assert!(
        GatewayConfig::parse(
            "promotion:\n  production: {suites: [a.yaml]}\n",
            Path::new("plumb.yaml"),
            &ctx
        )
        .unwrap()
        .routes
        .is_empty()
    );
}

async fn post_to(gateway: Arc<Gateway>, path: &str, body: Value) -> (StatusCode, Value) {
    let request = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router(gateway).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn embeddings_in_float_and_base64() {
    use base64::Engine as _;
    let mock = MockServer::start().await;
    let config = format!(
        "gateway:\n  embeddings:\n    vectors: {{provider: \"openai-compatible:{}#emb\"}}\n",
        mock.openai_base()
    );
    let gateway = gateway(&config);
    let (status, floats) = post_to(
        gateway.clone(),
        "/v1/embeddings",
        json!({"model": "vectors", "input": ["one", "two"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{floats}");
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["data"].as_array().unwrap().len(), 2);
    let first: Vec<f32> = serde_json::from_value(floats["data"][0]["embedding"].clone()).unwrap();
    let (_, encoded) = post_to(
        gateway.clone(),
        "/v1/embeddings",
        json!({"model": "vectors", "input": "one", "encoding_format": "base64"}),
    )
    .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, first);

    let (status, error) = post_to(
        gateway.clone(),
        "/v1/embeddings",
        json!({"model": "vectors", "input": [[1, 2, 3]]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["param"], "input");
    let (status, error) = post_to(
        gateway,
        "/v1/embeddings",
        json!({"model": "nope", "input": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn a_failing_target_is_skipped_while_its_circuit_is_open() {
    let mock = MockServer::start().await;
    let config = format!(
        "gateway:\n  models:\n    fast:\n      breaker: {{failures: 2, cooldown_ms: 300}}\n      targets:\n        - provider: openai-compatible:{}#up\n          config: {{api_key: k, max_retries: 0}}\n        - provider: echo\n",
        mock.openai_base()
    );
    let gateway = gateway(&config);
    mock.push(Reply::openai_error(500, "down"));
    mock.push(Reply::openai_error(500, "down"));
    for _ in 0..2 {
        let (status, headers, _) = post(gateway.clone(), ask("x")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-plumb-attempts"], "2");
    }
    // Open: the first target is not even called.
    let (status, headers, _) = post(gateway.clone(), ask("x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-plumb-target"], "echo");
    assert_eq!(headers["x-plumb-attempts"], "1");
    assert_eq!(mock.received().len(), 2);
    // After the cooldown one probe goes through; it succeeds and closes the circuit.
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let (_, headers, _) = post(gateway.clone(), ask("x")).await;
    assert_ne!(headers["x-plumb-target"], "echo");
    assert_eq!(mock.received().len(), 3);
    assert!(!gateway.config.routes["fast"].targets[0].breaker.is_open());
}

#[tokio::test]
async fn every_circuit_open_is_a_503_with_retry_after() {
    let mock = MockServer::start().await;
    let config = format!(
        "gateway:\n  models:\n    solo:\n      breaker: {{failures: 1, cooldown_ms: 60000}}\n      targets:\n        - provider: openai-compatible:{}#up\n          config: {{api_key: k, max_retries: 0}}\n",
        mock.openai_base()
    );
    let gateway = gateway(&config);
    mock.push(Reply::openai_error(502, "bad gateway upstream"));
    let request = json!({"model": "solo", "messages": [{"role": "user", "content": "x"}]});
    let (status, _, _) = post(gateway.clone(), request.clone()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, headers, body) = post(gateway, request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "{retry}");
    assert!(body.contains("circuit_open"), "{body}");
}

#[tokio::test]
async fn a_key_quoted_by_the_upstream_never_reaches_the_client() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_error(
        401,
        "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwx",
    ));
    let config = format!(
        "gateway:\n  models:\n    fast:\n      targets: [{{provider: 'openai-compatible:{}#m', config: {{api_key: t}}}}]\n",
        mock.openai_base()
    );
    let (status, _, body) = post(gateway(&config), ask("x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(!body.contains("abcdefghijklmnop"), "{body}");
    assert!(body.contains("[REDACTED]"), "{body}");
}
