//! OpenAI Chat Completions, and any server that speaks it (`openai-compatible:`).

use plumb_core::{
    BoxFuture, ChatDelta, ChatModel, ChatRequest, ChatResponse, ChatStream, FinishReason, Message,
    ModelError, ModelErrorKind, Pricing, Role, TokenLogprob, ToolCall, ToolCallDelta,
    ToolCallFunction, Usage,
};
use serde_json::{Map, Value, json};

use crate::http::{self, JsonRequest};
use crate::{ProviderOptions, pricing, tokens};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// api.openai.com: a key is required and `top_k` is not accepted.
    OpenAi,
    /// vLLM, Ollama, llama-server...: the key is optional and `top_k` is passed through.
    Compatible,
}

pub(crate) struct OpenAiModel {
    id: String,
    model: String,
    flavor: Flavor,
    url: reqwest::Url,
    api_key_env: String,
    api_key: Option<String>,
    headers: Vec<(String, String)>,
    timeout: std::time::Duration,
    max_retries: u32,
    pricing: Option<Pricing>,
}

impl OpenAiModel {
    pub(crate) fn new(
        id: &str,
        model: &str,
        flavor: Flavor,
        options: &ProviderOptions,
    ) -> Result<OpenAiModel, ModelError> {
        let base = match (&options.api_base_url, flavor) {
            (Some(url), _) => url.clone(),
            (None, Flavor::OpenAi) => std::env::var("OPENAI_BASE_URL")
                .or_else(|_| std::env::var("OPENAI_API_BASE_URL"))
                .unwrap_or_else(|_| "https://api.openai.com/v1".to_owned()),
            (None, Flavor::Compatible) => unreachable_base(id)?,
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ModelError::config(format!(
                "provider `{id}`: base URL `{base}` is not an http(s) URL"
            ))
            .with_hint("for example `http://127.0.0.1:8080/v1`"));
        }
        let api_key_env = options
            .api_key_env
            .clone()
            .unwrap_or_else(|| "OPENAI_API_KEY".to_owned());
        let url = http::endpoint(
            id,
            &format!("{}/chat/completions", base.trim_end_matches('/')),
        )?;
        Ok(OpenAiModel {
            id: id.to_owned(),
            model: model.to_owned(),
            flavor,
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

    fn headers(&self) -> Result<Vec<(String, String)>, ModelError> {
        let mut headers = self.headers.clone();
        match (&self.api_key, self.flavor) {
            (Some(key), _) => headers.push(("authorization".to_owned(), format!("Bearer {key}"))),
            (None, Flavor::OpenAi) => return Err(self.missing_key()),
            (None, Flavor::Compatible) => {}
        }
        Ok(headers)
    }

    /// The headers of one request: the configured ones, the key, and the caller's
    /// `traceparent` when there is one.
    fn headers_for(&self, request: &ChatRequest) -> Result<Vec<(String, String)>, ModelError> {
        let mut headers = self.headers()?;
        if let Some(traceparent) = &request.traceparent {
            headers.push(("traceparent".to_owned(), traceparent.clone()));
        }
        Ok(headers)
    }

    fn missing_key(&self) -> ModelError {
        http::missing_key(&self.id, &self.api_key_env)
    }

    /// The POST of `body` to this model's endpoint.
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

    async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        let body = request_body(&self.model, request, self.flavor);
        let headers = self.headers_for(request)?;
        let value = http::post_json(self.json_request(&headers, &body)).await?;
        let mut response = parse_response(&value).map_err(|message| {
            ModelError::new(ModelErrorKind::Protocol, format!("{}: {message}", self.url))
        })?;
        if response.usage == Usage::default() {
            response.usage =
                tokens::estimate_usage(&self.model, &request.messages, &response.content);
        }
        Ok(response)
    }
}

impl OpenAiModel {
    /// Opens a streamed completion (`stream: true`, usage requested in the last chunk).
    async fn open_stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let mut body = request_body(&self.model, request, self.flavor);
        if let Some(object) = body.as_object_mut() {
            object.insert("stream".into(), json!(true));
            object.insert("stream_options".into(), json!({"include_usage": true}));
        }
        let headers = self.headers_for(request)?;
        let response = http::post(&self.json_request(&headers, &body)).await?;
        let prompt_estimate =
            tokens::estimate_usage(&self.model, &request.messages, "").prompt_tokens;
        Ok(stream_deltas(
            response,
            self.url.to_string(),
            self.model.clone(),
            prompt_estimate,
        ))
    }
}

/// OpenAI's `chat.completion.chunk` events, ended by `[DONE]` (or, from servers that do not
/// send it, by the end of the body after a finish reason).
struct OpenAiEvents {
    model: String,
    prompt_estimate: u64,
    content: String,
    reported_model: Option<String>,
    usage_seen: bool,
    finished: bool,
    done: bool,
}

impl crate::sse::Events for OpenAiEvents {
    fn event(&mut self, data: &str) -> Result<Vec<ChatDelta>, ModelError> {
        if data.trim() == "[DONE]" {
            self.finished = true;
            self.done = true;
            return Ok(Vec::new());
        }
        let mut delta = parse_chunk(data)?;
        if delta.model.is_some() {
            self.reported_model.clone_from(&delta.model);
        }
        delta.model = None;
        if delta.usage.is_some() {
            self.usage_seen = true;
        }
        if delta.finish_reason.is_some() {
            self.finished = true;
            delta.model.clone_from(&self.reported_model);
        }
        self.content.push_str(&delta.content);
        Ok(vec![delta])
    }

    fn complete(&self) -> bool {
        self.finished
    }

    fn over(&self) -> bool {
        // The usage chunk follows the finish reason: read on until [DONE] or the end.
        self.done
    }

    fn closing(&mut self) -> Vec<ChatDelta> {
        if self.usage_seen || !self.finished {
            return Vec::new();
        }
        let usage = tokens::estimate_usage(&self.model, &[], &self.content);
        vec![ChatDelta {
            usage: Some(Usage {
                prompt_tokens: self.prompt_estimate,
                completion_tokens: usage.completion_tokens,
            }),
            ..ChatDelta::default()
        }]
    }
}

/// The deltas of an OpenAI-style SSE body.
fn stream_deltas(
    response: reqwest::Response,
    url: String,
    model: String,
    prompt_estimate: u64,
) -> ChatStream {
    crate::sse::deltas(
        response,
        url,
        OpenAiEvents {
            model,
            prompt_estimate,
            content: String::new(),
            reported_model: None,
            usage_seen: false,
            finished: false,
            done: false,
        },
    )
}

/// The `usage` object of an answer or a chunk, when there is one.
fn parse_usage(value: &Value) -> Option<Usage> {
    let usage = value.get("usage").filter(|u| !u.is_null())?;
    let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        prompt_tokens: count("prompt_tokens"),
        completion_tokens: count("completion_tokens"),
    })
}

/// One `chat.completion.chunk` (or an error event) as a delta.
fn parse_chunk(event: &str) -> Result<ChatDelta, ModelError> {
    let value = crate::sse::json_event(event)?;
    let mut delta = ChatDelta {
        model: value
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..ChatDelta::default()
    };
    delta.usage = parse_usage(&value);
    if let Some(choice) = value.pointer("/choices/0") {
        if let Some(content) = choice.pointer("/delta/content").and_then(Value::as_str) {
            content.clone_into(&mut delta.content);
        }
        if let Some(calls) = choice
            .pointer("/delta/tool_calls")
            .and_then(Value::as_array)
        {
            for (position, call) in calls.iter().enumerate() {
                delta.tool_calls.push(ToolCallDelta {
                    index: call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(position as u64) as u32,
                    id: call.get("id").and_then(Value::as_str).map(str::to_owned),
                    name: call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    arguments: call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
        delta.finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(FinishReason::from_openai);
    }
    Ok(delta)
}

fn unreachable_base(id: &str) -> Result<String, ModelError> {
    Err(ModelError::config(format!(
        "provider `{id}` has no base URL"
    )))
}

impl ChatModel for OpenAiModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn count_tokens(&self, text: &str) -> u64 {
        tokens::count(&self.model, text)
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
        if self.flavor == Flavor::OpenAi && self.api_key.is_none() {
            return Err(self.missing_key());
        }
        http::check_reachable(&self.url)
    }
}

pub(crate) fn error_message(body: &Value) -> Option<String> {
    body.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

pub(crate) fn message_json(message: &Message) -> Value {
    let mut out = Map::new();
    out.insert("role".into(), json!(message.role.as_str()));
    if message.role == Role::Assistant
        && !message.tool_calls.is_empty()
        && message.content.is_empty()
    {
        out.insert("content".into(), Value::Null);
    } else {
        out.insert("content".into(), json!(message.content));
    }
    if let Some(name) = &message.name {
        out.insert("name".into(), json!(name));
    }
    if !message.tool_calls.is_empty() {
        out.insert("tool_calls".into(), json!(message.tool_calls));
    }
    if let Some(id) = &message.tool_call_id {
        out.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(out)
}

pub(crate) fn request_body(model: &str, request: &ChatRequest, flavor: Flavor) -> Value {
    let params = &request.params;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "messages".into(),
        Value::Array(request.messages.iter().map(message_json).collect()),
    );
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            body.insert(key.to_owned(), value);
        }
    };
    set("temperature", params.temperature.map(|v| json!(v)));
    set("top_p", params.top_p.map(|v| json!(v)));
    if flavor == Flavor::Compatible {
        set("top_k", params.top_k.map(|v| json!(v)));
    }
    set("max_tokens", params.max_tokens.map(|v| json!(v)));
    set("seed", params.seed.map(|v| json!(v)));
    set(
        "stop",
        (!params.stop.is_empty()).then(|| json!(params.stop)),
    );
    set(
        "response_format",
        params.response_format.as_ref().map(|f| json!(f)),
    );
    set(
        "tools",
        (!params.tools.is_empty()).then(|| json!(params.tools)),
    );
    set("tool_choice", params.tool_choice.clone());
    set("logprobs", params.logprobs.map(|v| json!(v)));
    set("top_logprobs", params.top_logprobs.map(|v| json!(v)));
    // Fields the gateway passed through; the ones plumb sets itself win.
    for (key, value) in &request.extra {
        if !body.contains_key(key) {
            body.insert(key.clone(), value.clone());
        }
    }
    Value::Object(body)
}

pub(crate) fn parse_response(value: &Value) -> Result<ChatResponse, String> {
    let choice = value
        .pointer("/choices/0")
        .ok_or("answer has no `choices[0]`")?;
    let message = choice
        .get("message")
        .ok_or("answer has no `choices[0].message`")?;
    let content = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let function = call.get("function").ok_or("tool call without `function`")?;
            tool_calls.push(ToolCall {
                id: call
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                kind: "function".to_owned(),
                function: ToolCallFunction {
                    name: function
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: match function.get("arguments") {
                        Some(Value::String(text)) => text.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    },
                },
            });
        }
    }
    let usage = parse_usage(value).unwrap_or_default();
    let logprobs = choice
        .pointer("/logprobs/content")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(parse_logprob).collect())
        .unwrap_or_default();
    Ok(ChatResponse {
        content,
        tool_calls,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(FinishReason::from_openai),
        usage,
        model: value
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned),
        logprobs,
    })
}

fn parse_logprob(item: &Value) -> Option<TokenLogprob> {
    let top = item
        .get("top_logprobs")
        .and_then(Value::as_array)
        .map(|alternatives| {
            alternatives
                .iter()
                .filter_map(|alt| {
                    Some((
                        alt.get("token")?.as_str()?.to_owned(),
                        alt.get("logprob")?.as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(TokenLogprob {
        token: item.get("token")?.as_str()?.to_owned(),
        logprob: item.get("logprob")?.as_f64()?,
        top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_core::ModelParams;

    #[test]
    fn body_carries_params_and_omits_unset_ones() {
        let request = ChatRequest {
            messages: vec![Message::new(Role::User, "hi")],
            params: ModelParams {
                temperature: Some(0.0),
                top_k: Some(5),
                stop: vec!["\n".into()],
                ..Default::default()
            },
            ..ChatRequest::default()
        };
        let body = request_body("gpt-4o-mini", &request, Flavor::OpenAi);
        assert_eq!(
            body,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "stop": ["\n"]})
        );
        let body = request_body("m", &request, Flavor::Compatible);
        assert_eq!(body["top_k"], json!(5));
        // Pass-through fields reach the body; plumb's own fields win over them.
        let mut passed = request.clone();
        passed.extra.insert("user".into(), json!("u-1"));
        passed.extra.insert("temperature".into(), json!(1.5));
        let body = request_body("m", &passed, Flavor::OpenAi);
        assert_eq!(body["user"], json!("u-1"));
        assert_eq!(body["temperature"], json!(0.0));
    }

    #[test]
    fn parses_tool_calls_usage_and_logprobs() {
        let answer = json!({
            "model": "gpt-4o-mini-2024",
            "choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                "logprobs": {"content": [{"token": "x", "logprob": -0.1, "top_logprobs": [{"token": "x", "logprob": -0.1}]}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}
        });
        let response = parse_response(&answer).unwrap();
        assert_eq!(response.tool_calls[0].function.arguments, "{\"a\":1}");
        assert_eq!(
            response.usage,
            Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            }
        );
        assert_eq!(response.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(response.logprobs[0].top, vec![("x".to_owned(), -0.1)]);
    }
}
