//! Prompts as code: prompt files (messages, typed variables, parameters, output schema) and the
//! sandboxed Jinja template language they are written in.
//!
//! Knows nothing about providers, suites or storage.

mod file;
pub mod template;
pub mod yaml;

pub use file::{
    MessageTemplate, PromptFile, PromptTemplate, RawParams, StringOrList, VarType, Variable,
    parse_response_format,
};
pub use template::{RenderError, render_str};
