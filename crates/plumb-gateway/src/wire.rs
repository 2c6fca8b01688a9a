//! OpenAI Chat Completions on the wire: requests parsed into plumb's `ChatRequest` with errors
//! that name the offending parameter, responses written as `chat.completion` objects or as
//! `chat.completion.chunk` server-sent events, and errors in OpenAI's shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plumb_core::{
    ChatDelta, ChatRequest, ChatResponse, Message, ModelParams, ResponseFormat, Role, ToolCall,
    Usage,
};
use serde_json::{Map, Value, json};

/// An error as OpenAI writes it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl OpenAiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
            retry_after: None,
        }
    }

    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> OpenAiError {
        OpenAiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
            retry_after: None,
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// A parsed `POST /v1/chat/completions` body.
#[derive(Debug)]
pub struct CompletionRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub request: ChatRequest,
}

fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn number(body: &Map<String, Value>, name: &str) -> Result<Option<f64>, OpenAiError> {
    match field(body, name) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| OpenAiError::invalid(format!("`{name}` must be a number"), Some(name))),
    }
}

fn unsigned(body: &Map<String, Value>, name: &str) -> Result<Option<u64>, OpenAiError> {
    match field(body, name) {
        None => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            OpenAiError::invalid(
                format!("`{name}` must be a non-negative integer"),
                Some(name),
            )
        }),
    }
}

/// The fields plumb reads itself; the others are passed through to the upstream.
const KNOWN_FIELDS: [&str; 17] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "response_format",
    "tools",
    "tool_choice",
    "logprobs",
    "top_logprobs",
];

/// A request body that must be a JSON object.
fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, OpenAiError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(OpenAiError::invalid("the body must be a JSON object", None)),
        Err(error) => Err(OpenAiError::invalid(
            format!("invalid JSON body: {error}"),
            None,
        )),
    }
}

/// Parses a request body. Fields plumb has no name for (`user`, `metadata`, a server's own
/// options) land in `ChatRequest::extra` and are passed through by OpenAI-style providers.
pub fn parse_request(bytes: &[u8]) -> Result<CompletionRequest, OpenAiError> {
    let body = json_object(bytes)?;
    let model = match field(&body, "model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        Some(_) => {
            return Err(OpenAiError::invalid(
                "`model` must be a string",
                Some("model"),
            ));
        }
        None => {
            return Err(OpenAiError::invalid(
                "missing required parameter: `model`",
                Some("model"),
            ));
        }
    };
    let no_messages = Vec::new();
    let raw_messages = match field(&body, "messages") {
        Some(Value::Array(messages)) => messages,
        None if model.starts_with("prompt:") => &no_messages,
        _ => {
            return Err(OpenAiError::invalid(
                "missing required parameter: `messages` (an array)",
                Some("messages"),
            ));
        }
    };
    // Empty is refused once the model is known: a registered prompt brings its own messages.
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (index, raw) in raw_messages.iter().enumerate() {
        messages.push(parse_message(raw, index)?);
    }
    if let Some(n) = unsigned(&body, "n")?
        && n != 1
    {
        return Err(OpenAiError::invalid("only `n: 1` is supported", Some("n")));
    }
    let stop = match field(&body, "stop") {
        None => Vec::new(),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                OpenAiError::invalid("`stop` must be a string or strings", Some("stop"))
            })?,
        Some(_) => {
            return Err(OpenAiError::invalid(
                "`stop` must be a string or strings",
                Some("stop"),
            ));
        }
    };
    let response_format = match field(&body, "response_format") {
        None => None,
        Some(value) => {
            let format: ResponseFormat =
                serde_json::from_value(value.clone()).map_err(|error| {
                    OpenAiError::invalid(
                        format!("invalid `response_format`: {error}"),
                        Some("response_format"),
                    )
                })?;
            Some(format)
        }
    };
    let tools = match field(&body, "tools") {
        None => Vec::new(),
        Some(Value::Array(tools)) => tools.clone(),
        Some(_) => {
            return Err(OpenAiError::invalid(
                "`tools` must be an array",
                Some("tools"),
            ));
        }
    };
    let max_tokens = match unsigned(&body, "max_completion_tokens")? {
        Some(max) => Some(max),
        None => unsigned(&body, "max_tokens")?,
    };
    let params = ModelParams {
        temperature: number(&body, "temperature")?,
        top_p: number(&body, "top_p")?,
        top_k: unsigned(&body, "top_k")?.map(|v| v.min(u64::from(u32::MAX)) as u32),
        max_tokens: max_tokens.map(|v| v.min(u64::from(u32::MAX)) as u32),
        seed: unsigned(&body, "seed")?,
        stop,
        response_format,
        tools,
        tool_choice: field(&body, "tool_choice").cloned(),
        logprobs: field(&body, "logprobs").and_then(Value::as_bool),
        top_logprobs: unsigned(&body, "top_logprobs")?.map(|v| v.min(20) as u32),
    };
    let stream = field(&body, "stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_usage = field(&body, "stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Everything else goes to the upstream as it came (OpenAI-style providers send it on).
    let extra: Map<String, Value> = body
        .iter()
        .filter(|(key, _)| !KNOWN_FIELDS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Ok(CompletionRequest {
        model,
        stream,
        include_usage,
        request: ChatRequest {
            messages,
            params,
            extra,
            traceparent: None,
        },
    })
}

fn parse_message(raw: &Value, index: usize) -> Result<Message, OpenAiError> {
    let param = format!("messages[{index}]");
    let Value::Object(object) = raw else {
        return Err(OpenAiError::invalid(
            format!("`{param}` must be an object"),
            Some(&param),
        ));
    };
    let role_text = object
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let role = Role::parse(role_text).ok_or_else(|| {
        OpenAiError::invalid(
            format!(
                "`{param}.role` is `{role_text}`; expected one of {}",
                Role::ALL.join(", ")
            ),
            Some(&format!("{param}.role")),
        )
    })?;
    let content = match object.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (part_index, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    other => {
                        return Err(OpenAiError::invalid(
                            format!(
                                "`{param}.content[{part_index}]` has type {}; this gateway accepts text parts only",
                                other.unwrap_or("(none)")
                            ),
                            Some(&format!("{param}.content")),
                        ));
                    }
                }
            }
            text
        }
        Some(_) => {
            return Err(OpenAiError::invalid(
                format!("`{param}.content` must be a string or an array of parts"),
                Some(&format!("{param}.content")),
            ));
        }
    };
    let tool_calls: Vec<ToolCall> = match object.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value(value.clone()).map_err(|error| {
            OpenAiError::invalid(
                format!("invalid `{param}.tool_calls`: {error}"),
                Some(&format!("{param}.tool_calls")),
            )
        })?,
    };
    Ok(Message {
        role,
        content,
        name: object
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        tool_calls,
        tool_call_id: object
            .get("tool_call_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn message_json(response: &ChatResponse) -> Value {
    let mut message = json!({"role": "assistant", "content": response.content});
    if !response.tool_calls.is_empty()
        && let Some(object) = message.as_object_mut()
    {
        object.insert("tool_calls".into(), json!(response.tool_calls));
        if response.content.is_empty() {
            object.insert("content".into(), Value::Null);
        }
    }
    message
}

fn finish_reason(response: &ChatResponse) -> &'static str {
    response.finish_reason.map(|f| f.as_str()).unwrap_or("stop")
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total(),
    })
}

/// A `chat.completion` object.
pub fn completion_json(id: &str, created: u64, model: &str, response: &ChatResponse) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message_json(response),
            "finish_reason": finish_reason(response),
            "logprobs": null,
        }],
        "usage": usage_json(&response.usage),
    })
}

/// One `chat.completion.chunk` as an SSE frame (`data: …\n\n`).
pub fn chunk_frame(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish: Option<&str>,
) -> String {
    let chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    });
    format!("data: {chunk}\n\n")
}

/// The usage chunk sent last when the client asked for `stream_options.include_usage`.
pub fn usage_frame(id: &str, created: u64, model: &str, usage: &Usage) -> String {
    let chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_json(usage),
    });
    format!("data: {chunk}\n\n")
}

/// An error inside a stream that has already started (the status line said 200).
pub fn error_frame(message: &str, code: &str) -> String {
    let body =
        json!({"error": {"message": message, "type": "api_error", "param": null, "code": code}});
    format!("data: {body}\n\n")
}

pub const DONE_FRAME: &str = "data: [DONE]\n\n";

/// The visible part of a delta (`content`, `tool_calls`), or none when it has neither.
pub fn delta_json(delta: &ChatDelta) -> Option<Value> {
    let mut out = Map::new();
    if !delta.content.is_empty() {
        out.insert("content".into(), json!(delta.content));
    }
    if !delta.tool_calls.is_empty() {
        let calls: Vec<Value> = delta
            .tool_calls
            .iter()
            .map(|call| {
                let mut function = Map::new();
                if let Some(name) = &call.name {
                    function.insert("name".into(), json!(name));
                }
                function.insert("arguments".into(), json!(call.arguments));
                let mut item = Map::new();
                item.insert("index".into(), json!(call.index));
                if let Some(id) = &call.id {
                    item.insert("id".into(), json!(id));
                    item.insert("type".into(), json!("function"));
                }
                item.insert("function".into(), Value::Object(function));
                Value::Object(item)
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// A parsed `POST /v1/embeddings` body.
#[derive(Debug)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Vec<String>,
    /// `encoding_format: base64` (what the official Python client asks for by default).
    pub base64: bool,
}

pub fn parse_embeddings(bytes: &[u8]) -> Result<EmbeddingsRequest, OpenAiError> {
    let body = json_object(bytes)?;
    let model = match field(&body, "model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        _ => {
            return Err(OpenAiError::invalid(
                "missing required parameter: `model`",
                Some("model"),
            ));
        }
    };
    let input = match field(&body, "input") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) if !many.is_empty() => many
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                OpenAiError::invalid(
                    "`input` must be a string or an array of strings (token arrays are not supported)",
                    Some("input"),
                )
            })?,
        _ => {
            return Err(OpenAiError::invalid(
                "missing required parameter: `input` (a string or a non-empty array of strings)",
                Some("input"),
            ));
        }
    };
    if input.len() > 2048 {
        return Err(OpenAiError::invalid(
            "at most 2048 inputs per request",
            Some("input"),
        ));
    }
    let base64 = match field(&body, "encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(
                format!("`encoding_format` is `{other}`; expected `float` or `base64`"),
                Some("encoding_format"),
            ));
        }
    };
    if field(&body, "dimensions").is_some() {
        return Err(OpenAiError::invalid(
            "`dimensions` is not supported: the vectors have the model's own size",
            Some("dimensions"),
        ));
    }
    Ok(EmbeddingsRequest {
        model,
        input,
        base64,
    })
}

/// An embeddings `list`; base64 vectors are little-endian f32 bytes, as OpenAI sends them.
pub fn embeddings_json(model: &str, vectors: &[Vec<f32>], base64: bool, tokens: u64) -> Value {
    use base64::Engine as _;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// A parsed `POST /v1/feedback` body.
#[derive(Debug)]
pub struct FeedbackRequest {
    pub trace_id: String,
    pub score: Option<f64>,
    pub label: Option<String>,
    pub comment: Option<String>,
}

pub fn parse_feedback(bytes: &[u8]) -> Result<FeedbackRequest, OpenAiError> {
    let body = json_object(bytes)?;
    for key in body.keys() {
        if !["trace_id", "score", "label", "comment"].contains(&key.as_str()) {
            return Err(OpenAiError::invalid(
                format!("unknown field `{key}`; feedback takes trace_id, score, label, comment"),
                Some(key),
            ));
        }
    }
    let text = |name: &str, max: usize| -> Result<Option<String>, OpenAiError> {
        match field(&body, name) {
            None => Ok(None),
            Some(Value::String(text)) if text.len() <= max => Ok(Some(text.clone())),
            Some(Value::String(_)) => Err(OpenAiError::invalid(
                format!("`{name}` is longer than {max} bytes"),
                Some(name),
            )),
            Some(_) => Err(OpenAiError::invalid(
                format!("`{name}` must be a string"),
                Some(name),
            )),
        }
    };
    let trace_id = text("trace_id", 200)?.filter(|t| !t.is_empty()).ok_or_else(|| {
        OpenAiError::invalid(
            "missing required parameter: `trace_id` (the `x-plumb-trace-id` header or the response `id`)",
            Some("trace_id"),
        )
    })?;
    let score = number(&body, "score")?;
    if score.is_some_and(|s| !s.is_finite()) {
        return Err(OpenAiError::invalid(
            "`score` must be finite",
            Some("score"),
        ));
    }
    let label = text("label", 200)?;
    let comment = text("comment", 10_000)?;
    if score.is_none() && label.is_none() && comment.is_none() {
        return Err(OpenAiError::invalid(
            "feedback needs a `score` (number), a `label` (string) or a `comment`",
            None,
        ));
    }
    Ok(FeedbackRequest {
        trace_id,
        score,
        label,
        comment,
    })
}
