//! Export and import: the registry as plain files that diff well in git, and back, losslessly.
//!
//! ```text
//! DIR/
//!   triage/
//!     prompt.yaml   metadata, labels, version list (hash, semver, message, author, time),
//!                   label history
//!     v1.yaml       each version as a prompt file (name and content): `git diff v1.yaml
//!     v2.yaml       v2.yaml` shows what changed, `plumb prompt push v2.yaml` pushes it
//! ```
//!
//! Import checks every version file against its recorded hash, and adds to an existing prompt
//! only when the registry's versions are a prefix of the export's. It writes all or nothing.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use plumb_core::SourceError;
use plumb_prompt::{PromptFile, YamlScope};
use plumb_store::{
    Deprecation, ImportOutcome, LabelMove, LabelRecord, MoveKind, NewAudit, PromptBundle,
    PromptMeta, VersionRecord,
};
use serde::{Deserialize, Serialize};

use crate::auth::{Actor, Role};
use crate::error::RegistryError;
use crate::{Registry, now_ms};

pub const PROMPT_FILE: &str = "prompt.yaml";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptYaml {
    name: String,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    risk: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deprecated: Option<DeprecationYaml>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    labels: IndexMap<String, LabelYaml>,
    versions: Vec<VersionYaml>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<MoveYaml>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeprecationYaml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replacement: Option<String>,
    reason: String,
    at: String,
    by: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelYaml {
    version: u64,
    updated_at: String,
    updated_by: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionYaml {
    version: u64,
    file: String,
    hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    semver: Option<String>,
    message: String,
    author: String,
    created_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveYaml {
    label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<u64>,
    kind: MoveKind,
    at: String,
    actor: String,
}

fn time_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn parse_time(text: &str, path: &Path, field: &str) -> Result<i64, RegistryError> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|error| {
            RegistryError::Source(SourceError::in_file(
                path,
                format!("{field}: `{text}` is not an RFC 3339 time ({error})"),
            ))
        })
}

#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub prompts: usize,
    pub versions: usize,
    pub files_written: usize,
}

/// Writes `names` (all prompts when empty) under `dir`. Files of versions that no longer exist
/// in the registry are removed from a prompt's folder, so the folder mirrors the registry.
pub fn export(
    registry: &Registry,
    dir: &Path,
    names: &[String],
) -> Result<ExportReport, RegistryError> {
    let prompts = if names.is_empty() {
        registry.list()?
    } else {
        names
            .iter()
            .map(|name| registry.prompt(name))
            .collect::<Result<Vec<_>, _>>()?
    };
    let io = |path: &Path, error: std::io::Error| {
        RegistryError::invalid(format!("cannot write {}: {error}", path.display()), None)
    };
    let mut report = ExportReport {
        prompts: prompts.len(),
        versions: 0,
        files_written: 0,
    };
    for prompt in prompts {
        let versions = registry.db().versions(&prompt.name)?;
        let history = registry.db().label_history(&prompt.name)?;
        let folder = dir.join(&prompt.name);
        std::fs::create_dir_all(&folder).map_err(|e| io(&folder, e))?;
        let mut version_entries = Vec::with_capacity(versions.len());
        let mut keep: Vec<String> = vec![PROMPT_FILE.to_owned()];
        for version in &versions {
            let file_name = format!("v{}.yaml", version.version);
            let file: PromptFile = serde_json::from_str(&version.content).map_err(|error| {
                RegistryError::Internal(format!(
                    "{} v{}: unreadable content: {error}",
                    version.name, version.version
                ))
            })?;
            let text = plumb_prompt::to_yaml(&file, YamlScope::Content);
            let path = folder.join(&file_name);
            write_if_changed(&path, &text).map_err(|e| io(&path, e))?;
            report.files_written += 1;
            version_entries.push(VersionYaml {
                version: version.version,
                file: file_name.clone(),
                hash: version.hash.clone(),
                semver: version.semver.clone(),
                message: version.message.clone(),
                author: version.author.clone(),
                created_at: time_text(version.created_at),
            });
            keep.push(file_name);
        }
        report.versions += versions.len();
        let yaml = PromptYaml {
            name: prompt.name.clone(),
            created_at: time_text(prompt.created_at),
            description: prompt.meta.description.clone(),
            owner: prompt.meta.owner.clone(),
            risk: prompt.meta.risk.clone(),
            tags: prompt.meta.tags.clone(),
            deprecated: prompt.deprecation.as_ref().map(|d| DeprecationYaml {
                replacement: d.replacement.clone(),
                reason: d.reason.clone(),
                at: time_text(d.at),
                by: d.by.clone(),
            }),
            labels: prompt
                .labels
                .iter()
                .map(|l| {
                    (
                        l.label.clone(),
                        LabelYaml {
                            version: l.version,
                            updated_at: time_text(l.updated_at),
                            updated_by: l.updated_by.clone(),
                        },
                    )
                })
                .collect(),
            versions: version_entries,
            history: history
                .iter()
                .map(|m| MoveYaml {
                    label: m.label.clone(),
                    from: m.from,
                    to: m.to,
                    kind: m.kind,
                    at: time_text(m.at),
                    actor: m.actor.clone(),
                })
                .collect(),
        };
        let text = format!(
            "# plumb registry export of `{}`: versions are v<N>.yaml beside this file.\n# Edit prompts in your own prompt files and `plumb prompt push` them; `plumb prompt import` reads this folder back.\n{}",
            prompt.name,
            serde_saphyr::to_string(&yaml)
                .map_err(|e| RegistryError::Internal(format!("cannot write YAML: {e}")))?
        );
        let path = folder.join(PROMPT_FILE);
        write_if_changed(&path, &text).map_err(|e| io(&path, e))?;
        report.files_written += 1;
        // Version files are never deleted from a registry, so stale ones can only come from a
        // different registry exported into the same folder: remove them so the folder mirrors
        // this one.
        if let Ok(entries) = std::fs::read_dir(&folder) {
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                let is_version = file_name.starts_with('v') && file_name.ends_with(".yaml");
                if is_version && !keep.contains(&file_name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    Ok(report)
}

fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text)
}

/// Reads every prompt folder under `dir` (or `dir` itself when it is one) and imports them, all
/// or nothing.
pub fn import(
    registry: &Registry,
    dir: &Path,
    actor: &Actor,
) -> Result<Vec<ImportOutcome>, RegistryError> {
    actor.require(Role::Admin, "importing a registry export")?;
    let folders = prompt_folders(dir)?;
    let mut bundles = Vec::with_capacity(folders.len());
    for folder in folders {
        bundles.push(read_bundle(&folder)?);
    }
    let outcomes = registry.db().import(
        &bundles,
        &NewAudit {
            at: now_ms(),
            actor: actor.name.clone(),
            action: "import".into(),
            target: String::new(),
            reason: Some(format!("from {}", dir.display())),
            ..NewAudit::default()
        },
    )?;
    Ok(outcomes)
}

fn prompt_folders(dir: &Path) -> Result<Vec<PathBuf>, RegistryError> {
    if dir.join(PROMPT_FILE).is_file() {
        return Ok(vec![dir.to_owned()]);
    }
    let entries = std::fs::read_dir(dir).map_err(|error| RegistryError::NotFound {
        message: format!("cannot read {}: {error}", dir.display()),
        hint: Some("give a folder written by `plumb prompt export`".into()),
    })?;
    let mut folders: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(PROMPT_FILE).is_file())
        .collect();
    folders.sort();
    if folders.is_empty() {
        return Err(RegistryError::Invalid {
            message: format!("{} holds no exported prompts", dir.display()),
            field: None,
            hint: Some(format!(
                "an export has one folder per prompt, each with a {PROMPT_FILE}"
            )),
        });
    }
    Ok(folders)
}

fn read_bundle(folder: &Path) -> Result<PromptBundle, RegistryError> {
    let path = folder.join(PROMPT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|error| {
        RegistryError::Source(SourceError::in_file(&path, format!("cannot read: {error}")))
    })?;
    let yaml: PromptYaml = plumb_prompt::yaml::from_str(&text, &path)?;
    plumb_prompt::check_name(&yaml.name)
        .map_err(|m| SourceError::in_file(&path, format!("name `{}`: {m}", yaml.name)))?;
    let fail = |message: String| RegistryError::Source(SourceError::in_file(&path, message));
    let mut versions = Vec::with_capacity(yaml.versions.len());
    for (index, entry) in yaml.versions.iter().enumerate() {
        if entry.version != index as u64 + 1 {
            return Err(fail(format!(
                "versions[{index}]: expected version {}, found {}",
                index + 1,
                entry.version
            )));
        }
        if entry.file.contains(['/', '\\']) || entry.file.starts_with('.') {
            return Err(fail(format!(
                "versions[{index}].file `{}` must be a file name in this folder",
                entry.file
            )));
        }
        let file_path = folder.join(&entry.file);
        let file = PromptFile::load(&file_path)?;
        if file.name != yaml.name {
            return Err(RegistryError::Source(SourceError::in_file(
                &file_path,
                format!(
                    "name is `{}` but the folder is prompt `{}`",
                    file.name, yaml.name
                ),
            )));
        }
        let hash = file.content_hash();
        if hash != entry.hash {
            return Err(RegistryError::Source(
                SourceError::in_file(
                    &file_path,
                    format!(
                        "content does not match the hash recorded for v{} in {PROMPT_FILE} ({} ≠ {})",
                        entry.version,
                        hash.get(..12).unwrap_or(&hash),
                        entry.hash.get(..12).unwrap_or(&entry.hash)
                    ),
                )
                .with_hint("exported versions are history: push edits as a new version with `plumb prompt push`"),
            ));
        }
        versions.push(VersionRecord {
            name: yaml.name.clone(),
            version: entry.version,
            hash,
            semver: entry.semver.clone(),
            message: entry.message.clone(),
            author: entry.author.clone(),
            created_at: parse_time(&entry.created_at, &path, "created_at")?,
            content: serde_json::to_string(&file.without_metadata())
                .map_err(|e| RegistryError::Internal(e.to_string()))?,
        });
    }
    let latest = versions.len() as u64;
    let mut labels = Vec::with_capacity(yaml.labels.len());
    for (label, entry) in &yaml.labels {
        plumb_prompt::check_label(label).map_err(|m| fail(format!("labels: {m}")))?;
        if entry.version == 0 || entry.version > latest {
            return Err(fail(format!(
                "labels.{label}: version {} does not exist (latest is {latest})",
                entry.version
            )));
        }
        labels.push(LabelRecord {
            label: label.clone(),
            version: entry.version,
            updated_at: parse_time(&entry.updated_at, &path, "updated_at")?,
            updated_by: entry.updated_by.clone(),
        });
    }
    labels.sort_by(|a, b| a.label.cmp(&b.label));
    let mut history = Vec::with_capacity(yaml.history.len());
    for entry in &yaml.history {
        history.push(LabelMove {
            label: entry.label.clone(),
            from: entry.from,
            to: entry.to,
            kind: entry.kind,
            at: parse_time(&entry.at, &path, "history.at")?,
            actor: entry.actor.clone(),
        });
    }
    let deprecation = match &yaml.deprecated {
        Some(d) => Some(Deprecation {
            replacement: d.replacement.clone(),
            reason: d.reason.clone(),
            at: parse_time(&d.at, &path, "deprecated.at")?,
            by: d.by.clone(),
        }),
        None => None,
    };
    if let Some(risk) = &yaml.risk
        && plumb_prompt::Risk::parse(risk).is_none()
    {
        return Err(fail(format!(
            "risk `{risk}` is not one of low, medium, high"
        )));
    }
    Ok(PromptBundle {
        name: yaml.name.clone(),
        created_at: parse_time(&yaml.created_at, &path, "created_at")?,
        meta: PromptMeta {
            description: yaml.description,
            owner: yaml.owner,
            risk: yaml.risk,
            tags: yaml.tags,
        },
        deprecation,
        versions,
        labels,
        history,
    })
}
