//! Differences between two prompt versions, section by section: each message as a unified line
//! diff with the changed words marked, each parameter and variable on its own line, the few-shot
//! examples, the response schema and the tools.
//!
//! Without color, changed words are marked the way `git diff --word-diff=plain` does
//! (`[-old-]`, `{+new+}`); with color they are highlighted instead.

use std::fmt::Write as _;

use serde_json::Value;
use similar::{Algorithm, ChangeTag, DiffTag, TextDiff};

use crate::file::{Example, MessageTemplate, PromptFile, Variable};

/// Lines of unchanged context around each change.
const CONTEXT: usize = 3;

#[derive(Clone, Copy, Debug, Default)]
pub struct DiffStyle {
    pub color: bool,
}

/// The difference between `old` and `new`, headed by their labels (e.g. `triage@3`); `None`
/// when their content is the same.
pub fn diff(
    old: &PromptFile,
    new: &PromptFile,
    old_label: &str,
    new_label: &str,
    style: DiffStyle,
) -> Option<String> {
    let mut out = Output {
        text: String::new(),
        style,
    };
    diff_messages(&mut out, &old.messages, &new.messages);
    diff_examples(&mut out, &old.examples, &new.examples);
    diff_lines(&mut out, "params", &param_lines(old), &param_lines(new));
    diff_lines(
        &mut out,
        "variables",
        &variable_lines(&old.variables),
        &variable_lines(&new.variables),
    );
    diff_text(
        &mut out,
        "response_format",
        &pretty(old.params.response_format.as_ref()),
        &pretty(new.params.response_format.as_ref()),
    );
    diff_text(
        &mut out,
        "tools",
        &pretty_list(&old.params.tools),
        &pretty_list(&new.params.tools),
    );
    if out.text.is_empty() {
        return None;
    }
    let header = format!(
        "{}\n{}\n",
        out.paint(&format!("--- {old_label}"), "1"),
        out.paint(&format!("+++ {new_label}"), "1")
    );
    Some(header + &out.text)
}

struct Output {
    text: String,
    style: DiffStyle,
}

impl Output {
    fn paint(&self, text: &str, code: &str) -> String {
        if self.style.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn section(&mut self, title: &str) {
        let line = self.paint(&format!("@@ {title} @@"), "36");
        let _ = writeln!(self.text, "{line}");
    }
}

fn diff_messages(out: &mut Output, old: &[MessageTemplate], new: &[MessageTemplate]) {
    // Align whole messages first, so inserting one message does not show every later one as
    // changed; messages replaced in place are then diffed line by line.
    let key = |m: &MessageTemplate| (m.role.as_str(), m.content.clone());
    let old_keys: Vec<_> = old.iter().map(key).collect();
    let new_keys: Vec<_> = new.iter().map(key).collect();
    let ops = similar::capture_diff_slices(Algorithm::Myers, &old_keys, &new_keys);
    for op in ops {
        let (tag, old_range, new_range) = op.as_tag_tuple();
        match tag {
            DiffTag::Equal => {}
            DiffTag::Delete => {
                for index in old_range {
                    removed_message(out, index, &old[index]);
                }
            }
            DiffTag::Insert => {
                for index in new_range {
                    added_message(out, index, &new[index]);
                }
            }
            DiffTag::Replace => {
                let paired = old_range.len().min(new_range.len());
                for offset in 0..paired {
                    let (a, b) = (old_range.start + offset, new_range.start + offset);
                    let (before, after) = (&old[a], &new[b]);
                    let title = if before.role == after.role {
                        format!("messages[{b}] ({})", after.role.as_str())
                    } else {
                        format!(
                            "messages[{b}] (role {} → {})",
                            before.role.as_str(),
                            after.role.as_str()
                        )
                    };
                    out.section(&title);
                    text_hunks(out, &before.content, &after.content);
                }
                for index in old_range.skip(paired) {
                    removed_message(out, index, &old[index]);
                }
                for index in new_range.skip(paired) {
                    added_message(out, index, &new[index]);
                }
            }
        }
    }
}

fn removed_message(out: &mut Output, index: usize, message: &MessageTemplate) {
    out.section(&format!(
        "messages[{index}] ({}) removed",
        message.role.as_str()
    ));
    text_hunks(out, &message.content, "");
}

fn added_message(out: &mut Output, index: usize, message: &MessageTemplate) {
    out.section(&format!(
        "messages[{index}] ({}) added",
        message.role.as_str()
    ));
    text_hunks(out, "", &message.content);
}

fn diff_examples(out: &mut Output, old: &[Example], new: &[Example]) {
    let render = |examples: &[Example]| {
        let mut text = String::new();
        for (index, example) in examples.iter().enumerate() {
            let _ = writeln!(text, "[{index}] input: {}", example.input);
            let _ = writeln!(text, "[{index}] output: {}", example.output);
        }
        text
    };
    diff_text(out, "examples", &render(old), &render(new));
}

fn diff_lines(out: &mut Output, title: &str, old: &[String], new: &[String]) {
    diff_text(out, title, &old.join("\n"), &new.join("\n"));
}

fn diff_text(out: &mut Output, title: &str, old: &str, new: &str) {
    if old == new {
        return;
    }
    out.section(title);
    text_hunks(out, old, new);
}

/// A unified line diff of two texts, with changed words marked inside changed lines.
fn text_hunks(out: &mut Output, old: &str, new: &str) {
    let old = with_final_newline(old);
    let new = with_final_newline(new);
    let diff = TextDiff::configure()
        .algorithm(Algorithm::Patience)
        .diff_lines(old.as_str(), new.as_str());
    let groups = diff.grouped_ops(CONTEXT);
    let many = groups.len() > 1;
    for (group_index, group) in groups.iter().enumerate() {
        if many && group_index > 0 {
            let separator = out.paint("…", "2");
            let _ = writeln!(out.text, "{separator}");
        }
        for op in group {
            for change in diff.iter_inline_changes_deadline(op, None) {
                let (sign, color, open, close) = match change.tag() {
                    ChangeTag::Equal => (' ', "", "", ""),
                    ChangeTag::Delete => ('-', "31", "[-", "-]"),
                    ChangeTag::Insert => ('+', "32", "{+", "+}"),
                };
                let mut line = String::new();
                for (emphasized, piece) in change.iter_strings_lossy() {
                    let piece = piece.trim_end_matches('\n');
                    if emphasized && !piece.is_empty() {
                        if out.style.color {
                            let _ = write!(line, "\x1b[7m{piece}\x1b[27m");
                        } else {
                            let _ = write!(line, "{open}{piece}{close}");
                        }
                    } else {
                        line.push_str(piece);
                    }
                }
                let line = format!("{sign}{line}");
                let line = if color.is_empty() {
                    line
                } else {
                    out.paint(&line, color)
                };
                let _ = writeln!(out.text, "{line}");
            }
        }
    }
}

fn with_final_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

fn param_lines(file: &PromptFile) -> Vec<String> {
    let params = &file.params;
    let mut lines = Vec::new();
    let mut push = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            lines.push(format!("{name}: {value}"));
        }
    };
    push("model", file.model.clone());
    push("temperature", params.temperature.map(|v| v.to_string()));
    push("top_p", params.top_p.map(|v| v.to_string()));
    push("top_k", params.top_k.map(|v| v.to_string()));
    push("max_tokens", params.max_tokens.map(|v| v.to_string()));
    push("seed", params.seed.map(|v| v.to_string()));
    push(
        "stop",
        (!params.stop.is_empty()).then(|| serde_json::to_string(&params.stop).unwrap_or_default()),
    );
    lines
}

fn variable_lines(variables: &indexmap::IndexMap<String, Variable>) -> Vec<String> {
    variables
        .iter()
        .map(|(name, variable)| {
            let mut line = format!(
                "{name}: {}",
                serde_json::to_string(&variable.kind)
                    .unwrap_or_default()
                    .trim_matches('"')
            );
            if variable.required {
                line.push_str(", required");
            }
            if let Some(default) = &variable.default {
                let _ = write!(line, ", default {default}");
            }
            if let Some(description) = &variable.description {
                let _ = write!(line, " — {description}");
            }
            line
        })
        .collect()
}

fn pretty<T: serde::Serialize>(value: Option<&T>) -> String {
    value
        .and_then(|v| serde_json::to_string_pretty(v).ok())
        .unwrap_or_default()
}

fn pretty_list(values: &[Value]) -> String {
    if values.is_empty() {
        String::new()
    } else {
        serde_json::to_string_pretty(values).unwrap_or_default()
    }
}
