//! What every HTTP provider shares: the client, sending JSON with retries (jittered exponential
//! backoff that honours Retry-After), and mapping HTTP failures to `ModelError` kinds.

use std::sync::OnceLock;
use std::time::Duration;

use plumb_core::{ModelError, ModelErrorKind};
use serde_json::Value;

/// Backoff never waits longer than this between two attempts, whatever Retry-After says.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const BASE_BACKOFF: Duration = Duration::from_millis(500);
pub(crate) const DEFAULT_MAX_RETRIES: u32 = 4;

/// Parses a provider's endpoint once, when the provider is built: reqwest would otherwise
/// parse the URL string (IDNA included) on every request.
pub(crate) fn endpoint(id: &str, url: &str) -> Result<reqwest::Url, ModelError> {
    reqwest::Url::parse(url).map_err(|error| {
        ModelError::config(format!(
            "provider `{id}`: `{url}` is not a valid URL: {error}"
        ))
        .with_hint("for example `http://127.0.0.1:8080/v1`")
    })
}

/// One shared client per process: connection pools are per client.
pub(crate) fn client() -> Result<reqwest::Client, ModelError> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            // Several crates may link rustls; pick ring explicitly, once. An error means a
            // provider is already installed, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(90))
                .build()
                .map_err(|error| error.to_string())
        })
        .clone()
        .map_err(|message| {
            ModelError::new(
                ModelErrorKind::Connect,
                format!("cannot create HTTP client: {message}"),
            )
        })
}

pub(crate) struct JsonRequest<'a> {
    pub url: &'a reqwest::Url,
    pub headers: &'a [(String, String)],
    pub body: &'a Value,
    pub timeout: Duration,
    pub max_retries: u32,
    /// Turns an error body into a message (each provider nests it differently).
    pub error_message: fn(&Value) -> Option<String>,
}

/// POSTs `body` as JSON and returns the parsed JSON answer, retrying what is retryable.
pub(crate) async fn post_json(request: JsonRequest<'_>) -> Result<Value, ModelError> {
    let response = post(&request).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|error| transport_error(&error, request.url.as_str()))?;
    serde_json::from_slice(&bytes).map_err(|error| {
        ModelError::new(
            ModelErrorKind::Protocol,
            format!("{} answered with invalid JSON: {error}", request.url),
        )
    })
}

/// POSTs `body` as JSON and returns the successful response with its body unread (a stream),
/// retrying what is retryable until the status line arrives.
pub(crate) async fn post(request: &JsonRequest<'_>) -> Result<reqwest::Response, ModelError> {
    let client = client()?;
    let mut attempt = 0;
    loop {
        match send_once(&client, request).await {
            Ok(response) => return Ok(response),
            Err(error) if error.is_retryable() && attempt < request.max_retries => {
                let wait = backoff(attempt, error.retry_after);
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn send_once(
    client: &reqwest::Client,
    request: &JsonRequest<'_>,
) -> Result<reqwest::Response, ModelError> {
    let mut builder = client
        .post(request.url.clone())
        .timeout(request.timeout)
        .json(request.body);
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let response = builder
        .send()
        .await
        .map_err(|error| transport_error(&error, request.url.as_str()))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers());
    let bytes = response
        .bytes()
        .await
        .map_err(|error| transport_error(&error, request.url.as_str()))?;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let detail = (request.error_message)(&body)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned());
    Err(status_error(status, &detail).with_retry_after(retry_after))
}

pub(crate) fn status_error(status: u16, detail: &str) -> ModelError {
    let kind = match status {
        401 | 403 => ModelErrorKind::Auth,
        408 => ModelErrorKind::Timeout,
        429 => ModelErrorKind::RateLimited,
        500..=599 => ModelErrorKind::Server,
        _ => ModelErrorKind::BadRequest,
    };
    let mut error = ModelError::new(kind, format!("HTTP {status}: {detail}")).with_status(status);
    if kind == ModelErrorKind::Auth {
        error.hint = Some("check the API key (and that it is for this endpoint)".to_owned());
    }
    error
}

pub(crate) fn transport_error(error: &reqwest::Error, url: &str) -> ModelError {
    if error.is_timeout() {
        ModelError::new(
            ModelErrorKind::Timeout,
            format!("request to {url} timed out"),
        )
    } else if error.is_connect() {
        ModelError::new(ModelErrorKind::Connect, format!("cannot connect to {url}"))
            .with_hint("check the base URL and that the server is running")
    } else {
        ModelError::new(
            ModelErrorKind::Connect,
            format!("request to {url} failed: {error}"),
        )
    }
}

/// Retry-After in seconds (or OpenAI's `retry-after-ms`). HTTP dates are rare from model APIs
/// and fall back to the computed backoff.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).max(0.0)));
    }
    text("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|seconds| Duration::from_secs_f64(seconds.max(0.0)))
}

/// Full-jitter exponential backoff, or the server's Retry-After when it gave one.
pub(crate) fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(MAX_BACKOFF);
    }
    let ceiling = BASE_BACKOFF
        .saturating_mul(1 << attempt.min(10))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Checks that something listens at `url`'s host and port (DNS + TCP connect, no request),
/// so a wrong base URL is reported once before a run instead of as every case failing.
pub(crate) fn check_reachable(url: &reqwest::Url) -> Result<(), ModelError> {
    use std::net::{TcpStream, ToSocketAddrs};
    let unreachable = |detail: String| {
        ModelError::config(format!("cannot reach {url}: {detail}"))
            .with_hint("check the base URL (`apiBaseUrl`) and that the server is running")
    };
    let host = url
        .host_str()
        .ok_or_else(|| unreachable("no host".to_owned()))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| unreachable("no port".to_owned()))?;
    let addresses: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|error| unreachable(format!("cannot resolve `{host}`: {error}")))?
        .collect();
    let mut last = String::from("no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(error) => last = error.to_string(),
        }
    }
    Err(unreachable(last))
}

/// The error of an API provider built without its key.
pub(crate) fn missing_key(provider: &str, env_name: &str) -> ModelError {
    ModelError::config(format!(
        "provider `{provider}` needs an API key in `{env_name}`"
    ))
    .with_hint(format!(
        "export {env_name}=... or replay recorded answers with `--cache read-only`"
    ))
}

pub(crate) fn api_key(env_name: &str) -> Option<String> {
    std::env::var(env_name)
        .ok()
        .filter(|key| !key.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_parsed_when_the_provider_is_built() {
        let url = endpoint(
            "openai-compatible:x",
            "http://127.0.0.1:9/v1/chat/completions",
        );
        assert_eq!(
            url.map(|u| u.to_string()).ok().as_deref(),
            Some("http://127.0.0.1:9/v1/chat/completions")
        );
        let error = endpoint("openai-compatible:x", "http://[::1/v1").err();
        let message = error.map(|e| e.message).unwrap_or_default();
        assert!(
            message.contains("`http://[::1/v1` is not a valid URL"),
            "{message}"
        );
    }

    #[test]
    fn backoff_honours_retry_after_and_caps() {
        assert_eq!(
            backoff(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(backoff(0, Some(Duration::from_secs(600))), MAX_BACKOFF);
        for attempt in 0..20 {
            let wait = backoff(attempt, None);
            assert!(
                wait <= MAX_BACKOFF && wait >= BASE_BACKOFF / 2,
                "{attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn status_classification() {
        assert!(status_error(429, "").is_retryable());
        assert!(status_error(503, "").is_retryable());
        assert!(!status_error(400, "").is_retryable());
        assert_eq!(status_error(401, "").kind, ModelErrorKind::Auth);
    }
}
