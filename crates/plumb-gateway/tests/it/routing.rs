//! Streaming through the gateway, and the routing policy: fallback before the first token,
//! time-to-first-token and total timeouts, retries that honour Retry-After, weights.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use plumb_test::{MockServer, Reply};
use serde_json::{Value, json};

use super::{ask, gateway, post};

fn streamed(text: &str) -> Value {
    let mut request = ask(text);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    request
}

/// The `data:` payloads of an SSE body, JSON-parsed (`[DONE]` as a string).
fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap();
            serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
        })
        .collect()
}

fn text_of(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// Upstream first (`#up-model`), then the local `echo` as fallback, with extra YAML for the
/// first target and the route.
fn config(mock: &MockServer, first_target: &str, route: &str) -> String {
    format!(
        "gateway:\n  models:\n    fast:\n{route}      targets:\n        - provider: openai-compatible:{}#up-model\n          config: {{api_key: test}}\n{first_target}        - provider: echo\n",
        mock.openai_base()
    )
}

#[tokio::test]
async fn upstream_tokens_are_relayed_as_they_arrive() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_stream(&["one ", "two ", "three"]).gap(Duration::from_millis(30)));
    let (status, headers, body) = post(gateway(&config(&mock, "", "")), streamed("x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        headers["x-plumb-target"].to_str().unwrap(),
        format!("openai-compatible:{}#up-model", mock.openai_base())
    );
    let events = events(&body);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text_of(&events), "one two three");
    // One chunk per upstream token, not one at the end.
    assert_eq!(
        events
            .iter()
            .filter(|c| c["choices"][0]["delta"]["content"].is_string())
            .count(),
        4,
        "{events:?}"
    );
    let usage = &events[events.len() - 2]["usage"];
    assert_eq!(usage["prompt_tokens"], 11);
    assert_eq!(usage["completion_tokens"], 3);
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn a_stream_broken_before_its_first_token_falls_back() {
    let mock = MockServer::start().await;
    mock.push(Reply::broken_stream(&[]));
    let (status, headers, body) =
        post(gateway(&config(&mock, "", "")), streamed("fall back")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-plumb-target"], "echo");
    assert_eq!(headers["x-plumb-attempts"], "2");
    let events = events(&body);
    assert!(text_of(&events).contains("fall back"));
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn a_stream_broken_after_its_first_token_ends_with_an_error_event() {
    let mock = MockServer::start().await;
    mock.push(Reply::broken_stream(&["half ", "an answer"]));
    let (status, _, body) = post(gateway(&config(&mock, "", "")), streamed("x")).await;
    assert_eq!(status, StatusCode::OK);
    let events = events(&body);
    assert_eq!(text_of(&events), "half an answer");
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "stream_broken", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

#[tokio::test]
async fn a_slow_first_token_falls_back_after_ttft_ms() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_stream(&["late"]).gap(Duration::from_millis(800)));
    let began = Instant::now();
    let (status, headers, body) = post(
        gateway(&config(&mock, "          ttft_ms: 100\n", "")),
        streamed("quick"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-plumb-target"], "echo");
    assert!(
        began.elapsed() < Duration::from_millis(700),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_slow_answer_falls_back_after_timeout_ms() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_text("late").delayed(Duration::from_millis(800)));
    let began = Instant::now();
    let (status, headers, _) = post(
        gateway(&config(&mock, "          timeout_ms: 100\n", "")),
        ask("quick"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-plumb-target"], "echo");
    assert!(
        began.elapsed() < Duration::from_millis(700),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn retries_stay_on_the_target_and_honour_retry_after() {
    let mock = MockServer::start().await;
    let retrying = "      retry: {attempts: 2, base_ms: 10, max_wait_ms: 1500}\n";
    // A 503 then success: the same target answers on its second try.
    mock.push(Reply::openai_error(503, "busy"));
    mock.push(Reply::openai_text("second try"));
    let (status, headers, body) = post(gateway(&config(&mock, "", retrying)), ask("x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("second try"));
    assert_eq!(headers["x-plumb-attempts"], "2");

    // Retry-After within max_wait is waited out...
    mock.push(Reply::openai_error(429, "slow down").header("retry-after", "1"));
    mock.push(Reply::openai_text("after waiting"));
    let began = Instant::now();
    let (_, _, body) = post(gateway(&config(&mock, "", retrying)), ask("x")).await;
    assert!(body.contains("after waiting"), "{body}");
    assert!(
        began.elapsed() >= Duration::from_millis(950),
        "{:?}",
        began.elapsed()
    );

    // ...a longer one moves on to the next target at once.
    mock.push(Reply::openai_error(429, "slow down").header("retry-after", "30"));
    let began = Instant::now();
    let (_, headers, _) = post(gateway(&config(&mock, "", retrying)), ask("x")).await;
    assert_eq!(headers["x-plumb-target"], "echo");
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn weights_share_first_tries() {
    let mock = MockServer::start().await;
    let config = format!(
        "gateway:\n  models:\n    fast:\n      targets:\n        - {{provider: 'openai-compatible:{base}#a', config: {{api_key: t}}, weight: 3}}\n        - {{provider: 'openai-compatible:{base}#b', config: {{api_key: t}}, weight: 1}}\n        - {{provider: echo, weight: 0}}\n",
        base = mock.openai_base()
    );
    let gateway = gateway(&config);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..400 {
        let (_, headers, _) = post(gateway.clone(), ask("w")).await;
        let target = headers["x-plumb-target"].to_str().unwrap();
        *counts
            .entry(target.rsplit('#').next().unwrap().to_owned())
            .or_default() += 1;
    }
    let a = counts.get("a").copied().unwrap_or(0);
    let b = counts.get("b").copied().unwrap_or(0);
    assert_eq!(a + b, 400, "{counts:?}");
    // 3:1 of 400 is 300:100; ±60 is over 6 standard deviations.
    assert!((240..=360).contains(&a), "{counts:?}");
}

#[tokio::test]
async fn rules_send_hard_requests_to_the_strong_model_and_say_which_fired() {
    let mock = MockServer::start().await;
    let config = format!(
        "gateway:\n  models:\n    strong:\n      targets: [{{provider: 'openai-compatible:{}#big', config: {{api_key: t}}}}]\n    cheap:\n      targets: [{{provider: echo}}]\n    auto:\n      rules:\n        - {{name: long, when: {{min_tokens: 200}}, use: strong}}\n        - {{name: code, when: {{matches: '```|Traceback'}}, use: strong}}\n        - {{name: simple, use: cheap}}\n",
        mock.openai_base()
    );
    let gateway = gateway(&config);
    let mut request = ask("what time is it");
    request["model"] = json!("auto");
    let (status, headers, _) = post(gateway.clone(), request.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-plumb-rule"], "simple");
    assert_eq!(headers["x-plumb-target"], "echo");

    request["messages"][0]["content"] =
        json!("why does this fail?\nTraceback (most recent call last):");
    let (_, headers, _) = post(gateway.clone(), request.clone()).await;
    assert_eq!(headers["x-plumb-rule"], "code");
    assert!(
        headers["x-plumb-target"]
            .to_str()
            .unwrap()
            .ends_with("#big")
    );

    request["messages"][0]["content"] = json!("please summarise this. ".repeat(100));
    let (_, headers, _) = post(gateway, request).await;
    assert_eq!(headers["x-plumb-rule"], "long");

    let bad = plumb_gateway::GatewayConfig::parse(
        "gateway:\n  models:\n    cheap:\n      targets: [{provider: echo}]\n    auto:\n      rules: [{name: x, use: chep}]\n",
        std::path::Path::new("plumb.yaml"),
        &plumb_provider::ProviderContext::new(std::path::Path::new(".")),
    )
    .unwrap_err();
    assert!(
        bad.to_string()
            .contains("gateway.models.auto.rules[0].use: `chep`"),
        "{bad}"
    );
    assert_eq!(bad.hint.as_deref(), Some("did you mean `cheap`?"));
}
