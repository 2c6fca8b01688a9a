//! Anthropic's Messages API. System and developer messages become the `system` field; a
//! JSON-Schema response format becomes a forced tool call, so structured output is enforced by
//! the API instead of hoped for.

use plumb_core::{
    BoxFuture, ChatDelta, ChatModel, ChatRequest, ChatResponse, ChatStream, FinishReason,
    ModelError, ModelErrorKind, Pricing, Role, ToolCall, ToolCallDelta, ToolCallFunction, Usage,
};
use serde_json::{Map, Value, json};

use crate::http::{self, JsonRequest};
use crate::{ProviderOptions, pricing};

const API_VERSION: &str = "2023-06-01";
/// The Messages API requires `max_tokens`; this is used when neither prompt nor suite sets it.
const DEFAULT_MAX_TOKENS: u32 = 1024;
/// The tool that carries structured output when a response schema is requested.
const RESPOND_TOOL: &str = "respond";

pub(crate) struct AnthropicModel {
    id: String,
    model: String,
    url: reqwest::Url,
    api_key_env: String,
    api_key: Option<String>,
    headers: Vec<(String, String)>,
    timeout: std::time::Duration,
    max_retries: u32,
    pricing: Option<Pricing>,
}

impl AnthropicModel {
    pub(crate) fn new(
        id: &str,
        model: &str,
        options: &ProviderOptions,
    ) -> Result<AnthropicModel, ModelError> {
        let base = options
            .api_base_url
            .clone()
            .or_else(|| std::env::var("ANTHROPIC_BASE_URL").ok())
            .unwrap_or_else(|| "https://api.anthropic.com".to_owned());
        let base = base.trim_end_matches('/');
        // Accept both `https://host` and `https://host/v1`.
        let url = if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        };
        let url = http::endpoint(id, &url)?;
        let api_key_env = options
            .api_key_env
            .clone()
            .unwrap_or_else(|| "ANTHROPIC_API_KEY".to_owned());
        Ok(AnthropicModel {
            id: id.to_owned(),
            model: model.to_owned(),
            url,
            api_key: options
                .api_key
                .clone()
                .or_else(|| http::api_key(&api_key_env)),
            api_key_env,
            headers: options
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: crate::timeout(options),
            max_retries: options.max_retries.unwrap_or(http::DEFAULT_MAX_RETRIES),
            pricing: pricing::resolve(model, options),
        })
    }

    fn missing_key(&self) -> ModelError {
        http::missing_key(&self.id, &self.api_key_env)
    }

    /// The key, the API version and the caller's `traceparent`, after the configured headers.
    fn headers_for(&self, request: &ChatRequest) -> Result<Vec<(String, String)>, ModelError> {
        let key = self.api_key.as_ref().ok_or_else(|| self.missing_key())?;
        let mut headers = self.headers.clone();
        headers.push(("x-api-key".to_owned(), key.clone()));
        headers.push(("anthropic-version".to_owned(), API_VERSION.to_owned()));
        if let Some(traceparent) = &request.traceparent {
            headers.push(("traceparent".to_owned(), traceparent.clone()));
        }
        Ok(headers)
    }

    fn json_request<'a>(
        &'a self,
        headers: &'a [(String, String)],
        body: &'a Value,
    ) -> JsonRequest<'a> {
        JsonRequest {
            url: &self.url,
            headers,
            body,
            timeout: self.timeout,
            max_retries: self.max_retries,
            error_message,
        }
    }

    async fn open_stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let headers = self.headers_for(request)?;
        let mut body = request_body(&self.model, request);
        if let Some(object) = body.as_object_mut() {
            object.insert("stream".into(), json!(true));
        }
        let response = http::post(&self.json_request(&headers, &body)).await?;
        Ok(crate::sse::deltas(
            response,
            self.url.to_string(),
            AnthropicEvents {
                structured: request.params.response_format.is_some(),
                input_tokens: 0,
                model: None,
                blocks: std::collections::HashMap::new(),
                tool_calls: 0,
                stop_reason: false,
                stopped: false,
            },
        ))
    }

    async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        let headers = self.headers_for(request)?;
        let body = request_body(&self.model, request);
        let value = http::post_json(self.json_request(&headers, &body)).await?;
        parse_response(&value, request.params.response_format.is_some()).map_err(|message| {
            ModelError::new(ModelErrorKind::Protocol, format!("{}: {message}", self.url))
        })
    }
}

impl ChatModel for AnthropicModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(self.call(request))
    }

    fn chat_stream<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatStream, ModelError>> {
        Box::pin(self.open_stream(request))
    }

    fn pricing(&self) -> Option<Pricing> {
        self.pricing
    }

    fn cache_identity(&self) -> String {
        format!("{}|{}", self.id, self.url)
    }

    fn preflight(&self) -> Result<(), ModelError> {
        match self.api_key {
            Some(_) => http::check_reachable(&self.url),
            None => Err(self.missing_key()),
        }
    }
}

fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let message = error.get("message").and_then(Value::as_str)?;
    Some(match error.get("type").and_then(Value::as_str) {
        Some(kind) => format!("{kind}: {message}"),
        None => message.to_owned(),
    })
}

pub(crate) fn request_body(model: &str, request: &ChatRequest) -> Value {
    let params = &request.params;
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for message in &request.messages {
        match message.role {
            Role::System | Role::Developer => system.push(message.content.clone()),
            Role::User => messages.push(json!({"role": "user", "content": message.content})),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if !message.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": message.content}));
                }
                for call in &message.tool_calls {
                    let input: Value =
                        serde_json::from_str(&call.function.arguments).unwrap_or(json!({}));
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": input}));
                }
                messages.push(json!({"role": "assistant", "content": blocks}));
            }
            Role::Tool => messages.push(json!({"role": "user", "content": [{
                "type": "tool_result",
                "tool_use_id": message.tool_call_id.clone().unwrap_or_default(),
                "content": message.content,
            }]})),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = params.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = params.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(k) = params.top_k {
        body.insert("top_k".into(), json!(k));
    }
    if !params.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(params.stop));
    }
    let mut tools: Vec<Value> = params
        .tools
        .iter()
        .filter_map(|tool| {
            let function = tool.get("function")?;
            Some(json!({
                "name": function.get("name")?,
                "description": function.get("description").cloned().unwrap_or(json!("")),
                "input_schema": function.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
            }))
        })
        .collect();
    if let Some(schema) = params.response_format.as_ref().and_then(|f| f.schema()) {
        tools.push(json!({
            "name": RESPOND_TOOL,
            "description": "Give the final answer in the required structure.",
            "input_schema": schema,
        }));
        body.insert(
            "tool_choice".into(),
            json!({"type": "tool", "name": RESPOND_TOOL}),
        );
    } else if let Some(choice) = &params.tool_choice {
        let mapped = match choice {
            Value::String(mode) if mode == "required" => json!({"type": "any"}),
            Value::String(mode) if mode == "none" => json!({"type": "none"}),
            Value::String(_) => json!({"type": "auto"}),
            other => match other.pointer("/function/name") {
                Some(name) => json!({"type": "tool", "name": name}),
                None => json!({"type": "auto"}),
            },
        };
        body.insert("tool_choice".into(), mapped);
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    Value::Object(body)
}

/// Anthropic's stop reason in OpenAI's vocabulary; a structured answer comes as a call of the
/// respond tool, which is a plain stop to the caller.
fn finish_reason(reason: &str, structured: bool, has_tool_calls: bool) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "tool_use" if structured && !has_tool_calls => FinishReason::Stop,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

/// What a content block of a streamed message is.
#[derive(Clone, Copy)]
enum Block {
    Text,
    /// A tool call, by its index among the answer's tool calls.
    Tool(u32),
    /// The respond tool of a structured answer: its input is the content.
    Respond,
}

/// The Messages API's stream events (`message_start`, `content_block_*`, `message_delta`,
/// `message_stop`, `error`), as deltas.
struct AnthropicEvents {
    structured: bool,
    input_tokens: u64,
    model: Option<String>,
    blocks: std::collections::HashMap<u64, Block>,
    tool_calls: u32,
    stop_reason: bool,
    stopped: bool,
}

impl crate::sse::Events for AnthropicEvents {
    fn event(&mut self, data: &str) -> Result<Vec<ChatDelta>, ModelError> {
        let value = crate::sse::json_event(data)?;
        let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
        let text = |s: &str| ChatDelta {
            content: s.to_owned(),
            ..ChatDelta::default()
        };
        let mut out = Vec::new();
        match value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "message_start" => {
                self.input_tokens = value
                    .pointer("/message/usage/input_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.model = value
                    .pointer("/message/model")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            "content_block_start" => {
                let block = value.get("content_block").unwrap_or(&Value::Null);
                let kind = match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let name = block
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if self.structured && name == RESPOND_TOOL {
                            Block::Respond
                        } else {
                            let n = self.tool_calls;
                            self.tool_calls += 1;
                            out.push(ChatDelta {
                                tool_calls: vec![ToolCallDelta {
                                    index: n,
                                    id: block.get("id").and_then(Value::as_str).map(str::to_owned),
                                    name: Some(name.to_owned()),
                                    arguments: String::new(),
                                }],
                                ..ChatDelta::default()
                            });
                            Block::Tool(n)
                        }
                    }
                    _ => Block::Text,
                };
                self.blocks.insert(index, kind);
            }
            "content_block_delta" => {
                let delta = value.get("delta").unwrap_or(&Value::Null);
                let kind = self.blocks.get(&index).copied().unwrap_or(Block::Text);
                match (delta.get("type").and_then(Value::as_str), kind) {
                    (Some("text_delta"), _) => {
                        out.push(text(
                            delta.get("text").and_then(Value::as_str).unwrap_or(""),
                        ));
                    }
                    (Some("input_json_delta"), Block::Respond) => out.push(text(
                        delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                    )),
                    (Some("input_json_delta"), Block::Tool(n)) => out.push(ChatDelta {
                        tool_calls: vec![ToolCallDelta {
                            index: n,
                            arguments: delta
                                .get("partial_json")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                            ..ToolCallDelta::default()
                        }],
                        ..ChatDelta::default()
                    }),
                    _ => {}
                }
            }
            "message_delta" => {
                let reason = value
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                self.stop_reason = true;
                out.push(ChatDelta {
                    finish_reason: Some(finish_reason(
                        reason,
                        self.structured,
                        self.tool_calls > 0,
                    )),
                    usage: Some(Usage {
                        prompt_tokens: self.input_tokens,
                        completion_tokens: value
                            .pointer("/usage/output_tokens")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                    }),
                    model: self.model.clone(),
                    ..ChatDelta::default()
                });
            }
            "message_stop" => self.stopped = true,
            _ => {}
        }
        Ok(out)
    }

    fn complete(&self) -> bool {
        self.stop_reason
    }

    fn over(&self) -> bool {
        self.stopped
    }

    fn closing(&mut self) -> Vec<ChatDelta> {
        Vec::new()
    }
}

pub(crate) fn parse_response(value: &Value, structured: bool) -> Result<ChatResponse, String> {
    let blocks = value
        .get("content")
        .and_then(Value::as_array)
        .ok_or("answer has no `content`")?;
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => content.push_str(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            Some("tool_use") => {
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let input = block.get("input").cloned().unwrap_or(json!({}));
                if structured && name == RESPOND_TOOL {
                    content = input.to_string();
                } else {
                    tool_calls.push(ToolCall {
                        id: block
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        kind: "function".to_owned(),
                        function: ToolCallFunction {
                            name: name.to_owned(),
                            arguments: input.to_string(),
                        },
                    });
                }
            }
            _ => {}
        }
    }
    let finish_reason = value
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(|reason| finish_reason(reason, structured, !tool_calls.is_empty()));
    let usage = Usage {
        prompt_tokens: value
            .pointer("/usage/input_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        completion_tokens: value
            .pointer("/usage/output_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    Ok(ChatResponse {
        content,
        tool_calls,
        finish_reason,
        usage,
        model: value
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned),
        logprobs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_core::{Message, ModelParams, ResponseFormat};

    #[test]
    fn system_goes_to_its_field_and_schema_becomes_a_forced_tool() {
        let request = ChatRequest {
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "hi"),
            ],
            params: ModelParams {
                response_format: Some(ResponseFormat::json_schema(json!({"type": "object"}))),
                ..Default::default()
            },
            ..ChatRequest::default()
        };
        let body = request_body("claude", &request);
        assert_eq!(body["system"], json!("be brief"));
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "respond"})
        );
        assert_eq!(body["max_tokens"], json!(1024));
    }

    #[test]
    fn structured_answer_becomes_content() {
        let answer = json!({"content": [{"type": "tool_use", "id": "t", "name": "respond", "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}});
        let response = parse_response(&answer, true).unwrap();
        assert_eq!(response.content, "{\"a\":1}");
        assert_eq!(response.finish_reason, Some(FinishReason::Stop));
        assert_eq!(response.usage.total(), 7);
    }
}
