//! Test helpers: a mock model API on `127.0.0.1:0` that speaks OpenAI Chat Completions
//! (`POST /v1/chat/completions`) and Anthropic Messages (`POST /v1/messages`).
//!
//! By default it answers every request by echoing the last user message in the right wire
//! format, with usage figures. Tests can queue scripted replies (status, body, headers,
//! delay), which are served first, in order, and can read every request that arrived.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "a test helper: failing setup should fail the test at once"
)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    /// Served as server-sent events instead of `body`.
    pub stream: Option<StreamScript>,
}

/// A scripted SSE answer: `data:` events sent `gap` apart, then either the end of the body
/// or (when `broken`) an aborted connection.
#[derive(Clone, Debug)]
pub struct StreamScript {
    pub events: Vec<String>,
    pub gap: Duration,
    pub broken: bool,
}

/// Anthropic Messages stream events for a text answer of `pieces` (13 input tokens).
pub fn anthropic_events(pieces: &[&str]) -> Vec<String> {
    let mut events = vec![
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": "claude-mock", "content": [],
            "usage": {"input_tokens": 13, "output_tokens": 1}}})
        .to_string(),
        json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}})
        .to_string(),
        json!({"type": "ping"}).to_string(),
    ];
    for piece in pieces {
        events.push(
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}})
            .to_string(),
        );
    }
    events.push(json!({"type": "content_block_stop", "index": 0}).to_string());
    events.push(
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": pieces.len()}})
        .to_string(),
    );
    events.push(json!({"type": "message_stop"}).to_string());
    events
}

/// OpenAI `chat.completion.chunk` events for `pieces`, then the finish reason, usage and
/// `[DONE]`.
pub fn openai_chunks(pieces: &[&str]) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "mock-model-2024",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in pieces {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push(
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "mock-model-2024", "choices": [],
               "usage": {"prompt_tokens": 11, "completion_tokens": pieces.len(), "total_tokens": 11 + pieces.len()}})
        .to_string(),
    );
    events.push("[DONE]".to_owned());
    events
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
            delay: Duration::ZERO,
            stream: None,
        }
    }

    /// A complete OpenAI stream of `pieces`.
    pub fn openai_stream(pieces: &[&str]) -> Reply {
        Reply {
            stream: Some(StreamScript {
                events: openai_chunks(pieces),
                gap: Duration::ZERO,
                broken: false,
            }),
            ..Reply::json(200, Value::Null)
        }
    }

    /// An OpenAI stream that sends `pieces` and then drops the connection.
    pub fn broken_stream(pieces: &[&str]) -> Reply {
        let mut events = openai_chunks(pieces);
        events.truncate(1 + pieces.len());
        Reply {
            stream: Some(StreamScript {
                events,
                gap: Duration::ZERO,
                broken: true,
            }),
            ..Reply::json(200, Value::Null)
        }
    }

    /// Waits `gap` before each event of a stream.
    pub fn gap(mut self, gap: Duration) -> Reply {
        if let Some(stream) = self.stream.as_mut() {
            stream.gap = gap;
        }
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// An OpenAI chat completion with `content`.
    pub fn openai_text(content: &str) -> Reply {
        Reply::json(200, openai_completion(content, "stop"))
    }

    /// OpenAI's error shape.
    pub fn openai_error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"error": {"message": message, "type": "error", "code": null}}),
        )
    }
}

impl Reply {
    /// This reply as a response, without delay (for the chaos mode).
    fn into_response_now(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.body)).into_response();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(name.as_bytes()),
                axum::http::HeaderValue::from_str(&value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// A request the mock received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Reply>,
    received: Vec<Received>,
    /// Fails this share of unscripted chat requests (see `MockServer::chaos`).
    chaos: f64,
    rng: Option<u64>,
    /// How many chaotic failures were served.
    failed: usize,
}

#[derive(Clone)]
struct AppState(Arc<Mutex<Shared>>);

pub struct MockServer {
    pub addr: SocketAddr,
    state: AppState,
}

impl MockServer {
    /// Starts the server on the current tokio runtime.
    pub async fn start() -> MockServer {
        let state = AppState(Arc::new(Mutex::new(Shared::default())));
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/v1/embeddings", post(embeddings))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockServer { addr, state }
    }

    /// Starts the server on a runtime of its own, for tests that are not async (e.g. ones that
    /// run the `plumb` binary). The server lives until the process ends.
    pub fn start_in_background() -> MockServer {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = MockServer::start().await;
                sender
                    .send(MockServer {
                        addr: server.addr,
                        state: server.state.clone(),
                    })
                    .expect("send");
                std::future::pending::<()>().await;
            });
        });
        receiver.recv().expect("mock server started")
    }

    /// `http://127.0.0.1:PORT/v1`: the base URL an OpenAI client wants.
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`: the base URL an Anthropic client wants.
    pub fn anthropic_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, reply: Reply) {
        self.state.0.lock().expect("lock").script.push_back(reply);
    }

    /// From now on, fails `share` of the unscripted chat requests, each way in turn: HTTP 500,
    /// 429 with Retry-After, an answer slower than any sane timeout (5 s), and (for streams) a
    /// stream broken before its first token.
    pub fn chaos(&self, share: f64) {
        let mut shared = self.state.0.lock().expect("lock");
        shared.chaos = share;
        shared.rng.get_or_insert(0x5eed);
    }

    /// How many requests chaos has failed so far.
    pub fn chaos_failures(&self) -> usize {
        self.state.0.lock().expect("lock").failed
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.0.lock().expect("lock").received.clone()
    }
}

fn openai_completion(content: &str, finish_reason: &str) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "mock-model-2024",
        "choices": [{"index": 0, "finish_reason": finish_reason,
            "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
}

fn last_user(messages: Option<&Value>) -> String {
    let Some(Value::Array(messages)) = messages else {
        return String::new();
    };
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| match m.get("content") {
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => Some(other.to_string()),
            None => None,
        })
        .unwrap_or_default()
}

async fn scripted(
    state: &AppState,
    path: &str,
    headers: HeaderMap,
    body: &Value,
) -> Option<Response> {
    let reply = {
        let mut shared = state.0.lock().ok()?;
        shared.received.push(Received {
            path: path.to_owned(),
            headers,
            body: body.clone(),
        });
        shared.script.pop_front()
    }?;
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match reply.stream {
        Some(script) => sse_response(script),
        None => (status, axum::Json(reply.body)).into_response(),
    };
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Some(response)
}

async fn openai(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(response) = scripted(&state, "/v1/chat/completions", headers, &body).await {
        return response;
    }
    let streaming = body.get("stream").and_then(Value::as_bool) == Some(true);
    let failure = {
        let mut shared = state.0.lock().expect("lock");
        let chaos = shared.chaos;
        match shared.rng.as_mut() {
            Some(seed) if chaos > 0.0 => {
                // xorshift: deterministic for a given sequence of requests.
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                let draw = (*seed % 1_000_000) as f64 / 1_000_000.0;
                if draw < chaos {
                    shared.failed += 1;
                    Some(shared.failed % 4)
                } else {
                    None
                }
            }
            _ => None,
        }
    };
    match failure {
        Some(0) => {
            return Reply::openai_error(500, "chaos: internal error").into_response_now();
        }
        Some(1) => {
            return Reply::openai_error(429, "chaos: slow down")
                .header("retry-after", "1")
                .into_response_now();
        }
        Some(2) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Some(_) if streaming => {
            return sse_response(StreamScript {
                events: Vec::new(),
                gap: Duration::ZERO,
                broken: true,
            });
        }
        Some(_) => {
            return Reply::openai_error(503, "chaos: unavailable").into_response_now();
        }
        None => {}
    }
    let content = format!("echo: {}", last_user(body.get("messages")));
    if streaming {
        let words: Vec<String> = content.split_inclusive(' ').map(str::to_owned).collect();
        let pieces: Vec<&str> = words.iter().map(String::as_str).collect();
        return sse_response(StreamScript {
            events: openai_chunks(&pieces),
            gap: Duration::ZERO,
            broken: false,
        });
    }
    axum::Json(openai_completion(&content, "stop")).into_response()
}

fn sse_response(script: StreamScript) -> Response {
    use futures_util::StreamExt as _;
    let StreamScript {
        events,
        gap,
        broken,
    } = script;
    // A broken stream pauses before breaking, so what came before has left the socket.
    let items = events.into_iter().map(Some).chain(broken.then_some(None));
    let frames = futures_util::stream::iter(items).then(move |event| async move {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        match event {
            Some(event) => Ok(format!("data: {event}\n\n")),
            None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "scripted broken stream",
                ))
            }
        }
    });
    let mut response = Response::new(axum::body::Body::from_stream(frames));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

async fn anthropic(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let authorized =
        headers.get("x-api-key").is_some() && headers.get("anthropic-version").is_some();
    if let Some(response) = scripted(&state, "/v1/messages", headers, &body).await {
        return response;
    }
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"type": "error", "error": {"type": "authentication_error", "message": "missing key"}})),
        )
            .into_response();
    }
    let content = format!("echo: {}", last_user(body.get("messages")));
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let words: Vec<String> = content.split_inclusive(' ').map(str::to_owned).collect();
        let pieces: Vec<&str> = words.iter().map(String::as_str).collect();
        return sse_response(StreamScript {
            events: anthropic_events(&pieces),
            gap: Duration::ZERO,
            broken: false,
        });
    }
    axum::Json(json!({
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "content": [{"type": "text", "text": content}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 13, "output_tokens": 5}
    }))
    .into_response()
}

/// OpenAI's embeddings shape. Each vector is derived from the text's bytes, so equal texts get
/// equal vectors and different texts (almost always) different ones.
async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(response) = scripted(&state, "/v1/embeddings", headers, &body).await {
        return response;
    }
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let mut vector = [1.0f64; 8];
            for (position, byte) in text.bytes().enumerate() {
                vector[position % 8] += f64::from(byte);
            }
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data, "model": body.get("model").cloned().unwrap_or(Value::Null),
        "usage": {"prompt_tokens": 3, "total_tokens": 3}}))
    .into_response()
}

/// A real `redis-server` on a free loopback port, without persistence, stopped on drop.
/// Installed by `scripts/test.sh` (Debian's `redis-server`).
pub struct RedisServer {
    pub port: u16,
    child: std::process::Child,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed: run scripts/test.sh (it installs it with apt)");
        let server = RedisServer { port, child };
        for _ in 0..100 {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer PING on port {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real PostgreSQL 16 with pgvector (the `pgserver` wheel's binaries, which
/// `scripts/test.sh` unpacks and names in `PLUMB_TEST_PGSERVER`) on a free loopback port, in a
/// fresh data directory, stopped and removed on drop. PostgreSQL refuses to run as root, so
/// under root it runs as `nobody`.
pub struct PgServer {
    pub port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl PgServer {
    pub fn start() -> PgServer {
        use std::os::unix::process::CommandExt;
        let install = std::env::var_os("PLUMB_TEST_PGSERVER").map(std::path::PathBuf::from);
        let Some(install) = install.filter(|p| p.join("bin/postgres").is_file()) else {
            panic!(
                "PostgreSQL with pgvector is needed: run scripts/test.sh (it unpacks the \
                 `pgserver` wheel and sets PLUMB_TEST_PGSERVER to its pginstall directory)"
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let dir = std::env::temp_dir().join(format!("plumb-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("data directory");
        // Whether this runs as root, from `id -u` (this crate has no libc).
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let command = |program: &str| {
            let mut command = std::process::Command::new(install.join("bin").join(program));
            if root {
                // nobody:nogroup on Debian.
                command.uid(65534).gid(65534);
            }
            command
        };
        if root {
            let status = std::process::Command::new("chown")
                .args(["65534:65534"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let data = dir.join("data");
        let init = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&data)
            .args(["-F", "-c", "max_connections=50"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres");
        let server = PgServer { port, dir, child };
        for _ in 0..200 {
            let ready = command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres did not start on port {port}: {}",
            std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT) ends the backends and releases shared memory; SIGKILL only
        // if that has not happened in 5 s.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
