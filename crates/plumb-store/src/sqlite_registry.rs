//! `RegistryStore` on SQLite. Writes run in `BEGIN IMMEDIATE` transactions, so two processes
//! pushing to one prompt are serialized by SQLite's write lock (each waits up to the busy
//! timeout) and get consecutive version numbers.

use plumb_core::short_hash;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use crate::StoreError;
use crate::registry::{
    ApiKeyRecord, AuditEntry, AuditFilter, Deprecation, ImportOutcome, LabelMove, LabelRecord,
    MoveKind, NewAudit, NewLabelMove, NewVersion, PromptBundle, PromptRecord, PushOutcome,
    RegistryStore, VersionRecord,
};
use crate::sqlite::SqliteStore;

const VERSION_COLUMNS: &str = "name, version, hash, semver, message, author, created_at, content";
const KEY_COLUMNS: &str = "id, name, role, hash, created_at, created_by, revoked_at, last_used_at";

impl SqliteStore {
    /// Runs `work` in one write transaction: all of it lands, or none.
    pub(crate) fn write<T>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_connection(|connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&transaction)?;
            transaction.commit()?;
            Ok(value)
        })
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn insert_audit(transaction: &Transaction<'_>, entry: &NewAudit) -> Result<i64, StoreError> {
    transaction.execute(
        "INSERT INTO audit (at, actor, action, target, reason, before, after, forced, details) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            entry.at,
            entry.actor,
            entry.action,
            entry.target,
            entry.reason,
            entry.before,
            entry.after,
            entry.forced,
            entry.details
        ],
    )?;
    Ok(transaction.last_insert_rowid())
}

/// Versions are numbered by the caller (push: latest + 1; import: as exported). The version's
/// `name` is the prompt it belongs to.
fn insert_version(
    transaction: &Transaction<'_>,
    version: &VersionRecord,
) -> Result<(), StoreError> {
    transaction.execute(
        &format!(
            "INSERT INTO prompt_versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            version.name,
            version.version as i64,
            version.hash,
            version.semver,
            version.message,
            version.author,
            version.created_at,
            version.content
        ],
    )?;
    Ok(())
}

fn insert_move(
    transaction: &Transaction<'_>,
    name: &str,
    entry: &LabelMove,
) -> Result<(), StoreError> {
    transaction.execute(
        "INSERT INTO label_moves (name, label, from_version, to_version, kind, at, actor) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            name,
            entry.label,
            entry.from.map(|v| v as i64),
            entry.to.map(|v| v as i64),
            entry.kind.as_str(),
            entry.at,
            entry.actor
        ],
    )?;
    Ok(())
}

fn version_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        name: row.get(0)?,
        version: row.get::<_, i64>(1)? as u64,
        hash: row.get(2)?,
        semver: row.get(3)?,
        message: row.get(4)?,
        author: row.get(5)?,
        created_at: row.get(6)?,
        content: row.get(7)?,
    })
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        hash: row.get(3)?,
        created_at: row.get(4)?,
        created_by: row.get(5)?,
        revoked_at: row.get(6)?,
        last_used_at: row.get(7)?,
    })
}

fn latest(transaction: &Transaction<'_>, name: &str) -> Result<Option<(u64, String)>, StoreError> {
    Ok(transaction
        .query_row(
            "SELECT version, hash FROM prompt_versions WHERE name = ?1 ORDER BY version DESC LIMIT 1",
            params![name],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?)),
        )
        .optional()?)
}

fn current_label(
    transaction: &Transaction<'_>,
    name: &str,
    label: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(transaction
        .query_row(
            "SELECT version FROM labels WHERE name = ?1 AND label = ?2",
            params![name, label],
            |row| row.get::<_, i64>(0),
        )
        .optional()?
        .map(|v| v as u64))
}

fn load_prompt(
    connection: &rusqlite::Connection,
    name: &str,
) -> rusqlite::Result<Option<PromptRecord>> {
    let Some((created_at, meta, deprecation)) = connection
        .query_row(
            "SELECT created_at, meta, deprecation FROM prompts WHERE name = ?1",
            params![name],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let latest_version: i64 = connection.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM prompt_versions WHERE name = ?1",
        params![name],
        |row| row.get(0),
    )?;
    let mut statement = connection.prepare_cached(
        "SELECT label, version, updated_at, updated_by FROM labels WHERE name = ?1 ORDER BY label",
    )?;
    let labels = statement
        .query_map(params![name], |row| {
            Ok(LabelRecord {
                label: row.get(0)?,
                version: row.get::<_, i64>(1)? as u64,
                updated_at: row.get(2)?,
                updated_by: row.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(PromptRecord {
        name: name.to_owned(),
        created_at,
        meta: from_json(&meta)?,
        deprecation: deprecation.as_deref().map(from_json).transpose()?,
        latest_version: latest_version as u64,
        labels,
    }))
}

impl RegistryStore for SqliteStore {
    fn push_version(&self, version: &NewVersion) -> Result<PushOutcome, StoreError> {
        self.write(|transaction| {
            let existing: Option<String> = transaction
                .query_row(
                    "SELECT meta FROM prompts WHERE name = ?1",
                    params![version.name],
                    |row| row.get(0),
                )
                .optional()?;
            let mut meta_changed = false;
            match (&existing, &version.meta) {
                (None, meta) => {
                    let meta = meta.clone().unwrap_or_default();
                    transaction.execute(
                        "INSERT INTO prompts (name, created_at, meta) VALUES (?1, ?2, ?3)",
                        params![version.name, version.at, to_json(&meta)?],
                    )?;
                }
                (Some(old), Some(new)) => {
                    let new_json = to_json(new)?;
                    if *old != new_json {
                        transaction.execute(
                            "UPDATE prompts SET meta = ?2 WHERE name = ?1",
                            params![version.name, new_json],
                        )?;
                        insert_audit(
                            transaction,
                            &NewAudit {
                                at: version.at,
                                actor: version.author.clone(),
                                action: "meta".into(),
                                target: version.name.clone(),
                                before: Some(old.clone()),
                                after: Some(new_json),
                                ..NewAudit::default()
                            },
                        )?;
                        meta_changed = true;
                    }
                }
                (Some(_), None) => {}
            }
            let latest = latest(transaction, &version.name)?;
            if let Some((number, hash)) = &latest
                && *hash == version.hash
            {
                return Ok(PushOutcome {
                    version: *number,
                    created: false,
                    meta_changed,
                });
            }
            if let Some(semver) = &version.semver {
                let taken: Option<i64> = transaction
                    .query_row(
                        "SELECT version FROM prompt_versions WHERE name = ?1 AND semver = ?2",
                        params![version.name, semver],
                        |row| row.get(0),
                    )
                    .optional()?;
                if let Some(taken) = taken {
                    return Err(StoreError::Conflict(format!(
                        "{}: semver `{semver}` is already version {taken}",
                        version.name
                    )));
                }
            }
            let number = latest.as_ref().map(|(n, _)| *n).unwrap_or(0) + 1;
            insert_version(
                transaction,
                &VersionRecord {
                    name: version.name.clone(),
                    version: number,
                    hash: version.hash.clone(),
                    semver: version.semver.clone(),
                    message: version.message.clone(),
                    author: version.author.clone(),
                    created_at: version.at,
                    content: version.content.clone(),
                },
            )?;
            insert_audit(
                transaction,
                &NewAudit {
                    at: version.at,
                    actor: version.author.clone(),
                    action: "push".into(),
                    target: version.name.clone(),
                    reason: (!version.message.is_empty()).then(|| version.message.clone()),
                    before: latest.map(|(n, h)| format!("v{n} {}", short_hash(&h))),
                    after: Some(format!("v{number} {}", short_hash(&version.hash))),
                    ..NewAudit::default()
                },
            )?;
            Ok(PushOutcome {
                version: number,
                created: true,
                meta_changed,
            })
        })
    }

    fn prompts(&self) -> Result<Vec<PromptRecord>, StoreError> {
        self.with_connection(|connection| {
            let names: Vec<String> = connection
                .prepare("SELECT name FROM prompts ORDER BY name")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut prompts = Vec::with_capacity(names.len());
            for name in names {
                if let Some(prompt) = load_prompt(connection, &name)? {
                    prompts.push(prompt);
                }
            }
            Ok(prompts)
        })
    }

    fn prompt(&self, name: &str) -> Result<Option<PromptRecord>, StoreError> {
        self.with_connection(|connection| Ok(load_prompt(connection, name)?))
    }

    fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        self.with_connection(|connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM prompt_versions WHERE name = ?1 ORDER BY version"
            ))?;
            Ok(statement
                .query_map(params![name], version_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn version(&self, name: &str, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.with_connection(|connection| {
            Ok(connection
                .query_row(
                    &format!(
                        "SELECT {VERSION_COLUMNS} FROM prompt_versions WHERE name = ?1 AND version = ?2"
                    ),
                    params![name, version as i64],
                    version_from_row,
                )
                .optional()?)
        })
    }

    fn version_by_semver(
        &self,
        name: &str,
        semver: &str,
    ) -> Result<Option<VersionRecord>, StoreError> {
        self.with_connection(|connection| {
            Ok(connection
                .query_row(
                    &format!(
                        "SELECT {VERSION_COLUMNS} FROM prompt_versions WHERE name = ?1 AND semver = ?2"
                    ),
                    params![name, semver],
                    version_from_row,
                )
                .optional()?)
        })
    }

    fn label_history(&self, name: &str) -> Result<Vec<LabelMove>, StoreError> {
        self.with_connection(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT label, from_version, to_version, kind, at, actor FROM label_moves \
                 WHERE name = ?1 ORDER BY id",
            )?;
            Ok(statement
                .query_map(params![name], |row| {
                    Ok(LabelMove {
                        label: row.get(0)?,
                        from: row.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                        to: row.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                        kind: MoveKind::parse(&row.get::<_, String>(3)?),
                        at: row.get(4)?,
                        actor: row.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn move_label(&self, change: &NewLabelMove) -> Result<(), StoreError> {
        self.write(|transaction| {
            let current = current_label(transaction, &change.name, &change.label)?;
            if current != change.expected {
                let describe = |v: Option<u64>| match v {
                    Some(v) => format!("version {v}"),
                    None => "unset".to_owned(),
                };
                return Err(StoreError::Conflict(format!(
                    "{}@{} changed while this move was being checked: it is now {} (expected {})",
                    change.name,
                    change.label,
                    describe(current),
                    describe(change.expected)
                )));
            }
            match change.to {
                Some(to) => {
                    let exists: Option<i64> = transaction
                        .query_row(
                            "SELECT version FROM prompt_versions WHERE name = ?1 AND version = ?2",
                            params![change.name, to as i64],
                            |row| row.get(0),
                        )
                        .optional()?;
                    if exists.is_none() {
                        return Err(StoreError::NotFound(format!(
                            "{} has no version {to}",
                            change.name
                        )));
                    }
                    transaction.execute(
                        "INSERT INTO labels (name, label, version, updated_at, updated_by) \
                         VALUES (?1, ?2, ?3, ?4, ?5) \
                         ON CONFLICT (name, label) DO UPDATE SET version = excluded.version, \
                         updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                        params![
                            change.name,
                            change.label,
                            to as i64,
                            change.at,
                            change.actor
                        ],
                    )?;
                }
                None => {
                    transaction.execute(
                        "DELETE FROM labels WHERE name = ?1 AND label = ?2",
                        params![change.name, change.label],
                    )?;
                }
            }
            insert_move(
                transaction,
                &change.name,
                &LabelMove {
                    label: change.label.clone(),
                    from: current,
                    to: change.to,
                    kind: change.kind,
                    at: change.at,
                    actor: change.actor.clone(),
                },
            )?;
            let action = match (change.kind, change.to) {
                (MoveKind::Rollback, _) => "rollback",
                (_, None) => "unlabel",
                _ => "label",
            };
            insert_audit(
                transaction,
                &NewAudit {
                    at: change.at,
                    actor: change.actor.clone(),
                    action: action.into(),
                    target: format!("{}@{}", change.name, change.label),
                    reason: change.reason.clone(),
                    before: current.map(|v| format!("v{v}")),
                    after: change.to.map(|v| format!("v{v}")),
                    forced: change.forced,
                    details: change.details.clone(),
                },
            )?;
            Ok(())
        })
    }

    fn set_deprecation(
        &self,
        name: &str,
        deprecation: Option<&Deprecation>,
        audit: &NewAudit,
    ) -> Result<(), StoreError> {
        self.write(|transaction| {
            let json = deprecation.map(to_json).transpose()?;
            let updated = transaction.execute(
                "UPDATE prompts SET deprecation = ?2 WHERE name = ?1",
                params![name, json],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound(format!("prompt `{name}` not found")));
            }
            insert_audit(transaction, audit)?;
            Ok(())
        })
    }

    fn import(
        &self,
        bundles: &[PromptBundle],
        audit: &NewAudit,
    ) -> Result<Vec<ImportOutcome>, StoreError> {
        self.write(|transaction| {
            let mut outcomes = Vec::with_capacity(bundles.len());
            for bundle in bundles {
                outcomes.push(import_one(transaction, bundle, audit)?);
            }
            Ok(outcomes)
        })
    }

    fn append_audit(&self, entry: &NewAudit) -> Result<i64, StoreError> {
        self.write(|transaction| insert_audit(transaction, entry))
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_connection(|connection| {
            let limit = if filter.limit == 0 {
                i64::MAX
            } else {
                filter.limit as i64
            };
            let prefix = filter.target.as_ref().map(|t| format!("{t}@%"));
            let mut statement = connection.prepare_cached(
                "SELECT id, at, actor, action, target, reason, before, after, forced, details \
                 FROM audit WHERE (?1 IS NULL OR target = ?1 OR target LIKE ?2) \
                 AND (?3 IS NULL OR action = ?3) AND id > ?4 ORDER BY id DESC LIMIT ?5",
            )?;
            let mut entries = statement
                .query_map(
                    params![
                        filter.target,
                        prefix,
                        filter.action,
                        filter.after_id.unwrap_or(0),
                        limit
                    ],
                    |row| {
                        Ok(AuditEntry {
                            id: row.get(0)?,
                            at: row.get(1)?,
                            actor: row.get(2)?,
                            action: row.get(3)?,
                            target: row.get(4)?,
                            reason: row.get(5)?,
                            before: row.get(6)?,
                            after: row.get(7)?,
                            forced: row.get(8)?,
                            details: row.get(9)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            entries.reverse();
            Ok(entries)
        })
    }

    fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.write(|transaction| {
            transaction.execute(
                &format!(
                    "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    key.id,
                    key.name,
                    key.role,
                    key.hash,
                    key.created_at,
                    key.created_by,
                    key.revoked_at,
                    key.last_used_at
                ],
            )?;
            insert_audit(
                transaction,
                &NewAudit {
                    at: key.created_at,
                    actor: key.created_by.clone(),
                    action: "key-create".into(),
                    target: format!("key:{}", key.id),
                    after: Some(format!("{} ({})", key.name, key.role)),
                    ..NewAudit::default()
                },
            )?;
            Ok(())
        })
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.with_connection(|connection| {
            Ok(connection
                .query_row(
                    &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"),
                    params![hash],
                    key_from_row,
                )
                .optional()?)
        })
    }

    fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.with_connection(|connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at"
            ))?;
            Ok(statement
                .query_map([], key_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn revoke_key(&self, id: &str, audit: &NewAudit) -> Result<(), StoreError> {
        self.write(|transaction| {
            let updated = transaction.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, audit.at],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound(format!(
                    "no active key with id `{id}`"
                )));
            }
            insert_audit(transaction, audit)?;
            Ok(())
        })
    }

    fn touch_key(&self, id: &str, at: i64) -> Result<(), StoreError> {
        self.with_connection(|connection| {
            connection.execute(
                "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
                params![id, at],
            )?;
            Ok(())
        })
    }
}

fn import_one(
    transaction: &Transaction<'_>,
    bundle: &PromptBundle,
    audit: &NewAudit,
) -> Result<ImportOutcome, StoreError> {
    let existing: Vec<(u64, String)> = transaction
        .prepare_cached(
            "SELECT version, hash FROM prompt_versions WHERE name = ?1 ORDER BY version",
        )?
        .query_map(params![bundle.name], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let created = existing.is_empty();
    // The registry's history must be a prefix of the imported one: same numbers, same content.
    for (number, hash) in &existing {
        match bundle.versions.iter().find(|v| v.version == *number) {
            Some(imported) if imported.hash == *hash => {}
            Some(imported) => {
                return Err(StoreError::Conflict(format!(
                    "{}: version {number} here has content {} but the import has {}",
                    bundle.name,
                    short_hash(hash),
                    short_hash(&imported.hash)
                )));
            }
            None => {
                return Err(StoreError::Conflict(format!(
                    "{}: version {number} exists here but not in the import",
                    bundle.name
                )));
            }
        }
    }
    let meta = to_json(&bundle.meta)?;
    let deprecation = bundle.deprecation.as_ref().map(to_json).transpose()?;
    if created {
        transaction.execute(
            "INSERT INTO prompts (name, created_at, meta, deprecation) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET meta = excluded.meta, deprecation = excluded.deprecation",
            params![bundle.name, bundle.created_at, meta, deprecation],
        )?;
    } else {
        transaction.execute(
            "UPDATE prompts SET meta = ?2, deprecation = ?3 WHERE name = ?1",
            params![bundle.name, meta, deprecation],
        )?;
    }
    let mut added = 0;
    for version in &bundle.versions {
        if existing.iter().any(|(n, _)| *n == version.version) {
            continue;
        }
        insert_version(transaction, version)?;
        added += 1;
    }
    // Labels and their history come as exported: the export is the newer truth.
    let history_here: i64 = transaction.query_row(
        "SELECT COUNT(*) FROM label_moves WHERE name = ?1",
        params![bundle.name],
        |row| row.get(0),
    )?;
    for (index, entry) in bundle.history.iter().enumerate() {
        if (index as i64) < history_here {
            continue;
        }
        insert_move(transaction, &bundle.name, entry)?;
    }
    transaction.execute("DELETE FROM labels WHERE name = ?1", params![bundle.name])?;
    for label in &bundle.labels {
        transaction.execute(
            "INSERT INTO labels (name, label, version, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                bundle.name,
                label.label,
                label.version as i64,
                label.updated_at,
                label.updated_by
            ],
        )?;
    }
    let mut entry = audit.clone();
    entry.target = bundle.name.clone();
    entry.after = Some(format!(
        "{} versions ({} new), labels: {}",
        bundle.versions.len(),
        added,
        bundle
            .labels
            .iter()
            .map(|l| format!("{}=v{}", l.label, l.version))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    insert_audit(transaction, &entry)?;
    Ok(ImportOutcome {
        name: bundle.name.clone(),
        added,
        created,
    })
}
