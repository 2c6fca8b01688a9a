//! Limits on a real redis-server: the same semantics as in-process, and one set of counters
//! for every replica.

use std::sync::Arc;

use plumb_gateway::limits::{LimitStore, Limits, RedisLimits, Scope, check_store_semantics};
use plumb_test::RedisServer;

#[tokio::test]
async fn redis_limits_behave_like_memory_limits() {
    let redis = RedisServer::start();
    let store = RedisLimits::connect(&redis.url()).await.unwrap();
    check_store_semantics(&store).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_budget() {
    let redis = RedisServer::start();
    // Two gateways' limiters, each with its own connection.
    let replicas = [
        Arc::new(RedisLimits::connect(&redis.url()).await.unwrap()),
        Arc::new(RedisLimits::connect(&redis.url()).await.unwrap()),
    ];
    let scopes = Arc::new(vec![Scope {
        name: "key:shared".into(),
        limits: Limits {
            requests_per_min: Some(50),
            ..Limits::default()
        },
    }]);
    let now = plumb_core::now_ms();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let store = replicas[n % 2].clone();
        let scopes = scopes.clone();
        tasks.push(tokio::spawn(async move {
            store.admit(&scopes, now).await.unwrap().is_none()
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += u32::from(task.await.unwrap());
    }
    assert_eq!(admitted, 50);
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_at_connect() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = RedisLimits::connect(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .unwrap_err();
    assert!(error.contains("cannot connect"), "{error}");
}

fn limited(extra: &str, mock: &plumb_test::MockServer) -> String {
    format!(
        "gateway:\n  models:\n    fast:\n      targets: [{{provider: 'openai-compatible:{}#m', config: {{api_key: t, input_cost_per_mtok: 1000000, output_cost_per_mtok: 0}}}}]\n  limits:\n{extra}",
        mock.openai_base()
    )
}

#[tokio::test]
async fn the_gateway_answers_429_with_retry_after_when_a_limit_is_hit() {
    let mock = plumb_test::MockServer::start().await;
    let gateway = super::gateway(&limited(
        "    keys:\n      '*': {requests_per_min: 2}\n",
        &mock,
    ));
    for _ in 0..2 {
        let (status, _, _) = super::post(gateway.clone(), super::ask("x")).await;
        assert_eq!(status, axum::http::StatusCode::OK);
    }
    let (status, headers, body) = super::post(gateway, super::ask("x")).await;
    assert_eq!(status, axum::http::StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key:dev has reached its requests_per_min limit (2)"),
        "{body}"
    );
    assert_eq!(
        mock.received().len(),
        2,
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn a_spent_daily_budget_refuses_until_the_day_ends() {
    let mock = plumb_test::MockServer::start().await;
    // The mock reports 11 prompt tokens at $1 each: one answer spends $11.
    let gateway = super::gateway(&limited(
        "    models:\n      fast: {usd_per_day: 5}\n",
        &mock,
    ));
    let (status, _, _) = super::post(gateway.clone(), super::ask("x")).await;
    assert_eq!(status, axum::http::StatusCode::OK);
    // The charge lands just after the answer.
    let mut refused = None;
    for _ in 0..50 {
        let (status, headers, body) = super::post(gateway.clone(), super::ask("x")).await;
        if status == axum::http::StatusCode::TOO_MANY_REQUESTS {
            refused = Some((headers, body));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (headers, body) = refused.expect("the budget must refuse");
    assert!(
        body.contains("model:fast has reached its usd_per_day limit ($5)"),
        "{body}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry <= 86_400, "{retry}");
}

#[tokio::test]
async fn gateways_sharing_a_redis_share_limits() {
    let redis = RedisServer::start();
    let mock = plumb_test::MockServer::start().await;
    let config = limited(
        &format!(
            "    redis: {}\n    keys:\n      '*': {{requests_per_min: 3}}\n",
            redis.url()
        ),
        &mock,
    );
    let ctx = plumb_provider::ProviderContext::new(std::path::Path::new("."));
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let parsed =
            plumb_gateway::GatewayConfig::parse(&config, std::path::Path::new("plumb.yaml"), &ctx)
                .unwrap();
        let gateway = plumb_gateway::Gateway::new(parsed)
            .connect_limits()
            .await
            .unwrap();
        replicas.push(Arc::new(gateway));
    }
    let mut statuses = Vec::new();
    for n in 0..6 {
        let (status, _, _) = super::post(replicas[n % 2].clone(), super::ask("x")).await;
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
}

#[test]
fn limit_config_errors_are_located() {
    let ctx = plumb_provider::ProviderContext::new(std::path::Path::new("."));
    for (yaml, needle) in [
        (
            "gateway:\n  models:\n    fast:\n      targets: [{provider: echo}]\n  limits:\n    models:\n      fats: {requests_per_min: 1}\n",
            "gateway.limits.models.fats: no such model alias",
        ),
        (
            "gateway:\n  limits:\n    keys:\n      '*': {}\n",
            "gateway.limits.keys.* sets no limit",
        ),
        (
            "gateway:\n  limits:\n    redis: localhost:6379\n    keys:\n      '*': {requests_per_min: 1}\n",
            "not a redis:// URL",
        ),
        (
            "gateway:\n  limits:\n    keys:\n      '*': {usd_per_day: -1}\n",
            "usd_per_day must be a non-negative number",
        ),
    ] {
        let error =
            plumb_gateway::GatewayConfig::parse(yaml, std::path::Path::new("plumb.yaml"), &ctx)
                .unwrap_err();
        assert!(error.to_string().contains(needle), "{error}");
    }
}

#[tokio::test]
async fn embeddings_count_against_the_same_limits() {
    let mock = plumb_test::MockServer::start().await;
    let config = format!(
        "gateway:\n  embeddings:\n    vectors: {{provider: 'openai-compatible:{}#emb'}}\n  limits:\n    models:\n      vectors: {{requests_per_min: 1}}\n",
        mock.openai_base()
    );
    let gateway = super::gateway(&config);
    let body = serde_json::json!({"model": "vectors", "input": "one"});
    let (status, _) = super::post_to(gateway.clone(), "/v1/embeddings", body.clone()).await;
    assert_eq!(status, axum::http::StatusCode::OK);
    let (status, refused) = super::post_to(gateway, "/v1/embeddings", body).await;
    assert_eq!(
        status,
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "{refused}"
    );
    assert_eq!(refused["error"]["code"], "rate_limit_exceeded");
}
