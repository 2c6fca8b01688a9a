//! Response caches, per route and off unless the route turns them on.
//!
//! - **Exact**: the key is a hash of the normalized request (the route or prompt version,
//!   messages, parameters and pass-through fields; not `stream`, not `user`); entries live for
//!   the route's `ttl_s`.
//! - **Semantic**: among cached requests that differ only in their last user message, one whose
//!   last user message embeds within `threshold` cosine similarity of this one's answers it.
//!   Scoped to the same prompt version or alias and the same conversation before that message.
//!
//! A request with `x-plumb-cache: bypass` (or `Cache-Control: no-cache`) neither reads nor
//! writes. Hits cost no tokens; they are marked in the `x-plumb-cache` header and the trace.
//! The cache is in-process and bounded (`gateway.cache.max_entries`, oldest out first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plumb_core::{ChatRequest, ChatResponse, Embedder, Role};
use serde_json::json;

/// A route's cache settings.
#[derive(Clone)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub semantic: Option<SemanticPolicy>,
}

impl std::fmt::Debug for CachePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachePolicy")
            .field("ttl", &self.ttl)
            .field("semantic", &self.semantic.as_ref().map(|s| s.threshold))
            .finish()
    }
}

#[derive(Clone)]
pub struct SemanticPolicy {
    pub threshold: f32,
    pub embedder: Arc<dyn Embedder>,
}

/// How a request met the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The route has no cache.
    Off,
    /// The client asked to skip it.
    Bypass,
    Miss,
    Hit,
    Semantic,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Off => "off",
            Outcome::Bypass => "bypass",
            Outcome::Miss => "miss",
            Outcome::Hit => "hit",
            Outcome::Semantic => "semantic",
        }
    }
}

struct Entry {
    expires: Instant,
    response: Arc<ChatResponse>,
}

struct SemanticEntry {
    expires: Instant,
    vector: Vec<f32>,
    response: Arc<ChatResponse>,
}

#[derive(Default)]
struct Tables {
    exact: HashMap<String, Entry>,
    order: VecDeque<String>,
    /// Context key → entries whose last user message differs.
    semantic: HashMap<String, Vec<SemanticEntry>>,
    semantic_order: VecDeque<String>,
    semantic_count: usize,
}

pub struct ResponseCache {
    max_entries: usize,
    tables: Mutex<Tables>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl Default for ResponseCache {
    fn default() -> ResponseCache {
        ResponseCache::new(10_000)
    }
}

/// The keys of one request.
pub struct Keys {
    pub exact: String,
    /// Everything but the last user message, and that message (for semantic lookups).
    context: String,
    last_user: Option<String>,
}

/// `scope` names what produced the answer (the alias, or the prompt version's hash).
pub fn keys(scope: &str, request: &ChatRequest) -> Keys {
    let mut extra = request.extra.clone();
    // Who asks does not change the answer.
    extra.remove("user");
    extra.remove("metadata");
    let exact = json!({"scope": scope, "messages": request.messages, "params": request.params,
                       "extra": extra});
    let exact = plumb_core::hash_hex(exact.to_string().as_bytes());
    let last_user_index = request.messages.iter().rposition(|m| m.role == Role::User);
    let (context, last_user) = match last_user_index {
        Some(index) => {
            let mut before = request.messages.clone();
            let last = before.remove(index);
            (before, Some(last.content))
        }
        None => (request.messages.clone(), None),
    };
    let context = json!({"scope": scope, "messages": context, "params": request.params,
                         "extra": extra});
    Keys {
        exact,
        context: plumb_core::hash_hex(context.to_string().as_bytes()),
        last_user,
    }
}

impl ResponseCache {
    pub fn new(max_entries: usize) -> ResponseCache {
        ResponseCache {
            max_entries: max_entries.max(1),
            tables: Mutex::new(Tables::default()),
        }
    }

    pub fn get_exact(&self, keys: &Keys) -> Option<Arc<ChatResponse>> {
        let mut tables = self.tables.lock().ok()?;
        let entry = tables.exact.get(&keys.exact)?;
        if entry.expires > Instant::now() {
            return Some(entry.response.clone());
        }
        tables.exact.remove(&keys.exact);
        None
    }

    pub fn put_exact(&self, keys: &Keys, ttl: Duration, response: Arc<ChatResponse>) {
        let Ok(mut tables) = self.tables.lock() else {
            return;
        };
        let tables = &mut *tables;
        let expires = Instant::now() + ttl;
        if tables
            .exact
            .insert(keys.exact.clone(), Entry { expires, response })
            .is_none()
        {
            tables.order.push_back(keys.exact.clone());
        }
        while tables.exact.len() > self.max_entries {
            match tables.order.pop_front() {
                Some(oldest) => {
                    tables.exact.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// The embedding of the request's last user message, when it has one.
    pub async fn embed(
        policy: &SemanticPolicy,
        keys: &Keys,
    ) -> Option<Result<Vec<f32>, plumb_core::ModelError>> {
        let text = keys.last_user.clone()?;
        let vectors = policy.embedder.embed(std::slice::from_ref(&text)).await;
        Some(vectors.map(|mut v| v.pop().unwrap_or_default()))
    }

    /// The closest cached answer in the same context at or above `threshold`.
    pub fn get_semantic(
        &self,
        keys: &Keys,
        vector: &[f32],
        threshold: f32,
    ) -> Option<(Arc<ChatResponse>, f32)> {
        let tables = self.tables.lock().ok()?;
        let now = Instant::now();
        tables
            .semantic
            .get(&keys.context)?
            .iter()
            .filter(|entry| entry.expires > now)
            .map(|entry| (entry, cosine(&entry.vector, vector)))
            .filter(|(_, similarity)| *similarity >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(entry, similarity)| (entry.response.clone(), similarity))
    }

    pub fn put_semantic(
        &self,
        keys: &Keys,
        vector: Vec<f32>,
        ttl: Duration,
        response: Arc<ChatResponse>,
    ) {
        let Ok(mut tables) = self.tables.lock() else {
            return;
        };
        let tables = &mut *tables;
        let now = Instant::now();
        let entries = tables.semantic.entry(keys.context.clone()).or_default();
        let before = entries.len();
        entries.retain(|entry| entry.expires > now);
        let removed = before - entries.len();
        entries.push(SemanticEntry {
            expires: now + ttl,
            vector,
            response,
        });
        tables.semantic_count = tables.semantic_count + 1 - removed;
        tables.semantic_order.push_back(keys.context.clone());
        while tables.semantic_count > self.max_entries {
            let Some(oldest) = tables.semantic_order.pop_front() else {
                break;
            };
            if let Some(entries) = tables.semantic.get_mut(&oldest)
                && !entries.is_empty()
            {
                entries.remove(0);
                tables.semantic_count -= 1;
                if entries.is_empty() {
                    tables.semantic.remove(&oldest);
                }
            }
        }
    }
}

/// A miss to fill once the answer is complete.
pub struct Write {
    pub cache: Arc<ResponseCache>,
    pub keys: Keys,
    pub vector: Option<Vec<f32>>,
    pub ttl: Duration,
}

impl Write {
    /// Caches `response` if it is a finished answer.
    pub fn store(self, response: &ChatResponse) {
        if response.finish_reason.is_none() {
            return;
        }
        let response = Arc::new(response.clone());
        self.cache.put_exact(&self.keys, self.ttl, response.clone());
        if let Some(vector) = self.vector {
            self.cache
                .put_semantic(&self.keys, vector, self.ttl, response);
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use plumb_core::Message;

    fn ask(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, text),
            ],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn exact_keys_ignore_the_caller_and_entries_expire_and_evict() {
        let mut with_user = ask("hi");
        with_user.extra.insert("user".into(), json!("u1"));
        assert_eq!(
            keys("fast", &ask("hi")).exact,
            keys("fast", &with_user).exact
        );
        assert_ne!(
            keys("fast", &ask("hi")).exact,
            keys("slow", &ask("hi")).exact
        );
        assert_ne!(
            keys("fast", &ask("hi")).exact,
            keys("fast", &ask("ho")).exact
        );
        assert_eq!(
            keys("fast", &ask("hi")).context,
            keys("fast", &ask("ho")).context
        );

        let cache = ResponseCache::new(2);
        let answer = Arc::new(ChatResponse {
            content: "a".into(),
            ..ChatResponse::default()
        });
        cache.put_exact(
            &keys("f", &ask("1")),
            Duration::from_secs(60),
            answer.clone(),
        );
        cache.put_exact(&keys("f", &ask("2")), Duration::ZERO, answer.clone());
        assert!(cache.get_exact(&keys("f", &ask("1"))).is_some());
        assert!(cache.get_exact(&keys("f", &ask("2"))).is_none(), "expired");
        cache.put_exact(
            &keys("f", &ask("3")),
            Duration::from_secs(60),
            answer.clone(),
        );
        cache.put_exact(&keys("f", &ask("4")), Duration::from_secs(60), answer);
        assert!(cache.get_exact(&keys("f", &ask("1"))).is_none(), "evicted");
        assert!(cache.get_exact(&keys("f", &ask("4"))).is_some());
    }

    #[test]
    fn semantic_hits_need_the_same_context_and_enough_similarity() {
        let cache = ResponseCache::new(10);
        let answer = Arc::new(ChatResponse {
            content: "Paris".into(),
            ..ChatResponse::default()
        });
        let stored = keys("f", &ask("capital of France?"));
        cache.put_semantic(&stored, vec![1.0, 0.0], Duration::from_secs(60), answer);
        let similar = keys("f", &ask("France's capital?"));
        let (hit, similarity) = cache.get_semantic(&similar, &[0.96, 0.28], 0.9).unwrap();
        assert_eq!(hit.content, "Paris");
        assert!(similarity > 0.95);
        assert!(cache.get_semantic(&similar, &[0.5, 0.86], 0.9).is_none());
        assert!(
            cache
                .get_semantic(&keys("other", &ask("France's capital?")), &[1.0, 0.0], 0.9)
                .is_none()
        );
    }
}
