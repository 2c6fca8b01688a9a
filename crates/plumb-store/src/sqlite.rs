//! The embedded store: one SQLite file in WAL mode, migrated with `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plumb_core::now_ms;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{CaseKey, CaseRecord, RunRecord, RunStatus, Store, StoreError};

/// Each entry migrates from schema `index` to `index + 1`. Append only; never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        created_at  INTEGER NOT NULL,
        suite_path  TEXT NOT NULL,
        description TEXT NOT NULL,
        status      TEXT NOT NULL,
        config      TEXT NOT NULL,
        summary     TEXT
    );
    CREATE TABLE results (
        run_id       TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        prompt_idx   INTEGER NOT NULL,
        provider_idx INTEGER NOT NULL,
        test_idx     INTEGER NOT NULL,
        repeat_idx   INTEGER NOT NULL,
        pass         INTEGER,
        score        REAL NOT NULL,
        latency_ms   REAL NOT NULL,
        cost         REAL NOT NULL,
        tokens       INTEGER NOT NULL,
        payload      TEXT NOT NULL,
        PRIMARY KEY (run_id, prompt_idx, provider_idx, test_idx, repeat_idx)
    ) WITHOUT ROWID;
    CREATE TABLE cache (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
"#,
    r#"
    CREATE TABLE prompts (
        name        TEXT PRIMARY KEY,
        created_at  INTEGER NOT NULL,
        meta        TEXT NOT NULL,
        deprecation TEXT
    );
    CREATE TABLE prompt_versions (
        name       TEXT NOT NULL REFERENCES prompts(name),
        version    INTEGER NOT NULL,
        hash       TEXT NOT NULL,
        semver     TEXT,
        message    TEXT NOT NULL,
        author     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        content    TEXT NOT NULL,
        PRIMARY KEY (name, version),
        UNIQUE (name, semver)
    );
    CREATE TABLE labels (
        name       TEXT NOT NULL REFERENCES prompts(name),
        label      TEXT NOT NULL,
        version    INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        updated_by TEXT NOT NULL,
        PRIMARY KEY (name, label),
        FOREIGN KEY (name, version) REFERENCES prompt_versions(name, version)
    );
    CREATE TABLE label_moves (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        name         TEXT NOT NULL REFERENCES prompts(name),
        label        TEXT NOT NULL,
        from_version INTEGER,
        to_version   INTEGER,
        kind         TEXT NOT NULL,
        at           INTEGER NOT NULL,
        actor        TEXT NOT NULL
    );
    CREATE INDEX label_moves_by_prompt ON label_moves (name, id);
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        target  TEXT NOT NULL,
        reason  TEXT,
        before  TEXT,
        after   TEXT,
        forced  INTEGER NOT NULL DEFAULT 0,
        details TEXT
    );
    CREATE INDEX audit_by_target ON audit (target, id);
    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        role         TEXT NOT NULL,
        hash         TEXT NOT NULL UNIQUE,
        created_at   INTEGER NOT NULL,
        created_by   TEXT NOT NULL,
        revoked_at   INTEGER,
        last_used_at INTEGER
    );
    -- Versions, label history and the audit log are history: plumb never rewrites them, and
    -- the database refuses to as well.
    CREATE TRIGGER prompt_versions_immutable BEFORE UPDATE ON prompt_versions
        BEGIN SELECT RAISE(ABORT, 'prompt versions are immutable'); END;
    CREATE TRIGGER prompt_versions_kept BEFORE DELETE ON prompt_versions
        BEGIN SELECT RAISE(ABORT, 'prompt versions are immutable'); END;
    CREATE TRIGGER label_moves_immutable BEFORE UPDATE ON label_moves
        BEGIN SELECT RAISE(ABORT, 'label history is append-only'); END;
    CREATE TRIGGER label_moves_kept BEFORE DELETE ON label_moves
        BEGIN SELECT RAISE(ABORT, 'label history is append-only'); END;
    CREATE TRIGGER audit_immutable BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_kept BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    r#"
    CREATE TABLE traces (
        seq               INTEGER PRIMARY KEY AUTOINCREMENT,
        trace_id          TEXT NOT NULL UNIQUE,
        span_id           TEXT NOT NULL,
        parent_span_id    TEXT,
        request_id        TEXT NOT NULL,
        started_at        INTEGER NOT NULL,
        endpoint          TEXT NOT NULL,
        key_id            TEXT,
        model             TEXT NOT NULL,
        prompt            TEXT,
        prompt_version    INTEGER,
        target            TEXT,
        status            INTEGER NOT NULL,
        error             TEXT,
        cache             TEXT NOT NULL,
        stream            INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_usd          REAL,
        latency_ms        REAL NOT NULL,
        ttft_ms           REAL,
        detail            TEXT NOT NULL
    );
    CREATE INDEX traces_by_request ON traces (request_id);
    CREATE INDEX traces_by_time ON traces (started_at);
    CREATE TABLE feedback (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        trace_id TEXT NOT NULL REFERENCES traces(trace_id),
        at       INTEGER NOT NULL,
        score    REAL,
        label    TEXT,
        comment  TEXT,
        key_id   TEXT
    );
    CREATE INDEX feedback_by_trace ON feedback (trace_id, id);
"#,
];

pub struct SqliteStore {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
        let wrap = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut connection = Connection::open(path).map_err(wrap)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(wrap)?;
        migrate(&mut connection, path)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            connection: Mutex::new(connection),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` with the connection, for work that returns `StoreError`s of its own.
    pub(crate) fn with_connection<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self
            .connection
            .lock()
            .map_err(|_| StoreError::Internal("connection lock poisoned".into()))?;
        work(&mut connection).map_err(|error| match error {
            StoreError::Db(source) => StoreError::Sqlite {
                path: self.path.clone(),
                source,
            },
            other => other,
        })
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut connection = self
            .connection
            .lock()
            .map_err(|_| StoreError::Internal("connection lock poisoned".into()))?;
        work(&mut connection).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let wrap = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(wrap)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let transaction = connection.transaction().map_err(wrap)?;
        transaction.execute_batch(sql).map_err(wrap)?;
        transaction
            .pragma_update(None, "user_version", index as i64 + 1)
            .map_err(wrap)?;
        transaction.commit().map_err(wrap)?;
    }
    Ok(())
}

fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: row.get(0)?,
        created_at: row.get(1)?,
        suite_path: row.get(2)?,
        description: row.get(3)?,
        status: RunStatus::parse(&row.get::<_, String>(4)?),
        config: row.get(5)?,
        summary: row.get(6)?,
    })
}

const RUN_COLUMNS: &str = "id, created_at, suite_path, description, status, config, summary";

impl Store for SqliteStore {
    fn create_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    run.id,
                    run.created_at,
                    run.suite_path,
                    run.description,
                    run.status.as_str(),
                    run.config,
                    run.summary
                ],
            )
            .map(|_| ())
        })
    }

    fn append_results(&self, run_id: &str, results: &[CaseRecord]) -> Result<(), StoreError> {
        self.with(|c| {
            let transaction = c.transaction()?;
            {
                let mut statement = transaction.prepare_cached(
                    "INSERT OR REPLACE INTO results (run_id, prompt_idx, provider_idx, test_idx, repeat_idx, \
                     pass, score, latency_ms, cost, tokens, payload) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for result in results {
                    statement.execute(params![
                        run_id,
                        result.key.prompt_idx,
                        result.key.provider_idx,
                        result.key.test_idx,
                        result.key.repeat_idx,
                        result.pass,
                        result.score,
                        result.latency_ms,
                        result.cost,
                        result.tokens as i64,
                        result.payload,
                    ])?;
                }
            }
            transaction.commit()
        })
    }

    fn finish_run(&self, run_id: &str, status: RunStatus, summary: &str) -> Result<(), StoreError> {
        let updated = self.with(|c| {
            c.execute(
                "UPDATE runs SET status = ?2, summary = ?3 WHERE id = ?1",
                params![run_id, status.as_str(), summary],
            )
        })?;
        if updated == 0 {
            return Err(StoreError::RunNotFound(run_id.to_owned()));
        }
        Ok(())
    }

    fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord, StoreError> {
        if id_or_prefix == "latest" {
            return self
                .list_runs(1)?
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::RunNotFound("latest".into()));
        }
        // Ids are UUIDv7: their heads are timestamps shared by runs of the same minute, their
        // tails are random. Reports show the tail, so both ends are accepted.
        let clean = id_or_prefix.replace(['%', '_'], "");
        let (prefix, suffix) = (format!("{clean}%"), format!("%{clean}"));
        let runs = self.with(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id LIKE ?1 OR id LIKE ?2 ORDER BY id DESC LIMIT 5"
            ))?;
            let rows = statement.query_map([prefix, suffix], run_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        if let Some(exact) = runs.iter().find(|run| run.id == id_or_prefix) {
            return Ok(exact.clone());
        }
        match runs.len() {
            0 => Err(StoreError::RunNotFound(id_or_prefix.to_owned())),
            1 => Ok(runs
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::Internal("vanished row".into()))?),
            count => Err(StoreError::AmbiguousRun {
                prefix: id_or_prefix.to_owned(),
                count,
            }),
        }
    }

    fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, id DESC LIMIT ?1"
            ))?;
            let rows = statement.query_map([limit as i64], run_from_row)?;
            rows.collect()
        })
    }

    fn for_each_result(
        &self,
        run_id: &str,
        visit: &mut dyn FnMut(CaseRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let connection = self
            .connection
            .lock()
            .map_err(|_| StoreError::Internal("connection lock poisoned".into()))?;
        let wrap = |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut statement = connection
            .prepare(
                "SELECT prompt_idx, provider_idx, test_idx, repeat_idx, pass, score, latency_ms, cost, tokens, \
                 payload FROM results WHERE run_id = ?1 \
                 ORDER BY prompt_idx, provider_idx, test_idx, repeat_idx",
            )
            .map_err(wrap)?;
        let mut rows = statement.query([run_id]).map_err(wrap)?;
        while let Some(row) = rows.next().map_err(wrap)? {
            let record = (|| -> rusqlite::Result<CaseRecord> {
                Ok(CaseRecord {
                    key: CaseKey {
                        prompt_idx: row.get(0)?,
                        provider_idx: row.get(1)?,
                        test_idx: row.get(2)?,
                        repeat_idx: row.get(3)?,
                    },
                    pass: row.get(4)?,
                    score: row.get(5)?,
                    latency_ms: row.get(6)?,
                    cost: row.get(7)?,
                    tokens: row.get::<_, i64>(8)? as u64,
                    payload: row.get(9)?,
                })
            })()
            .map_err(wrap)?;
            visit(record)?;
        }
        Ok(())
    }

    fn completed_cases(&self, run_id: &str) -> Result<Vec<CaseKey>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT prompt_idx, provider_idx, test_idx, repeat_idx FROM results WHERE run_id = ?1",
            )?;
            let rows = statement.query_map([run_id], |row| {
                Ok(CaseKey {
                    prompt_idx: row.get(0)?,
                    provider_idx: row.get(1)?,
                    test_idx: row.get(2)?,
                    repeat_idx: row.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    fn cache_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT value FROM cache WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
        })
    }

    fn cache_put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO cache (key, value, created_at) VALUES (?1, ?2, ?3)",
                params![key, value, now_ms()],
            )
            .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, created_at: i64) -> RunRecord {
        RunRecord {
            id: id.into(),
            created_at,
            suite_path: "s.yaml".into(),
            description: "d".into(),
            status: RunStatus::Running,
            config: "{}".into(),
            summary: None,
        }
    }

    fn case(test_idx: u32, pass: Option<bool>) -> CaseRecord {
        CaseRecord {
            key: CaseKey {
                prompt_idx: 0,
                provider_idx: 0,
                test_idx,
                repeat_idx: 0,
            },
            pass,
            score: 1.0,
            latency_ms: 1.0,
            cost: 0.0,
            tokens: 3,
            payload: "{}".into(),
        }
    }

    #[test]
    fn runs_results_and_cache_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = SqliteStore::open(&path).unwrap();
        store.create_run(&run("0190-aaaa", 1)).unwrap();
        store.create_run(&run("0190-bbbb", 2)).unwrap();
        store
            .append_results("0190-aaaa", &[case(1, Some(true)), case(0, None)])
            .unwrap();
        store
            .append_results("0190-aaaa", &[case(1, Some(false))])
            .unwrap();
        store
            .finish_run("0190-aaaa", RunStatus::Completed, "{\"n\":2}")
            .unwrap();

        assert_eq!(store.find_run("latest").unwrap().id, "0190-bbbb");
        assert_eq!(
            store.find_run("0190-a").unwrap().status,
            RunStatus::Completed
        );
        assert!(matches!(
            store.find_run("0190"),
            Err(StoreError::AmbiguousRun { count: 2, .. })
        ));
        assert!(matches!(
            store.find_run("zzz"),
            Err(StoreError::RunNotFound(_))
        ));

        let mut seen = Vec::new();
        store
            .for_each_result("0190-aaaa", &mut |r| {
                seen.push((r.key.test_idx, r.pass));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![(0, None), (1, Some(false))]);

        store.cache_put("k", "v").unwrap();
        assert_eq!(store.cache_get("k").unwrap().as_deref(), Some("v"));
        assert_eq!(store.cache_get("missing").unwrap(), None);
        drop(store);
        // Reopening migrates nothing and keeps the data.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.completed_cases("0190-aaaa").unwrap().len(), 2);
    }
}
