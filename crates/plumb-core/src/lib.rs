//! The shared vocabulary of plumb: chat messages, requests and responses, usage and cost,
//! the model-facing traits (`ChatModel`, `Embedder`) and the ids every other crate uses.
//!
//! This crate does no I/O and knows no wire format: providers translate these types to and
//! from their APIs, and the eval runner only ever sees the traits.

mod chat;
mod diagnostic;
mod error;
mod ids;
mod model;
mod stream;

pub use chat::{
    ChatRequest, ChatResponse, FinishReason, JsonSchemaFormat, Message, ModelParams,
    ResponseFormat, Role, TokenLogprob, ToolCall, ToolCallFunction, Usage,
};
pub use diagnostic::{SourceError, did_you_mean, edit_distance};
pub use error::{ModelError, ModelErrorKind};
pub use ids::{RunId, hash_hex, now_ms, short_hash};
pub use model::{BoxFuture, ChatModel, Embedder, Pricing};
pub use stream::{Assembler, ChatDelta, ChatStream, ToolCallDelta};
