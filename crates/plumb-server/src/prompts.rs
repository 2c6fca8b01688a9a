//! The registry as the gateway's source of `prompt:NAME@LABEL` models. Resolutions are kept
//! for a short time so a busy prompt costs one database lookup per `ttl`, not one per request.
//!
//! The contract: a label move (promotion, rollback) reaches the gateway within `ttl` (1 s in
//! `plumb serve`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plumb_core::BoxFuture;
use plumb_gateway::prompts::{LookupError, PromptSource, ResolvedPrompt};
use plumb_prompt::{PromptRef, PromptTemplate};
use plumb_registry::{Registry, RegistryError};

/// Remembered references beyond which the cache starts over.
const CAPACITY: usize = 4096;

pub struct RegistryPrompts {
    registry: Registry,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Arc<ResolvedPrompt>)>>,
}

impl std::fmt::Debug for RegistryPrompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryPrompts")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RegistryPrompts {
    /// `ttl` zero: every request resolves afresh.
    pub fn new(registry: Registry, ttl: Duration) -> RegistryPrompts {
        RegistryPrompts {
            registry,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, reference: &str) -> Option<Arc<ResolvedPrompt>> {
        if self.ttl.is_zero() {
            return None;
        }
        let cache = self.cache.lock().ok()?;
        let (at, prompt) = cache.get(reference)?;
        (at.elapsed() < self.ttl).then(|| prompt.clone())
    }

    async fn lookup(&self, reference: &str) -> Result<Arc<ResolvedPrompt>, LookupError> {
        if let Some(prompt) = self.cached(reference) {
            return Ok(prompt);
        }
        let parsed = PromptRef::parse(reference).map_err(LookupError::Invalid)?;
        let registry = self.registry.clone();
        let resolved = tokio::task::spawn_blocking(move || registry.resolve(&parsed))
            .await
            .map_err(|error| {
                eprintln!("plumb serve: prompt lookup failed: {error}");
                LookupError::Internal
            })?
            .map_err(|error| match error {
                RegistryError::NotFound { message, .. } => LookupError::NotFound(message),
                RegistryError::Invalid { message, .. } => LookupError::Invalid(message),
                other => {
                    eprintln!("plumb serve: prompt lookup failed: {other}");
                    LookupError::Internal
                }
            })?;
        let version = resolved.version;
        let template = PromptTemplate::compile(resolved.file).map_err(|error| {
            eprintln!(
                "plumb serve: {} v{} does not compile: {error}",
                version.name, version.version
            );
            LookupError::Internal
        })?;
        let prompt = Arc::new(ResolvedPrompt {
            name: version.name,
            version: version.version.min(i64::MAX as u64) as i64,
            hash: version.hash,
            template,
        });
        if !self.ttl.is_zero()
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= CAPACITY {
                cache.clear();
            }
            cache.insert(reference.to_owned(), (Instant::now(), prompt.clone()));
        }
        Ok(prompt)
    }
}

impl PromptSource for RegistryPrompts {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Arc<ResolvedPrompt>, LookupError>> {
        Box::pin(self.lookup(reference))
    }
}
