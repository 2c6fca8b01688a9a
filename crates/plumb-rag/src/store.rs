//! What a collection keeps and the one trait its backends implement.
//!
//! A collection is documents cut into chunks, each chunk with its embedding, searchable two
//! ways: full text (BM25) and by vector (approximate nearest neighbours). The embedded backend
//! (`sqlite.rs`) keeps everything under `.plumb/rag/NAME/`; `pgvector.rs` keeps it in
//! PostgreSQL. Retrieval (`retrieve.rs`) and ingestion (`ingest.rs`) see only `Backend`.

use std::collections::HashMap;

use plumb_core::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{ChunkingConfig, Format};

/// What a collection was made with; a later ingest or query must use the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub chunking: ChunkingConfig,
    /// The embedder's id, e.g. `local:all-minilm-l6-v2`.
    pub embedder: String,
    pub dimensions: usize,
    pub created_ms: i64,
}

/// A chunk id, unique in its collection and never reused.
pub type ChunkId = u64;

/// A stored document, as ingestion compares it with the file on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDocument {
    pub source: String,
    pub hash: String,
    pub chunks: usize,
}

/// A chunk ready to store: its text, where it came from, and its vector.
#[derive(Clone, Debug)]
pub struct NewChunk {
    pub ordinal: usize,
    pub text: String,
    /// Hash of the text that was embedded (headings and text): the embedding cache's key.
    pub embed_hash: String,
    pub start: usize,
    pub end: usize,
    pub headings: Vec<String>,
    pub page: Option<usize>,
    pub tokens: usize,
    pub vector: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct NewDocument {
    pub source: String,
    pub title: String,
    pub format: Format,
    pub hash: String,
    pub bytes: usize,
    pub chunks: Vec<NewChunk>,
}

/// One ingest's changes, applied all together or not at all.
#[derive(Clone, Debug, Default)]
pub struct Change {
    /// Sources to drop (their chunks and vectors go with them).
    pub remove: Vec<String>,
    /// Documents to store; one already stored under the same source is replaced.
    pub add: Vec<NewDocument>,
}

/// A stored chunk with its document's metadata.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredChunk {
    pub id: ChunkId,
    pub source: String,
    pub title: String,
    pub format: Format,
    pub ordinal: usize,
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub headings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
    pub tokens: usize,
}

impl StoredChunk {
    /// Where the chunk is: `docs/limits.md § Limits > Payload size · p. 3`.
    pub fn place(&self) -> String {
        let mut place = self.source.clone();
        if !self.headings.is_empty() {
            place.push_str(" § ");
            place.push_str(&self.headings.join(" > "));
        }
        if let Some(page) = self.page {
            place.push_str(&format!(" · p. {page}"));
        }
        place
    }
}

/// Which chunks a search may return. Every field that is set must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// A glob over the source path (`*` within a segment, `**` across).
    pub source: Option<String>,
    pub format: Option<Format>,
    /// Inclusive page range (PDF chunks only).
    pub pages: Option<(usize, usize)>,
    /// A heading the chunk sits under contains this (case-insensitive).
    pub heading: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Parses `key=value` terms: `source=GLOB`, `format=markdown|html|pdf|text`,
    /// `page=N` or `page=N-M`, `heading=TEXT`.
    pub fn parse(terms: &[String]) -> Result<Filter, String> {
        let mut filter = Filter::default();
        for term in terms {
            let Some((key, value)) = term.split_once('=') else {
                return Err(format!(
                    "filter `{term}` is not KEY=VALUE (keys: source, format, page, heading)"
                ));
            };
            let value = value.trim();
            match key.trim() {
                "source" => filter.source = Some(value.to_owned()),
                "format" => {
                    filter.format = Some(Format::from_name(value).ok_or_else(|| {
                        format!("filter format `{value}`: accepted are markdown, html, pdf, text")
                    })?)
                }
                "page" => {
                    let bad = || format!("filter page `{value}`: write N or N-M (1-based)");
                    let (low, high) = value.split_once('-').unwrap_or((value, value));
                    let low: usize = low.trim().parse().map_err(|_| bad())?;
                    let high: usize = high.trim().parse().map_err(|_| bad())?;
                    if low == 0 || high < low {
                        return Err(bad());
                    }
                    filter.pages = Some((low, high));
                }
                "heading" => filter.heading = Some(value.to_owned()),
                other => {
                    return Err(format!(
                        "unknown filter key `{other}` (keys: source, format, page, heading)"
                    ));
                }
            }
        }
        Ok(filter)
    }
}

/// A glob over source paths, as filters and retrieval labels use it: `*` and `?` stay within
/// a path segment, `**` crosses them; a pattern that is exactly the source matches it even
/// when it is not a valid glob.
#[derive(Clone, Debug)]
pub struct SourceGlob {
    text: String,
    pattern: Option<glob::Pattern>,
}

impl SourceGlob {
    /// Fails on a malformed pattern (an unclosed `[`, say) with what is wrong.
    pub fn new(text: &str) -> Result<SourceGlob, String> {
        let pattern = glob::Pattern::new(text).map_err(|error| format!("`{text}`: {error}"))?;
        Ok(SourceGlob {
            text: text.to_owned(),
            pattern: Some(pattern),
        })
    }

    /// Like `new`, but a malformed pattern matches only the identical source.
    pub fn lenient(text: &str) -> SourceGlob {
        SourceGlob::new(text).unwrap_or_else(|_| SourceGlob {
            text: text.to_owned(),
            pattern: None,
        })
    }

    pub fn matches(&self, source: &str) -> bool {
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        self.text == source
            || self
                .pattern
                .as_ref()
                .is_some_and(|p| p.matches_with(source, options))
    }
}

/// A collection's size, for listings.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub documents: usize,
    pub chunks: usize,
    pub bytes: usize,
}

/// A search result: a chunk and its score under that search (higher is better).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub id: ChunkId,
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("collection `{0}` does not exist")]
    NotFound(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("the collection's storage failed: {0}")]
    Storage(String),
    #[error("the collection's vector index failed: {0}")]
    Index(String),
}

/// A collection's storage: documents, chunks, the full-text and the vector index.
pub trait Backend: Send + Sync {
    fn manifest(&self) -> &Manifest;

    /// Where the collection is kept, for messages: a directory, or a database and its tables.
    fn location(&self) -> String;

    /// How many documents, chunks and document bytes it holds.
    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>>;

    /// Every stored document (source, hash, chunk count), by source.
    fn documents(&self) -> BoxFuture<'_, Result<Vec<StoredDocument>, StoreError>>;

    /// Vectors already computed by the collection's embedder, by embed hash.
    fn cached_vectors<'a>(
        &'a self,
        hashes: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Vec<f32>>, StoreError>>;

    /// Applies one ingest's changes atomically: readers see all of them or none.
    fn apply(&self, change: Change) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The best `limit` chunks for `query` by BM25 over text and headings.
    fn text_search<'a>(
        &'a self,
        query: &'a str,
        limit: usize,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<Vec<Scored>, StoreError>>;

    /// The `limit` chunks nearest to `vector` (cosine similarity, higher is nearer).
    fn vector_search<'a>(
        &'a self,
        vector: &'a [f32],
        limit: usize,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<Vec<Scored>, StoreError>>;

    /// The chunks with these ids, in the order given (unknown ids are left out).
    fn chunks<'a>(
        &'a self,
        ids: &'a [ChunkId],
    ) -> BoxFuture<'a, Result<Vec<StoredChunk>, StoreError>>;
}

/// English function words left out of full-text queries (the text keeps them): in a question
/// they match nearly every chunk and drown the words that matter. Lucene's English stop set
/// plus question words and pronouns.
const STOPWORDS: &[&str] = &[
    "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "but", "by", "can", "could",
    "did", "do", "does", "for", "from", "had", "has", "have", "how", "i", "if", "in", "into", "is",
    "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "s", "should", "so", "such",
    "t", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "to",
    "was", "we", "were", "what", "when", "where", "which", "who", "why", "will", "with", "would",
    "you", "your",
];

/// A collection name: 1–64 letters, digits, `-` and `_` (it names a directory).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Words of a query for full-text search: letters and digits, lowercase, each at most once,
/// in order, without stop words (unless the query has nothing else).
pub fn query_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in query.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let word = word.to_lowercase();
        if !terms.contains(&word) {
            terms.push(word);
        }
    }
    let content: Vec<String> = terms
        .iter()
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
        .cloned()
        .collect();
    if content.is_empty() { terms } else { content }
}

/// A vector as little-endian bytes, and back.
pub fn vector_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bytes_vector(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn filters_parse_and_refuse() {
        let filter = Filter::parse(&[
            "source=docs/**/*.md".to_owned(),
            "page=2-4".to_owned(),
            "format=pdf".to_owned(),
        ])
        .unwrap_or_default();
        assert_eq!(filter.source.as_deref(), Some("docs/**/*.md"));
        assert_eq!(filter.pages, Some((2, 4)));
        assert_eq!(filter.format, Some(Format::Pdf));
        assert!(Filter::parse(&["page=4-2".to_owned()]).is_err());
        assert!(Filter::parse(&["colour=red".to_owned()]).is_err());
        assert!(Filter::parse(&["source".to_owned()]).is_err());
    }

    #[test]
    fn source_globs_stay_within_segments() {
        let glob = SourceGlob::new("docs/*.md").unwrap();
        assert!(glob.matches("docs/a.md"));
        assert!(!glob.matches("docs/sub/a.md"));
        let deep = SourceGlob::new("docs/**/*.md").unwrap();
        assert!(deep.matches("docs/sub/a.md"));
        assert!(SourceGlob::new("docs/[a.md").is_err());
        assert!(SourceGlob::lenient("docs/[a.md").matches("docs/[a.md"));
        assert!(!SourceGlob::lenient("docs/[a.md").matches("docs/a.md"));
    }

    #[test]
    fn query_terms_drop_punctuation() {
        assert_eq!(
            query_terms("What's the \"max\" RPS? max-RPS"),
            vec!["max", "rps"]
        );
        assert_eq!(query_terms("to be or not"), vec!["to", "be", "or", "not"]);
    }

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.5, -1.25, 3.0e-8];
        assert_eq!(bytes_vector(&vector_bytes(&v)), v);
    }
}
