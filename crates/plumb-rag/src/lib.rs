//! Retrieval for plumb: documents read from Markdown, HTML, PDF and plain text (`document`),
//! cut into chunks (`chunk`), embedded and stored in a collection (`ingest`, `store`; the
//! embedded backend in `sqlite` with its HNSW index in `vectors`), and searched by BM25 and
//! vectors fused by reciprocal rank (`retrieve`).

pub mod chunk;
pub mod document;
pub mod evidence;
pub mod ingest;
pub mod retrieve;
pub mod sqlite;
pub mod store;
pub mod vectors;

pub use chunk::{Chunk, ChunkError, ChunkingConfig, Strategy, chunk, count_tokens};
pub use document::{Document, Format, LoadError, load};
pub use retrieve::{Hit, Reranker, RetrieveError, Retriever, SearchOptions};
pub use sqlite::SqliteCollection;
pub use store::{Backend, Filter, Manifest, StoreError, StoredChunk};
