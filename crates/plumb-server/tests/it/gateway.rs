use axum::http::StatusCode;
use plumb_server::AuthMode;
use serde_json::json;

use crate::fixture;

#[tokio::test]
async fn chat_completions_through_an_alias() {
    let f = fixture(AuthMode::Keys);
    let body = json!({"model": "echo-model", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]}
    ], "temperature": 0, "user": "ignored-by-design"})
    .to_string();
    let reply = f
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&f.viewer),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["object"], "chat.completion");
    assert_eq!(reply.json["model"], "echo-model");
    assert_eq!(reply.json["choices"][0]["message"]["role"], "assistant");
    assert!(
        reply.json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("hello there")
    );
    assert!(reply.json["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(reply.headers["x-plumb-target"], "echo");

    let models = f
        .call("GET", "/v1/models", Some(&f.viewer), None, &[])
        .await;
    assert_eq!(models.json["data"][0]["id"], "echo-model");
}

#[tokio::test]
async fn errors_are_in_openai_shape() {
    let f = fixture(AuthMode::Keys);
    let body =
        json!({"model": "echo-model", "messages": [{"role": "user", "content": "x"}]}).to_string();
    let reply = f
        .call("POST", "/v1/chat/completions", None, Some(&body), &[])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json["error"]["code"], "invalid_api_key");
    assert_eq!(reply.json["error"]["type"], "invalid_request_error");

    let unknown =
        json!({"model": "echo-modl", "messages": [{"role": "user", "content": "x"}]}).to_string();
    let reply = f
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&f.viewer),
            Some(&unknown),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json["error"]["code"], "model_not_found");
    assert_eq!(reply.json["error"]["param"], "model");
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `echo-model`")
    );

    for (body, param) in [
        (r#"{"model": "echo-model"}"#, "messages"),
        (r#"{"messages": []}"#, "model"),
        (
            r#"{"model": "echo-model", "messages": [{"role": "robot", "content": "x"}]}"#,
            "messages[0].role",
        ),
        (
            r#"{"model": "echo-model", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
            "temperature",
        ),
        (
            r#"{"model": "echo-model", "messages": [{"role": "user", "content": "x"}], "n": 3}"#,
            "n",
        ),
    ] {
        let reply = f
            .call(
                "POST",
                "/v1/chat/completions",
                Some(&f.viewer),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.json
        );
        assert_eq!(
            reply.json["error"]["param"], param,
            "{body}: {}",
            reply.json
        );
    }
    let reply = f
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&f.viewer),
            Some("{not json"),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json["error"]["type"], "invalid_request_error");

    let huge = format!(
        r#"{{"model": "echo-model", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(plumb_gateway::MAX_BODY_BYTES + 1)
    );
    let reply = f
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&f.viewer),
            Some(&huge),
            &[],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.json
    );
    assert_eq!(reply.json["error"]["type"], "invalid_request_error");

    let reply = f
        .call("GET", "/v1/nothing", Some(&f.viewer), None, &[])
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json["error"]["code"], "unknown_url");
}

#[tokio::test]
async fn every_call_is_traced_with_its_key_and_readable_through_the_api() {
    let f = fixture(AuthMode::Keys);
    let body =
        json!({"model": "echo-model", "messages": [{"role": "user", "content": "trace me"}]})
            .to_string();
    let reply = f
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&f.editor),
            Some(&body),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let trace_id = reply.headers["x-plumb-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let feedback = json!({"trace_id": trace_id, "score": 0.5, "label": "meh"}).to_string();
    let attached = f
        .call(
            "POST",
            "/v1/feedback",
            Some(&f.viewer),
            Some(&feedback),
            &[],
        )
        .await;
    assert_eq!(attached.status, StatusCode::CREATED, "{}", attached.json);

    let listed = f
        .call(
            "GET",
            "/api/v1/traces?model=echo-model&limit=5",
            Some(&f.viewer),
            None,
            &[],
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.json);
    let traces = listed.json["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 1);
    let editor_key_id = f.editor.split('_').nth(1).unwrap();
    assert_eq!(traces[0]["key_id"], editor_key_id);
    assert_eq!(traces[0]["detail"]["input"][0]["content"], "trace me");

    let one = f
        .call(
            "GET",
            &format!("/api/v1/traces/{trace_id}"),
            Some(&f.viewer),
            None,
            &[],
        )
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json["feedback"][0]["label"], "meh");
    let viewer_key_id = f.viewer.split('_').nth(1).unwrap();
    assert_eq!(one.json["feedback"][0]["key_id"], viewer_key_id);

    let missing = f
        .call("GET", "/api/v1/traces/nope", Some(&f.viewer), None, &[])
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = f
        .call("GET", "/api/v1/traces?limit=x", Some(&f.viewer), None, &[])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // Metrics need a key like everything else.
    let anonymous = f.call("GET", "/metrics", None, None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}
