//! Under load with an upstream that fails a fifth of its calls (500, 429, hangs, streams broken
//! before the first token), a route with a fallback fails no client, and every request leaves
//! exactly one trace.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt as _;
use plumb_gateway::{Gateway, GatewayConfig};
use plumb_provider::ProviderContext;
use plumb_registry::{ProjectConfig, Registry};
use plumb_server::{AuthMode, ServerState};
use plumb_store::{SqliteStore, TraceFilter, TraceStore};
use plumb_test::MockServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_of_upstream_calls_failing_fails_no_client_and_every_request_is_traced() {
    let flaky = MockServer::start().await;
    flaky.chaos(0.2);
    let backup = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("plumb.db")).unwrap());
    let config = format!(
        "gateway:\n  models:\n    fast:\n      breaker: {{failures: 1000}}\n      targets:\n        - provider: 'openai-compatible:{}#primary'\n          config: {{api_key: t}}\n          timeout_ms: 1500\n          ttft_ms: 1500\n        - provider: 'openai-compatible:{}#backup'\n          config: {{api_key: t}}\n",
        flaky.openai_base(),
        backup.openai_base()
    );
    let config = GatewayConfig::parse(
        &config,
        &dir.path().join("plumb.yaml"),
        &ProviderContext::new(dir.path()),
    )
    .unwrap();
    let (gateway, _writer) = Gateway::new(config).with_traces(store.clone());
    let gateway = Arc::new(gateway);
    let state = Arc::new(ServerState {
        registry: Registry::new(store.clone(), ProjectConfig::default()),
        auth: AuthMode::Dev,
        gateway: gateway.clone(),
        keys: plumb_server::KeyCache::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(plumb_server::serve(listener, state, std::future::pending()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let url = format!("http://{address}/v1/chat/completions");

    const REQUESTS: usize = 300;
    let results: Vec<(u16, String, String)> = futures_util::stream::iter(0..REQUESTS)
        .map(|n| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let stream = n % 2 == 1;
                let body = json!({"model": "fast", "stream": stream,
                    "messages": [{"role": "user", "content": format!("question {n}")}]});
                let response = client.post(&url).json(&body).send().await.unwrap();
                let status = response.status().as_u16();
                let trace = response.headers()["x-plumb-trace-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let text = response.text().await.unwrap();
                (status, trace, text)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    for (status, _, text) in &results {
        assert_eq!(*status, 200, "{text}");
        if text.starts_with("data:") {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            assert!(!text.contains("\"error\""), "{text}");
        }
    }
    let failures = flaky.chaos_failures();
    assert!(
        failures >= REQUESTS / 10,
        "the upstream failed only {failures} calls"
    );
    assert!(
        backup.received().len() >= failures,
        "every failure fell back"
    );

    gateway.tracing.as_ref().unwrap().tracer.flush().await;
    let traces = store
        .list_traces(&TraceFilter {
            limit: 0,
            ..TraceFilter::default()
        })
        .unwrap();
    assert_eq!(traces.len(), REQUESTS);
    let sent: HashSet<&str> = results.iter().map(|(_, id, _)| id.as_str()).collect();
    let stored: HashSet<&str> = traces.iter().map(|t| t.trace_id.as_str()).collect();
    assert_eq!(sent, stored);
    let fell_back = traces
        .iter()
        .filter(|t| t.detail["attempts"].as_array().unwrap().len() == 2)
        .count();
    // Each failure shows as a second attempt in its trace (a slow machine may add a timeout of
    // its own, never fewer), and every second attempt reached the backup.
    assert!(
        fell_back >= failures,
        "{fell_back} fallbacks for {failures} failures"
    );
    assert_eq!(fell_back, backup.received().len());
}
