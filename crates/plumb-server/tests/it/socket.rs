use plumb_server::AuthMode;

use crate::fixture;

/// The real thing: a listener on 127.0.0.1:0, a real HTTP client, a graceful shutdown.
#[tokio::test]
async fn serves_over_a_real_socket() {
    let f = fixture(AuthMode::Keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plumb_server::serve(listener, f.state.clone(), async {
        let _ = stopped.await;
    }));
    // reqwest is built without a default TLS backend; plain HTTP still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let url = format!("http://{address}/api/v1/resolve/triage@latest");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let response = client
        .get(&url)
        .bearer_auth(&f.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].clone();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["name"], "triage");
    let response = client
        .get(&url)
        .bearer_auth(&f.viewer)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
