//! The prompt registry: the deployed history of the project's prompt files.
//!
//! Versions are immutable and numbered per prompt; labels (`production`, `staging`, any other)
//! point at versions and move under the project's promotion policy, which asks for recorded
//! eval runs that pass and do not regress; every change lands in the audit log in the same
//! transaction. The CLI and the HTTP API call the same functions here, so both enforce the same
//! rules.
//!
//! Knows nothing of HTTP or terminals; reads eval runs through `plumb-eval`'s summaries.

pub mod auth;
pub mod bundle;
pub mod config;
mod error;
pub mod policy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plumb_eval::{PromptSource, ResolvedPrompt};
use plumb_prompt::{PromptFile, PromptRef, Risk, Selector};
use plumb_store::{
    AuditEntry, AuditFilter, Deprecation, LabelMove, MoveKind, NewAudit, NewLabelMove, NewVersion,
    PromptMeta, PromptRecord, RegistryStore, Store, VersionRecord,
};
use serde::Serialize;

pub use auth::{Actor, Role};
pub use config::{LabelPolicy, ProjectConfig};
pub use error::RegistryError;
pub use plumb_core::now_ms;
pub use policy::Evidence;

/// Both halves of the database: runs (for evidence) and the registry.
pub trait Db: Store + RegistryStore {}
impl<T: Store + RegistryStore> Db for T {}

#[derive(Clone)]
pub struct Registry {
    db: Arc<dyn Db>,
    config: ProjectConfig,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A resolved reference: the prompt, the version, and its file (content plus the prompt's
/// current descriptive metadata).
#[derive(Clone, Debug)]
pub struct Resolved {
    pub prompt: PromptRecord,
    pub version: VersionRecord,
    pub file: PromptFile,
}

#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    pub message: String,
    pub semver: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    pub name: String,
    pub version: u64,
    pub hash: String,
    /// False when the content equals the latest version: nothing new was stored.
    pub created: bool,
    pub meta_changed: bool,
    pub source: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LabelOutcome {
    pub name: String,
    pub label: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// False when the label already pointed there.
    pub moved: bool,
    pub forced: bool,
    pub evidence: Option<Evidence>,
    /// Evidence the policy asked for and did not get (only with `force`).
    pub overridden: Vec<String>,
}

/// How a label move asks to be allowed.
#[derive(Clone, Debug, Default)]
pub struct MoveOptions {
    /// Override the promotion policy; needs `reason` and the admin role.
    pub force: bool,
    pub reason: Option<String>,
}

impl Registry {
    pub fn new(db: Arc<dyn Db>, config: ProjectConfig) -> Registry {
        Registry { db, config }
    }

    pub fn db(&self) -> &dyn Db {
        self.db.as_ref()
    }

    pub fn config(&self) -> &ProjectConfig {
        &self.config
    }

    fn prompt_record(&self, name: &str) -> Result<PromptRecord, RegistryError> {
        self.db.prompt(name)?.ok_or_else(|| {
            let names: Vec<String> = self
                .db
                .prompts()
                .map(|all| all.into_iter().map(|p| p.name).collect())
                .unwrap_or_default();
            let hint = match plumb_core::did_you_mean(name, names.iter().map(String::as_str)) {
                Some(best) => format!("did you mean `{best}`?"),
                None if names.is_empty() => {
                    "the registry is empty: push prompt files with `plumb prompt push`".to_owned()
                }
                None => format!("prompts: {}", names.join(", ")),
            };
            RegistryError::not_found(format!("prompt `{name}` not found"), Some(hint))
        })
    }

    pub fn prompt(&self, name: &str) -> Result<PromptRecord, RegistryError> {
        self.prompt_record(name)
    }

    pub fn list(&self) -> Result<Vec<PromptRecord>, RegistryError> {
        Ok(self.db.prompts()?)
    }

    pub fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, RegistryError> {
        self.prompt_record(name)?;
        Ok(self.db.versions(name)?)
    }

    /// The version number `selector` means for `prompt`.
    fn version_number(
        &self,
        prompt: &PromptRecord,
        selector: &Selector,
    ) -> Result<u64, RegistryError> {
        match selector {
            Selector::Latest => Ok(prompt.latest_version),
            Selector::Version(version) if *version <= prompt.latest_version => Ok(*version),
            Selector::Version(version) => Err(RegistryError::not_found(
                format!("{} has no version {version}", prompt.name),
                Some(format!(
                    "versions run from 1 to {}; `plumb prompt history {}` lists them",
                    prompt.latest_version, prompt.name
                )),
            )),
            Selector::Label(label) => prompt.label(label).ok_or_else(|| {
                let labels: Vec<&str> = prompt.labels.iter().map(|l| l.label.as_str()).collect();
                let hint = match plumb_core::did_you_mean(label, labels.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None if labels.is_empty() => format!(
                        "{} has no labels yet: `plumb prompt label {} VERSION {label}` sets one",
                        prompt.name, prompt.name
                    ),
                    None => format!("labels: {}", labels.join(", ")),
                };
                RegistryError::not_found(
                    format!("{} has no label `{label}`", prompt.name),
                    Some(hint),
                )
            }),
        }
    }

    pub fn resolve(&self, reference: &PromptRef) -> Result<Resolved, RegistryError> {
        let prompt = self.prompt_record(&reference.name)?;
        let number = self.version_number(&prompt, &reference.selector)?;
        let version = self.db.version(&prompt.name, number)?.ok_or_else(|| {
            RegistryError::Internal(format!("{} v{number} is missing", prompt.name))
        })?;
        let file = version_file(&version, &prompt.meta)?;
        Ok(Resolved {
            prompt,
            version,
            file,
        })
    }

    pub fn resolve_str(&self, text: &str) -> Result<Resolved, RegistryError> {
        let reference =
            PromptRef::parse(text).map_err(|message| RegistryError::invalid(message, None))?;
        self.resolve(&reference)
    }

    /// Stores `file` as the prompt's next version, unless its content equals the latest one.
    pub fn push(
        &self,
        file: &PromptFile,
        options: &PushOptions,
        actor: &Actor,
        source: Option<&Path>,
    ) -> Result<PushReport, RegistryError> {
        actor.require(Role::Editor, "pushing a prompt version")?;
        if let Some(semver) = &options.semver {
            check_semver(semver)?;
        }
        let hash = file.content_hash();
        let content = content_json(file)?;
        let meta = meta_of(file);
        let outcome = self.db.push_version(&NewVersion {
            name: file.name.clone(),
            hash: hash.clone(),
            semver: options.semver.clone(),
            message: options.message.clone(),
            author: actor.name.clone(),
            at: now_ms(),
            content,
            // A file that says nothing about metadata leaves the registry's as it is.
            meta: (meta != PromptMeta::default()).then_some(meta),
        })?;
        Ok(PushReport {
            name: file.name.clone(),
            version: outcome.version,
            hash,
            created: outcome.created,
            meta_changed: outcome.meta_changed,
            source: source.map(Path::to_owned),
        })
    }

    /// Pushes prompt files (directories are searched for `.yaml`/`.yml`). Every file is parsed
    /// before anything is written, so one bad file stores nothing.
    pub fn push_paths(
        &self,
        paths: &[PathBuf],
        options: &PushOptions,
        actor: &Actor,
    ) -> Result<Vec<PushReport>, RegistryError> {
        let files = collect_prompt_files(paths)?;
        if files.is_empty() {
            return Err(RegistryError::Invalid {
                message: "no prompt files found".into(),
                field: None,
                hint: Some("give prompt files (.yaml) or a directory that holds them".into()),
            });
        }
        let mut parsed: Vec<(PathBuf, PromptFile)> = Vec::with_capacity(files.len());
        for path in files {
            let file = PromptFile::load(&path)?;
            if let Some((other, _)) = parsed.iter().find(|(_, f)| f.name == file.name) {
                return Err(RegistryError::Invalid {
                    message: format!(
                        "{} and {} both define prompt `{}`",
                        other.display(),
                        path.display(),
                        file.name
                    ),
                    field: Some("name".into()),
                    hint: Some("push them one at a time, or give them different names".into()),
                });
            }
            parsed.push((path, file));
        }
        if options.semver.is_some() && parsed.len() > 1 {
            return Err(RegistryError::invalid(
                "--semver applies to one prompt; this push has several",
                Some("semver"),
            ));
        }
        parsed
            .iter()
            .map(|(path, file)| self.push(file, options, actor, Some(path)))
            .collect()
    }

    /// Points `label` at `version` of prompt `name`, if the policy and the actor's role allow.
    pub fn set_label(
        &self,
        name: &str,
        label: &str,
        selector: &Selector,
        actor: &Actor,
        options: &MoveOptions,
    ) -> Result<LabelOutcome, RegistryError> {
        plumb_prompt::check_label(label).map_err(|m| RegistryError::invalid(m, Some("label")))?;
        let prompt = self.prompt_record(name)?;
        let target = self.version_number(&prompt, selector)?;
        let required = self.config.role_for(label);
        actor.require(required, &format!("moving `{label}`"))?;
        let current = prompt.label(label);
        let unmoved = LabelOutcome {
            name: name.to_owned(),
            label: label.to_owned(),
            from: current,
            to: Some(target),
            moved: false,
            forced: false,
            evidence: None,
            overridden: Vec::new(),
        };
        if current == Some(target) {
            return Ok(unmoved);
        }
        let (evidence, missing) = self.policy_check(&prompt, label, target)?;
        let forced = !missing.is_empty();
        if forced {
            if !options.force {
                return Err(refusal(name, label, target, missing));
            }
            actor.require(Role::Admin, "overriding the promotion policy")?;
        }
        if options.force
            && options
                .reason
                .as_deref()
                .is_none_or(|r| r.trim().is_empty())
        {
            return Err(RegistryError::invalid(
                "--force needs --reason: the override is recorded with it",
                Some("reason"),
            ));
        }
        let details = serde_json::json!({
            "evidence": evidence,
            "overridden": missing,
        });
        self.db.move_label(&NewLabelMove {
            name: name.to_owned(),
            label: label.to_owned(),
            expected: current,
            to: Some(target),
            kind: MoveKind::Set,
            actor: actor.name.clone(),
            at: now_ms(),
            reason: options.reason.clone(),
            details: Some(details.to_string()),
            forced,
        })?;
        Ok(LabelOutcome {
            moved: true,
            forced,
            evidence,
            overridden: missing,
            ..unmoved
        })
    }

    /// What the policy says about moving `label` of `name` to `version`: the evidence found and
    /// what is missing (empty when the move is allowed).
    pub fn check_promotion(
        &self,
        name: &str,
        label: &str,
        version: u64,
    ) -> Result<(Option<Evidence>, Vec<String>), RegistryError> {
        let prompt = self.prompt_record(name)?;
        self.policy_check(&prompt, label, version)
    }

    fn policy_check(
        &self,
        prompt: &PromptRecord,
        label: &str,
        version: u64,
    ) -> Result<(Option<Evidence>, Vec<String>), RegistryError> {
        let name = prompt.name.as_str();
        let Some(policy) = self.config.promotion.get(label) else {
            if config::PROTECTED.contains(&label) {
                let place = match &self.config.path {
                    Some(path) => path.display().to_string(),
                    None => format!("{} (none found)", config::CONFIG_FILE),
                };
                return Ok((
                    None,
                    vec![format!(
                        "`{label}` is protected and {place} sets no promotion policy for it: there is no eval evidence to require"
                    )],
                ));
            }
            return Ok((None, Vec::new()));
        };
        let target = self.db.version(name, version)?.ok_or_else(|| {
            RegistryError::not_found(format!("{name} has no version {version}"), None)
        })?;
        let current = match prompt.label(label) {
            Some(current) => self.db.version(name, current)?,
            None => None,
        };
        let (evidence, missing) = policy::evaluate(self, policy, label, &target, current.as_ref())?;
        Ok((Some(evidence), missing))
    }

    /// Moves `label` back to the version it pointed at before its last move.
    pub fn rollback(
        &self,
        name: &str,
        label: &str,
        actor: &Actor,
        reason: Option<String>,
    ) -> Result<LabelOutcome, RegistryError> {
        let prompt = self.prompt_record(name)?;
        actor.require(
            self.config.role_for(label),
            &format!("rolling back `{label}`"),
        )?;
        let current = self.version_number(&prompt, &Selector::Label(label.to_owned()))?;
        let history = self.db.label_history(name)?;
        let stack = deployment_stack(&history, label);
        let Some(previous) = stack
            .len()
            .checked_sub(2)
            .and_then(|i| stack.get(i))
            .copied()
        else {
            return Err(RegistryError::Invalid {
                message: format!(
                    "{name}@{label} has no earlier version to roll back to (it has only ever been v{current})"
                ),
                field: Some("label".into()),
                hint: Some(format!(
                    "move it explicitly: `plumb prompt label {name} VERSION {label}`"
                )),
            });
        };
        self.plain_move(&prompt, label, current, Some(previous), actor, reason)
    }

    /// A rollback or removal: no policy, recorded like every move.
    fn plain_move(
        &self,
        prompt: &PromptRecord,
        label: &str,
        current: u64,
        to: Option<u64>,
        actor: &Actor,
        reason: Option<String>,
    ) -> Result<LabelOutcome, RegistryError> {
        self.db.move_label(&NewLabelMove {
            name: prompt.name.clone(),
            label: label.to_owned(),
            expected: Some(current),
            to,
            kind: if to.is_some() {
                MoveKind::Rollback
            } else {
                MoveKind::Remove
            },
            actor: actor.name.clone(),
            at: now_ms(),
            reason,
            details: None,
            forced: false,
        })?;
        Ok(LabelOutcome {
            name: prompt.name.clone(),
            label: label.to_owned(),
            from: Some(current),
            to,
            moved: true,
            forced: false,
            evidence: None,
            overridden: Vec::new(),
        })
    }

    /// Removes `label` from prompt `name` (the version stays; `name@label` stops resolving).
    pub fn remove_label(
        &self,
        name: &str,
        label: &str,
        actor: &Actor,
        reason: Option<String>,
    ) -> Result<LabelOutcome, RegistryError> {
        let prompt = self.prompt_record(name)?;
        actor.require(self.config.role_for(label), &format!("removing `{label}`"))?;
        let current = self.version_number(&prompt, &Selector::Label(label.to_owned()))?;
        self.plain_move(&prompt, label, current, None, actor, reason)
    }

    pub fn deprecate(
        &self,
        name: &str,
        replacement: Option<&str>,
        reason: &str,
        actor: &Actor,
    ) -> Result<(), RegistryError> {
        actor.require(Role::Editor, "deprecating a prompt")?;
        let prompt = self.prompt_record(name)?;
        if let Some(replacement) = replacement {
            let reference = PromptRef::parse(replacement)
                .map_err(|m| RegistryError::invalid(m, Some("replacement")))?;
            if reference.name == name {
                return Err(RegistryError::invalid(
                    "a prompt cannot replace itself",
                    Some("replacement"),
                ));
            }
            self.resolve(&reference)?;
        }
        let deprecation = Deprecation {
            replacement: replacement.map(str::to_owned),
            reason: reason.to_owned(),
            at: now_ms(),
            by: actor.name.clone(),
        };
        self.db.set_deprecation(
            name,
            Some(&deprecation),
            &NewAudit {
                at: deprecation.at,
                actor: actor.name.clone(),
                action: "deprecate".into(),
                target: name.to_owned(),
                reason: (!reason.is_empty()).then(|| reason.to_owned()),
                before: prompt.deprecation.as_ref().map(|_| "deprecated".to_owned()),
                after: Some(match replacement {
                    Some(r) => format!("deprecated, use {r}"),
                    None => "deprecated".to_owned(),
                }),
                ..NewAudit::default()
            },
        )?;
        Ok(())
    }

    pub fn undeprecate(&self, name: &str, actor: &Actor) -> Result<(), RegistryError> {
        actor.require(Role::Editor, "un-deprecating a prompt")?;
        let prompt = self.prompt_record(name)?;
        if prompt.deprecation.is_none() {
            return Err(RegistryError::invalid(
                format!("{name} is not deprecated"),
                None,
            ));
        }
        self.db.set_deprecation(
            name,
            None,
            &NewAudit {
                at: now_ms(),
                actor: actor.name.clone(),
                action: "undeprecate".into(),
                target: name.to_owned(),
                before: Some("deprecated".into()),
                after: Some("active".into()),
                ..NewAudit::default()
            },
        )?;
        Ok(())
    }

    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, RegistryError> {
        Ok(self.db.audit(filter)?)
    }
}

impl PromptSource for Registry {
    fn resolve(&self, reference: &PromptRef) -> Result<ResolvedPrompt, String> {
        let resolved = Registry::resolve(self, reference).map_err(|error| match error.hint() {
            Some(hint) => format!("{error} ({hint})"),
            None => error.to_string(),
        })?;
        Ok(ResolvedPrompt {
            warning: deprecation_notice(&resolved.prompt),
            file: resolved.file,
            version: resolved.version.version,
        })
    }
}

/// A prompt as JSON (the API's `GET /prompts` item and `plumb prompt list --json`).
pub fn prompt_json(prompt: &PromptRecord) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> = prompt
        .labels
        .iter()
        .map(|l| (l.label.clone(), serde_json::json!(l.version)))
        .collect();
    serde_json::json!({
        "name": prompt.name,
        "latest_version": prompt.latest_version,
        "created_at": prompt.created_at,
        "description": prompt.meta.description,
        "owner": prompt.meta.owner,
        "risk": prompt.meta.risk,
        "tags": prompt.meta.tags,
        "labels": labels,
        "deprecated": prompt.deprecation,
    })
}

/// `triage is deprecated; use triage-v2 (reason)`, for a deprecated prompt.
pub fn deprecation_notice(prompt: &PromptRecord) -> Option<String> {
    let deprecation = prompt.deprecation.as_ref()?;
    let mut text = format!("{} is deprecated", prompt.name);
    if let Some(replacement) = &deprecation.replacement {
        text.push_str(&format!("; use {replacement}"));
    }
    if !deprecation.reason.is_empty() {
        text.push_str(&format!(" ({})", deprecation.reason));
    }
    Some(text)
}

fn refusal(name: &str, label: &str, target: u64, missing: Vec<String>) -> RegistryError {
    let mut message = format!(
        "the promotion policy does not allow moving {name}@{label} to v{target}; missing evidence:"
    );
    for item in &missing {
        message.push_str("\n  - ");
        message.push_str(item);
    }
    RegistryError::Policy {
        message,
        missing,
        hint: Some(
            "run the suites with this version, or override with `--force --reason \"…\"` (recorded in the audit log)".into(),
        ),
    }
}

/// The versions a label has been deployed at, oldest first, as rollbacks see them: a move
/// pushes, a rollback pops, a removal clears.
pub fn deployment_stack(history: &[LabelMove], label: &str) -> Vec<u64> {
    let mut stack: Vec<u64> = Vec::new();
    for entry in history.iter().filter(|m| m.label == label) {
        match (entry.kind, entry.to) {
            (MoveKind::Rollback, Some(to)) => {
                stack.pop();
                if stack.last() != Some(&to) {
                    stack.push(to);
                }
            }
            (MoveKind::Set, Some(to)) => stack.push(to),
            _ => stack.clear(),
        }
    }
    stack
}

fn check_semver(text: &str) -> Result<(), RegistryError> {
    let core = text.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() == 3 && parts.iter().all(numeric) {
        Ok(())
    } else {
        Err(RegistryError::Invalid {
            message: format!("`{text}` is not a semantic version"),
            field: Some("semver".into()),
            hint: Some("write MAJOR.MINOR.PATCH, e.g. `1.4.0` or `2.0.0-rc.1`".into()),
        })
    }
}

fn meta_of(file: &PromptFile) -> PromptMeta {
    PromptMeta {
        description: file.description.clone(),
        owner: file.owner.clone(),
        risk: file.risk.map(|r| r.as_str().to_owned()),
        tags: file.tags.clone(),
    }
}

fn content_json(file: &PromptFile) -> Result<String, RegistryError> {
    serde_json::to_string(&file.without_metadata())
        .map_err(|e| RegistryError::Internal(e.to_string()))
}

/// A version's file with the prompt's descriptive metadata put back.
pub fn version_file(
    version: &VersionRecord,
    meta: &PromptMeta,
) -> Result<PromptFile, RegistryError> {
    let mut file: PromptFile = serde_json::from_str(&version.content).map_err(|error| {
        RegistryError::Internal(format!(
            "{} v{} has unreadable content: {error}",
            version.name, version.version
        ))
    })?;
    file.description = meta.description.clone();
    file.owner = meta.owner.clone();
    file.risk = meta.risk.as_deref().and_then(Risk::parse);
    file.tags = meta.tags.clone();
    Ok(file)
}

/// Prompt files under `paths`, sorted; directories are walked (hidden entries skipped).
pub fn collect_prompt_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RegistryError> {
    fn walk(dir: &Path, into: &mut Vec<PathBuf>) -> Result<(), RegistryError> {
        let entries = std::fs::read_dir(dir).map_err(|error| {
            RegistryError::invalid(format!("cannot read {}: {error}", dir.display()), None)
        })?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                walk(&path, into)?;
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                into.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files)?;
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(RegistryError::not_found(
                format!("{} does not exist", path.display()),
                None,
            ));
        }
    }
    Ok(files)
}
