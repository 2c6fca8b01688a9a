//! The PostgreSQL backend: collections in one database, for when several machines share them.
//!
//! `plumb_rag_collections` names each collection (its manifest as JSON); collection N keeps
//! `plumb_rag_N_documents`, `plumb_rag_N_chunks` and `plumb_rag_N_embeddings` (the embedding
//! cache). A chunk row carries its full-text terms (`tsvector`: the text weighted A, the
//! headings B) and its vector (pgvector's `vector(D)` under an HNSW index with cosine
//! distance). Full-text scores are BM25 with SQLite FTS5's formula and constants (k1 1.2,
//! b 0.75, headings half the weight of the text), computed in SQL over the `tsvector`
//! positions, so both backends rank alike; they differ in stemming (PostgreSQL's English
//! Snowball stemmer and stop words, FTS5's Porter).
//!
//! Each ingest is one transaction, holding the collection's row lock so concurrent ingests of
//! one collection queue. A filtered vector search scans the chunks the filter lets through
//! exactly (pgvector 0.6 filters HNSW results after the scan, which can return fewer than
//! asked for); unfiltered ones use the index.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::try_join_all;
use plumb_core::BoxFuture;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use crate::Format;
use crate::store::{
    Backend, Change, ChunkId, Filter, Manifest, Scored, SourceGlob, Stats, StoreError, StoredChunk,
    StoredDocument, query_terms,
};

/// HNSW's build parameters in PostgreSQL (pgvector's defaults are 16 and 64).
const HNSW_M: u32 = 16;
const HNSW_EF_CONSTRUCTION: u32 = 128;
/// The least candidate list of an HNSW search (pgvector returns at most `ef_search` rows).
const EF_SEARCH: usize = 100;
/// pgvector's largest `hnsw.ef_search`.
const EF_SEARCH_MAX: usize = 1000;

fn storage(error: tokio_postgres::Error) -> StoreError {
    StoreError::Storage(describe(&error))
}

/// The server's message (and detail and hint) when it sent one, else the client's error.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            text
        }
    }
}

/// `postgres://user:secret@host/db` without the password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// A database holding collections: one connection, shared by the collections opened from it.
#[derive(Clone)]
pub struct PgStore {
    client: Arc<Mutex<Client>>,
    location: String,
}

impl PgStore {
    /// Connects (without TLS) and makes sure pgvector and the collections table exist.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let location = redact(url);
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(|error| {
            StoreError::Storage(format!(
                "cannot connect to {location}: {}",
                describe(&error)
            ))
        })?;
        tokio::spawn(async move {
            // The client's calls report a dropped connection themselves.
            let _ = connection.await;
        });
        let mut client = client;
        let tx = client.transaction().await.map_err(storage)?;
        // One creator at a time: `IF NOT EXISTS` alone races on the catalog.
        tx.execute("SELECT pg_advisory_xact_lock(7420515)", &[])
            .await
            .map_err(storage)?;
        tx.batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
            .await
            .map_err(|error| {
                StoreError::Storage(format!(
                    "{location} cannot enable pgvector (`CREATE EXTENSION vector`): {}",
                    describe(&error)
                ))
            })?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS plumb_rag_collections (
                 id bigserial PRIMARY KEY,
                 name text NOT NULL UNIQUE,
                 manifest text NOT NULL
             )",
        )
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok(PgStore {
            client: Arc::new(Mutex::new(client)),
            location,
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The names of the collections in the database, sorted.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                "SELECT name FROM plumb_rag_collections ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(storage)?;
        rows.iter()
            .map(|row| row.try_get::<_, String>(0).map_err(storage))
            .collect()
    }

    /// Opens collection `name`, or `None` when the database has no such collection.
    pub async fn open(&self, name: &str) -> Result<Option<PgCollection>, StoreError> {
        let row = {
            let client = self.client.lock().await;
            client
                .query_opt(
                    "SELECT id, manifest FROM plumb_rag_collections WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(storage)?
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let id: i64 = row.try_get(0).map_err(storage)?;
        let manifest: String = row.try_get(1).map_err(storage)?;
        let manifest: Manifest = serde_json::from_str(&manifest).map_err(|error| {
            StoreError::Storage(format!("collection `{name}`'s manifest: {error}"))
        })?;
        Ok(Some(self.collection(id, manifest)))
    }

    /// Makes a new, empty collection (its name must be free).
    pub async fn create(&self, manifest: Manifest) -> Result<PgCollection, StoreError> {
        if manifest.dimensions == 0 || manifest.dimensions > 16_000 {
            return Err(StoreError::Mismatch(format!(
                "pgvector holds 1 to 16000 dimensions, not {}",
                manifest.dimensions
            )));
        }
        let json = serde_json::to_string(&manifest)
            .map_err(|error| StoreError::Storage(error.to_string()))?;
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(storage)?;
        let inserted = tx
            .query_opt(
                "INSERT INTO plumb_rag_collections (name, manifest) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[&manifest.name, &json],
            )
            .await
            .map_err(storage)?;
        let Some(row) = inserted else {
            return Err(StoreError::Mismatch(format!(
                "collection `{}` already exists in {}",
                manifest.name, self.location
            )));
        };
        let id: i64 = row.try_get(0).map_err(storage)?;
        let t = Tables::new(id);
        let dimensions = manifest.dimensions;
        tx.batch_execute(&format!(
            "CREATE TABLE {documents} (
                 id bigserial PRIMARY KEY,
                 source text NOT NULL UNIQUE,
                 title text NOT NULL,
                 format text NOT NULL,
                 hash text NOT NULL,
                 bytes bigint NOT NULL
             );
             CREATE TABLE {chunks} (
                 id bigserial PRIMARY KEY,
                 document_id bigint NOT NULL REFERENCES {documents}(id) ON DELETE CASCADE,
                 ordinal integer NOT NULL,
                 text text NOT NULL,
                 embed_hash text NOT NULL,
                 start_byte bigint NOT NULL,
                 end_byte bigint NOT NULL,
                 headings text NOT NULL,
                 page integer,
                 tokens integer NOT NULL,
                 terms tsvector NOT NULL,
                 length integer NOT NULL,
                 embedding vector({dimensions}) NOT NULL
             );
             CREATE INDEX ON {chunks} (document_id);
             CREATE INDEX ON {chunks} USING gin (terms);
             CREATE INDEX ON {chunks} USING hnsw (embedding vector_cosine_ops)
                 WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION});
             CREATE TABLE {embeddings} (
                 embed_hash text PRIMARY KEY,
                 embedding vector({dimensions}) NOT NULL
             );",
            documents = t.documents,
            chunks = t.chunks,
            embeddings = t.embeddings,
        ))
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        drop(client);
        Ok(self.collection(id, manifest))
    }

    fn collection(&self, id: i64, manifest: Manifest) -> PgCollection {
        PgCollection {
            client: self.client.clone(),
            location: format!("{} (tables {}_*)", self.location, Tables::new(id).prefix),
            id,
            tables: Tables::new(id),
            manifest,
        }
    }
}

struct Tables {
    prefix: String,
    documents: String,
    chunks: String,
    embeddings: String,
}

impl Tables {
    fn new(id: i64) -> Tables {
        let prefix = format!("plumb_rag_{id}");
        Tables {
            documents: format!("{prefix}_documents"),
            chunks: format!("{prefix}_chunks"),
            embeddings: format!("{prefix}_embeddings"),
            prefix,
        }
    }
}

pub struct PgCollection {
    client: Arc<Mutex<Client>>,
    location: String,
    id: i64,
    tables: Tables,
    manifest: Manifest,
}

/// pgvector's text form of a vector: `[0.25,-1,3e-8]`.
fn vector_text(vector: &[f32]) -> String {
    let mut text = String::with_capacity(vector.len() * 12 + 2);
    text.push('[');
    for (i, x) in vector.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&x.to_string());
    }
    text.push(']');
    text
}

fn parse_vector(text: &str) -> Option<Vec<f32>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    inner
        .split(',')
        .map(|x| x.trim().parse::<f32>().ok())
        .collect()
}

type Param = Box<dyn ToSql + Sync + Send>;

/// A filter as SQL over the chunks table `c`, its parameters numbered from `first`.
struct FilterSql {
    clause: String,
    params: Vec<Param>,
}

impl PgCollection {
    async fn filter_sql(
        &self,
        client: &Client,
        filter: &Filter,
        first: usize,
    ) -> Result<FilterSql, StoreError> {
        let mut clause = String::new();
        let mut params: Vec<Param> = Vec::new();
        let next = |params: &mut Vec<Param>, value: Param| {
            params.push(value);
            first + params.len() - 1
        };
        if filter.source.is_some() || filter.format.is_some() {
            // Sources are matched here, with the same globs as the embedded backend; the
            // documents table is small next to the chunks.
            let glob = match &filter.source {
                Some(text) => Some(
                    SourceGlob::new(text)
                        .map_err(|error| StoreError::Mismatch(format!("filter source {error}")))?,
                ),
                None => None,
            };
            let rows = client
                .query(
                    &format!("SELECT id, source, format FROM {}", self.tables.documents),
                    &[],
                )
                .await
                .map_err(storage)?;
            let mut ids: Vec<i64> = Vec::new();
            for row in rows {
                let source: String = row.try_get(1).map_err(storage)?;
                let format: String = row.try_get(2).map_err(storage)?;
                if glob.as_ref().is_some_and(|g| !g.matches(&source))
                    || filter.format.is_some_and(|f| f.as_str() != format)
                {
                    continue;
                }
                ids.push(row.try_get(0).map_err(storage)?);
            }
            let n = next(&mut params, Box::new(ids));
            clause.push_str(&format!(" AND c.document_id = ANY(${n})"));
        }
        if let Some((low, high)) = filter.pages {
            let low = i32::try_from(low).unwrap_or(i32::MAX);
            let high = i32::try_from(high).unwrap_or(i32::MAX);
            let a = next(&mut params, Box::new(low));
            let b = next(&mut params, Box::new(high));
            clause.push_str(&format!(" AND c.page BETWEEN ${a} AND ${b}"));
        }
        if let Some(heading) = &filter.heading {
            let n = next(&mut params, Box::new(heading.to_lowercase()));
            clause.push_str(&format!(" AND strpos(lower(c.headings), ${n}) > 0"));
        }
        Ok(FilterSql { clause, params })
    }

    async fn apply_now(&self, change: Change) -> Result<(), StoreError> {
        for doc in &change.add {
            if let Some(chunk) = doc
                .chunks
                .iter()
                .find(|c| c.vector.len() != self.manifest.dimensions)
            {
                return Err(StoreError::Mismatch(format!(
                    "{}: chunk {} has a {}-dimensional vector; the collection holds {}",
                    doc.source,
                    chunk.ordinal,
                    chunk.vector.len(),
                    self.manifest.dimensions
                )));
            }
        }
        let t = &self.tables;
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(storage)?;
        tx.execute(
            "SELECT id FROM plumb_rag_collections WHERE id = $1 FOR UPDATE",
            &[&self.id],
        )
        .await
        .map_err(storage)?;
        let replaced: Vec<&str> = change
            .remove
            .iter()
            .chain(change.add.iter().map(|doc| &doc.source))
            .map(String::as_str)
            .collect();
        // Chunks go with their documents (ON DELETE CASCADE).
        tx.execute(
            &format!("DELETE FROM {} WHERE source = ANY($1)", t.documents),
            &[&replaced],
        )
        .await
        .map_err(storage)?;
        let insert_document = tx
            .prepare(&format!(
                "INSERT INTO {} (source, title, format, hash, bytes) VALUES ($1, $2, $3, $4, $5)
                 RETURNING id",
                t.documents
            ))
            .await
            .map_err(storage)?;
        // The terms: the text weighted A, the headings B. The length is FTS5's: every word
        // of both, stop words included.
        let insert_chunk = tx
            .prepare(&format!(
                "INSERT INTO {} (document_id, ordinal, text, embed_hash, start_byte, end_byte,
                                 headings, page, tokens, terms, length, embedding)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                         setweight(to_tsvector('english', $3), 'A')
                             || setweight(to_tsvector('english', $11), 'B'),
                         $12, $10::text::vector)",
                t.chunks
            ))
            .await
            .map_err(storage)?;
        let insert_embedding = tx
            .prepare(&format!(
                "INSERT INTO {} (embed_hash, embedding) VALUES ($1, $2::text::vector)
                 ON CONFLICT (embed_hash) DO NOTHING",
                t.embeddings
            ))
            .await
            .map_err(storage)?;
        for doc in &change.add {
            let bytes = i64::try_from(doc.bytes).unwrap_or(i64::MAX);
            let row = tx
                .query_one(
                    &insert_document,
                    &[
                        &doc.source,
                        &doc.title,
                        &doc.format.as_str(),
                        &doc.hash,
                        &bytes,
                    ],
                )
                .await
                .map_err(storage)?;
            let document_id: i64 = row.try_get(0).map_err(storage)?;
            // A document's chunks go out pipelined on the one connection.
            let rows: Vec<ChunkRow> = doc
                .chunks
                .iter()
                .map(|chunk| ChunkRow::new(document_id, chunk))
                .collect();
            try_join_all(rows.iter().map(|row| async {
                tx.execute(&insert_chunk, &row.params()).await?;
                tx.execute(&insert_embedding, &[&row.embed_hash, &row.vector])
                    .await
            }))
            .await
            .map_err(storage)?;
        }
        tx.commit().await.map_err(storage)
    }
}

/// Words as FTS5's unicode61 tokenizer counts them: runs of letters and digits.
fn words(text: &str) -> usize {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count()
}

/// One chunk's insert parameters, in the types of its columns.
struct ChunkRow {
    document_id: i64,
    ordinal: i32,
    text: String,
    embed_hash: String,
    start: i64,
    end: i64,
    headings: String,
    page: Option<i32>,
    tokens: i32,
    vector: String,
    heading_terms: String,
    length: i32,
}

impl ChunkRow {
    fn new(document_id: i64, chunk: &crate::store::NewChunk) -> ChunkRow {
        let int = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let long = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        ChunkRow {
            document_id,
            ordinal: int(chunk.ordinal),
            text: chunk.text.clone(),
            embed_hash: chunk.embed_hash.clone(),
            start: long(chunk.start),
            end: long(chunk.end),
            headings: serde_json::to_string(&chunk.headings).unwrap_or_else(|_| "[]".to_owned()),
            page: chunk.page.map(int),
            tokens: int(chunk.tokens),
            vector: vector_text(&chunk.vector),
            heading_terms: chunk.headings.join(" "),
            length: int(words(&chunk.text) + chunk.headings.iter().map(|h| words(h)).sum::<usize>()),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.document_id,
            &self.ordinal,
            &self.text,
            &self.embed_hash,
            &self.start,
            &self.end,
            &self.headings,
            &self.page,
            &self.tokens,
            &self.vector,
            &self.heading_terms,
            &self.length,
        ]
    }
}

fn references(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

impl Backend for PgCollection {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>> {
        Box::pin(async move {
            let client = self.client.lock().await;
            let row = client
                .query_one(
                    &format!(
                        "SELECT (SELECT count(*) FROM {d}), (SELECT count(*) FROM {c}),
                                (SELECT coalesce(sum(bytes), 0)::bigint FROM {d})",
                        d = self.tables.documents,
                        c = self.tables.chunks
                    ),
                    &[],
                )
                .await
                .map_err(storage)?;
            let count = |i: usize| -> Result<usize, StoreError> {
                Ok(row.try_get::<_, i64>(i).map_err(storage)?.max(0) as usize)
            };
            Ok(Stats {
                documents: count(0)?,
                chunks: count(1)?,
                bytes: count(2)?,
            })
        })
    }

    fn documents(&self) -> BoxFuture<'_, Result<Vec<StoredDocument>, StoreError>> {
        Box::pin(async move {
            let client = self.client.lock().await;
            let rows = client
                .query(
                    &format!(
                        "SELECT d.source, d.hash, count(c.id) FROM {} d
                         LEFT JOIN {} c ON c.document_id = d.id
                         GROUP BY d.id ORDER BY d.source COLLATE \"C\"",
                        self.tables.documents, self.tables.chunks
                    ),
                    &[],
                )
                .await
                .map_err(storage)?;
            rows.iter()
                .map(|row| {
                    Ok(StoredDocument {
                        source: row.try_get(0).map_err(storage)?,
                        hash: row.try_get(1).map_err(storage)?,
                        chunks: row.try_get::<_, i64>(2).map_err(storage)?.max(0) as usize,
                    })
                })
                .collect()
        })
    }

    fn cached_vectors<'a>(
        &'a self,
        hashes: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Vec<f32>>, StoreError>> {
        Box::pin(async move {
            let client = self.client.lock().await;
            let rows = client
                .query(
                    &format!(
                        "SELECT embed_hash, embedding::text FROM {} WHERE embed_hash = ANY($1)",
                        self.tables.embeddings
                    ),
                    &[&hashes],
                )
                .await
                .map_err(storage)?;
            let mut found = HashMap::with_capacity(rows.len());
            for row in rows {
                let hash: String = row.try_get(0).map_err(storage)?;
                let text: String = row.try_get(1).map_err(storage)?;
                let vector = parse_vector(&text).ok_or_else(|| {
                    StoreError::Storage(format!("a cached vector is not a vector: {text:.40}"))
                })?;
                found.insert(hash, vector);
            }
            Ok(found)
        })
    }

    fn apply(&self, change: Change) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.apply_now(change))
    }

    fn text_search<'a>(
        &'a self,
        query: &'a str,
        limit: usize,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<Vec<Scored>, StoreError>> {
        Box::pin(async move {
            let terms = query_terms(query).join(" ");
            if terms.is_empty() || limit == 0 {
                return Ok(Vec::new());
            }
            let client = self.client.lock().await;
            let filter = self.filter_sql(&client, filter, 3).await?;
            let chunks = &self.tables.chunks;
            // BM25 as FTS5 computes it: idf = ln((N − n + 0.5) / (n + 0.5)), at least 1e-6;
            // each term's frequency counts text positions 1 and heading positions 0.5.
            let sql = format!(
                "WITH q AS (
                     SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $1))
                 ), s AS (
                     SELECT count(*)::float8 AS n, coalesce(avg(length), 1)::float8 AS avglen
                     FROM {chunks}
                 ), w AS (
                     SELECT q.lexeme,
                            greatest(ln((s.n - d.df + 0.5) / (d.df + 0.5)), 1e-6) AS idf
                     FROM q CROSS JOIN s
                     CROSS JOIN LATERAL (
                         SELECT count(*)::float8 AS df FROM {chunks} c
                         WHERE c.terms @@ quote_literal(q.lexeme)::tsquery
                     ) d
                 ), m AS (
                     SELECT c.id, c.length, c.terms FROM {chunks} c
                     WHERE c.terms @@ (
                         SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery FROM q
                     ){clause}
                 )
                 SELECT m.id,
                        sum(w.idf * f.tf * 2.2
                            / (f.tf + 1.2 * (0.25 + 0.75 * m.length / greatest(s.avglen, 1))))
                        ::float8 AS score
                 FROM m CROSS JOIN s
                 CROSS JOIN LATERAL unnest(m.terms) u
                 JOIN w ON w.lexeme = u.lexeme
                 CROSS JOIN LATERAL (
                     SELECT sum(CASE x WHEN 'A' THEN 1.0 ELSE 0.5 END)::float8 AS tf
                     FROM unnest(u.weights) x
                 ) f
                 GROUP BY m.id
                 ORDER BY score DESC, m.id
                 LIMIT $2",
                clause = filter.clause
            );
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&terms, &limit];
            params.extend(references(&filter.params));
            let rows = client.query(&sql, &params).await.map_err(storage)?;
            rows.iter()
                .map(|row| {
                    Ok(Scored {
                        id: row.try_get::<_, i64>(0).map_err(storage)? as ChunkId,
                        score: row.try_get::<_, f64>(1).map_err(storage)? as f32,
                    })
                })
                .collect()
        })
    }

    fn vector_search<'a>(
        &'a self,
        vector: &'a [f32],
        limit: usize,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<Vec<Scored>, StoreError>> {
        Box::pin(async move {
            if vector.len() != self.manifest.dimensions {
                return Err(StoreError::Mismatch(format!(
                    "a {}-dimensional query vector; the collection holds {}",
                    vector.len(),
                    self.manifest.dimensions
                )));
            }
            if limit == 0 {
                return Ok(Vec::new());
            }
            let mut client = self.client.lock().await;
            let filter = self.filter_sql(&client, filter, 3).await?;
            let tx = client.transaction().await.map_err(storage)?;
            let limit = if filter.clause.is_empty() {
                // The index returns at most ef_search rows.
                let limit = limit.min(EF_SEARCH_MAX);
                tx.batch_execute(&format!(
                    "SET LOCAL hnsw.ef_search = {}",
                    limit.max(EF_SEARCH)
                ))
                .await
                .map_err(storage)?;
                limit
            } else {
                // Exact over what the filter lets through.
                tx.batch_execute("SET LOCAL enable_indexscan = off")
                    .await
                    .map_err(storage)?;
                limit
            };
            let sql = format!(
                "SELECT c.id, (1 - (c.embedding <=> $1::text::vector))::float8 FROM {} c
                 WHERE true{} ORDER BY c.embedding <=> $1::text::vector LIMIT $2",
                self.tables.chunks, filter.clause
            );
            let text = vector_text(vector);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&text, &limit];
            params.extend(references(&filter.params));
            let rows = tx.query(&sql, &params).await.map_err(storage)?;
            let hits = rows
                .iter()
                .map(|row| {
                    Ok(Scored {
                        id: row.try_get::<_, i64>(0).map_err(storage)? as ChunkId,
                        score: row.try_get::<_, f64>(1).map_err(storage)? as f32,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            tx.commit().await.map_err(storage)?;
            Ok(hits)
        })
    }

    fn chunks<'a>(
        &'a self,
        ids: &'a [ChunkId],
    ) -> BoxFuture<'a, Result<Vec<StoredChunk>, StoreError>> {
        Box::pin(async move {
            let wanted: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
            let client = self.client.lock().await;
            let rows = client
                .query(
                    &format!(
                        "SELECT c.id, d.source, d.title, d.format, c.ordinal, c.text,
                                c.start_byte, c.end_byte, c.headings, c.page, c.tokens
                         FROM {} c JOIN {} d ON d.id = c.document_id WHERE c.id = ANY($1)",
                        self.tables.chunks, self.tables.documents
                    ),
                    &[&wanted],
                )
                .await
                .map_err(storage)?;
            let mut by_id: HashMap<ChunkId, StoredChunk> = HashMap::with_capacity(rows.len());
            for row in rows {
                let headings: String = row.try_get(8).map_err(storage)?;
                let format: String = row.try_get(3).map_err(storage)?;
                let chunk = StoredChunk {
                    id: row.try_get::<_, i64>(0).map_err(storage)? as ChunkId,
                    source: row.try_get(1).map_err(storage)?,
                    title: row.try_get(2).map_err(storage)?,
                    format: Format::from_name(&format).unwrap_or(Format::Text),
                    ordinal: row.try_get::<_, i32>(4).map_err(storage)?.max(0) as usize,
                    text: row.try_get(5).map_err(storage)?,
                    start: row.try_get::<_, i64>(6).map_err(storage)?.max(0) as usize,
                    end: row.try_get::<_, i64>(7).map_err(storage)?.max(0) as usize,
                    headings: serde_json::from_str(&headings).unwrap_or_default(),
                    page: row
                        .try_get::<_, Option<i32>>(9)
                        .map_err(storage)?
                        .map(|p| p.max(0) as usize),
                    tokens: row.try_get::<_, i32>(10).map_err(storage)?.max(0) as usize,
                };
                by_id.insert(chunk.id, chunk);
            }
            Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact("postgres://plumb:s3cret@db.internal:5432/rag?sslmode=disable"),
            "postgres://plumb@db.internal:5432/rag?sslmode=disable"
        );
        assert_eq!(redact("postgres://db/rag"), "postgres://db/rag");
    }

    #[test]
    fn vectors_round_trip_through_text() {
        let v = vec![0.25f32, -1.0, 3.0e-8, 0.123_456_79];
        assert_eq!(parse_vector(&vector_text(&v)).unwrap(), v);
        assert_eq!(parse_vector("[1, 2]").unwrap(), vec![1.0, 2.0]);
        assert!(parse_vector("1,2").is_none());
    }
}
