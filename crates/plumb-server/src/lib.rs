//! plumb's HTTP server: a versioned JSON API under `/api/v1` over the prompt registry, and the
//! OpenAI-compatible gateway under `/v1` (plumb-gateway's router behind the same keys).
//!
//! `app(state)` is the router (the test seam); `serve` runs it on a listener until shutdown.
//! Every request except `/api/v1/health` needs an API key (`Authorization: Bearer plumb_…` or
//! `x-api-key`), unless the server runs in dev mode, which only binds to loopback. Roles are
//! checked by the registry, so the API and the CLI enforce the same rules. Errors have one
//! shape everywhere: `{"error": {"code", "message", "field"?, "hint"?, "missing"?}}`.
//!
//! The only crate that knows HTTP status codes; internal error details are logged, never sent.

mod api;
mod error;
mod keys;
mod prompts;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use plumb_gateway::Gateway;
use plumb_registry::Registry;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use keys::KeyCache;
pub use prompts::RegistryPrompts;

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// API keys from `plumb keys create`.
    Keys,
    /// No keys: every request acts as an admin named `dev`. Loopback only.
    Dev,
}

pub struct ServerState {
    pub registry: Registry,
    pub auth: AuthMode,
    /// Model aliases served on `/v1` (none: every model is unknown).
    pub gateway: Arc<Gateway>,
    /// Recently verified keys.
    pub keys: KeyCache,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

pub fn app(state: Arc<ServerState>) -> Router {
    api::router(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then finishes requests in
/// flight. Sockets get TCP_NODELAY: with Nagle's algorithm on, a small response can wait for
/// the client's delayed ACK (the +40 ms some gateways add at concurrency 1).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Dev mode must not be reachable from other machines.
pub fn check_dev_address(addr: &SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "--dev turns authentication off, so it only binds to loopback; {} is not",
            addr.ip()
        ))
    }
}
