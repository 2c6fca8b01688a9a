//! Writes a prompt file back as YAML that reads back to the same `PromptFile`: the format of
//! `plumb prompt export` and `plumb prompt show`, made to diff well in git (multi-line text as
//! literal blocks, one field per line, fields in the order people write them).

use std::path::Path;

use indexmap::IndexMap;
use plumb_core::ResponseFormat;
use serde::Serialize;
use serde_json::Value;

use crate::file::{Example, PromptFile, Risk, VarType};

#[derive(Serialize)]
struct YamlFile<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    risk: Option<Risk>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: Vec<YamlMessage<'a>>,
    #[serde(skip_serializing_if = "<[Example]>::is_empty")]
    examples: &'a [Example],
    #[serde(skip_serializing_if = "YamlParams::is_empty")]
    params: YamlParams<'a>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    variables: IndexMap<&'a str, YamlVariable<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a ResponseFormat>,
    #[serde(skip_serializing_if = "<[Value]>::is_empty")]
    tools: &'a [Value],
}

#[derive(Serialize)]
struct YamlMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Serialize)]
struct YamlParams<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

impl YamlParams<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.max_tokens.is_none()
            && self.seed.is_none()
            && self.stop.is_empty()
    }
}

#[derive(Serialize)]
struct YamlVariable<'a> {
    #[serde(rename = "type")]
    kind: VarType,
    /// Written only when it differs from what the parser infers (required unless defaulted).
    #[serde(skip_serializing_if = "Option::is_none")]
    required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

/// What to write: the whole file, or only the name and the content (version files in an
/// export, whose descriptive metadata lives once per prompt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YamlScope {
    Full,
    Content,
}

/// The prompt file as YAML. Checked by reading it back: text the emitter cannot write exactly
/// in block style (rare control characters, odd indentation) falls back to quoted strings, so
/// the round trip is lossless whatever the content.
pub fn to_yaml(file: &PromptFile, scope: YamlScope) -> String {
    let view = view(file, scope);
    let expected = match scope {
        YamlScope::Full => file.clone(),
        YamlScope::Content => file.without_metadata(),
    };
    let block = serde_saphyr::to_string(&view).unwrap_or_default();
    if reads_back(&block, &expected) {
        return block;
    }
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    options.quote_all = true;
    let quoted = serde_saphyr::to_string_with_options(&view, options).unwrap_or_default();
    if reads_back(&quoted, &expected) {
        return quoted;
    }
    // JSON is valid YAML and serde_json's escapes are exact.
    serde_json::to_string_pretty(&view).unwrap_or_default() + "\n"
}

/// The prompt file as JSON in the prompt-file shape (what the HTTP API returns and accepts).
pub fn to_value(file: &PromptFile, scope: YamlScope) -> serde_json::Value {
    serde_json::to_value(view(file, scope)).unwrap_or_default()
}

fn view(file: &PromptFile, scope: YamlScope) -> YamlFile<'_> {
    let full = scope == YamlScope::Full;
    YamlFile {
        name: &file.name,
        description: file.description.as_deref().filter(|_| full),
        owner: file.owner.as_deref().filter(|_| full),
        risk: file.risk.filter(|_| full),
        tags: if full { &file.tags } else { &[] },
        model: file.model.as_deref(),
        messages: file
            .messages
            .iter()
            .map(|m| YamlMessage {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect(),
        examples: &file.examples,
        params: YamlParams {
            temperature: file.params.temperature,
            top_p: file.params.top_p,
            top_k: file.params.top_k,
            max_tokens: file.params.max_tokens,
            seed: file.params.seed,
            stop: &file.params.stop,
        },
        variables: file
            .variables
            .iter()
            .map(|(name, variable)| {
                let inferred = variable.default.is_none();
                (
                    name.as_str(),
                    YamlVariable {
                        kind: variable.kind,
                        required: (variable.required != inferred).then_some(variable.required),
                        default: variable.default.as_ref(),
                        description: variable.description.as_deref(),
                    },
                )
            })
            .collect(),
        response_format: file.params.response_format.as_ref(),
        tools: &file.params.tools,
    }
}

fn reads_back(text: &str, expected: &PromptFile) -> bool {
    PromptFile::parse(text, Path::new("export.yaml")).is_ok_and(|file| &file == expected)
}
