//! Keys verified recently, kept in memory so a client's requests do not each pay a database
//! lookup (on the gateway's hot path that is a thread hand-off and a SQLite query per call).
//!
//! The contract: a revoked key keeps working for at most `ttl` (5 s in `plumb serve`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use plumb_registry::Actor;

/// At most this many keys are remembered; beyond it the cache is cleared (keys are few).
const CAPACITY: usize = 10_000;

#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Actor, Instant)>>,
}

impl KeyCache {
    /// `ttl` zero disables caching.
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The actor for `secret` if it was verified less than `ttl` ago.
    pub fn get(&self, secret: &str) -> Option<Actor> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (actor, at) = entries.get(secret)?;
        (at.elapsed() < self.ttl).then(|| actor.clone())
    }

    pub fn put(&self, secret: &str, actor: &Actor) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(secret.to_owned(), (actor.clone(), Instant::now()));
        }
    }
}

impl Default for KeyCache {
    fn default() -> KeyCache {
        KeyCache::new(Duration::from_secs(5))
    }
}
