//! Ingestion: files → documents → chunks → vectors → one atomic change to a collection.
//!
//! Incremental by content: a file whose bytes hash as stored is not read further; a changed
//! file's chunks are embedded only where their text is new (the collection's embedding cache
//! is keyed by the hash of the embedded text, the embedder being fixed per collection); a
//! stored document under an ingested directory whose file is gone is removed. A file that
//! cannot be used is skipped with its reason, and its stored version, if any, is kept.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plumb_core::{Embedder, ModelError, hash_hex};

use crate::store::{Backend, Change, NewChunk, NewDocument, StoreError};
use crate::{Document, LoadError, chunk, document};

/// Extensions a directory walk picks up; a file named on the command line is tried whatever
/// its extension.
pub const DOCUMENT_EXTENSIONS: &[&str] = &[
    "md", "markdown", "mdx", "html", "htm", "xhtml", "pdf", "txt", "text", "rst",
];

/// Texts per embedder call.
pub const EMBED_BATCH: usize = 32;

/// A file to ingest and the source name it is stored under.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub path: PathBuf,
    pub source: String,
}

/// What a set of command-line paths stands for.
#[derive(Clone, Debug, Default)]
pub struct Discovered {
    pub inputs: Vec<Input>,
    /// Files left out of a directory walk, with why.
    pub skipped: Vec<Skipped>,
    /// Stored sources under these are removed when their file is gone: a directory's
    /// `source/` prefix, or a file's exact source.
    pub scopes: Vec<Scope>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Scope {
    Prefix(String),
    Exact(String),
}

impl Scope {
    fn covers(&self, source: &str) -> bool {
        match self {
            Scope::Prefix(prefix) => prefix.is_empty() || source.starts_with(prefix.as_str()),
            Scope::Exact(exact) => source == exact,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub source: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {reason}")]
    Path { path: String, reason: String },
    #[error("embedder `{embedder}`: {error}")]
    Embed { embedder: String, error: ModelError },
    #[error(
        "embedder `{embedder}` returned {got}-dimensional vectors; collection `{collection}` holds {expected}-dimensional ones"
    )]
    Dimensions {
        embedder: String,
        collection: String,
        got: usize,
        expected: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Chunk(String),
}

/// The source name of `path`: relative to `root` with `/` separators when under it, else
/// the path as given.
pub fn source_name(path: &Path, root: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
    match absolute.strip_prefix(&root) {
        Ok(relative) => relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => absolute.to_string_lossy().into_owned(),
    }
}

/// Walks `paths` (files and directories; hidden entries are left out) into inputs.
pub fn discover(paths: &[PathBuf], root: &Path) -> Result<Discovered, IngestError> {
    let mut found = Discovered::default();
    let mut seen = HashSet::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(|error| IngestError::Path {
            path: path.display().to_string(),
            reason: if error.kind() == std::io::ErrorKind::NotFound {
                "no such file or directory".to_owned()
            } else {
                error.to_string()
            },
        })?;
        let source = source_name(path, root);
        if metadata.is_dir() {
            let prefix = if source.is_empty() {
                String::new()
            } else {
                format!("{source}/")
            };
            found.scopes.push(Scope::Prefix(prefix));
            walk(path, root, &mut found, &mut seen)?;
        } else {
            found.scopes.push(Scope::Exact(source.clone()));
            if seen.insert(source.clone()) {
                found.inputs.push(Input {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    Ok(found)
}

fn walk(
    dir: &Path,
    root: &Path,
    found: &mut Discovered,
    seen: &mut HashSet<String>,
) -> Result<(), IngestError> {
    let unreadable = |error: std::io::Error| IngestError::Path {
        path: dir.display().to_string(),
        reason: error.to_string(),
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(unreadable)?;
        if file_type.is_dir() {
            walk(&path, root, found, seen)?;
            continue;
        }
        let source = source_name(&path, root);
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !DOCUMENT_EXTENSIONS.contains(&extension.as_str()) {
            found.skipped.push(Skipped {
                source,
                reason: if extension.is_empty() {
                    "no extension (name the file to ingest it as text)".to_owned()
                } else {
                    format!("`.{extension}` is not a document type (Markdown, HTML, PDF, text)")
                },
            });
            continue;
        }
        if seen.insert(source.clone()) {
            found.inputs.push(Input { path, source });
        }
    }
    Ok(())
}

/// Told how ingestion goes, for a progress bar.
pub trait Observer: Send + Sync {
    /// Files to look at.
    fn reading(&self, _files: usize) {}
    fn read(&self, _source: &str) {}
    /// Texts to embed (cache misses).
    fn embedding(&self, _texts: usize) {}
    fn embedded(&self, _texts: usize) {}
}

/// An observer that says nothing.
pub struct Quiet;

impl Observer for Quiet {}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    pub skipped: Vec<Skipped>,
    /// Chunks stored by this ingest, and of them, how many needed the embedder.
    pub chunks: usize,
    pub embedded: usize,
    /// Bytes of the files read (changed or new).
    pub bytes: u64,
    pub elapsed: Duration,
}

/// The text embedded for a chunk: its heading path (or the document title when it has
/// none) above the text, so a chunk that does not repeat its topic still carries it.
pub fn embed_text(title: &str, headings: &[String], text: &str) -> String {
    let context = if headings.is_empty() {
        title.to_owned()
    } else {
        headings.join(" > ")
    };
    if context.is_empty() || text.starts_with(context.as_str()) {
        text.to_owned()
    } else {
        format!("{context}\n\n{text}")
    }
}

struct Pending {
    document: Document,
    bytes: usize,
    chunks: Vec<(NewChunk, String)>,
    replaces: bool,
}

/// Ingests `discovered` into `backend`, embedding with `embedder`, as one change.
pub async fn ingest(
    backend: &dyn Backend,
    embedder: &dyn Embedder,
    discovered: Discovered,
    observer: &dyn Observer,
) -> Result<Report, IngestError> {
    let started = Instant::now();
    let manifest = backend.manifest().clone();
    if embedder.id() != manifest.embedder {
        return Err(StoreError::Mismatch(format!(
            "collection `{}` was embedded with `{}`, not `{}`",
            manifest.name,
            manifest.embedder,
            embedder.id()
        ))
        .into());
    }
    let stored: HashMap<String, String> = backend
        .documents()
        .await?
        .into_iter()
        .map(|d| (d.source, d.hash))
        .collect();
    let mut report = Report {
        skipped: discovered.skipped,
        ..Report::default()
    };
    let present: HashSet<&str> = discovered
        .inputs
        .iter()
        .map(|i| i.source.as_str())
        .collect();
    observer.reading(discovered.inputs.len());
    let mut pending: Vec<Pending> = Vec::new();
    for input in &discovered.inputs {
        observer.read(&input.source);
        let bytes = match std::fs::read(&input.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                report.skipped.push(Skipped {
                    source: input.source.clone(),
                    reason: format!("cannot read it: {error}"),
                });
                continue;
            }
        };
        if stored.get(&input.source) == Some(&hash_hex(&bytes)) {
            report.unchanged += 1;
            continue;
        }
        let extension = input
            .path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let stem = input
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let loaded = document::from_bytes(&input.source, &extension, &stem, &bytes);
        let document = match loaded {
            Ok(document) => document,
            Err(error) => {
                report.skipped.push(Skipped {
                    source: input.source.clone(),
                    reason: skip_reason(&error, stored.contains_key(&input.source)),
                });
                continue;
            }
        };
        let chunks = chunk(
            &document.text,
            document.format.is_markdown(),
            &manifest.chunking,
        )
        .map_err(|error| IngestError::Chunk(error.to_string()))?;
        let chunks = chunks
            .into_iter()
            .map(|c| {
                let embedded = embed_text(&document.title, &c.headings, &c.text);
                let new = NewChunk {
                    ordinal: c.index,
                    embed_hash: hash_hex(embedded.as_bytes()),
                    page: document.page_at(c.start),
                    text: c.text,
                    start: c.start,
                    end: c.end,
                    headings: c.headings,
                    tokens: c.tokens,
                    vector: Vec::new(),
                };
                (new, embedded)
            })
            .collect();
        report.bytes += bytes.len() as u64;
        pending.push(Pending {
            replaces: stored.contains_key(&input.source),
            bytes: bytes.len(),
            document,
            chunks,
        });
    }

    // Vectors: the cache first, then the embedder in batches, each text once.
    let hashes: Vec<String> = pending
        .iter()
        .flat_map(|p| p.chunks.iter().map(|(c, _)| c.embed_hash.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut vectors = backend.cached_vectors(&hashes).await?;
    let mut missing: Vec<(String, String)> = Vec::new();
    let mut wanted = HashSet::new();
    for (chunk, text) in pending.iter().flat_map(|p| &p.chunks) {
        if !vectors.contains_key(&chunk.embed_hash) && wanted.insert(chunk.embed_hash.clone()) {
            missing.push((chunk.embed_hash.clone(), text.clone()));
        }
    }
    // Similar lengths together: a batch is padded to its longest text.
    missing.sort_by_key(|(_, text)| text.len());
    observer.embedding(missing.len());
    for batch in missing.chunks(EMBED_BATCH) {
        let texts: Vec<String> = batch.iter().map(|(_, text)| text.clone()).collect();
        let embedded = embedder
            .embed(&texts)
            .await
            .map_err(|error| IngestError::Embed {
                embedder: manifest.embedder.clone(),
                error,
            })?;
        if embedded.len() != texts.len() {
            return Err(IngestError::Embed {
                embedder: manifest.embedder.clone(),
                error: ModelError::new(
                    plumb_core::ModelErrorKind::Protocol,
                    format!("{} vectors for {} texts", embedded.len(), texts.len()),
                ),
            });
        }
        for ((hash, _), vector) in batch.iter().zip(embedded) {
            if vector.len() != manifest.dimensions {
                return Err(IngestError::Dimensions {
                    embedder: manifest.embedder.clone(),
                    collection: manifest.name.clone(),
                    got: vector.len(),
                    expected: manifest.dimensions,
                });
            }
            vectors.insert(hash.clone(), vector);
        }
        observer.embedded(batch.len());
        report.embedded += batch.len();
    }

    let mut change = Change::default();
    for pending in pending {
        let source = pending.document.source.clone();
        if pending.replaces {
            report.updated.push(source.clone());
        } else {
            report.added.push(source.clone());
        }
        let mut chunks = Vec::with_capacity(pending.chunks.len());
        for (mut chunk, _) in pending.chunks {
            chunk.vector = vectors.get(&chunk.embed_hash).cloned().unwrap_or_default();
            chunks.push(chunk);
        }
        report.chunks += chunks.len();
        change.add.push(NewDocument {
            source,
            title: pending.document.title,
            format: pending.document.format,
            hash: pending.document.hash,
            bytes: pending.bytes,
            chunks,
        });
    }
    let skipped: HashSet<&str> = report.skipped.iter().map(|s| s.source.as_str()).collect();
    for source in stored.keys() {
        let gone = !present.contains(source.as_str()) && !skipped.contains(source.as_str());
        if gone && discovered.scopes.iter().any(|s| s.covers(source)) {
            change.remove.push(source.clone());
        }
    }
    change.remove.sort();
    report.removed = change.remove.clone();
    if !change.add.is_empty() || !change.remove.is_empty() {
        backend.apply(change).await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn skip_reason(error: &LoadError, kept: bool) -> String {
    let reason = match error {
        LoadError::Unreadable { reason, .. } => format!("cannot read it: {reason}"),
        LoadError::Binary { .. } => {
            "a binary file, not text (supported: Markdown, HTML, PDF, plain text)".to_owned()
        }
        LoadError::Empty { .. } => "no text in it".to_owned(),
        LoadError::Pdf { reason, .. } => format!("the PDF cannot be read: {reason}"),
    };
    if kept {
        format!("{reason}; its previously ingested version is kept")
    } else {
        reason
    }
}
