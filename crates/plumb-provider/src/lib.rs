//! Model providers behind `plumb_core::ChatModel`: one file per provider, one function
//! (`build`) that turns a provider id and its options into a ready model.
//!
//! Only this crate knows wire formats, HTTP clients and model runtimes.

mod anthropic;
pub mod embed;
mod http;
#[cfg(feature = "local")]
mod local;
#[cfg(feature = "embed")]
mod minilm;
pub mod mock;
pub mod models;
mod openai;
pub mod pricing;
mod sse;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use embed::{DEFAULT_EMBEDDER, build_embedder};

/// The shared HTTP client (rustls, connection pool), for other crates' outbound calls.
pub fn http_client() -> Result<reqwest::Client, plumb_core::ModelError> {
    http::client()
}
use plumb_core::{ChatModel, ModelError};
use serde::Deserialize;

/// Options a suite may set on a provider (`providers: [{id, config: {...}}]`). Sampling
/// parameters are resolved separately (they merge with the prompt's); these are about how to
/// reach the model. Field names follow promptfoo where it has one.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderOptions {
    /// Base URL of the API (promptfoo's `apiBaseUrl`).
    #[serde(default, alias = "apiBaseUrl", alias = "base_url")]
    pub api_base_url: Option<String>,
    /// The API key itself (promptfoo's `apiKey`). Prefer `api_key_env`: suite files end up in git.
    #[serde(default, alias = "apiKey")]
    pub api_key: Option<String>,
    /// Name of the environment variable holding the key (promptfoo's `apiKeyEnvar`).
    #[serde(default, alias = "apiKeyEnvar")]
    pub api_key_env: Option<String>,
    /// Per-request timeout in milliseconds.
    #[serde(default, alias = "timeout")]
    pub timeout_ms: Option<u64>,
    /// Retries on 429, 5xx, timeouts and connection errors.
    #[serde(default, alias = "maxRetries")]
    pub max_retries: Option<u32>,
    /// Extra HTTP headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// USD per million input tokens (overrides the built-in table).
    #[serde(default)]
    pub input_cost_per_mtok: Option<f64>,
    /// USD per million output tokens (overrides the built-in table).
    #[serde(default)]
    pub output_cost_per_mtok: Option<f64>,
    /// Local models: context window (default: prompt + max_tokens, capped by the model).
    #[serde(default)]
    pub n_ctx: Option<u32>,
    /// Local models: CPU threads (default: all cores).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Mock: added latency per call, in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Mock: the fraction of calls (0..1) that fail with `error_status`.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Mock: how many first calls fail with `error_status` before calls succeed.
    #[serde(default)]
    pub fail_first: Option<u32>,
    /// Mock: the HTTP-like status of injected errors (default 500).
    #[serde(default)]
    pub error_status: Option<u16>,
    /// Mock: seed of the error-injection random stream (default 0), for reproducible runs.
    #[serde(default)]
    pub mock_seed: Option<u64>,
}

/// Where relative paths in provider ids resolve, and where embedded models live.
#[derive(Clone, Debug)]
pub struct ProviderContext {
    pub base_dir: PathBuf,
    pub models_dir: PathBuf,
}

impl ProviderContext {
    pub fn new(base_dir: &Path) -> ProviderContext {
        ProviderContext {
            base_dir: base_dir.to_owned(),
            models_dir: models::models_dir(),
        }
    }
}

/// The provider id prefixes plumb accepts, for error hints.
pub const KNOWN_PREFIXES: [&str; 6] = [
    "openai:",
    "openai-compatible:",
    "anthropic:",
    "local:",
    "mock:",
    "echo",
];

/// Builds the model named by `id` (`openai:gpt-4o-mini`, `local:gemma3-270m`, `mock:echo`...).
pub fn build(
    id: &str,
    options: &ProviderOptions,
    ctx: &ProviderContext,
) -> Result<Arc<dyn ChatModel>, ModelError> {
    let (prefix, rest) = id.split_once(':').unwrap_or((id, ""));
    match prefix {
        "echo" if rest.is_empty() => Ok(Arc::new(mock::MockModel::echo(id, options))),
        "mock" => Ok(Arc::new(mock::MockModel::from_spec(
            id, rest, options, ctx,
        )?)),
        "openai" => {
            // promptfoo also writes `openai:chat:<model>`.
            let model = rest.strip_prefix("chat:").unwrap_or(rest);
            non_empty(model, id, "openai:gpt-4o-mini")?;
            Ok(Arc::new(openai::OpenAiModel::new(
                id,
                model,
                openai::Flavor::OpenAi,
                options,
            )?))
        }
        "openai-compatible" => {
            let Some((base_url, model)) = rest.rsplit_once('#') else {
                return Err(ModelError::config(format!("provider `{id}` names no model"))
                    .with_hint("write `openai-compatible:<base-url>#<model>`, e.g. `openai-compatible:http://127.0.0.1:8080/v1#llama`"));
            };
            non_empty(
                model,
                id,
                "openai-compatible:http://127.0.0.1:8080/v1#my-model",
            )?;
            let mut options = options.clone();
            options.api_base_url = Some(base_url.to_owned());
            Ok(Arc::new(openai::OpenAiModel::new(
                id,
                model,
                openai::Flavor::Compatible,
                &options,
            )?))
        }
        "anthropic" => {
            let model = rest.strip_prefix("messages:").unwrap_or(rest);
            non_empty(model, id, "anthropic:claude-3-5-haiku-latest")?;
            Ok(Arc::new(anthropic::AnthropicModel::new(
                id, model, options,
            )?))
        }
        "local" => {
            non_empty(rest, id, "local:gemma3-270m")?;
            build_local(id, rest, options, ctx)
        }
        _ => {
            let mut error = ModelError::config(format!("unknown provider `{id}`"));
            let prefix_with_colon = format!("{prefix}:");
            let suggestion = plumb_core::did_you_mean(&prefix_with_colon, KNOWN_PREFIXES);
            error.hint = Some(match suggestion {
                Some(best) => format!("did you mean `{best}{rest}`? accepted: {}", accepted()),
                None => format!("accepted: {}", accepted()),
            });
            Err(error)
        }
    }
}

fn accepted() -> String {
    "`openai:<model>`, `openai-compatible:<base-url>#<model>`, `anthropic:<model>`, \
     `local:<name-or-path.gguf>`, `mock:echo`, `mock:text:<reply>`, `mock:file:<path>`, `mock:rules:<path>`, `echo`"
        .to_owned()
}

fn non_empty(model: &str, id: &str, example: &str) -> Result<(), ModelError> {
    if model.trim().is_empty() {
        return Err(
            ModelError::config(format!("provider `{id}` names no model"))
                .with_hint(format!("for example `{example}`")),
        );
    }
    Ok(())
}

#[cfg(feature = "local")]
fn build_local(
    id: &str,
    name: &str,
    options: &ProviderOptions,
    ctx: &ProviderContext,
) -> Result<Arc<dyn ChatModel>, ModelError> {
    let path = models::resolve_local(name, ctx)?;
    Ok(Arc::new(local::LocalModel::new(id, &path, options)?))
}

#[cfg(not(feature = "local"))]
fn build_local(
    id: &str,
    _name: &str,
    _options: &ProviderOptions,
    _ctx: &ProviderContext,
) -> Result<Arc<dyn ChatModel>, ModelError> {
    Err(ModelError::config(format!(
        "provider `{id}` needs local model support, which this build lacks"
    ))
    .with_hint("rebuild plumb with the default features (`cargo build --release`)"))
}

pub(crate) fn timeout(options: &ProviderOptions) -> Duration {
    Duration::from_millis(options.timeout_ms.unwrap_or(120_000))
}
