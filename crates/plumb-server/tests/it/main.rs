#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

//! The API through its router (`app(state)` + `oneshot`), and once over a real socket.

mod api;
mod gateway;
mod reliability;
mod socket;

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use plumb_gateway::{Gateway, GatewayConfig};
use plumb_prompt::PromptFile;
use plumb_provider::ProviderContext;
use plumb_registry::{Actor, ProjectConfig, PushOptions, Registry, Role, auth};
use plumb_server::{AuthMode, ServerState, app};
use plumb_store::SqliteStore;
use serde_json::Value;
use tower::ServiceExt;

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub state: Arc<ServerState>,
    pub viewer: String,
    pub editor: String,
    pub releaser: String,
    pub admin: String,
}

pub const TRIAGE: &str = "name: triage\nmessages:\n  - role: system\n    content: Route tickets.\n  - role: user\n    content: \"Ticket: {{ ticket }}\"\nvariables:\n  ticket: {type: string}\n";

pub const GATEWAY: &str =
    "gateway:\n  models:\n    echo-model:\n      targets: [{provider: echo}]\n";

pub fn fixture(mode: AuthMode) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("plumb.db")).unwrap());
    let owner = Actor {
        name: "owner".into(),
        role: Role::Admin,
        key_id: None,
    };
    let key = |role| {
        auth::create_key(store.as_ref(), "test", role, &owner)
            .unwrap()
            .secret
    };
    let (viewer, editor, releaser, admin) = (
        key(Role::Viewer),
        key(Role::Editor),
        key(Role::Releaser),
        key(Role::Admin),
    );
    let registry = Registry::new(store.clone(), ProjectConfig::default());
    let file = PromptFile::parse(TRIAGE, Path::new("triage.yaml")).unwrap();
    registry
        .push(&file, &PushOptions::default(), &owner, None)
        .unwrap();
    let gateway = GatewayConfig::parse(
        GATEWAY,
        &dir.path().join("plumb.yaml"),
        &ProviderContext::new(dir.path()),
    )
    .unwrap();
    let prompts = plumb_server::RegistryPrompts::new(registry.clone(), std::time::Duration::ZERO);
    let mut gateway = Gateway::new(gateway).with_prompts(Arc::new(prompts));
    // Traces need a runtime for their writer; the few sync tests go without.
    if tokio::runtime::Handle::try_current().is_ok() {
        gateway = gateway.with_traces(store.clone()).0;
    }
    Fixture {
        _dir: dir,
        state: Arc::new(ServerState {
            registry,
            auth: mode,
            gateway: Arc::new(gateway),
            keys: plumb_server::KeyCache::new(std::time::Duration::ZERO),
        }),
        viewer,
        editor,
        releaser,
        admin,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: Value,
}

impl Fixture {
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Body::from(body.unwrap_or_default().to_owned()))
            .unwrap();
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        Reply {
            status,
            headers,
            json,
        }
    }
}
