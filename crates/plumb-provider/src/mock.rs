//! Mock models for tests, demos and benchmarks: `mock:echo` (and promptfoo's `echo`),
//! `mock:text:<reply>`, `mock:file:<answers.{jsonl,json,yaml}>` (keyed by the last user
//! message), `mock:rules:<rules.yaml>` (the first rule whose texts all appear in the request
//! answers: a scripted judge), with scripted latency and error injection from the config.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use plumb_core::{
    BoxFuture, ChatModel, ChatRequest, ChatResponse, FinishReason, Message, ModelError, Pricing,
    Role, Usage,
};
use serde_json::Value;

use crate::{ProviderContext, ProviderOptions, http, tokens};

enum Behaviour {
    Echo,
    Text(String),
    Lookup(HashMap<String, String>),
    Rules(Vec<Rule>),
}

/// `mock:rules`: answers `output` when every text of `when` appears in the request.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    when: OneOrMany,
    output: String,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Rule {
    fn matches(&self, text: &str) -> bool {
        match &self.when {
            OneOrMany::One(needle) => text.contains(needle.as_str()),
            OneOrMany::Many(needles) => needles.iter().all(|n| text.contains(n.as_str())),
        }
    }
}

pub struct MockModel {
    id: String,
    behaviour: Behaviour,
    latency: Option<Duration>,
    error_rate: f64,
    fail_first: u32,
    error_status: u16,
    calls: AtomicU32,
    rng: Mutex<fastrand::Rng>,
    /// Free unless `input_cost_per_mtok` / `output_cost_per_mtok` say otherwise (to rehearse
    /// budgets).
    pricing: Pricing,
}

impl MockModel {
    pub fn echo(id: &str, options: &ProviderOptions) -> MockModel {
        MockModel::new(id, Behaviour::Echo, options)
    }

    pub(crate) fn from_spec(
        id: &str,
        spec: &str,
        options: &ProviderOptions,
        ctx: &ProviderContext,
    ) -> Result<MockModel, ModelError> {
        let (kind, argument) = spec.split_once(':').unwrap_or((spec, ""));
        let behaviour = match kind {
            "echo" => Behaviour::Echo,
            "text" => Behaviour::Text(argument.to_owned()),
            "file" => Behaviour::Lookup(load_answers(&ctx.base_dir.join(argument))?),
            "rules" => Behaviour::Rules(load_rules(&ctx.base_dir.join(argument))?),
            _ => {
                return Err(
                    ModelError::config(format!("unknown mock provider `{id}`")).with_hint(
                        "accepted: `mock:echo`, `mock:text:<reply>`, `mock:file:<answers.jsonl>`, `mock:rules:<rules.yaml>`",
                    ),
                );
            }
        };
        Ok(MockModel::new(id, behaviour, options))
    }

    fn new(id: &str, behaviour: Behaviour, options: &ProviderOptions) -> MockModel {
        MockModel {
            id: id.to_owned(),
            behaviour,
            latency: options.latency_ms.map(Duration::from_millis),
            error_rate: options.error_rate.unwrap_or(0.0),
            fail_first: options.fail_first.unwrap_or(0),
            error_status: options.error_status.unwrap_or(500),
            calls: AtomicU32::new(0),
            rng: Mutex::new(fastrand::Rng::with_seed(options.mock_seed.unwrap_or(0))),
            pricing: Pricing {
                input_per_mtok: options.input_cost_per_mtok.unwrap_or(0.0),
                output_per_mtok: options.output_cost_per_mtok.unwrap_or(0.0),
            },
        }
    }

    fn answer(&self, request: &ChatRequest) -> Result<String, ModelError> {
        Ok(match &self.behaviour {
            Behaviour::Echo => echo_text(&request.messages),
            Behaviour::Text(text) => text.clone(),
            Behaviour::Lookup(answers) => {
                let key = last_user(&request.messages);
                match answers.get(key) {
                    Some(answer) => answer.clone(),
                    None => {
                        return Err(http::status_error(
                            404,
                            &format!("no scripted answer for input `{key}`"),
                        )
                        .with_hint("add it to the answers file"));
                    }
                }
            }
            Behaviour::Rules(rules) => {
                let text: Vec<&str> = request
                    .messages
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect();
                let text = text.join("\n");
                match rules.iter().find(|rule| rule.matches(&text)) {
                    Some(rule) => rule.output.clone(),
                    None => {
                        let shown: String = text.chars().take(120).collect();
                        return Err(http::status_error(
                            404,
                            &format!("no rule matches the request `{shown}…`"),
                        )
                        .with_hint("add a rule whose `when` texts all appear in it"));
                    }
                }
            }
        })
    }

    fn injected_error(&self) -> Option<ModelError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let roll = match self.rng.lock() {
            Ok(mut rng) => rng.f64(),
            Err(_) => 1.0,
        };
        if call < self.fail_first || roll < self.error_rate {
            return Some(http::status_error(
                self.error_status,
                "injected by the mock provider",
            ));
        }
        None
    }

    async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        if let Some(latency) = self.latency {
            tokio::time::sleep(latency).await;
        }
        if let Some(error) = self.injected_error() {
            return Err(error);
        }
        let content = self.answer(request)?;
        let prompt_tokens = request
            .messages
            .iter()
            .map(|m| tokens::rough_count(&m.content))
            .sum();
        Ok(ChatResponse {
            usage: Usage {
                prompt_tokens,
                completion_tokens: tokens::rough_count(&content),
            },
            content,
            finish_reason: Some(FinishReason::Stop),
            model: Some(self.id.clone()),
            ..ChatResponse::default()
        })
    }
}

/// promptfoo's echo returns the prompt as sent: the text of a one-message prompt, otherwise
/// the messages as JSON.
fn echo_text(messages: &[Message]) -> String {
    match messages {
        [only] => only.content.clone(),
        _ => {
            let list: Vec<Value> = messages
                .iter()
                .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}))
                .collect();
            Value::Array(list).to_string()
        }
    }
}

fn last_user(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .unwrap_or("")
}

/// Rules files: a YAML (or JSON) list of `{when: text or [texts], output: text}`.
fn load_rules(path: &Path) -> Result<Vec<Rule>, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ModelError::config(format!(
            "cannot read mock rules `{}`: {error}",
            path.display()
        ))
    })?;
    let rules: Vec<Rule> = serde_saphyr::from_str(&text).map_err(|error| {
        ModelError::config(format!("{}: {error}", path.display()))
            .with_hint("expected a list of {when: <text or list of texts>, output: <text>}")
    })?;
    if rules.is_empty() {
        return Err(ModelError::config(format!(
            "{}: the rules list is empty",
            path.display()
        )));
    }
    Ok(rules)
}

/// Answers files: JSONL of `{"input": ..., "output": ...}`, or a JSON/YAML map input → output.
fn load_answers(path: &Path) -> Result<HashMap<String, String>, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ModelError::config(format!(
            "cannot read mock answers `{}`: {error}",
            path.display()
        ))
    })?;
    let fail = |line: usize, message: &str| {
        ModelError::config(format!("{}:{line}: {message}", path.display()))
            .with_hint("each line must be {\"input\": \"...\", \"output\": \"...\"}")
    };
    let mut answers = HashMap::new();
    if path.extension().is_some_and(|ext| ext == "jsonl") {
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value =
                serde_json::from_str(line).map_err(|e| fail(index + 1, &e.to_string()))?;
            let input = value
                .get("input")
                .and_then(Value::as_str)
                .ok_or_else(|| fail(index + 1, "missing `input`"))?;
            let output = value
                .get("output")
                .and_then(Value::as_str)
                .ok_or_else(|| fail(index + 1, "missing `output`"))?;
            answers.insert(input.to_owned(), output.to_owned());
        }
    } else {
        let map: HashMap<String, String> = serde_saphyr::from_str(&text).map_err(|error| {
            ModelError::config(format!("{}: {error}", path.display()))
                .with_hint("expected a map from input to output")
        })?;
        answers = map;
    }
    Ok(answers)
}

impl ChatModel for MockModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(self.call(request))
    }

    fn pricing(&self) -> Option<Pricing> {
        Some(self.pricing)
    }

    fn cacheable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::new(Role::User, text)],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn echo_returns_the_prompt() {
        let model = MockModel::echo("echo", &ProviderOptions::default());
        assert_eq!(model.chat(&request("hi")).await.unwrap().content, "hi");
    }

    #[tokio::test]
    async fn fail_first_then_succeed() {
        let options = ProviderOptions {
            fail_first: Some(2),
            error_status: Some(429),
            ..Default::default()
        };
        let model = MockModel::echo("echo", &options);
        assert!(model.chat(&request("a")).await.unwrap_err().is_retryable());
        assert!(model.chat(&request("a")).await.is_err());
        assert!(model.chat(&request("a")).await.is_ok());
    }
}
