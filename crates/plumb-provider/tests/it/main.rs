//! Providers against mock OpenAI and Anthropic servers on loopback, speaking the real wire
//! formats: success, scripted errors, 429 with Retry-After, timeouts, missing keys; and the
//! local model on a tiny prompt.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod local;
mod stream;

use std::path::Path;
use std::time::{Duration, Instant};

use plumb_core::{
    ChatRequest, FinishReason, Message, ModelErrorKind, ModelParams, ResponseFormat, Role,
};
use plumb_provider::{ProviderContext, ProviderOptions, build};
use plumb_test::{MockServer, Reply};
use serde_json::json;

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, text),
        ],
        params: ModelParams {
            temperature: Some(0.0),
            max_tokens: Some(20),
            ..Default::default()
        },
        ..ChatRequest::default()
    }
}

fn ctx() -> ProviderContext {
    ProviderContext::new(Path::new("."))
}

fn options(base: String) -> ProviderOptions {
    ProviderOptions {
        api_base_url: Some(base),
        api_key: Some("sk-test".into()),
        timeout_ms: Some(2_000),
        max_retries: Some(2),
        ..Default::default()
    }
}

#[tokio::test]
async fn openai_round_trip_speaks_the_wire_format() {
    let server = MockServer::start().await;
    let model = build("openai:gpt-4o-mini", &options(server.openai_base()), &ctx()).unwrap();
    let response = model.chat(&request("hello")).await.unwrap();
    assert_eq!(response.content, "echo: hello");
    assert_eq!(response.usage.prompt_tokens, 11);
    assert_eq!(response.finish_reason, Some(FinishReason::Stop));
    let received = server.received();
    assert_eq!(received[0].headers["authorization"], "Bearer sk-test");
    assert_eq!(received[0].body["model"], "gpt-4o-mini");
    assert_eq!(
        received[0].body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(received[0].body["max_tokens"], 20);
    // gpt-4o-mini is in the price table.
    assert!(model.pricing().unwrap().input_per_mtok > 0.0);
}

#[tokio::test]
async fn retries_429_honouring_retry_after_then_succeeds() {
    let server = MockServer::start().await;
    server.push(Reply::openai_error(429, "slow down").header("retry-after", "1"));
    server.push(Reply::openai_error(503, "overloaded").header("retry-after-ms", "10"));
    let model = build("openai:gpt-4o-mini", &options(server.openai_base()), &ctx()).unwrap();
    let started = Instant::now();
    let response = model.chat(&request("again")).await.unwrap();
    assert_eq!(response.content, "echo: again");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "Retry-After was not honoured"
    );
    assert_eq!(server.received().len(), 3);
}

#[tokio::test]
async fn gives_up_after_max_retries_with_a_server_error() {
    let server = MockServer::start().await;
    for _ in 0..3 {
        server.push(Reply::openai_error(500, "boom").header("retry-after", "0"));
    }
    let model = build("openai:gpt-4o-mini", &options(server.openai_base()), &ctx()).unwrap();
    let error = model.chat(&request("x")).await.unwrap_err();
    assert_eq!(error.kind, ModelErrorKind::Server);
    assert_eq!(error.status, Some(500));
    assert!(error.message.contains("boom"), "{error}");
    assert_eq!(server.received().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = MockServer::start().await;
    server.push(Reply::openai_error(401, "bad key"));
    let model = build("openai:gpt-4o-mini", &options(server.openai_base()), &ctx()).unwrap();
    let error = model.chat(&request("x")).await.unwrap_err();
    assert_eq!(error.kind, ModelErrorKind::Auth);
    assert!(error.is_user_error());
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn timeouts_are_retryable_errors() {
    let server = MockServer::start().await;
    server.push(Reply::openai_text("late").delayed(Duration::from_millis(1500)));
    let mut opts = options(server.openai_base());
    opts.timeout_ms = Some(200);
    opts.max_retries = Some(0);
    let model = build("openai:gpt-4o-mini", &opts, &ctx()).unwrap();
    let error = model.chat(&request("x")).await.unwrap_err();
    assert_eq!(error.kind, ModelErrorKind::Timeout);
    assert!(error.is_retryable());
}

#[tokio::test]
async fn unreachable_endpoint_is_a_connect_error() {
    let mut opts = options("http://127.0.0.1:9/v1".into());
    opts.max_retries = Some(0);
    let model = build("openai:gpt-4o-mini", &opts, &ctx()).unwrap();
    let error = model.chat(&request("x")).await.unwrap_err();
    assert_eq!(error.kind, ModelErrorKind::Connect, "{error}");
    assert!(error.hint.is_some());
}

#[tokio::test]
async fn missing_key_fails_preflight_with_a_hint() {
    let opts = ProviderOptions {
        api_key_env: Some("PLUMB_TEST_KEY_UNSET".into()),
        ..Default::default()
    };
    let model = build("openai:gpt-4o-mini", &opts, &ctx()).unwrap();
    let error = model.preflight().unwrap_err();
    assert_eq!(error.kind, ModelErrorKind::Config);
    assert!(error.message.contains("PLUMB_TEST_KEY_UNSET"));
}

#[tokio::test]
async fn openai_compatible_needs_no_key_and_passes_top_k() {
    let server = MockServer::start().await;
    let id = format!("openai-compatible:{}#llama", server.openai_base());
    let model = build(&id, &ProviderOptions::default(), &ctx()).unwrap();
    model.preflight().unwrap();
    let mut req = request("hi");
    req.params.top_k = Some(7);
    assert_eq!(model.chat(&req).await.unwrap().content, "echo: hi");
    let body = &server.received()[0].body;
    assert_eq!(body["top_k"], 7);
    assert_eq!(body["model"], "llama");
    assert!(server.received()[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn anthropic_messages_round_trip() {
    let server = MockServer::start().await;
    let model = build(
        "anthropic:claude-3-5-haiku-latest",
        &options(server.anthropic_base()),
        &ctx(),
    )
    .unwrap();
    let response = model.chat(&request("bonjour")).await.unwrap();
    assert_eq!(response.content, "echo: bonjour");
    assert_eq!(response.usage.prompt_tokens, 13);
    let received = &server.received()[0];
    assert_eq!(received.path, "/v1/messages");
    assert_eq!(received.headers["x-api-key"], "sk-test");
    assert_eq!(received.headers["anthropic-version"], "2023-06-01");
    assert_eq!(received.body["system"], "be brief");
    assert_eq!(
        received.body["messages"],
        json!([{"role": "user", "content": "bonjour"}])
    );
}

#[tokio::test]
async fn anthropic_structured_output_uses_a_forced_tool() {
    let server = MockServer::start().await;
    server.push(Reply::json(200, json!({
        "content": [{"type": "tool_use", "id": "t1", "name": "respond", "input": {"label": "bug"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 20, "output_tokens": 9}
    })));
    let model = build(
        "anthropic:claude-3-5-haiku-latest",
        &options(server.anthropic_base()),
        &ctx(),
    )
    .unwrap();
    let mut req = request("classify");
    req.params.response_format = Some(ResponseFormat::json_schema(json!({"type": "object"})));
    let response = model.chat(&req).await.unwrap();
    assert_eq!(response.content, "{\"label\":\"bug\"}");
    assert_eq!(server.received()[0].body["tool_choice"]["name"], "respond");
}

#[tokio::test]
async fn anthropic_overloaded_529_is_retried() {
    let server = MockServer::start().await;
    server.push(
        Reply::json(
            529,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
        )
        .header("retry-after", "0"),
    );
    let model = build(
        "anthropic:claude-3-5-haiku-latest",
        &options(server.anthropic_base()),
        &ctx(),
    )
    .unwrap();
    assert_eq!(model.chat(&request("x")).await.unwrap().content, "echo: x");
}

#[test]
fn unknown_provider_suggests_the_right_prefix() {
    let error = build("opnai:gpt-4o", &ProviderOptions::default(), &ctx())
        .err()
        .unwrap();
    assert_eq!(error.kind, ModelErrorKind::Config);
    assert!(
        error
            .hint
            .unwrap()
            .starts_with("did you mean `openai:gpt-4o`?")
    );
    let error = build("local:gemma3-27m", &ProviderOptions::default(), &ctx())
        .err()
        .unwrap();
    assert!(
        error.hint.unwrap().contains("local:gemma3-270m"),
        "hint should suggest the catalog name"
    );
}

#[tokio::test]
async fn mock_lookup_file_answers_by_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("answers.jsonl"),
        "{\"input\": \"hello\", \"output\": \"world\"}\n",
    )
    .unwrap();
    let model = build(
        "mock:file:answers.jsonl",
        &ProviderOptions::default(),
        &ProviderContext::new(dir.path()),
    )
    .unwrap();
    assert_eq!(
        model.chat(&request("hello")).await.unwrap().content,
        "world"
    );
    assert!(model.chat(&request("other")).await.is_err());
}

#[tokio::test]
async fn openai_compatible_embeddings() {
    let server = MockServer::start().await;
    let id = format!("openai-compatible:{}#emb-model", server.openai_base());
    let embedder =
        plumb_provider::build_embedder(&id, &ProviderOptions::default(), &ctx()).unwrap();
    let texts = ["alpha".to_owned(), "beta".to_owned(), "alpha".to_owned()];
    let vectors = embedder.embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors[0], vectors[2]);
    assert_ne!(vectors[0], vectors[1]);
    let norm: f32 = vectors[1].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert_eq!(server.received()[0].body["model"], "emb-model");
}

#[tokio::test]
async fn preflight_reports_unreachable_endpoints() {
    let model = build(
        "openai-compatible:http://127.0.0.1:9/v1#m",
        &ProviderOptions::default(),
        &ctx(),
    )
    .unwrap();
    let error = model.preflight().unwrap_err();
    assert_eq!(error.kind, ModelErrorKind::Config);
    assert!(error.message.contains("cannot reach"), "{error}");
    let server = MockServer::start().await;
    let model = build(
        &format!("openai-compatible:{}#m", server.openai_base()),
        &ProviderOptions::default(),
        &ctx(),
    )
    .unwrap();
    // Blocking connect from a test runtime thread: fine for a one-off check.
    tokio::task::spawn_blocking(move || model.preflight())
        .await
        .unwrap()
        .unwrap();
}
