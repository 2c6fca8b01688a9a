//! Prompt files: a named list of message templates with typed variables, model parameters and
//! an optional output schema. Parsed first into `RawPromptFile` (exactly the YAML, unknown keys
//! rejected), then resolved into `PromptFile`, then compiled into a `PromptTemplate`.

use std::path::Path;

use indexmap::IndexMap;
use minijinja::Environment;
use minijinja::value::Serde;
use plumb_core::{Message, ModelParams, ResponseFormat, Role, SourceError, did_you_mean};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::template::{self, RenderError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPromptFile {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    risk: Option<Risk>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    model: Option<String>,
    messages: Vec<RawMessage>,
    #[serde(default)]
    examples: Vec<Example>,
    #[serde(default)]
    params: RawParams,
    #[serde(default)]
    variables: IndexMap<String, RawVariable>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    tools: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    role: String,
    content: String,
}

/// Model parameters as written in prompt files and suites (`config:` of a provider).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParams {
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<StringOrList>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(one) => vec![one],
            StringOrList::Many(many) => many,
        }
    }
}

impl RawParams {
    pub fn resolve(self) -> Result<ModelParams, String> {
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(format!("temperature must be between 0 and 2, got {t}"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(format!("top_p must be in (0, 1], got {p}"));
        }
        if self.max_tokens == Some(0) {
            return Err("max_tokens must be at least 1".to_owned());
        }
        Ok(ModelParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_tokens: self.max_tokens,
            seed: self.seed,
            stop: self.stop.map(StringOrList::into_vec).unwrap_or_default(),
            ..ModelParams::default()
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    #[serde(default, rename = "type")]
    kind: Option<VarType>,
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    description: Option<String>,
}

/// The declared type of a prompt variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    String,
    Number,
    Integer,
    Boolean,
    Array,
    Object,
    Any,
}

impl VarType {
    fn accepts(self, value: &Value) -> bool {
        match self {
            VarType::String => value.is_string(),
            VarType::Number => value.is_number(),
            VarType::Integer => value.is_i64() || value.is_u64(),
            VarType::Boolean => value.is_boolean(),
            VarType::Array => value.is_array(),
            VarType::Object => value.is_object(),
            VarType::Any => true,
        }
    }

    fn name(self) -> &'static str {
        match self {
            VarType::String => "a string",
            VarType::Number => "a number",
            VarType::Integer => "an integer",
            VarType::Boolean => "a boolean",
            VarType::Array => "an array",
            VarType::Object => "an object",
            VarType::Any => "anything",
        }
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variable {
    pub kind: VarType,
    pub required: bool,
    pub default: Option<Value>,
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageTemplate {
    pub role: Role,
    pub content: String,
}

/// How much harm a bad answer from this prompt can do; policies and reviews key off it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }

    pub fn parse(text: &str) -> Option<Risk> {
        match text {
            "low" => Some(Risk::Low),
            "medium" => Some(Risk::Medium),
            "high" => Some(Risk::High),
            _ => None,
        }
    }
}

/// One few-shot demonstration: sent verbatim (never rendered as a template) as a user turn and
/// the assistant's answer, after the leading system/developer messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub input: String,
    pub output: String,
}

/// A resolved prompt file.
///
/// `name`, `description`, `owner`, `risk` and `tags` describe the prompt; everything else is its
/// content, which `content_hash` covers: two files with the same content are the same version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptFile {
    pub name: String,
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<Risk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The model the prompt is written for: a gateway model alias or a provider id. The gateway
    /// sends `prompt:NAME@LABEL` requests there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<MessageTemplate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Example>,
    pub params: ModelParams,
    pub variables: IndexMap<String, Variable>,
}

/// The part of a prompt file that makes a version: what is sent to the model.
#[derive(Serialize)]
struct Content<'a> {
    // Absent when unset, so versions written before prompts named a model keep their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: &'a [MessageTemplate],
    #[serde(skip_serializing_if = "<[Example]>::is_empty")]
    examples: &'a [Example],
    params: &'a ModelParams,
    variables: &'a IndexMap<String, Variable>,
}

impl PromptFile {
    /// Reads and resolves a prompt file; every problem comes back with file:line:col.
    pub fn parse(text: &str, path: &Path) -> Result<PromptFile, SourceError> {
        let raw: RawPromptFile = crate::yaml::from_str(text, path)?;
        let fail = |message: String| SourceError::in_file(path, message);
        if raw.messages.is_empty() {
            return Err(fail("`messages` is empty".into()).with_hint("add at least one message"));
        }
        let mut messages = Vec::with_capacity(raw.messages.len());
        for (index, message) in raw.messages.into_iter().enumerate() {
            let Some(role) = Role::parse(&message.role) else {
                let mut error = fail(format!(
                    "messages[{index}]: unknown role `{}`",
                    message.role
                ));
                error.hint = Some(match did_you_mean(&message.role, Role::ALL) {
                    Some(best) => {
                        format!("did you mean `{best}`? accepted: {}", Role::ALL.join(", "))
                    }
                    None => format!("accepted: {}", Role::ALL.join(", ")),
                });
                return Err(error);
            };
            if let Err(error) = template::check_syntax(&message.content) {
                return Err(fail(format!(
                    "messages[{index}] ({}): {error}",
                    role.as_str()
                )));
            }
            messages.push(MessageTemplate {
                role,
                content: message.content,
            });
        }
        let mut params = raw
            .params
            .resolve()
            .map_err(|message| fail(format!("params: {message}")))?;
        params.response_format = raw
            .response_format
            .map(parse_response_format)
            .transpose()
            .map_err(|message| fail(format!("response_format: {message}")))?;
        params.tools = raw.tools;
        let mut variables = IndexMap::new();
        for (name, raw_var) in raw.variables {
            let kind = raw_var.kind.unwrap_or(VarType::String);
            if let Some(default) = &raw_var.default
                && !kind.accepts(default)
            {
                return Err(fail(format!(
                    "variables.{name}: default must be {}, got {}",
                    kind.name(),
                    json_type_name(default)
                )));
            }
            let required = raw_var.required.unwrap_or(raw_var.default.is_none());
            variables.insert(
                name,
                Variable {
                    kind,
                    required,
                    default: raw_var.default,
                    description: raw_var.description,
                },
            );
        }
        if let Err(problem) = check_name(&raw.name) {
            return Err(fail(format!("name `{}`: {problem}", raw.name)));
        }
        for (index, example) in raw.examples.iter().enumerate() {
            if example.input.trim().is_empty() || example.output.trim().is_empty() {
                return Err(fail(format!(
                    "examples[{index}]: `input` and `output` must both be non-empty"
                )));
            }
        }
        Ok(PromptFile {
            name: raw.name,
            description: raw.description,
            owner: raw.owner,
            risk: raw.risk,
            tags: raw.tags,
            model: raw
                .model
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty()),
            messages,
            examples: raw.examples,
            params,
            variables,
        })
    }

    /// Parses a prompt file sent as JSON (the HTTP API): same shape and checks as the YAML.
    pub fn from_json(value: Value, origin: &Path) -> Result<PromptFile, SourceError> {
        let text = serde_json::to_string(&value).map_err(|error| {
            SourceError::in_file(origin, format!("cannot read prompt: {error}"))
        })?;
        // JSON is YAML: one parser, one set of messages with field names and suggestions.
        PromptFile::parse(&text, origin)
    }

    /// A prompt of plain message templates, as suites write them inline.
    pub fn from_messages(name: String, messages: Vec<MessageTemplate>) -> PromptFile {
        PromptFile {
            name,
            description: None,
            owner: None,
            risk: None,
            tags: Vec::new(),
            model: None,
            messages,
            examples: Vec::new(),
            params: ModelParams::default(),
            variables: IndexMap::new(),
        }
    }

    /// The file without its descriptive metadata (description, owner, risk, tags): what a
    /// registry version stores and a version file in an export holds.
    pub fn without_metadata(&self) -> PromptFile {
        PromptFile {
            description: None,
            owner: None,
            risk: None,
            tags: Vec::new(),
            ..self.clone()
        }
    }

    /// Hash of the content (model, messages, few-shot examples, parameters, variables): the identity
    /// of a version. Name and descriptive metadata are left out, so renaming or re-describing a
    /// prompt is not a new version, and an eval of a working file counts for the registry
    /// version with the same content.
    pub fn content_hash(&self) -> String {
        let content = Content {
            model: self.model.as_deref(),
            messages: &self.messages,
            examples: &self.examples,
            params: &self.params,
            variables: &self.variables,
        };
        // Serializing these plain types cannot fail; an empty string would still hash.
        plumb_core::hash_hex(
            serde_json::to_string(&content)
                .unwrap_or_default()
                .as_bytes(),
        )
    }

    pub fn load(path: &Path) -> Result<PromptFile, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            SourceError::in_file(path, format!("cannot read prompt file: {error}"))
        })?;
        PromptFile::parse(&text, path)
    }
}

fn push_examples(examples: &[Example], into: &mut Vec<Message>) {
    for example in examples {
        into.push(Message::new(Role::User, example.input.clone()));
        into.push(Message::new(Role::Assistant, example.output.clone()));
    }
}

/// Prompt names are used in references (`triage@production`), file names and URLs.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err("a name must have 1 to 100 characters".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(
            "a name may contain only letters, digits, `-`, `_` and `.` (and not start with `.`)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Accepts OpenAI's `{type: json_schema, json_schema: {name, schema}}`, `{type: json_object}`,
/// `{type: text}`, or a bare JSON Schema (anything else with a `type` or `properties`).
pub fn parse_response_format(value: Value) -> Result<ResponseFormat, String> {
    let kind = value.get("type").and_then(Value::as_str);
    match kind {
        Some("json_schema") | Some("json_object") | Some("text") => {
            let format: ResponseFormat =
                serde_json::from_value(value).map_err(|error| error.to_string())?;
            if let Some(schema) = format.schema() {
                validate_schema(schema)?;
            }
            Ok(format)
        }
        _ if value.is_object() => {
            validate_schema(&value)?;
            Ok(ResponseFormat::json_schema(value))
        }
        _ => Err("expected a JSON Schema object or OpenAI's response_format shape".to_owned()),
    }
}

fn validate_schema(schema: &Value) -> Result<(), String> {
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|error| format!("invalid JSON Schema: {error}"))
}

/// A compiled prompt: templates parsed once, rendered per test case.
pub struct PromptTemplate {
    file: PromptFile,
    env: Environment<'static>,
}

impl std::fmt::Debug for PromptTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTemplate")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl PromptTemplate {
    pub fn compile(file: PromptFile) -> Result<PromptTemplate, RenderError> {
        let mut env = template::environment();
        for (index, message) in file.messages.iter().enumerate() {
            env.add_template_owned(index.to_string(), message.content.clone())
                .map_err(|error| template::convert(&error, &message.content, &Map::new()))?;
        }
        Ok(PromptTemplate { file, env })
    }

    pub fn file(&self) -> &PromptFile {
        &self.file
    }

    /// Checks `vars` against the declared variables (filling defaults), then renders every
    /// message. Undeclared extra variables are allowed: suites often carry expected values.
    pub fn render(&self, vars: &Map<String, Value>) -> Result<Vec<Message>, RenderError> {
        let mut context = vars.clone();
        for (name, variable) in &self.file.variables {
            match vars.get(name) {
                Some(value) => {
                    if !variable.kind.accepts(value) {
                        return Err(RenderError::WrongType {
                            name: name.clone(),
                            expected: variable.kind.name().to_owned(),
                            got: json_type_name(value).to_owned(),
                        });
                    }
                }
                None => match &variable.default {
                    Some(default) => {
                        context.insert(name.clone(), default.clone());
                    }
                    None if variable.required => {
                        return Err(RenderError::UndefinedVariable { name: name.clone() });
                    }
                    None => {}
                },
            }
        }
        let mut messages =
            Vec::with_capacity(self.file.messages.len() + 2 * self.file.examples.len());
        let leading = self
            .file
            .messages
            .iter()
            .take_while(|m| matches!(m.role, Role::System | Role::Developer))
            .count();
        for (index, message) in self.file.messages.iter().enumerate() {
            if index == leading {
                push_examples(&self.file.examples, &mut messages);
            }
            let convert =
                |error: minijinja::Error| template::convert(&error, &message.content, &context);
            let template = self.env.get_template(&index.to_string()).map_err(convert)?;
            let content = template.render(Serde(&context)).map_err(convert)?;
            messages.push(Message::new(message.role, content));
        }
        if leading == self.file.messages.len() {
            push_examples(&self.file.examples, &mut messages);
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TRIAGE: &str = r#"
name: triage
description: route tickets
messages:
  - role: system
    content: You route support tickets.
  - role: user
    content: "Ticket: {{ ticket }} (tone: {{ tone }})"
params:
  temperature: 0
  max_tokens: 5
  stop: "\n"
variables:
  ticket: {type: string}
  tone: {type: string, default: polite}
response_format:
  type: object
  properties: {label: {enum: [billing, bug]}}
"#;

    fn parse(text: &str) -> Result<PromptFile, SourceError> {
        PromptFile::parse(text, Path::new("p.yaml"))
    }

    #[test]
    fn parses_and_renders_with_defaults() {
        let file = parse(TRIAGE).unwrap();
        assert_eq!(file.params.stop, vec!["\n".to_owned()]);
        assert!(
            file.params
                .response_format
                .as_ref()
                .and_then(|f| f.schema())
                .is_some()
        );
        let template = PromptTemplate::compile(file).unwrap();
        let messages = template
            .render(json!({"ticket": "refund"}).as_object().unwrap())
            .unwrap();
        assert_eq!(messages[1].content, "Ticket: refund (tone: polite)");
        assert_eq!(messages[0].role, Role::System);
    }

    #[test]
    fn missing_required_variable_is_named() {
        let template = PromptTemplate::compile(parse(TRIAGE).unwrap()).unwrap();
        let error = template.render(&Map::new()).unwrap_err();
        assert_eq!(
            error,
            RenderError::UndefinedVariable {
                name: "ticket".into()
            }
        );
    }

    #[test]
    fn wrong_type_is_reported() {
        let template = PromptTemplate::compile(parse(TRIAGE).unwrap()).unwrap();
        let error = template
            .render(json!({"ticket": 3}).as_object().unwrap())
            .unwrap_err();
        assert!(matches!(error, RenderError::WrongType { ref name, .. } if name == "ticket"));
    }

    #[test]
    fn unknown_role_suggests() {
        let error = parse("name: x\nmessages:\n  - role: usr\n    content: hi\n").unwrap_err();
        assert!(
            error.to_string().contains("did you mean `user`?"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_has_location() {
        let error = parse("name: x\nmesages: []\n").unwrap_err();
        assert_eq!(
            (error.line, error.message.as_str()),
            (Some(2), "unknown key `mesages`")
        );
        assert!(error.hint.unwrap().contains("did you mean `messages`"));
    }

    #[test]
    fn template_syntax_errors_are_reported_at_parse_time() {
        let error = parse("name: x\nmessages:\n  - role: user\n    content: '{{ x'\n").unwrap_err();
        assert!(error.message.contains("messages[0]"), "{error}");
    }

    #[test]
    fn invalid_schema_is_rejected() {
        let text = "name: x\nmessages: [{role: user, content: hi}]\nresponse_format: {type: object, properties: 3}\n";
        let error = parse(text).unwrap_err();
        assert!(error.message.contains("invalid JSON Schema"), "{error}");
    }
}
