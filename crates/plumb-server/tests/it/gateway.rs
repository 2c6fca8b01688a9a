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

#[tokio::test]
async fn a_registered_prompt_is_a_model() {
    let f = fixture(AuthMode::Keys);
    let push = json!({"prompt": {"model": "echo-model", "params": {"temperature": 0.3},
        "messages": [{"role": "system", "content": "Route tickets."},
                     {"role": "user", "content": "Ticket: {{ ticket }}"}],
        "variables": {"ticket": {"type": "string"}}}, "message": "with a model"})
    .to_string();
    let pushed = f
        .call(
            "POST",
            "/api/v1/prompts/triage/versions",
            Some(&f.editor),
            Some(&push),
            &[],
        )
        .await;
    assert_eq!(pushed.status, StatusCode::CREATED, "{}", pushed.json);
    let version = pushed.json["version"].as_u64().unwrap();
    let staging = json!({"version": version}).to_string();
    let moved = f
        .call(
            "PUT",
            "/api/v1/prompts/triage/labels/staging",
            Some(&f.editor),
            Some(&staging),
            &[],
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.json);

    // `messages` may be left out: the prompt brings its own.
    let body = json!({"model": "prompt:triage@staging",
        "variables": {"ticket": "printer on fire"}})
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
    assert_eq!(reply.json["model"], format!("prompt:triage@{version}"));
    assert_eq!(
        reply.headers["x-plumb-prompt"].to_str().unwrap(),
        format!("triage@{version}")
    );
    assert_eq!(reply.headers["x-plumb-target"], "echo");
    assert!(
        reply.json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Ticket: printer on fire")
    );
    let trace_id = reply.headers["x-plumb-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let hash = reply.headers["x-plumb-prompt-hash"]
        .to_str()
        .unwrap()
        .to_owned();
    // Feedback waits for the trace to be written, so the read after it finds the trace.
    let feedback = json!({"trace_id": trace_id, "score": 1}).to_string();
    f.call(
        "POST",
        "/v1/feedback",
        Some(&f.viewer),
        Some(&feedback),
        &[],
    )
    .await;
    let trace = f
        .call(
            "GET",
            &format!("/api/v1/traces/{trace_id}"),
            Some(&f.viewer),
            None,
            &[],
        )
        .await;
    assert_eq!(trace.json["prompt"], "triage");
    assert_eq!(trace.json["prompt_version"], version);
    assert_eq!(trace.json["detail"]["prompt_hash"], hash);
    assert_eq!(trace.json["model"], "prompt:triage@staging");
    assert_eq!(trace.json["detail"]["params"]["temperature"], 0.3);

    // What goes wrong, and how it is said.
    for (body, status, code, needle) in [
        (
            json!({"model": "prompt:triage@staging"}),
            400,
            "null",
            "needs the variable `ticket`",
        ),
        (
            json!({"model": "prompt:nope@production", "variables": {}}),
            404,
            "\"prompt_not_found\"",
            "nope",
        ),
        (
            json!({"model": "prompt:triage@staging", "variables": "ticket"}),
            400,
            "null",
            "`variables` must be an object",
        ),
        (
            json!({"model": "prompt:triage@1", "variables": {"ticket": "x"}}),
            400,
            "\"prompt_without_model\"",
            "names no model",
        ),
        (
            json!({"model": "prompt:Bad Name", "variables": {}}),
            400,
            "\"invalid_prompt_reference\"",
            "invalid prompt name",
        ),
    ] {
        let reply = f
            .call(
                "POST",
                "/v1/chat/completions",
                Some(&f.viewer),
                Some(&body.to_string()),
                &[],
            )
            .await;
        assert_eq!(reply.status.as_u16(), status, "{}", reply.json);
        assert_eq!(
            reply.json["error"]["code"].to_string(),
            code,
            "{}",
            reply.json
        );
        assert!(
            reply.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{}",
            reply.json
        );
    }
}
