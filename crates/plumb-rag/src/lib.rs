//! Retrieval for plumb: documents read from Markdown, HTML, PDF and plain text (`document`),
//! cut into chunks (`chunk`), embedded and stored in a collection (`ingest`, `store`; the
//! embedded backend in `sqlite` with its HNSW index in `vectors`, its graph in `hnsw`), and searched by BM25 and
//! vectors fused by reciprocal rank (`retrieve`). `collections` opens the place collections
//! live: a directory of embedded ones, or PostgreSQL with pgvector (`pgvector`, feature
//! `postgres`).

pub mod chunk;
pub mod collections;
pub mod document;
pub mod evidence;
pub mod hnsw;
pub mod ingest;
pub mod pages;
#[cfg(feature = "postgres")]
pub mod pgvector;
pub mod retrieve;
pub mod sqlite;
pub mod store;
pub mod vectors;

pub use chunk::{Chunk, ChunkError, ChunkingConfig, Strategy, chunk, count_tokens};
pub use collections::Store;
pub use document::{Document, Format, LoadError, load};
pub use retrieve::{Hit, Reranker, RetrieveError, Retriever, SearchOptions};
pub use sqlite::SqliteCollection;
pub use store::{Backend, Filter, Manifest, Stats, StoreError, StoredChunk};
