use axum::http::StatusCode;
use plumb_server::AuthMode;
use serde_json::json;

use crate::fixture;

fn assert_error(reply: &crate::Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.json);
    assert_eq!(reply.json["error"]["code"], code, "{}", reply.json);
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn keys_are_required_and_errors_share_one_shape() {
    let f = fixture(AuthMode::Keys);
    let health = f.call("GET", "/api/v1/health", None, None, &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    let reply = f.call("GET", "/api/v1/prompts", None, None, &[]).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(reply.headers.contains_key("www-authenticate"));
    let reply = f
        .call(
            "GET",
            "/api/v1/prompts",
            Some("plumb_00000000_bad"),
            None,
            &[],
        )
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = f
        .call(
            "GET",
            "/api/v1/prompts",
            None,
            None,
            &[("x-api-key", &f.viewer)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["prompts"][0]["name"], "triage");
    let reply = f
        .call("GET", "/api/v1/nope", Some(&f.viewer), None, &[])
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = f
        .call("GET", "/api/v1/prompts/triag", Some(&f.viewer), None, &[])
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(reply.json["error"]["hint"], "did you mean `triage`?");
}

#[tokio::test]
async fn roles_gate_writes() {
    let f = fixture(AuthMode::Keys);
    let push = json!({"prompt": {"messages": [{"role": "user", "content": "Hi {{ ticket }}"}],
        "variables": {"ticket": {"type": "string"}}}, "message": "shorter"})
    .to_string();
    let reply = f
        .call(
            "POST",
            "/api/v1/prompts/triage/versions",
            Some(&f.viewer),
            Some(&push),
            &[],
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    let reply = f
        .call(
            "POST",
            "/api/v1/prompts/triage/versions",
            Some(&f.editor),
            Some(&push),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(reply.json["version"], 2);
    let reply = f
        .call(
            "POST",
            "/api/v1/prompts/triage/versions",
            Some(&f.editor),
            Some(&push),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["created"], false);

    let staging = json!({"version": 2}).to_string();
    let reply = f
        .call(
            "PUT",
            "/api/v1/prompts/triage/labels/staging",
            Some(&f.editor),
            Some(&staging),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["to"], 2);
    let reply = f
        .call(
            "PUT",
            "/api/v1/prompts/triage/labels/production",
            Some(&f.editor),
            Some(&staging),
            &[],
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    // A releaser may move production, but only with evidence: this project has no policy.
    let reply = f
        .call(
            "PUT",
            "/api/v1/prompts/triage/labels/production",
            Some(&f.releaser),
            Some(&staging),
            &[],
        )
        .await;
    assert_error(&reply, StatusCode::CONFLICT, "policy_refused");
    assert!(
        reply.json["error"]["missing"][0]
            .as_str()
            .unwrap()
            .contains("no promotion policy")
    );
    let forced = json!({"version": "staging", "force": true}).to_string();
    let reply = f
        .call(
            "PUT",
            "/api/v1/prompts/triage/labels/production",
            Some(&f.admin),
            Some(&forced),
            &[],
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert_eq!(reply.json["error"]["field"], "reason");
    let forced = json!({"version": "staging", "force": true, "reason": "incident 42"}).to_string();
    let reply = f
        .call(
            "PUT",
            "/api/v1/prompts/triage/labels/production",
            Some(&f.admin),
            Some(&forced),
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["forced"], true);

    let audit = f
        .call(
            "GET",
            "/api/v1/audit?prompt=triage",
            Some(&f.viewer),
            None,
            &[],
        )
        .await;
    let entries = audit.json["entries"].as_array().unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last["action"], "label");
    assert_eq!(last["forced"], true);
    assert_eq!(last["reason"], "incident 42");
    assert!(last["actor"].as_str().unwrap().starts_with("key:"));
    let rollback = f
        .call(
            "POST",
            "/api/v1/prompts/triage/labels/staging/rollback",
            Some(&f.editor),
            None,
            &[],
        )
        .await;
    assert_error(&rollback, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
}

#[tokio::test]
async fn malformed_bodies_name_the_field() {
    let f = fixture(AuthMode::Keys);
    let uri = "/api/v1/prompts/triage/labels/staging";
    let reply = f.call("PUT", uri, Some(&f.editor), Some("{"), &[]).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request");
    let reply = f.call("PUT", uri, Some(&f.editor), Some("{}"), &[]).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(reply.json["error"]["field"], "version");
    let reply = f
        .call(
            "PUT",
            uri,
            Some(&f.editor),
            Some(r#"{"version": 1, "forse": true}"#),
            &[],
        )
        .await;
    assert_eq!(reply.json["error"]["field"], "forse");
    let reply = f
        .call("PUT", uri, Some(&f.editor), Some(r#"{"version": -3}"#), &[])
        .await;
    assert_eq!(reply.json["error"]["field"], "version");
    let reply = f
        .call("PUT", uri, Some(&f.editor), Some(r#"{"version": 7}"#), &[])
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let bad_prompt = json!({"prompt": {"mesages": []}}).to_string();
    let reply = f
        .call(
            "POST",
            "/api/v1/prompts/triage/versions",
            Some(&f.editor),
            Some(&bad_prompt),
            &[],
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_prompt");
    assert_eq!(reply.json["error"]["field"], "prompt.mesages");
    assert!(
        reply.json["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("messages")
    );
    let wrong_name =
        json!({"prompt": {"name": "other", "messages": [{"role": "user", "content": "x"}]}})
            .to_string();
    let reply = f
        .call(
            "POST",
            "/api/v1/prompts/triage/versions",
            Some(&f.editor),
            Some(&wrong_name),
            &[],
        )
        .await;
    assert_eq!(reply.json["error"]["field"], "prompt.name");
    // Nothing was written by the refused requests.
    let versions = f
        .call(
            "GET",
            "/api/v1/prompts/triage/versions",
            Some(&f.viewer),
            None,
            &[],
        )
        .await;
    assert_eq!(versions.json["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn resolve_uses_etags_and_renders() {
    let f = fixture(AuthMode::Keys);
    let uri = "/api/v1/resolve/triage@latest";
    let first = f.call("GET", uri, Some(&f.viewer), None, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json["version"], 1);
    assert_eq!(
        first.json["prompt"]["variables"]["ticket"]["type"],
        "string"
    );
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    let again = f
        .call(
            "GET",
            uri,
            Some(&f.viewer),
            None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.json, serde_json::Value::Null);
    // The prompt JSON is a prompt file: pushing it back as it is makes no new version.
    let push = json!({"prompt": first.json["prompt"]}).to_string();
    let reply = f
        .call(
            "POST",
            "/api/v1/prompts/triage/versions",
            Some(&f.editor),
            Some(&push),
            &[],
        )
        .await;
    assert_eq!(reply.json["created"], false, "{}", reply.json);

    let render = f
        .call(
            "POST",
            "/api/v1/resolve/triage@1/render",
            Some(&f.viewer),
            Some(r#"{"vars": {"ticket": "refund please"}}"#),
            &[],
        )
        .await;
    assert_eq!(render.status, StatusCode::OK, "{}", render.json);
    assert_eq!(
        render.json["messages"][1]["content"],
        "Ticket: refund please"
    );
    let missing = f
        .call(
            "POST",
            "/api/v1/resolve/triage@1/render",
            Some(&f.viewer),
            Some("{}"),
            &[],
        )
        .await;
    assert_error(&missing, StatusCode::UNPROCESSABLE_ENTITY, "render_failed");
    assert_eq!(missing.json["error"]["field"], "vars.ticket");
    let bad = f
        .call(
            "GET",
            "/api/v1/resolve/tri%20age",
            Some(&f.viewer),
            None,
            &[],
        )
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request");
    let unknown = f
        .call(
            "GET",
            "/api/v1/resolve/triage@prod",
            Some(&f.viewer),
            None,
            &[],
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn dev_mode_needs_no_key_and_says_so() {
    let f = fixture(AuthMode::Dev);
    let reply = f.call("GET", "/api/v1/whoami", None, None, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["role"], "admin");
    assert_eq!(reply.headers["x-plumb-dev-mode"], "no-auth");
    let address: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
    assert!(plumb_server::check_dev_address(&address).is_err());
    let address: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert!(plumb_server::check_dev_address(&address).is_ok());
}

#[tokio::test]
async fn a_revoked_key_stops_working() {
    let f = fixture(AuthMode::Keys);
    let reply = f
        .call("GET", "/api/v1/whoami", Some(&f.editor), None, &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply.json["actor"]
        .as_str()
        .unwrap()
        .strip_prefix("key:")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let owner = plumb_registry::Actor {
        name: "owner".into(),
        role: plumb_registry::Role::Admin,
        key_id: None,
    };
    plumb_registry::auth::revoke_key(f.state.registry.db(), &id, &owner).unwrap();
    let reply = f
        .call("GET", "/api/v1/whoami", Some(&f.editor), None, &[])
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[test]
fn the_key_cache_forgets_after_its_ttl() {
    let cache = plumb_server::KeyCache::new(std::time::Duration::from_millis(30));
    let actor = plumb_registry::Actor {
        name: "k".into(),
        role: plumb_registry::Role::Viewer,
        key_id: None,
    };
    cache.put("plumb_x", &actor);
    assert_eq!(cache.get("plumb_x"), Some(actor));
    std::thread::sleep(std::time::Duration::from_millis(40));
    assert_eq!(cache.get("plumb_x"), None);
    let off = plumb_server::KeyCache::new(std::time::Duration::ZERO);
    off.put(
        "plumb_x",
        &plumb_registry::Actor {
            name: "k".into(),
            role: plumb_registry::Role::Viewer,
            key_id: None,
        },
    );
    assert_eq!(off.get("plumb_x"), None);
}
