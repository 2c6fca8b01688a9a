//! The exact cache: hits for the same request (whoever asks, streamed or not), never for a
//! bypassing client, gone after the TTL, off unless the route turns it on.

use std::time::Duration;

use axum::http::StatusCode;
use plumb_test::MockServer;
use serde_json::json;

use super::{ask, gateway, post};

fn cached(mock: &MockServer, ttl: u64) -> String {
    format!(
        "gateway:\n  models:\n    fast:\n      targets: [{{provider: 'openai-compatible:{}#m', config: {{api_key: t}}}}]\n      cache: {{ttl_s: {ttl}}}\n    plain:\n      targets: [{{provider: 'openai-compatible:{}#m', config: {{api_key: t}}}}]\n",
        mock.openai_base(),
        mock.openai_base()
    )
}

#[tokio::test]
async fn the_same_request_is_answered_from_the_cache() {
    let mock = MockServer::start().await;
    let gateway = gateway(&cached(&mock, 60));
    let (status, headers, first) = post(gateway.clone(), ask("same question")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-plumb-cache"], "miss");

    let mut other_user = ask("same question");
    other_user["user"] = json!("someone-else");
    let (_, headers, second) = post(gateway.clone(), other_user).await;
    assert_eq!(headers["x-plumb-cache"], "hit");
    assert_eq!(headers["x-plumb-target"], "cache");
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(mock.received().len(), 1);

    // Streamed, the cached answer is replayed as chunks.
    let mut streamed = ask("same question");
    streamed["stream"] = json!(true);
    let (_, headers, body) = post(gateway.clone(), streamed).await;
    assert_eq!(headers["x-plumb-cache"], "hit");
    assert!(
        body.contains("echo: same question") && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );
    assert_eq!(mock.received().len(), 1);

    // A different question, a different temperature, or a bypassing client go upstream.
    post(gateway.clone(), ask("another question")).await;
    let mut warmer = ask("same question");
    warmer["temperature"] = json!(0.9);
    post(gateway.clone(), warmer).await;
    assert_eq!(mock.received().len(), 3);
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-plumb-cache", "bypass")
        .body(axum::body::Body::from(ask("same question").to_string()))
        .unwrap();
    let response = tower::ServiceExt::oneshot(plumb_gateway::router(gateway.clone()), request)
        .await
        .unwrap();
    assert_eq!(response.headers()["x-plumb-cache"], "bypass");
    assert_eq!(mock.received().len(), 4);

    // Routes without `cache` never cache.
    let mut plain = ask("same question");
    plain["model"] = json!("plain");
    let (_, headers, _) = post(gateway.clone(), plain.clone()).await;
    assert!(headers.get("x-plumb-cache").is_none());
    post(gateway, plain).await;
    assert_eq!(mock.received().len(), 6);
}

#[tokio::test]
async fn a_streamed_miss_fills_the_cache_and_entries_expire() {
    let mock = MockServer::start().await;
    let gateway = gateway(&cached(&mock, 1));
    let mut streamed = ask("fill me");
    streamed["stream"] = json!(true);
    let (_, headers, _) = post(gateway.clone(), streamed).await;
    assert_eq!(headers["x-plumb-cache"], "miss");
    // The stream stores its answer before its body ends, so it is there once read.
    let (_, headers, body) = post(gateway.clone(), ask("fill me")).await;
    assert_eq!(headers["x-plumb-cache"], "hit", "{body}");
    assert!(body.contains("echo: fill me"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, headers, _) = post(gateway, ask("fill me")).await;
    assert_eq!(headers["x-plumb-cache"], "miss");
    assert_eq!(mock.received().len(), 2);
}
