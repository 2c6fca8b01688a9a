//! The prompt registry's records: prompts, their immutable versions, movable labels with
//! their history, API keys, and the append-only audit log. Every write that changes what is
//! deployed happens in one transaction together with its audit entry.
//!
//! This module stores prompt content as opaque JSON: it knows nothing of templates, policies
//! or roles; those are `plumb-registry`'s.

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Descriptive metadata of a prompt (not part of any version).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `low`, `medium` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deprecation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    pub reason: String,
    /// Unix milliseconds.
    pub at: i64,
    pub by: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRecord {
    pub label: String,
    pub version: u64,
    pub updated_at: i64,
    pub updated_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRecord {
    pub name: String,
    pub created_at: i64,
    pub meta: PromptMeta,
    pub deprecation: Option<Deprecation>,
    /// 0 when the prompt has no version yet (never: a prompt is created by its first push).
    pub latest_version: u64,
    pub labels: Vec<LabelRecord>,
}

impl PromptRecord {
    /// The version `label` points at.
    pub fn label(&self, label: &str) -> Option<u64> {
        self.labels
            .iter()
            .find(|l| l.label == label)
            .map(|l| l.version)
    }

    /// The labels pointing at `version`.
    pub fn labels_at(&self, version: u64) -> Vec<String> {
        self.labels
            .iter()
            .filter(|l| l.version == version)
            .map(|l| l.label.clone())
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    pub name: String,
    pub version: u64,
    pub hash: String,
    pub semver: Option<String>,
    pub message: String,
    pub author: String,
    pub created_at: i64,
    /// The prompt file as JSON (owned by `plumb-prompt`).
    pub content: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveKind {
    /// A label set to a version (promotion).
    Set,
    /// A label moved back to the version it had before its last move.
    Rollback,
    /// A label removed.
    Remove,
}

impl MoveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveKind::Set => "set",
            MoveKind::Rollback => "rollback",
            MoveKind::Remove => "remove",
        }
    }

    pub fn parse(text: &str) -> MoveKind {
        match text {
            "rollback" => MoveKind::Rollback,
            "remove" => MoveKind::Remove,
            _ => MoveKind::Set,
        }
    }
}

/// One entry of a label's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelMove {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// `None` for a removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    pub kind: MoveKind,
    pub at: i64,
    pub actor: String,
}

/// A version to add. The store numbers it.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub name: String,
    pub hash: String,
    pub semver: Option<String>,
    pub message: String,
    pub author: String,
    pub at: i64,
    pub content: String,
    /// Metadata the pushed file carries; `None` leaves the prompt's metadata as it is.
    pub meta: Option<PromptMeta>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushOutcome {
    pub version: u64,
    /// False when the content equals the latest version's: nothing new was stored.
    pub created: bool,
    pub meta_changed: bool,
}

/// A label move to record, with what the caller saw and why it is allowed.
#[derive(Clone, Debug)]
pub struct NewLabelMove {
    pub name: String,
    pub label: String,
    /// The version the caller saw the label at (`None`: unset). If the label moved since, the
    /// store refuses with `StoreError::Conflict`: no move is silently lost.
    pub expected: Option<u64>,
    /// `None` removes the label.
    pub to: Option<u64>,
    pub kind: MoveKind,
    pub actor: String,
    pub at: i64,
    pub reason: Option<String>,
    /// Evidence or override details, stored in the audit entry (JSON).
    pub details: Option<String>,
    pub forced: bool,
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    /// `push`, `label`, `rollback`, `unlabel`, `deprecate`, `undeprecate`, `meta`, `import`,
    /// `key-create`, `key-revoke`.
    pub action: String,
    /// What was acted on: `triage`, `triage@production`, `key:ab12cd34`.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// A policy was overridden (`--force`).
    pub forced: bool,
    /// JSON: evidence behind a promotion, or what an override skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// An audit entry to append (the store gives it its id).
#[derive(Clone, Debug, Default)]
pub struct NewAudit {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub forced: bool,
    pub details: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Entries whose target is this prompt (`triage`, `triage@…`) or key.
    pub target: Option<String>,
    pub action: Option<String>,
    /// Only entries after this id (for paging and tailing).
    pub after_id: Option<i64>,
    pub limit: usize,
}

/// A prompt with all it holds, as export writes it and import reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptBundle {
    pub name: String,
    pub created_at: i64,
    pub meta: PromptMeta,
    pub deprecation: Option<Deprecation>,
    pub versions: Vec<VersionRecord>,
    pub labels: Vec<LabelRecord>,
    pub history: Vec<LabelMove>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportOutcome {
    pub name: String,
    /// Versions added (those already present with the same hash are skipped).
    pub added: u64,
    pub created: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id, shown in lists and the audit log (`key:ab12cd34`).
    pub id: String,
    pub name: String,
    /// `viewer`, `editor`, `releaser` or `admin`.
    pub role: String,
    /// blake3 of the secret; the secret itself is never stored.
    pub hash: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

pub trait RegistryStore: Send + Sync {
    /// Adds a version unless its hash equals the latest's; creates the prompt on first push.
    fn push_version(&self, version: &NewVersion) -> Result<PushOutcome, StoreError>;
    fn prompts(&self) -> Result<Vec<PromptRecord>, StoreError>;
    fn prompt(&self, name: &str) -> Result<Option<PromptRecord>, StoreError>;
    /// Oldest first.
    fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError>;
    fn version(&self, name: &str, version: u64) -> Result<Option<VersionRecord>, StoreError>;
    fn version_by_semver(
        &self,
        name: &str,
        semver: &str,
    ) -> Result<Option<VersionRecord>, StoreError>;
    /// Every move of every label of the prompt, oldest first.
    fn label_history(&self, name: &str) -> Result<Vec<LabelMove>, StoreError>;
    fn move_label(&self, change: &NewLabelMove) -> Result<(), StoreError>;
    fn set_deprecation(
        &self,
        name: &str,
        deprecation: Option<&Deprecation>,
        audit: &NewAudit,
    ) -> Result<(), StoreError>;
    /// Imports prompts all or nothing.
    fn import(
        &self,
        bundles: &[PromptBundle],
        audit: &NewAudit,
    ) -> Result<Vec<ImportOutcome>, StoreError>;
    fn append_audit(&self, entry: &NewAudit) -> Result<i64, StoreError>;
    /// Oldest first, at most `filter.limit` (the newest ones when limited).
    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;
    fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    fn revoke_key(&self, id: &str, audit: &NewAudit) -> Result<(), StoreError>;
    fn touch_key(&self, id: &str, at: i64) -> Result<(), StoreError>;
}
