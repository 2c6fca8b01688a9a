#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

//! The registry through its public seam: versions and labels, rollback, keys, two writers
//! racing on one database file, and export → import → export as an identity.

mod concurrency;
mod export_import;
mod registry;

use std::path::Path;
use std::sync::Arc;

use plumb_prompt::PromptFile;
use plumb_registry::{Actor, ProjectConfig, Registry, Role};
use plumb_store::SqliteStore;

pub fn open(db: &Path) -> Registry {
    Registry::new(
        Arc::new(SqliteStore::open(db).unwrap()),
        ProjectConfig::default(),
    )
}

pub fn admin() -> Actor {
    Actor {
        name: "tester".into(),
        role: Role::Admin,
        key_id: None,
    }
}

pub fn prompt(name: &str, system: &str) -> PromptFile {
    let text = format!(
        "name: {name}\nmessages:\n  - role: system\n    content: {system:?}\n  - role: user\n    content: \"{{{{ ticket }}}}\"\nvariables:\n  ticket: {{type: string}}\n"
    );
    PromptFile::parse(&text, Path::new("test.yaml")).unwrap()
}
