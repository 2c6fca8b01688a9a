//! The template language: Jinja through minijinja, sandboxed.
//!
//! Templates get no loader (no file access), no environment variables and no network; a fuel
//! limit stops runaway loops; undefined variables are errors, never empty strings.

use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value};

/// Enough for any reasonable prompt (thousands of loop iterations), small enough that a
/// runaway template fails in milliseconds.
const FUEL: u64 = 1_000_000;

/// Why a template could not be rendered.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error("undefined variable `{name}`")]
    UndefinedVariable { name: String },
    #[error("variable `{name}` must be {expected}, got {got}")]
    WrongType {
        name: String,
        expected: String,
        got: String,
    },
    #[error("template error: {detail}")]
    Template { detail: String, line: Option<usize> },
    #[error("template ran out of fuel (a loop too long or endless)")]
    OutOfFuel,
}

/// A fresh sandboxed environment with plumb's settings.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env
}

/// Whether `source` contains template syntax at all; plain text renders to itself.
pub fn is_template(source: &str) -> bool {
    source.contains("{{") || source.contains("{%") || source.contains("{#")
}

/// Checks that `source` parses, returning the error with its line if not.
pub fn check_syntax(source: &str) -> Result<(), RenderError> {
    let env = environment();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|error| convert(&error, source, &Map::new()))
}

/// Renders one template string with `vars`. Plain text is returned unchanged without parsing.
pub fn render_str(source: &str, vars: &Map<String, Value>) -> Result<String, RenderError> {
    if !is_template(source) {
        return Ok(source.to_owned());
    }
    let env = environment();
    let template = env
        .template_from_str(source)
        .map_err(|error| convert(&error, source, vars))?;
    template
        .render(Serde(vars))
        .map_err(|error| convert(&error, source, vars))
}

/// Names the variable an undefined-value error is about: the template's first free variable
/// that the context lacks.
pub(crate) fn convert(
    error: &minijinja::Error,
    source: &str,
    vars: &Map<String, Value>,
) -> RenderError {
    match error.kind() {
        ErrorKind::OutOfFuel => RenderError::OutOfFuel,
        ErrorKind::UndefinedError => {
            if let Some(name) = missing_variable(source, vars) {
                return RenderError::UndefinedVariable { name };
            }
            RenderError::Template {
                detail: describe(error),
                line: error.line(),
            }
        }
        _ => RenderError::Template {
            detail: describe(error),
            line: error.line(),
        },
    }
}

/// The variables a template reads from its context, in order of first use; names defined by
/// the template itself (`set`, loop variables) and globals such as `range` are left out.
pub fn free_variables(source: &str) -> Result<Vec<String>, RenderError> {
    if !is_template(source) {
        return Ok(Vec::new());
    }
    let env = environment();
    let template = env
        .template_from_str(source)
        .map_err(|error| convert(&error, source, &Map::new()))?;
    let mut free: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| env.globals().all(|(global, _)| global != name))
        .collect();
    free.sort_by_key(|name| (first_use(source, name), name.clone()));
    Ok(free)
}

/// Byte offset of the first use of `name` as a whole word in `source`.
pub fn first_use(source: &str, name: &str) -> usize {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(found) = source[from..].find(name) {
        let start = from + found;
        let end = start + name.len();
        let before = source[..start].chars().next_back();
        let after = source[end..].chars().next();
        if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
            return start;
        }
        from = end;
    }
    usize::MAX
}

fn missing_variable(source: &str, vars: &Map<String, Value>) -> Option<String> {
    let env = environment();
    let template = env.template_from_str(source).ok()?;
    let mut free: Vec<String> = template.undeclared_variables(false).into_iter().collect();
    free.sort_by_key(|name| source.find(name.as_str()).unwrap_or(usize::MAX));
    free.into_iter()
        .find(|name| !vars.contains_key(name) && env.globals().all(|(global, _)| global != name))
}

fn describe(error: &minijinja::Error) -> String {
    let mut text = error.kind().to_string();
    if let Some(detail) = error.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn renders_variables_filters_and_methods() {
        let out = render_str(
            "{{ name | upper }} {{ items | join(', ') }} {{ text.strip() }}",
            &vars(json!({"name": "ada", "items": [1, 2], "text": "  x "})),
        );
        assert_eq!(out.unwrap(), "ADA 1, 2 x");
    }

    #[test]
    fn undefined_variable_is_named() {
        let error = render_str(
            "Hello {{ who }} from {{ place }}",
            &vars(json!({"who": "a"})),
        );
        assert_eq!(
            error.unwrap_err(),
            RenderError::UndefinedVariable {
                name: "place".into()
            }
        );
    }

    #[test]
    fn defined_test_does_not_trip_strict_mode() {
        let out = render_str(
            "{% if x is defined %}x{% else %}none{% endif %}",
            &Map::new(),
        );
        assert_eq!(out.unwrap(), "none");
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let error = render_str(
            "{% for i in range(90000) %}{% for j in range(90000) %}{{ j }}{% endfor %}{% endfor %}",
            &Map::new(),
        );
        assert_eq!(error.unwrap_err(), RenderError::OutOfFuel);
    }

    #[test]
    fn no_file_access() {
        let error = render_str("{% include 'etc/passwd' %}", &Map::new()).unwrap_err();
        assert!(matches!(error, RenderError::Template { .. }), "{error:?}");
    }

    #[test]
    fn syntax_errors_carry_lines() {
        let error = check_syntax("line one\n{{ broken").unwrap_err();
        assert!(
            matches!(error, RenderError::Template { line: Some(2), .. }),
            "{error:?}"
        );
    }
}
