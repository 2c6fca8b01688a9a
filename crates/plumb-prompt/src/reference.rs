//! References to registry prompts: `triage`, `triage@7`, `triage@production`, `triage@latest`.

use std::fmt;

use crate::file::check_name;

/// Which version of a prompt a reference means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The newest version (also written `@latest`).
    Latest,
    Version(u64),
    Label(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRef {
    pub name: String,
    pub selector: Selector,
}

impl PromptRef {
    /// Parses `NAME`, `NAME@VERSION`, `NAME@LABEL` or `NAME@latest`.
    pub fn parse(text: &str) -> Result<PromptRef, String> {
        let (name, selector) = match text.split_once('@') {
            Some((name, selector)) => (name, Some(selector)),
            None => (text, None),
        };
        check_name(name).map_err(|problem| format!("invalid prompt name `{name}`: {problem}"))?;
        let selector = match selector {
            None | Some("latest") => Selector::Latest,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                let version = digits
                    .parse::<u64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| format!("invalid version `{digits}`: versions start at 1"))?;
                Selector::Version(version)
            }
            Some(label) => {
                check_label(label)?;
                Selector::Label(label.to_owned())
            }
        };
        Ok(PromptRef {
            name: name.to_owned(),
            selector,
        })
    }

    /// Whether `text` reads as a registry reference in a suite's `prompts` list: `name@x` with
    /// nothing that could be prompt text (no spaces, braces or newlines).
    pub fn looks_like(text: &str) -> bool {
        text.contains('@') && PromptRef::parse(text).is_ok()
    }
}

impl fmt::Display for PromptRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            Selector::Latest => write!(f, "{}@latest", self.name),
            Selector::Version(version) => write!(f, "{}@{version}", self.name),
            Selector::Label(label) => write!(f, "{}@{label}", self.name),
        }
    }
}

/// Labels are names (`production`, `canary-eu`) that are not numbers and not `latest`.
pub fn check_label(label: &str) -> Result<(), String> {
    if label == "latest" {
        return Err(
            "`latest` is not a label you can move: it always means the newest version".to_owned(),
        );
    }
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid label `{label}`: a label cannot be a number (that would read as a version)"
        ));
    }
    check_name(label).map_err(|problem| format!("invalid label `{label}`: {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let parse = |t: &str| PromptRef::parse(t).unwrap().selector;
        assert_eq!(parse("triage"), Selector::Latest);
        assert_eq!(parse("triage@latest"), Selector::Latest);
        assert_eq!(parse("triage@7"), Selector::Version(7));
        assert_eq!(
            parse("triage@production"),
            Selector::Label("production".into())
        );
        assert!(PromptRef::parse("triage@0").is_err());
        assert!(PromptRef::parse("tri age@1").is_err());
        assert!(PromptRef::parse("triage@").is_err());
        assert!(!PromptRef::looks_like("Summarize {{ text }} @ once"));
        assert!(PromptRef::looks_like("triage@production"));
    }
}
