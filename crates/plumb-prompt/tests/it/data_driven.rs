use std::path::{Path, PathBuf};

use plumb_prompt::PromptFile;
use plumb_prompt::diff::{DiffStyle, diff};
use plumb_prompt::lint::lint;

fn test_data(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test_data")
        .join(kind)
}

/// Compares `actual` with the expected file, or writes it under `UPDATE_EXPECT=1`.
fn check(expected_path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(expected_path).unwrap_or_else(|_| {
        panic!(
            "missing {}; run with UPDATE_EXPECT=1 to create it",
            expected_path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_EXPECT=1 rewrites it)",
        expected_path.display()
    );
}

fn cases(dir: &Path, suffix: &str) -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.strip_suffix(suffix)?.to_owned();
            Some((name, path))
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    cases
}

#[test]
fn diff_cases() {
    let dir = test_data("diff");
    for (name, old_path) in cases(&dir, ".old.yaml") {
        let old = PromptFile::load(&old_path).unwrap();
        let new = PromptFile::load(&dir.join(format!("{name}.new.yaml"))).unwrap();
        let text = diff(&old, &new, "old", "new", DiffStyle::default())
            .unwrap_or_else(|| "(no differences)\n".to_owned());
        check(&dir.join(format!("{name}.diff")), &text);
    }
}

#[test]
fn lint_cases() {
    let dir = test_data("lint");
    // A fixed, tokenizer-free count keeps the expected files stable.
    let count = |text: &str| text.split_whitespace().count() as u64;
    for (name, path) in cases(&dir, ".yaml") {
        let text = std::fs::read_to_string(&path).unwrap();
        let report = lint(&text, Path::new(&format!("{name}.yaml")), &count);
        let mut out = String::new();
        for finding in &report.findings {
            out.push_str(&format!("{finding}\n"));
        }
        for tokens in &report.tokens {
            out.push_str(&format!("tokens: {} {}\n", tokens.part, tokens.tokens));
        }
        out.push_str(&format!(
            "{} errors, {} warnings\n",
            report.errors(),
            report.warnings()
        ));
        check(&dir.join(format!("{name}.lint")), &out);
    }
}

#[test]
fn diff_marks_words_with_color_too() {
    let dir = test_data("diff");
    let old = PromptFile::load(&dir.join("word_change.old.yaml")).unwrap();
    let new = PromptFile::load(&dir.join("word_change.new.yaml")).unwrap();
    let text = diff(&old, &new, "a", "b", DiffStyle { color: true }).unwrap();
    assert!(text.contains("\x1b[7msingle "), "{text:?}");
    assert!(!text.contains("{+"), "{text:?}");
}
