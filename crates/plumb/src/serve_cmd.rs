//! `plumb serve`: the HTTP API (`/api/v1`) on this project's database and the OpenAI-compatible
//! gateway (`/v1`) configured in its `plumb.yaml`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use plumb_gateway::{Gateway, GatewayConfig};
use plumb_provider::ProviderContext;
use plumb_server::{AuthMode, ServerState};

use crate::{Outcome, StoreArgs, project, user_error};

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080", env = "PLUMB_ADDR")]
    addr: SocketAddr,
    /// Development mode: no API keys, every request acts as admin. Loopback addresses only
    #[arg(long)]
    dev: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<Outcome> {
    let cwd = project::current_dir()?;
    let registry = project::open_registry(args.store.db.as_deref(), &cwd)?;
    let auth = if args.dev {
        plumb_server::check_dev_address(&args.addr).map_err(|message| {
            user_error(
                message,
                Some("use `--addr 127.0.0.1:PORT`, or create keys with `plumb keys create`".into()),
            )
        })?;
        AuthMode::Dev
    } else {
        AuthMode::Keys
    };
    let active_keys = plumb_store::RegistryStore::keys(registry.db())?
        .iter()
        .filter(|k| k.revoked_at.is_none())
        .count();
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|error| {
            user_error(
                format!("cannot listen on {}: {error}", args.addr),
                Some("pick another address with `--addr`".into()),
            )
        })?;
    let bound = listener.local_addr()?;
    if auth == AuthMode::Dev {
        eprintln!("┌──────────────────────────────────────────────────────────────────┐");
        eprintln!("│ DEV MODE: authentication is OFF. Every request acts as admin.   │");
        eprintln!("│ Loopback only. Never use --dev for anything shared.             │");
        eprintln!("└──────────────────────────────────────────────────────────────────┘");
    } else if active_keys == 0 {
        eprintln!(
            "warning: no active API keys: every request will get 401; create one with `plumb keys create --role viewer`"
        );
    }
    eprintln!("plumb: serving the API on http://{bound}/api/v1 (Ctrl-C stops)");
    let root = project::root_from(&cwd);
    let gateway = GatewayConfig::load(&root.join("plumb.yaml"), &ProviderContext::new(&root))?;
    if gateway.routes.is_empty() {
        eprintln!("plumb: gateway: no `gateway.models` in plumb.yaml, so /v1 serves no models");
    } else {
        eprintln!(
            "plumb: gateway on http://{bound}/v1 serving {}",
            gateway
                .routes
                .values()
                .map(|r| format!(
                    "{} → {}",
                    r.alias,
                    r.targets
                        .iter()
                        .map(|t| t.id.as_str())
                        .collect::<Vec<_>>()
                        .join(" | ")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // The trace writer gets a connection of its own, so API reads never wait behind a batch.
    let trace_store = project::open_db(args.store.db.as_deref(), &cwd)?;
    let prompts = plumb_server::RegistryPrompts::new(registry.clone(), Duration::from_secs(1));
    let shared_limits = gateway.limits.redis.clone();
    let gateway = Gateway::new(gateway)
        .connect_limits()
        .await
        .map_err(|message| {
            user_error(
                format!("gateway.limits.redis: {message}"),
                Some(
                    "start the Redis server, or remove `redis:` to count limits in this process"
                        .into(),
                ),
            )
        })?;
    if let Some(url) = shared_limits {
        eprintln!("plumb: gateway limits are shared through {url}");
    }
    let (gateway, _writer) = gateway
        .with_prompts(Arc::new(prompts))
        .with_traces(trace_store);
    let gateway = Arc::new(gateway);
    let state = Arc::new(ServerState {
        registry,
        auth,
        gateway: gateway.clone(),
        keys: plumb_server::KeyCache::default(),
    });
    plumb_server::serve(listener, state, shutdown_signal()).await?;
    // Requests in flight have finished; write every trace still queued.
    if let Some(tracing) = &gateway.tracing {
        let queued = tracing.tracer.queue_depth();
        tracing.tracer.flush().await;
        eprintln!("plumb: traces written ({queued} were queued at shutdown)");
    }
    Ok(Outcome::Ok)
}

/// Ctrl-C or SIGTERM (what service managers send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("plumb: shutting down: finishing requests in flight");
}
