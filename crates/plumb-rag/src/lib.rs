//! Retrieval for plumb. So far: documents read from Markdown, HTML, PDF and plain text
//! (`document`) and cut into chunks (`chunk`); ingestion, the hybrid index and retrieval evals
//! build on them (issue 6).

pub mod chunk;
pub mod document;

pub use chunk::{Chunk, ChunkError, ChunkingConfig, Strategy, chunk, count_tokens};
pub use document::{Document, Format, LoadError, load};
