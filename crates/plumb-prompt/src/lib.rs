//! Prompts as code: prompt files (messages, typed variables, parameters, output schema) and the
//! sandboxed Jinja template language they are written in.
//!
//! Also the pure parts of the registry: references (`triage@production`), diffs between
//! versions, lint, and the YAML written by export.
//!
//! Knows nothing about providers, suites or storage.

pub mod diff;
mod export;
mod file;
pub mod lint;
mod reference;
pub mod template;
pub mod yaml;

pub use export::{YamlScope, to_value, to_yaml};
pub use file::{
    Example, MessageTemplate, PromptFile, PromptTemplate, RawParams, Risk, StringOrList, VarType,
    Variable, check_name, parse_response_format,
};
pub use reference::{PromptRef, Selector, check_label};
pub use template::{RenderError, render_str};
