//! Where a project's collections live: a directory of embedded collections (the default,
//! `.plumb/rag`), or a PostgreSQL database with pgvector (`postgres://…`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::sqlite::SqliteCollection;
use crate::store::{Backend, Manifest, StoreError};
use crate::vectors::HnswParams;

/// The collections of one place.
pub enum Store {
    Directory(PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(crate::pgvector::PgStore),
}

impl Store {
    /// Opens `spec`: a `postgres://` or `postgresql://` URL connects to that database; anything
    /// else is a directory (which need not exist yet).
    pub async fn open(spec: &str) -> Result<Store, StoreError> {
        if is_url(spec) {
            #[cfg(feature = "postgres")]
            {
                return Ok(Store::Postgres(
                    crate::pgvector::PgStore::connect(spec).await?,
                ));
            }
            #[cfg(not(feature = "postgres"))]
            {
                return Err(StoreError::Mismatch(
                    "this plumb was built without PostgreSQL support (cargo feature `postgres`)"
                        .to_owned(),
                ));
            }
        }
        Ok(Store::Directory(PathBuf::from(spec)))
    }

    /// The directory, or the database URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Store::Directory(dir) => dir.display().to_string(),
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.location().to_owned(),
        }
    }

    /// The collections' names, sorted.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Directory(dir) => {
                let mut names: Vec<String> = std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| SqliteCollection::exists(&e.path()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Ok(names)
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.list().await,
        }
    }

    /// Collection `name`, or `None` when there is none of that name.
    pub async fn open_collection(
        &self,
        name: &str,
    ) -> Result<Option<Arc<dyn Backend>>, StoreError> {
        match self {
            Store::Directory(dir) => {
                let dir = dir.join(name);
                if !SqliteCollection::exists(&dir) {
                    return Ok(None);
                }
                Ok(Some(Arc::new(SqliteCollection::open(
                    &dir,
                    HnswParams::default(),
                )?)))
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => Ok(store
                .open(name)
                .await?
                .map(|c| Arc::new(c) as Arc<dyn Backend>)),
        }
    }

    /// Makes a new, empty collection named by the manifest.
    pub async fn create(&self, manifest: Manifest) -> Result<Arc<dyn Backend>, StoreError> {
        match self {
            Store::Directory(dir) => Ok(Arc::new(SqliteCollection::create(
                &dir.join(&manifest.name),
                manifest,
                HnswParams::default(),
            )?)),
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => Ok(Arc::new(store.create(manifest).await?)),
        }
    }
}

/// Whether `spec` names a PostgreSQL database rather than a directory.
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}
