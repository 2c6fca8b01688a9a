//! Retrieval for plumb. This first part cuts documents into chunks (`chunk`); ingestion, the
//! hybrid index and retrieval evals build on it (issue 6).

pub mod chunk;

pub use chunk::{Chunk, ChunkError, ChunkingConfig, Strategy, chunk, count_tokens};
