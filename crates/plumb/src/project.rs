//! Where things are: the project root, its database, and whether to use color.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plumb_registry::{ProjectConfig, Registry};
use plumb_store::{SqliteStore, Store};

use crate::user_error;

/// The nearest ancestor of `start` that holds `plumb.yaml`, `.plumb/` or `.git`, else `start`.
pub fn root_from(start: &Path) -> PathBuf {
    let mut current = Some(start);
    while let Some(dir) = current {
        if dir.join("plumb.yaml").is_file()
            || dir.join(".plumb").is_dir()
            || dir.join(".git").exists()
        {
            return dir.to_owned();
        }
        current = dir.parent();
    }
    start.to_owned()
}

pub fn database_path(explicit: Option<&Path>, start: &Path) -> PathBuf {
    match explicit {
        Some(path) => path.to_owned(),
        None => root_from(start).join(".plumb").join("plumb.db"),
    }
}

pub fn open_store(explicit: Option<&Path>, start: &Path) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_db(explicit, start)?)
}

pub fn open_db(explicit: Option<&Path>, start: &Path) -> anyhow::Result<Arc<SqliteStore>> {
    let path = database_path(explicit, start);
    let store = SqliteStore::open(&path).map_err(|error| {
        user_error(
            error.to_string(),
            Some("pass another database with `--db PATH`".to_owned()),
        )
    })?;
    Ok(Arc::new(store))
}

/// The project's registry: its database, with the promotion policy of its `plumb.yaml`.
pub fn open_registry(explicit: Option<&Path>, start: &Path) -> anyhow::Result<Registry> {
    let db = open_db(explicit, start)?;
    let config = ProjectConfig::load(&root_from(start))?;
    Ok(Registry::new(db, config))
}

pub fn current_dir() -> anyhow::Result<PathBuf> {
    std::env::current_dir()
        .map_err(|error| user_error(format!("cannot read the current directory: {error}"), None))
}

/// `2026-11-22 08:54` (UTC) for listings.
pub fn utc_minute(ms: i64) -> String {
    utc_time(ms, "%Y-%m-%d %H:%M")
}

/// A stored time (Unix milliseconds) in UTC with a strftime `format`.
pub fn utc_time(ms: i64, format: &str) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime(format).to_string())
        .unwrap_or_default()
}

/// Color only on terminals, and never when `NO_COLOR` is set.
pub fn use_color(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
