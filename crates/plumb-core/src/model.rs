//! The traits every consumer of models codes against: chat models and embedders.
//!
//! They return boxed futures so they stay object-safe: the runner holds `Arc<dyn ChatModel>`
//! and never knows which provider is behind it.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::{ChatDelta, ChatRequest, ChatResponse, ChatStream, ModelError, Usage};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Pricing {
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input_per_mtok
            + usage.completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

pub trait ChatModel: Send + Sync {
    /// The provider id as the user wrote it (`openai:gpt-4o-mini`), used in reports and as part
    /// of the cache key.
    fn id(&self) -> &str;

    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>>;

    /// The answer as it is generated. Resolves once the model has accepted the request (so a
    /// refusal is an error here, not in the stream). Models that cannot stream send the whole
    /// answer as one delta.
    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatStream, ModelError>> {
        Box::pin(async move {
            let response = self.chat(request).await?;
            let stream: ChatStream =
                Box::pin(futures_util::stream::iter([Ok(ChatDelta::whole(response))]));
            Ok(stream)
        })
    }

    /// Checks, before a run starts, what would make every call fail (a missing API key, a
    /// missing model file), so the user hears about it once and at once.
    fn preflight(&self) -> Result<(), ModelError> {
        Ok(())
    }

    /// USD per million tokens, when known.
    fn pricing(&self) -> Option<Pricing> {
        None
    }

    /// Tokens `text` would take in a prompt to this model, for estimates made before any call
    /// (`plumb eval --dry-run`, `--max-cost`). By default about four characters per token.
    fn count_tokens(&self, text: &str) -> u64 {
        (text.chars().count() as u64).div_ceil(4)
    }

    /// The most requests this model should serve at once (a local model runs one at a time).
    fn max_concurrency(&self) -> Option<usize> {
        None
    }

    /// Whether responses are worth caching. Mock providers answer instantly and deterministically,
    /// so caching them only costs I/O.
    fn cacheable(&self) -> bool {
        true
    }

    /// Everything besides the request that determines the answer (model file hash, base URL...),
    /// folded into the cache key.
    fn cache_identity(&self) -> String {
        self.id().to_owned()
    }
}

pub trait Embedder: Send + Sync {
    fn id(&self) -> &str;

    /// One L2-normalized vector per input text, in order.
    fn embed<'a>(&'a self, texts: &'a [String])
    -> BoxFuture<'a, Result<Vec<Vec<f32>>, ModelError>>;
}
