//! The project's `plumb.yaml` as the registry reads it: the promotion policy of each label
//! (`gateway:` is plumb-gateway's section).
//!
//! ```yaml
//! promotion:
//!   production:
//!     suites: [evals/triage.yaml]   # each needs a passing run of the target version
//!     no_regression: true           # and no significant loss against the current one
//!     role: releaser                # who may move the label (default: releaser)
//!   staging:
//!     suites: [evals/smoke.yaml]
//! ```

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use plumb_core::SourceError;
use serde::Deserialize;

use crate::auth::Role;

pub const CONFIG_FILE: &str = "plumb.yaml";

/// Labels that only releasers may move, whatever the config says.
pub const PROTECTED: &[&str] = &["production"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    promotion: IndexMap<String, RawLabelPolicy>,
    /// The gateway's section, checked by plumb-gateway.
    #[serde(default)]
    #[allow(dead_code, reason = "read by plumb-gateway")]
    gateway: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelPolicy {
    #[serde(default)]
    suites: Vec<String>,
    #[serde(default)]
    no_regression: Option<bool>,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LabelPolicy {
    /// Suite files, resolved against the project root.
    pub suites: Vec<PathBuf>,
    /// As written, for messages.
    pub suite_names: Vec<String>,
    pub no_regression: bool,
    pub role: Role,
}

#[derive(Clone, Debug, Default)]
pub struct ProjectConfig {
    pub root: PathBuf,
    /// The file the policy came from, when there is one.
    pub path: Option<PathBuf>,
    pub promotion: IndexMap<String, LabelPolicy>,
}

impl ProjectConfig {
    /// Reads `root/plumb.yaml`; a project without one has no policies.
    pub fn load(root: &Path) -> Result<ProjectConfig, SourceError> {
        let path = root.join(CONFIG_FILE);
        if !path.is_file() {
            return Ok(ProjectConfig {
                root: root.to_owned(),
                path: None,
                promotion: IndexMap::new(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|error| {
            SourceError::in_file(&path, format!("cannot read project config: {error}"))
        })?;
        ProjectConfig::parse(&text, &path, root)
    }

    pub fn parse(text: &str, path: &Path, root: &Path) -> Result<ProjectConfig, SourceError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            plumb_prompt::yaml::from_str(text, path)?
        };
        let mut promotion = IndexMap::new();
        for (label, policy) in raw.promotion {
            plumb_prompt::check_label(&label)
                .map_err(|problem| SourceError::in_file(path, format!("promotion: {problem}")))?;
            let default_role = if PROTECTED.contains(&label.as_str()) {
                Role::Releaser
            } else {
                Role::Editor
            };
            let role = match policy.role.as_deref() {
                None => default_role,
                Some(text) => Role::parse_or_hint(text).map_err(|hint| {
                    SourceError::in_file(
                        path,
                        format!("promotion.{label}.role: unknown role `{text}`"),
                    )
                    .with_hint(hint)
                })?,
            };
            // Configuration can raise the bar for a protected label, never lower it.
            let role = if PROTECTED.contains(&label.as_str()) {
                role.max(Role::Releaser)
            } else {
                role
            };
            if role < Role::Editor {
                return Err(SourceError::in_file(
                    path,
                    format!("promotion.{label}.role: moving a label needs at least `editor`"),
                ));
            }
            if policy.suites.is_empty() {
                return Err(SourceError::in_file(
                    path,
                    format!("promotion.{label}.suites is empty"),
                )
                .with_hint("name the suite files whose passing runs a promotion needs"));
            }
            let suites = policy.suites.iter().map(|s| root.join(s)).collect();
            promotion.insert(
                label,
                LabelPolicy {
                    suites,
                    suite_names: policy.suites,
                    no_regression: policy.no_regression.unwrap_or(true),
                    role,
                },
            );
        }
        Ok(ProjectConfig {
            root: root.to_owned(),
            path: Some(path.to_owned()),
            promotion,
        })
    }

    /// The role needed to move `label`.
    pub fn role_for(&self, label: &str) -> Role {
        match self.promotion.get(label) {
            Some(policy) => policy.role,
            None if PROTECTED.contains(&label) => Role::Releaser,
            None => Role::Editor,
        }
    }
}
