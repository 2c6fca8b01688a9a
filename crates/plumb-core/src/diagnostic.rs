//! Errors in user-written files, with the location and a hint, rendered the way the CLI prints
//! them: `error: suite.yaml:14:9: unknown assertion type `contians`` / `hint: did you mean ...`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem in a file the user wrote. Line and column are 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceError {
    pub path: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl SourceError {
    pub fn new(message: impl Into<String>) -> SourceError {
        SourceError {
            path: None,
            line: None,
            column: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn in_file(path: &Path, message: impl Into<String>) -> SourceError {
        SourceError {
            path: Some(path.to_owned()),
            ..SourceError::new(message)
        }
    }

    pub fn at(mut self, line: usize, column: usize) -> SourceError {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    pub fn with_path(mut self, path: &Path) -> SourceError {
        if self.path.is_none() {
            self.path = Some(path.to_owned());
        }
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> SourceError {
        self.hint = Some(hint.into());
        self
    }

    /// `file:line:col` (as much of it as is known), or an empty string.
    pub fn location(&self) -> String {
        let mut out = String::new();
        if let Some(path) = &self.path {
            out.push_str(&path.display().to_string());
        }
        if let Some(line) = self.line {
            if !out.is_empty() {
                out.push(':');
            }
            out.push_str(&line.to_string());
            if let Some(column) = self.column {
                out.push(':');
                out.push_str(&column.to_string());
            }
        }
        out
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = self.location();
        if location.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{location}: {}", self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SourceError {}

/// The closest candidate to `word`, if one is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = edit_distance(word, candidate);
        let limit = (candidate.chars().count().max(word.chars().count()) / 3).max(1);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Levenshtein distance over chars. Small inputs only (keys and type names).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let types = ["contains", "icontains", "equals", "regex"];
        assert_eq!(did_you_mean("contians", types), Some("contains"));
        assert_eq!(did_you_mean("equal", types), Some("equals"));
        assert_eq!(did_you_mean("bananas", types), None);
    }

    #[test]
    fn renders_location_and_hint() {
        let error = SourceError::in_file(Path::new("suite.yaml"), "unknown key `tset`")
            .at(3, 5)
            .with_hint("did you mean `tests`?");
        assert_eq!(
            error.to_string(),
            "suite.yaml:3:5: unknown key `tset`\nhint: did you mean `tests`?"
        );
    }
}
