//! The embedded backend: one directory per collection (`.plumb/rag/NAME/`) holding
//! `collection.db` (SQLite: manifest, documents, chunks, the FTS5 full-text index, the
//! embedding cache) and `vectors-GEN.hnsw` (the HNSW index).
//!
//! SQLite is the truth. Each ingest is one transaction that also bumps the index generation;
//! the index file of the new generation is written (through a temporary file) before the
//! commit, and older ones are deleted after it. A crash in between leaves the database at the
//! old generation with its file intact; a generation without its file (deleted by hand,
//! copied without it) is rebuilt from the stored vectors on open.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use plumb_core::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};

use crate::Format;
use crate::store::{
    Backend, Change, ChunkId, Filter, Manifest, Scored, SourceGlob, Stats, StoreError, StoredChunk,
    StoredDocument, bytes_vector, query_terms, vector_bytes,
};
use crate::vectors::{HnswParams, VectorIndex};

const SCHEMA_VERSION: i64 = 1;
const DATABASE: &str = "collection.db";

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    format TEXT NOT NULL,
    hash TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    embed_hash TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    headings TEXT NOT NULL,
    page INTEGER,
    tokens INTEGER NOT NULL
);
CREATE INDEX chunks_document ON chunks(document_id);
CREATE VIRTUAL TABLE chunks_fts USING fts5(text, headings, tokenize = 'porter unicode61');
CREATE TABLE embeddings (embed_hash TEXT PRIMARY KEY, vector BLOB NOT NULL) WITHOUT ROWID;
";

fn storage(error: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(error.to_string())
}

struct Sql {
    conn: Connection,
    generation: u64,
}

pub struct SqliteCollection {
    dir: PathBuf,
    manifest: Manifest,
    params: HnswParams,
    sql: Mutex<Sql>,
    index: RwLock<VectorIndex>,
}

impl SqliteCollection {
    /// Whether `dir` holds a collection.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DATABASE).is_file()
    }

    /// Makes a new, empty collection in `dir` (which must not hold one).
    pub fn create(
        dir: &Path,
        manifest: Manifest,
        params: HnswParams,
    ) -> Result<SqliteCollection, StoreError> {
        if SqliteCollection::exists(dir) {
            return Err(StoreError::Mismatch(format!(
                "collection `{}` already exists in {}",
                manifest.name,
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(storage)?;
        let temporary = dir.join(format!("{DATABASE}.partial"));
        let _ = std::fs::remove_file(&temporary);
        {
            let mut conn = Connection::open(&temporary).map_err(storage)?;
            let tx = conn.transaction().map_err(storage)?;
            tx.execute_batch(SCHEMA).map_err(storage)?;
            let json = serde_json::to_string(&manifest).map_err(storage)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('manifest', ?1), ('generation', '0')",
                [json],
            )
            .map_err(storage)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(storage)?;
            tx.commit().map_err(storage)?;
        }
        std::fs::rename(&temporary, dir.join(DATABASE)).map_err(storage)?;
        SqliteCollection::open(dir, params)
    }

    /// Opens the collection in `dir`, reading its vector index (or rebuilding it when its file
    /// is missing).
    pub fn open(dir: &Path, params: HnswParams) -> Result<SqliteCollection, StoreError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !SqliteCollection::exists(dir) {
            return Err(StoreError::NotFound(name));
        }
        let conn = Connection::open(dir.join(DATABASE)).map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(storage)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(storage)?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Mismatch(format!(
                "{} has storage version {version}; this plumb reads version {SCHEMA_VERSION}",
                dir.join(DATABASE).display()
            )));
        }
        let meta = |key: &str| -> Result<String, StoreError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get::<_, String>(0)
            })
            .map_err(storage)
        };
        let manifest: Manifest = serde_json::from_str(&meta("manifest")?).map_err(storage)?;
        let generation: u64 = meta("generation")?.parse().map_err(storage)?;
        let path = index_path(dir, generation);
        let index = if generation == 0 {
            VectorIndex::new(manifest.dimensions, params)?
        } else if let Some(index) = path
            .is_file()
            .then(|| VectorIndex::load(&path, manifest.dimensions, params).ok())
            .flatten()
        {
            index
        } else {
            // The index is derived from the database: a missing or unreadable file (another
            // plumb's format, a crash mid-write) is rebuilt from the stored vectors.
            let index = rebuild(&conn, manifest.dimensions, params)?;
            index.save(&path)?;
            // plumb before 0.1 kept a usearch index here.
            let _ = std::fs::remove_file(path.with_extension("usearch"));
            index
        };
        Ok(SqliteCollection {
            dir: dir.to_owned(),
            manifest,
            params,
            sql: Mutex::new(Sql { conn, generation }),
            index: RwLock::new(index),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> Result<Stats, StoreError> {
        let sql = self.sql()?;
        sql.conn
            .query_row(
                "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks),
                        (SELECT coalesce(sum(bytes), 0) FROM documents)",
                [],
                |row| {
                    Ok(Stats {
                        documents: row.get::<_, i64>(0)? as usize,
                        chunks: row.get::<_, i64>(1)? as usize,
                        bytes: row.get::<_, i64>(2)? as usize,
                    })
                },
            )
            .map_err(storage)
    }

    fn sql(&self) -> Result<std::sync::MutexGuard<'_, Sql>, StoreError> {
        self.sql
            .lock()
            .map_err(|_| storage("a previous operation panicked"))
    }

    fn apply_now(&self, change: Change) -> Result<(), StoreError> {
        let mut sql = self.sql()?;
        let next = sql.generation + 1;
        let mut index = self
            .index
            .write()
            .map_err(|_| storage("a previous operation panicked"))?;
        let tx = sql.conn.transaction().map_err(storage)?;
        let mut removed: Vec<ChunkId> = Vec::new();
        let mut added: Vec<(ChunkId, Vec<f32>)> = Vec::new();
        {
            let mut doc_id = tx
                .prepare("SELECT id FROM documents WHERE source = ?1")
                .map_err(storage)?;
            let mut chunk_ids = tx
                .prepare("SELECT id FROM chunks WHERE document_id = ?1")
                .map_err(storage)?;
            let replaced = change
                .remove
                .iter()
                .chain(change.add.iter().map(|doc| &doc.source));
            for source in replaced {
                let Some(id) = doc_id
                    .query_row([source], |row| row.get::<_, i64>(0))
                    .optional()
                    .map_err(storage)?
                else {
                    continue;
                };
                let ids = chunk_ids
                    .query_map([id], |row| row.get::<_, i64>(0))
                    .map_err(storage)?
                    .collect::<Result<Vec<i64>, _>>()
                    .map_err(storage)?;
                for chunk in &ids {
                    tx.execute("DELETE FROM chunks_fts WHERE rowid = ?1", [chunk])
                        .map_err(storage)?;
                }
                tx.execute("DELETE FROM chunks WHERE document_id = ?1", [id])
                    .map_err(storage)?;
                tx.execute("DELETE FROM documents WHERE id = ?1", [id])
                    .map_err(storage)?;
                removed.extend(ids.into_iter().map(|id| id as ChunkId));
            }
            let mut insert_doc = tx
                .prepare(
                    "INSERT INTO documents (source, title, format, hash, bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(storage)?;
            let mut insert_chunk = tx
                .prepare(
                    "INSERT INTO chunks (document_id, ordinal, text, embed_hash, start, end,
                                         headings, page, tokens)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(storage)?;
            let mut insert_fts = tx
                .prepare("INSERT INTO chunks_fts (rowid, text, headings) VALUES (?1, ?2, ?3)")
                .map_err(storage)?;
            let mut insert_vector = tx
                .prepare("INSERT OR IGNORE INTO embeddings (embed_hash, vector) VALUES (?1, ?2)")
                .map_err(storage)?;
            for doc in change.add {
                insert_doc
                    .execute(params![
                        doc.source,
                        doc.title,
                        doc.format.as_str(),
                        doc.hash,
                        doc.bytes as i64
                    ])
                    .map_err(storage)?;
                let document_id = tx.last_insert_rowid();
                for chunk in doc.chunks {
                    if chunk.vector.len() != self.manifest.dimensions {
                        return Err(StoreError::Mismatch(format!(
                            "{}: chunk {} has a {}-dimensional vector; the collection holds {}",
                            doc.source,
                            chunk.ordinal,
                            chunk.vector.len(),
                            self.manifest.dimensions
                        )));
                    }
                    let headings = serde_json::to_string(&chunk.headings).map_err(storage)?;
                    insert_chunk
                        .execute(params![
                            document_id,
                            chunk.ordinal as i64,
                            chunk.text,
                            chunk.embed_hash,
                            chunk.start as i64,
                            chunk.end as i64,
                            headings,
                            chunk.page.map(|p| p as i64),
                            chunk.tokens as i64
                        ])
                        .map_err(storage)?;
                    let id = tx.last_insert_rowid();
                    insert_fts
                        .execute(params![id, chunk.text, chunk.headings.join(" ")])
                        .map_err(storage)?;
                    insert_vector
                        .execute(params![chunk.embed_hash, vector_bytes(&chunk.vector)])
                        .map_err(storage)?;
                    added.push((id as ChunkId, chunk.vector));
                }
            }
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'generation'",
            [next.to_string()],
        )
        .map_err(storage)?;
        // The index changes in memory and is saved as the next generation before the commit;
        // if either fails, the previous generation's file is read back.
        let written = index
            .remove(&removed)
            .and_then(|()| index.add(&added))
            .and_then(|()| index.save(&index_path(&self.dir, next)))
            .and_then(|()| tx.commit().map_err(storage));
        if let Err(error) = written {
            let _ = std::fs::remove_file(index_path(&self.dir, next));
            *index = if sql.generation == 0 {
                VectorIndex::new(self.manifest.dimensions, self.params)?
            } else {
                VectorIndex::load(
                    &index_path(&self.dir, sql.generation),
                    self.manifest.dimensions,
                    self.params,
                )?
            };
            return Err(error);
        }
        let previous = sql.generation;
        sql.generation = next;
        if previous > 0 {
            let _ = std::fs::remove_file(index_path(&self.dir, previous));
        }
        Ok(())
    }

    /// The chunks a filter lets through.
    fn allowed(sql: &Sql, filter: &Filter) -> Result<HashSet<ChunkId>, StoreError> {
        let pattern = match &filter.source {
            Some(glob) => Some(
                SourceGlob::new(glob)
                    .map_err(|error| StoreError::Mismatch(format!("filter source {error}")))?,
            ),
            None => None,
        };
        let heading = filter.heading.as_ref().map(|h| h.to_lowercase());
        let mut statement = sql
            .conn
            .prepare_cached(
                "SELECT c.id, d.source, d.format, c.page, c.headings
                 FROM chunks c JOIN documents d ON d.id = c.document_id",
            )
            .map_err(storage)?;
        let mut rows = statement.query([]).map_err(storage)?;
        let mut allowed = HashSet::new();
        while let Some(row) = rows.next().map_err(storage)? {
            let id: i64 = row.get(0).map_err(storage)?;
            if let Some(pattern) = &pattern {
                let source: String = row.get(1).map_err(storage)?;
                if !pattern.matches(&source) {
                    continue;
                }
            }
            if let Some(format) = filter.format {
                let stored: String = row.get(2).map_err(storage)?;
                if stored != format.as_str() {
                    continue;
                }
            }
            if let Some((low, high)) = filter.pages {
                let page: Option<i64> = row.get(3).map_err(storage)?;
                if !page.is_some_and(|p| (low as i64..=high as i64).contains(&p)) {
                    continue;
                }
            }
            if let Some(heading) = &heading {
                let headings: String = row.get(4).map_err(storage)?;
                if !headings.to_lowercase().contains(heading.as_str()) {
                    continue;
                }
            }
            allowed.insert(id as ChunkId);
        }
        Ok(allowed)
    }
}

fn index_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("vectors-{generation}.hnsw"))
}

fn rebuild(
    conn: &Connection,
    dimensions: usize,
    params: HnswParams,
) -> Result<VectorIndex, StoreError> {
    let mut statement = conn
        .prepare(
            "SELECT c.id, e.vector FROM chunks c JOIN embeddings e ON e.embed_hash = c.embed_hash",
        )
        .map_err(storage)?;
    let items = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)? as ChunkId,
                bytes_vector(&row.get::<_, Vec<u8>>(1)?),
            ))
        })
        .map_err(storage)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(storage)?;
    let mut index = VectorIndex::new(dimensions, params)?;
    index.add(&items)?;
    Ok(index)
}

fn format_of(name: &str) -> Format {
    Format::from_name(name).unwrap_or(Format::Text)
}

impl Backend for SqliteCollection {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>> {
        Box::pin(async move { SqliteCollection::stats(self) })
    }

    fn documents(&self) -> BoxFuture<'_, Result<Vec<StoredDocument>, StoreError>> {
        Box::pin(async move {
            let sql = self.sql()?;
            let mut statement = sql
                .conn
                .prepare(
                    "SELECT d.source, d.hash, count(c.id) FROM documents d
                     LEFT JOIN chunks c ON c.document_id = d.id
                     GROUP BY d.id ORDER BY d.source",
                )
                .map_err(storage)?;
            statement
                .query_map([], |row| {
                    Ok(StoredDocument {
                        source: row.get(0)?,
                        hash: row.get(1)?,
                        chunks: row.get::<_, i64>(2)? as usize,
                    })
                })
                .map_err(storage)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage)
        })
    }

    fn cached_vectors<'a>(
        &'a self,
        hashes: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Vec<f32>>, StoreError>> {
        Box::pin(async move {
            let sql = self.sql()?;
            let mut statement = sql
                .conn
                .prepare_cached("SELECT vector FROM embeddings WHERE embed_hash = ?1")
                .map_err(storage)?;
            let mut found = HashMap::new();
            for hash in hashes {
                if let Some(bytes) = statement
                    .query_row([hash], |row| row.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(storage)?
                {
                    found.insert(hash.clone(), bytes_vector(&bytes));
                }
            }
            Ok(found)
        })
    }

    fn apply(&self, change: Change) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.apply_now(change) })
    }

    fn text_search<'a>(
        &'a self,
        query: &'a str,
        limit: usize,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<Vec<Scored>, StoreError>> {
        Box::pin(async move {
            let terms = query_terms(query);
            if terms.is_empty() || limit == 0 {
                return Ok(Vec::new());
            }
            let expression = terms
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(" OR ");
            let sql = self.sql()?;
            let allowed = if filter.is_empty() {
                None
            } else {
                Some(SqliteCollection::allowed(&sql, filter)?)
            };
            // Headings weigh half as much as the text. FTS5's bm25() is lower for better
            // matches; scores here are higher for better.
            let mut statement = sql
                .conn
                .prepare_cached(
                    "SELECT rowid, bm25(chunks_fts, 1.0, 0.5) AS rank FROM chunks_fts
                     WHERE chunks_fts MATCH ?1 ORDER BY rank",
                )
                .map_err(storage)?;
            let mut rows = statement.query([expression]).map_err(storage)?;
            let mut hits = Vec::new();
            while let Some(row) = rows.next().map_err(storage)? {
                let id = row.get::<_, i64>(0).map_err(storage)? as ChunkId;
                if allowed.as_ref().is_some_and(|a| !a.contains(&id)) {
                    continue;
                }
                let rank: f64 = row.get(1).map_err(storage)?;
                hits.push(Scored {
                    id,
                    score: -rank as f32,
                });
                if hits.len() == limit {
                    break;
                }
            }
            Ok(hits)
        })
    }

    fn vector_search<'a>(
        &'a self,
        vector: &'a [f32],
        limit: usize,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<Vec<Scored>, StoreError>> {
        Box::pin(async move {
            let allowed = if filter.is_empty() {
                None
            } else {
                Some(SqliteCollection::allowed(&*self.sql()?, filter)?)
            };
            let index = self
                .index
                .read()
                .map_err(|_| storage("a previous operation panicked"))?;
            index.search(vector, limit, allowed.as_ref())
        })
    }

    fn chunks<'a>(
        &'a self,
        ids: &'a [ChunkId],
    ) -> BoxFuture<'a, Result<Vec<StoredChunk>, StoreError>> {
        Box::pin(async move {
            let sql = self.sql()?;
            let mut statement = sql
                .conn
                .prepare_cached(
                    "SELECT c.id, d.source, d.title, d.format, c.ordinal, c.text, c.start, c.end,
                            c.headings, c.page, c.tokens
                     FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ?1",
                )
                .map_err(storage)?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                let chunk = statement
                    .query_row([*id as i64], |row| {
                        let headings: String = row.get(8)?;
                        Ok(StoredChunk {
                            id: row.get::<_, i64>(0)? as ChunkId,
                            source: row.get(1)?,
                            title: row.get(2)?,
                            format: format_of(&row.get::<_, String>(3)?),
                            ordinal: row.get::<_, i64>(4)? as usize,
                            text: row.get(5)?,
                            start: row.get::<_, i64>(6)? as usize,
                            end: row.get::<_, i64>(7)? as usize,
                            headings: serde_json::from_str(&headings).unwrap_or_default(),
                            page: row.get::<_, Option<i64>>(9)?.map(|p| p as usize),
                            tokens: row.get::<_, i64>(10)? as usize,
                        })
                    })
                    .optional()
                    .map_err(storage)?;
                found.extend(chunk);
            }
            Ok(found)
        })
    }
}
