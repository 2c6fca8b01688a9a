use std::path::Path;

use plumb_prompt::Selector;
use plumb_registry::{MoveOptions, PushOptions, Registry, bundle};
use proptest::prelude::*;

use crate::{admin, open, prompt};

/// One registry operation of a generated history.
#[derive(Clone, Debug)]
enum Op {
    Push {
        prompt: usize,
        text: String,
        semver: bool,
    },
    Label {
        prompt: usize,
        label: usize,
        version: u64,
    },
    Rollback {
        prompt: usize,
        label: usize,
    },
    Deprecate {
        prompt: usize,
    },
}

const NAMES: [&str; 3] = ["triage", "summarize", "extract-v2"];
const LABELS: [&str; 3] = ["staging", "canary", "eu-beta"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, "[a-zA-Z .:'\"\n-]{1,40}", any::<bool>())
            .prop_map(|(prompt, text, semver)| Op::Push { prompt, text, semver }),
        3 => (0..3usize, 0..3usize, 1..6u64)
            .prop_map(|(prompt, label, version)| Op::Label { prompt, label, version }),
        1 => (0..3usize, 0..3usize).prop_map(|(prompt, label)| Op::Rollback { prompt, label }),
        1 => (0..3usize).prop_map(|prompt| Op::Deprecate { prompt }),
    ]
}

/// Applies `ops`, ignoring the ones the registry refuses (labels on missing versions,
/// rollbacks without history): refusals are part of a realistic history too.
fn build(registry: &Registry, ops: &[Op]) {
    let mut semvers = 0;
    for op in ops {
        match op {
            Op::Push {
                prompt: index,
                text,
                semver,
            } => {
                let mut file = prompt(NAMES[*index], text);
                file.description = Some(format!("about {}", NAMES[*index]));
                let semver = semver.then(|| {
                    semvers += 1;
                    format!("1.{semvers}.0")
                });
                let options = PushOptions {
                    message: format!("change {text:?}"),
                    semver,
                };
                registry.push(&file, &options, &admin(), None).unwrap();
            }
            Op::Label {
                prompt,
                label,
                version,
            } => {
                let _ = registry.set_label(
                    NAMES[*prompt],
                    LABELS[*label],
                    &Selector::Version(*version),
                    &admin(),
                    &MoveOptions::default(),
                );
            }
            Op::Rollback { prompt, label } => {
                let _ = registry.rollback(NAMES[*prompt], LABELS[*label], &admin(), None);
            }
            Op::Deprecate { prompt } => {
                let _ = registry.deprecate(NAMES[*prompt], None, "superseded", &admin());
            }
        }
    }
}

fn read_tree(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for prompt in std::fs::read_dir(dir).unwrap() {
        let prompt = prompt.unwrap().path();
        for file in std::fs::read_dir(&prompt).unwrap() {
            let file = file.unwrap().path();
            let name = file.strip_prefix(dir).unwrap().display().to_string();
            files.push((name, std::fs::read_to_string(&file).unwrap()));
        }
    }
    files.sort();
    files
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn export_import_export_is_identity(ops in prop::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let source = open(&dir.path().join("a.db"));
        build(&source, &ops);
        if source.list().unwrap().is_empty() {
            return Ok(());
        }
        let first = dir.path().join("first");
        bundle::export(&source, &first, &[]).unwrap();
        let target = open(&dir.path().join("b.db"));
        bundle::import(&target, &first, &admin()).unwrap();
        let second = dir.path().join("second");
        bundle::export(&target, &second, &[]).unwrap();
        prop_assert_eq!(read_tree(&first), read_tree(&second));
        // Importing the same export again changes nothing.
        let again = bundle::import(&target, &first, &admin()).unwrap();
        prop_assert!(again.iter().all(|o| o.added == 0));
        // What resolves is the same on both sides.
        for prompt in source.list().unwrap() {
            for label in &prompt.labels {
                let reference = format!("{}@{}", prompt.name, label.label);
                let a = source.resolve_str(&reference).unwrap();
                let b = target.resolve_str(&reference).unwrap();
                prop_assert_eq!(a.version.hash, b.version.hash);
                prop_assert_eq!(a.file, b.file);
            }
        }
    }
}

#[test]
fn import_refuses_edited_history_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("a.db"));
    source
        .push(
            &prompt("alpha", "one"),
            &PushOptions::default(),
            &admin(),
            None,
        )
        .unwrap();
    source
        .push(
            &prompt("beta", "one"),
            &PushOptions::default(),
            &admin(),
            None,
        )
        .unwrap();
    let export = dir.path().join("export");
    bundle::export(&source, &export, &[]).unwrap();
    let edited = export.join("beta").join("v1.yaml");
    let text = std::fs::read_to_string(&edited)
        .unwrap()
        .replace("one", "two");
    std::fs::write(&edited, text).unwrap();
    let target = open(&dir.path().join("b.db"));
    let error = bundle::import(&target, &export, &admin()).unwrap_err();
    assert!(
        error.to_string().contains("does not match the hash"),
        "{error}"
    );
    // alpha was valid, but the import is all or nothing.
    assert!(target.list().unwrap().is_empty());
}

#[test]
fn import_conflicts_with_diverged_history() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("a.db"));
    source
        .push(
            &prompt("alpha", "one"),
            &PushOptions::default(),
            &admin(),
            None,
        )
        .unwrap();
    let export = dir.path().join("export");
    bundle::export(&source, &export, &[]).unwrap();
    let target = open(&dir.path().join("b.db"));
    target
        .push(
            &prompt("alpha", "different"),
            &PushOptions::default(),
            &admin(),
            None,
        )
        .unwrap();
    let error = bundle::import(&target, &export, &admin()).unwrap_err();
    assert!(
        error.to_string().contains("version 1 here has content"),
        "{error}"
    );
}
