//! The API's error type and its one JSON shape.

use axum::http::StatusCode;
use axum::http::header::WWW_AUTHENTICATE;
use axum::response::{IntoResponse, Response};
use plumb_registry::RegistryError;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub hint: Option<String>,
    pub missing: Vec<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    missing: &'a [String],
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            hint: None,
            missing: Vec::new(),
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).with_hint(
            "send `Authorization: Bearer <key>`; `plumb keys create --role viewer` makes a key",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        let hint = error.hint().map(str::to_owned);
        let mut api = match error {
            RegistryError::NotFound { message, .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            RegistryError::Invalid { message, field, .. } => {
                let mut api = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
                api.field = field;
                api
            }
            RegistryError::Source(source) => {
                let mut plain = source.clone();
                plain.hint = None;
                // Name the field when the parser did: `unknown key `x``, `messages[1]: …`.
                let field = match plain.message.split_once("key `") {
                    Some((_, rest)) => rest.split('`').next().map(|key| format!("prompt.{key}")),
                    None => plain
                        .message
                        .split([':', ' '])
                        .next()
                        .filter(|head| head.starts_with(|c: char| c.is_ascii_lowercase()))
                        .map(|head| format!("prompt.{head}")),
                };
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_prompt",
                    plain.message.clone(),
                )
                .with_field(field.unwrap_or_else(|| "prompt".to_owned()))
            }
            RegistryError::Policy {
                message, missing, ..
            } => {
                let mut api = ApiError::new(StatusCode::CONFLICT, "policy_refused", message);
                api.missing = missing;
                api
            }
            RegistryError::Forbidden { message } => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            RegistryError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            error @ (RegistryError::Store(_) | RegistryError::Internal(_)) => {
                eprintln!("plumb serve: internal error: {error}");
                return ApiError::internal();
            }
        };
        api.hint = hint;
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                hint: self.hint.as_deref(),
                missing: &self.missing,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"plumb\""),
            );
        }
        response
    }
}
