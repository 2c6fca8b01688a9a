//! Reading user-written YAML into typed raw structs, with every error mapped to a
//! `SourceError` that carries file:line:col and, for unknown keys and values, a "did you mean".

use std::path::Path;

use plumb_core::{SourceError, did_you_mean};
use serde::de::DeserializeOwned;

/// Deserializes `text` (the contents of `path`) into `T`.
pub fn from_str<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, SourceError> {
    serde_saphyr::from_str::<T>(text).map_err(|error| convert_error(&error, path))
}

fn convert_error(error: &serde_saphyr::Error, path: &Path) -> SourceError {
    let mut out = SourceError::in_file(path, "");
    if let Some(location) = error.location() {
        out = out.at(location.line() as usize, location.column() as usize);
    }
    let text = error.to_string();
    // serde-saphyr renders a source snippet below the first line; the CLI prints its own
    // location, so keep only the message itself.
    let message = first_message_line(&text);
    out.hint = hint_for(&message);
    out.message = tidy(&message);
    out
}

fn first_message_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or(text).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // serde-saphyr prefixes "line L column C: "; the location is reported separately.
    let line = match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((position, rest)) if position.contains("column") => rest,
        _ => line,
    };
    match line.find(" at line ") {
        Some(index) => line[..index].to_owned(),
        None => line.to_owned(),
    }
}

/// Serde's messages say "field"; users write "keys". The accepted values go to the hint.
fn tidy(message: &str) -> String {
    let message = match message.find(", expected") {
        Some(index) if message.starts_with("unknown ") => &message[..index],
        _ => message,
    };
    message
        .replacen("unknown field", "unknown key", 1)
        .replacen("missing field", "missing key", 1)
}

/// From "unknown field `tset`, expected one of tests, prompts" (candidates with or without
/// backticks), suggests the closest key and lists the accepted ones.
fn hint_for(message: &str) -> Option<String> {
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return None;
    }
    let word = message.split('`').nth(1)?;
    let expected = message.split_once(", expected")?.1;
    let expected = expected
        .trim_start()
        .strip_prefix("one of")
        .unwrap_or(expected);
    let candidates: Vec<&str> = expected
        .split(',')
        .flat_map(|part| part.split(" or "))
        .map(|part| part.trim().trim_matches('`'))
        .filter(|part| !part.is_empty())
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let accepted = candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(match did_you_mean(word, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`? accepted: {accepted}"),
        None => format!("accepted: {accepted}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        value: u32,
        weight: Option<f64>,
    }

    #[test]
    fn unknown_nested_key_has_location_and_suggestion() {
        let text = "name: x\nitems:\n  - value: 1\n    wieght: 2\n";
        let error = from_str::<Doc>(text, Path::new("f.yaml")).unwrap_err();
        assert_eq!(error.line, Some(4), "{error}");
        assert_eq!(error.message, "unknown key `wieght`");
        assert!(
            error
                .hint
                .as_deref()
                .unwrap_or("")
                .starts_with("did you mean `weight`?"),
            "{error}"
        );
    }

    #[test]
    fn type_errors_have_locations() {
        let text = "name: x\nitems:\n  - value: many\n";
        let error = from_str::<Doc>(text, Path::new("f.yaml")).unwrap_err();
        assert_eq!(error.line, Some(3), "{error}");
    }

    #[test]
    fn syntax_errors_have_locations() {
        let text = "name: x\nitems: [1, 2\n";
        let error = from_str::<Doc>(text, Path::new("f.yaml")).unwrap_err();
        assert!(error.line.is_some(), "{error}");
    }
}
