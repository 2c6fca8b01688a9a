//! `plumb prompt lint`: problems a prompt file parses fine with but should not ship with —
//! variables used but never declared or declared but never used, templates that fail on
//! trial render, user input placed in the system layer, secrets in the text, few-shot
//! examples that break the response schema — and the token count of each message.

use std::fmt;
use std::path::{Path, PathBuf};

use plumb_core::{Role, SourceError};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::file::{PromptFile, VarType};
use crate::template;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    /// A stable name for the check, e.g. `unused-variable`.
    pub code: &'static str,
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {severity}[{}]: {}", self.code, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Token count of one part of the prompt, as written (variables unrendered).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenCount {
    pub part: String,
    pub tokens: u64,
}

#[derive(Clone, Debug, Default)]
pub struct LintReport {
    pub findings: Vec<Finding>,
    pub tokens: Vec<TokenCount>,
}

impl LintReport {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }

    pub fn total_tokens(&self) -> u64 {
        self.tokens.iter().map(|t| t.tokens).sum()
    }
}

/// Only what lint needs to point at lines: where each message's content starts.
#[derive(Deserialize)]
struct Lines {
    #[serde(default)]
    messages: Vec<LineMessage>,
}

#[derive(Deserialize)]
struct LineMessage {
    content: Spanned<String>,
}

/// Lints the prompt file `text` read from `path`; `count_tokens` counts the tokens of a text for
/// the chosen model. A file that does not parse is one error finding, with its location.
pub fn lint(text: &str, path: &Path, count_tokens: &dyn Fn(&str) -> u64) -> LintReport {
    let mut report = LintReport::default();
    let starts = message_starts(text, path);
    let file = match PromptFile::parse(text, path) {
        Ok(file) => file,
        Err(error) => {
            let mut finding = from_source_error(error);
            // Template errors are found per message: point at the message's text.
            if finding.line.is_none()
                && let Some(rest) = finding.message.strip_prefix("messages[")
                && let Some(index) = rest.split(']').next().and_then(|i| i.parse::<usize>().ok())
                && let Some((line, block)) = starts.get(index)
            {
                finding.line = Some(line + usize::from(*block));
            }
            report.findings.push(finding);
            return report;
        }
    };
    let at = |message: usize, offset_in_content: usize| -> Option<usize> {
        let (line, block) = starts.get(message).copied()?;
        let content = &file.messages.get(message)?.content;
        let inner = content[..offset_in_content.min(content.len())]
            .matches('\n')
            .count();
        Some(line + inner + usize::from(block))
    };
    let mut finding = |severity, code, line, message: String, hint: Option<&str>| {
        report.findings.push(Finding {
            severity,
            code,
            path: path.to_owned(),
            line,
            message,
            hint: hint.map(str::to_owned),
        });
    };

    // Variables: declared vs used.
    let mut template_broken = false;
    let mut used: Vec<(String, usize, usize)> = Vec::new(); // (name, message, offset)
    for (index, message) in file.messages.iter().enumerate() {
        match template::free_variables(&message.content) {
            Ok(names) => {
                for name in names {
                    let offset = template::first_use(&message.content, &name);
                    if !used.iter().any(|(seen, _, _)| *seen == name) {
                        used.push((name.clone(), index, offset));
                    }
                    if matches!(message.role, Role::System | Role::Developer) {
                        finding(
                            Severity::Warning,
                            "input-in-system",
                            at(index, offset),
                            format!(
                                "messages[{index}] ({}) interpolates `{name}`: text from callers lands in the system layer, where an injected instruction carries the most weight",
                                message.role.as_str()
                            ),
                            Some(
                                "put caller-supplied text in a user message and refer to it from the system message",
                            ),
                        );
                    }
                }
            }
            Err(error) => {
                template_broken = true;
                finding(
                    Severity::Error,
                    "template-error",
                    at(index, 0),
                    format!("messages[{index}]: {error}"),
                    None,
                );
            }
        }
    }
    if file.variables.is_empty() {
        if let Some((name, index, offset)) = used.first() {
            let names: Vec<&str> = used.iter().map(|(n, _, _)| n.as_str()).collect();
            finding(
                Severity::Warning,
                "undeclared-variables",
                at(*index, *offset),
                format!(
                    "the templates use {} but the file declares no `variables`",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(&format!(
                    "declare them to get type checks and defaults, e.g. `variables: {{{name}: {{type: string}}}}`"
                )),
            );
        }
    } else {
        for (name, index, offset) in &used {
            if !file.variables.contains_key(name) {
                let hint =
                    plumb_core::did_you_mean(name, file.variables.keys().map(String::as_str))
                        .map(|best| {
                            format!("did you mean `{best}`? otherwise declare it under `variables`")
                        })
                        .unwrap_or_else(|| "declare it under `variables`".to_owned());
                finding(
                    Severity::Error,
                    "undefined-variable",
                    at(*index, *offset),
                    format!("messages[{index}] uses `{name}`, which `variables` does not declare"),
                    Some(&hint),
                );
            }
        }
        for name in file.variables.keys() {
            if !used.iter().any(|(n, _, _)| n == name) {
                finding(
                    Severity::Warning,
                    "unused-variable",
                    variable_line(text, name),
                    format!("variable `{name}` is declared but no message uses it"),
                    Some("remove it, or use it in a message"),
                );
            }
        }
    }

    // A trial render with placeholder values finds what only fails at render time: unknown
    // filters and tests, calling methods on the wrong type, loops over non-lists.
    if !template_broken {
        let mut vars = Map::new();
        for (name, variable) in &file.variables {
            vars.insert(name.clone(), placeholder(variable.kind));
        }
        for (name, _, _) in &used {
            vars.entry(name.clone())
                .or_insert_with(|| Value::String("x".into()));
        }
        for (index, message) in file.messages.iter().enumerate() {
            if let Err(error) = template::render_str(&message.content, &vars) {
                let line = match &error {
                    template::RenderError::Template {
                        line: Some(inner), ..
                    } => at(index, 0).map(|start| start + inner - 1),
                    _ => at(index, 0),
                };
                finding(
                    Severity::Error,
                    "template-error",
                    line,
                    format!("messages[{index}] fails to render with sample values: {error}"),
                    None,
                );
            }
        }
    }

    secrets(&file, &mut report, path, &at);
    examples_against_schema(&file, &mut report, path);

    for (index, message) in file.messages.iter().enumerate() {
        report.tokens.push(TokenCount {
            part: format!("messages[{index}] ({})", message.role.as_str()),
            tokens: count_tokens(&message.content),
        });
    }
    if !file.examples.is_empty() {
        let tokens = file
            .examples
            .iter()
            .map(|e| count_tokens(&e.input) + count_tokens(&e.output))
            .sum();
        report.tokens.push(TokenCount {
            part: format!("examples ({})", file.examples.len()),
            tokens,
        });
    }
    report
        .findings
        .sort_by_key(|f| (f.line.unwrap_or(usize::MAX), f.code));
    report
}

fn from_source_error(error: SourceError) -> Finding {
    let code = if error.message.contains("template") || error.message.contains("syntax") {
        "template-error"
    } else {
        "invalid-file"
    };
    Finding {
        severity: Severity::Error,
        code,
        path: error.path.clone().unwrap_or_default(),
        line: error.line,
        message: error.message,
        hint: error.hint,
    }
}

/// (line of the `content:` value, whether it is a block scalar whose text starts a line below).
fn message_starts(text: &str, path: &Path) -> Vec<(usize, bool)> {
    let Ok(lines) = crate::yaml::from_str::<Lines>(text, path) else {
        return Vec::new();
    };
    let source_lines: Vec<&str> = text.lines().collect();
    lines
        .messages
        .iter()
        .map(|m| {
            let line = m.content.referenced.line() as usize;
            let column = m.content.referenced.column() as usize;
            let block = source_lines
                .get(line.saturating_sub(1))
                .and_then(|l| l.get(column.saturating_sub(1)..))
                .is_some_and(|rest| rest.starts_with('|') || rest.starts_with('>'));
            (line, block)
        })
        .collect()
}

fn variable_line(text: &str, name: &str) -> Option<usize> {
    let mut in_variables = false;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("variables:") {
            in_variables = true;
            continue;
        }
        if in_variables {
            if !line.starts_with(' ') && !line.trim().is_empty() {
                in_variables = false;
            } else if line.trim_start().starts_with(&format!("{name}:")) {
                return Some(index + 1);
            }
        }
    }
    None
}

fn placeholder(kind: VarType) -> Value {
    match kind {
        VarType::String | VarType::Any => Value::String("x".into()),
        VarType::Number | VarType::Integer => Value::from(1),
        VarType::Boolean => Value::Bool(true),
        VarType::Array => Value::Array(Vec::new()),
        VarType::Object => Value::Object(Map::new()),
    }
}

/// Credentials pasted into a prompt reach every provider, log and trace that sees it.
fn secrets(
    file: &PromptFile,
    report: &mut LintReport,
    path: &Path,
    at: &dyn Fn(usize, usize) -> Option<usize>,
) {
    let patterns = [
        (
            r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",
            "an OpenAI/Anthropic API key",
        ),
        (r"AKIA[0-9A-Z]{16}", "an AWS access key id"),
        (r"gh[pousr]_[A-Za-z0-9]{36}", "a GitHub token"),
        (r"xox[abpr]-[A-Za-z0-9-]{10,}", "a Slack token"),
        (r"-----BEGIN [A-Z ]*PRIVATE KEY-----", "a private key"),
    ];
    for (pattern, what) in patterns {
        let Ok(regex) = Regex::new(pattern) else {
            continue;
        };
        for (index, message) in file.messages.iter().enumerate() {
            if let Some(found) = regex.find(&message.content) {
                report.findings.push(Finding {
                    severity: Severity::Error,
                    code: "secret",
                    path: path.to_owned(),
                    line: at(index, found.start()),
                    message: format!("messages[{index}] contains what looks like {what}"),
                    hint: Some(
                        "remove it: prompt text is sent to providers and stored in traces".into(),
                    ),
                });
            }
        }
    }
}

/// Few-shot answers teach the format: one that breaks the response schema teaches the model to
/// break it too.
fn examples_against_schema(file: &PromptFile, report: &mut LintReport, path: &Path) {
    let Some(schema) = file
        .params
        .response_format
        .as_ref()
        .and_then(|f| f.schema())
    else {
        return;
    };
    let Ok(validator) = jsonschema::validator_for(schema) else {
        return;
    };
    for (index, example) in file.examples.iter().enumerate() {
        let problem = match serde_json::from_str::<Value>(&example.output) {
            Ok(value) => validator
                .iter_errors(&value)
                .next()
                .map(|error| format!("does not match the response schema: {error}")),
            Err(error) => Some(format!(
                "is not JSON ({error}) but the prompt asks for JSON"
            )),
        };
        if let Some(problem) = problem {
            report.findings.push(Finding {
                severity: Severity::Error,
                code: "example-schema",
                path: path.to_owned(),
                line: None,
                message: format!("examples[{index}].output {problem}"),
                hint: Some("fix the example, or the schema".into()),
            });
        }
    }
}
