//! Registered prompts as targets: `model: "prompt:triage@production"` with
//! `extra_body: {"variables": {...}}` renders that version of the prompt and sends it to the
//! model alias the prompt names, with the prompt's parameters (the request's own parameters,
//! where given, win). The client's `messages`, if any, follow the rendered ones.

use std::sync::Arc;

use axum::http::StatusCode;
use plumb_core::{BoxFuture, ChatRequest};
use plumb_prompt::{PromptTemplate, RenderError};
use serde_json::{Map, Value};

use crate::wire::OpenAiError;

/// One version of a registered prompt, compiled.
#[derive(Debug)]
pub struct ResolvedPrompt {
    pub name: String,
    pub version: i64,
    pub hash: String,
    pub template: PromptTemplate,
}

#[derive(Debug)]
pub enum LookupError {
    /// No such prompt, version or label; the message says which.
    NotFound(String),
    /// The reference is malformed.
    Invalid(String),
    /// The store failed (details logged by the source).
    Internal,
}

/// Where the gateway finds registered prompts (the server's registry).
pub trait PromptSource: Send + Sync {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Arc<ResolvedPrompt>, LookupError>>;
}

/// A request rewritten from a prompt: where it goes and what the trace names.
pub(crate) struct Rendered {
    pub alias: String,
    pub prompt: Arc<ResolvedPrompt>,
}

pub(crate) async fn render(
    source: Option<&Arc<dyn PromptSource>>,
    reference: &str,
    request: &mut ChatRequest,
) -> Result<Rendered, OpenAiError> {
    let model_error = |status: StatusCode, code: &'static str, message: String| {
        let mut error = OpenAiError::new(status, "invalid_request_error", Some(code), message);
        error.param = Some("model".into());
        error
    };
    let Some(source) = source else {
        return Err(model_error(
            StatusCode::NOT_FOUND,
            "model_not_found",
            "this gateway has no prompt registry, so `prompt:` models are not served".into(),
        ));
    };
    let prompt = source
        .resolve(reference)
        .await
        .map_err(|error| match error {
            LookupError::NotFound(message) => {
                model_error(StatusCode::NOT_FOUND, "prompt_not_found", message)
            }
            LookupError::Invalid(message) => {
                model_error(StatusCode::BAD_REQUEST, "invalid_prompt_reference", message)
            }
            LookupError::Internal => OpenAiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                None,
                "internal error resolving the prompt; the server log has the details",
            ),
        })?;
    let file = prompt.template.file();
    let Some(alias) = file.model.clone() else {
        return Err(model_error(
            StatusCode::BAD_REQUEST,
            "prompt_without_model",
            format!(
                "prompt `{}` v{} names no model; add `model: <alias from gateway.models>` to it and push a new version",
                prompt.name, prompt.version
            ),
        ));
    };
    let variables = match request.extra.remove("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(variables)) => variables,
        Some(_) => {
            return Err(OpenAiError::invalid(
                "`variables` must be an object (send it as extra_body={\"variables\": {...}})",
                Some("variables"),
            ));
        }
    };
    let mut messages = prompt.template.render(&variables).map_err(|error| {
        let (message, param) = match &error {
            RenderError::UndefinedVariable { name } => (
                format!(
                    "prompt `{}` v{} needs the variable `{name}`; send it in extra_body={{\"variables\": {{...}}}}",
                    prompt.name, prompt.version
                ),
                Some(format!("variables.{name}")),
            ),
            RenderError::WrongType { name, .. } => {
                (error.to_string(), Some(format!("variables.{name}")))
            }
            _ => (
                format!("prompt `{}` v{}: {error}", prompt.name, prompt.version),
                None,
            ),
        };
        OpenAiError::invalid(message, param.as_deref())
    })?;
    messages.append(&mut request.messages);
    request.messages = messages;
    // The prompt's parameters, overridden by those the request sets.
    request.params = file.params.merged_with(&request.params);
    Ok(Rendered { alias, prompt })
}
