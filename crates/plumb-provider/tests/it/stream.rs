//! Streamed answers from OpenAI-style servers: deltas as they arrive, usage from the last
//! chunk, and a broken stream reported as an error rather than a short answer.

use std::time::Duration;

use futures_util::StreamExt as _;
use plumb_core::{Assembler, FinishReason, ModelErrorKind};
use plumb_provider::{ProviderOptions, build};
use plumb_test::{MockServer, Reply};

use super::{ctx, request};

fn compatible(mock: &MockServer) -> std::sync::Arc<dyn plumb_core::ChatModel> {
    let options = ProviderOptions {
        api_key: Some("k".into()),
        max_retries: Some(0),
        ..ProviderOptions::default()
    };
    build(
        &format!("openai-compatible:{}#m", mock.openai_base()),
        &options,
        &ctx(),
    )
    .unwrap()
}

#[tokio::test]
async fn deltas_arrive_one_by_one_and_add_up() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_stream(&["Hel", "lo", " world"]).gap(Duration::from_millis(20)));
    let model = compatible(&mock);
    let mut stream = model.chat_stream(&request("hi")).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.content, "Hel");
    let mut assembler = Assembler::default();
    assembler.push(&first);
    while let Some(delta) = stream.next().await {
        assembler.push(&delta.unwrap());
    }
    let answer = assembler.into_response();
    assert_eq!(answer.content, "Hello world");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(answer.usage.prompt_tokens, 11);
    assert_eq!(answer.usage.completion_tokens, 3);
    assert_eq!(answer.model.as_deref(), Some("mock-model-2024"));
    let sent = &mock.received()[0].body;
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn a_broken_stream_ends_in_a_retryable_error() {
    let mock = MockServer::start().await;
    mock.push(Reply::broken_stream(&["par", "tial"]));
    let model = compatible(&mock);
    let mut stream = model.chat_stream(&request("hi")).await.unwrap();
    let mut text = String::new();
    let mut failure = None;
    while let Some(delta) = stream.next().await {
        match delta {
            Ok(delta) => text.push_str(&delta.content),
            Err(error) => failure = Some(error),
        }
    }
    assert_eq!(text, "partial");
    let failure = failure.expect("the stream must end in an error");
    assert_eq!(failure.kind, ModelErrorKind::Connect, "{failure}");
    assert!(failure.is_retryable());
}

#[tokio::test]
async fn refusals_fail_before_the_stream_starts() {
    let mock = MockServer::start().await;
    mock.push(Reply::openai_error(429, "slow down").header("retry-after", "3"));
    let model = compatible(&mock);
    let error = model.chat_stream(&request("hi")).await.err().unwrap();
    assert_eq!(error.kind, ModelErrorKind::RateLimited);
    assert_eq!(error.retry_after, Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn models_that_cannot_stream_send_one_delta() {
    let model = build("echo", &ProviderOptions::default(), &ctx()).unwrap();
    let deltas: Vec<_> = model
        .chat_stream(&request("once"))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(deltas.len(), 1);
    let delta = deltas[0].as_ref().unwrap();
    assert!(delta.content.contains("once"));
    assert!(delta.finish_reason.is_some());
}

fn anthropic(mock: &MockServer) -> std::sync::Arc<dyn plumb_core::ChatModel> {
    let options = ProviderOptions {
        api_key: Some("k".into()),
        api_base_url: Some(mock.anthropic_base()),
        max_retries: Some(0),
        ..ProviderOptions::default()
    };
    build("anthropic:claude-mock", &options, &ctx()).unwrap()
}

#[tokio::test]
async fn anthropic_streams_text_with_usage() {
    let mock = MockServer::start().await;
    let model = anthropic(&mock);
    let deltas: Vec<_> = model
        .chat_stream(&request("stream this"))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(deltas.len() >= 3, "{deltas:?}");
    let mut assembler = Assembler::default();
    for delta in &deltas {
        assembler.push(delta.as_ref().unwrap());
    }
    let answer = assembler.into_response();
    assert_eq!(answer.content, "echo: stream this");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert_eq!(answer.usage.prompt_tokens, 13);
    assert_eq!(answer.usage.completion_tokens, 3);
    assert_eq!(answer.model.as_deref(), Some("claude-mock"));
    assert_eq!(mock.received()[0].body["stream"], true);
}

#[tokio::test]
async fn anthropic_tool_calls_stream_as_tool_call_deltas() {
    let mock = MockServer::start().await;
    let events = vec![
        serde_json::json!({"type": "message_start", "message": {"model": "claude-mock",
            "usage": {"input_tokens": 20, "output_tokens": 1}}})
        .to_string(),
        serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}})
        .to_string(),
        serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{\"q\": "}})
        .to_string(),
        serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "1}"}})
        .to_string(),
        serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9}})
        .to_string(),
        serde_json::json!({"type": "message_stop"}).to_string(),
    ];
    mock.push(Reply {
        stream: Some(plumb_test::StreamScript {
            events,
            gap: Duration::ZERO,
            broken: false,
        }),
        ..Reply::json(200, serde_json::Value::Null)
    });
    let model = anthropic(&mock);
    let mut assembler = Assembler::default();
    let mut stream = model.chat_stream(&request("call it")).await.unwrap();
    while let Some(delta) = stream.next().await {
        assembler.push(&delta.unwrap());
    }
    let answer = assembler.into_response();
    assert_eq!(answer.tool_calls.len(), 1);
    assert_eq!(answer.tool_calls[0].id, "toolu_1");
    assert_eq!(answer.tool_calls[0].function.name, "lookup");
    assert_eq!(answer.tool_calls[0].function.arguments, "{\"q\": 1}");
    assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(answer.usage.completion_tokens, 9);
}

#[tokio::test]
async fn an_anthropic_stream_without_message_stop_is_broken() {
    let mock = MockServer::start().await;
    let mut events = plumb_test::anthropic_events(&["par", "tial"]);
    events.truncate(4); // message_start, block start, ping, one text delta
    mock.push(Reply {
        stream: Some(plumb_test::StreamScript {
            events,
            gap: Duration::ZERO,
            broken: false,
        }),
        ..Reply::json(200, serde_json::Value::Null)
    });
    let model = anthropic(&mock);
    let items: Vec<_> = model
        .chat_stream(&request("x"))
        .await
        .unwrap()
        .collect()
        .await;
    let last = items.last().unwrap();
    assert!(
        matches!(last, Err(error) if error.kind == ModelErrorKind::Connect),
        "{items:?}"
    );
}
