//! `plumb prompt …`: the registry from the command line (push, list, show, history, diff,
//! label, rollback, deprecate, export, import, lint).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use plumb_core::short_hash;
use plumb_prompt::diff::{DiffStyle, diff};
use plumb_prompt::lint;
use plumb_prompt::{PromptFile, PromptRef, PromptTemplate, Selector, VarType, YamlScope};
use plumb_registry::{Actor, MoveOptions, PushOptions, Registry, RegistryError, bundle};
use plumb_store::PromptRecord;
use serde_json::{Map, Value, json};

use crate::{Outcome, StoreArgs, project, user_error};

#[derive(Subcommand, Clone, Debug)]
pub enum PromptCommand {
    /// Store prompt files as new versions (unchanged content makes no new version)
    Push {
        /// Prompt files or directories of them [default: prompts/]
        paths: Vec<PathBuf>,
        /// Changelog message recorded with the new versions
        #[arg(short, long, default_value = "")]
        message: String,
        /// Semantic version tag for the new version (one prompt only)
        #[arg(long)]
        semver: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List prompts with their latest version and labels
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one version (NAME, NAME@VERSION or NAME@LABEL), or render it
    Show {
        /// `NAME`, `NAME@VERSION`, `NAME@LABEL` or `NAME@latest`
        reference: String,
        /// Render the messages with variables instead of showing the template
        #[arg(long)]
        render: bool,
        /// A variable for --render, `name=value` (repeatable)
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Versions of a prompt and the moves of its labels
    History {
        /// The prompt's name
        name: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Differences between two versions (references or prompt files), per message and parameter
    Diff {
        /// A reference (`triage@3`, `triage@production`) or a prompt file
        a: String,
        /// The other side [default: the file in A against the registry's latest version]
        b: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Point a label at a version, under the promotion policy of plumb.yaml
    Label {
        /// The prompt's name
        name: String,
        /// A version number, `latest`, or another label
        version: String,
        /// The label, e.g. `production` or `staging`
        label: String,
        /// Override the promotion policy (recorded in the audit log with --reason)
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why: recorded in the audit log
        #[arg(long)]
        reason: Option<String>,
        /// Check the policy and show the evidence without moving the label
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Move a label back to the version it pointed at before its last move
    Rollback {
        /// The prompt's name
        name: String,
        /// The label, e.g. `production` or `staging`
        label: String,
        /// Why: recorded in the audit log
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a label (its version stays; `NAME@LABEL` stops resolving)
    Unlabel {
        /// The prompt's name
        name: String,
        /// The label, e.g. `canary`
        label: String,
        /// Why: recorded in the audit log
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Mark a prompt deprecated (it still resolves, with a warning), or undo that
    Deprecate {
        /// The prompt's name
        name: String,
        /// The prompt to use instead (`other` or `other@production`)
        #[arg(long)]
        replacement: Option<String>,
        /// Why: recorded in the audit log
        #[arg(long, default_value = "")]
        reason: String,
        /// Remove the deprecation
        #[arg(long, conflicts_with_all = ["replacement"])]
        undo: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write the registry as plain files (one folder per prompt) that diff well in git
    Export {
        /// Folder to write (created if missing)
        dir: PathBuf,
        /// Only these prompts [default: all]
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Read an export back (all or nothing; checks every version against its hash)
    Import {
        /// A folder written by `plumb prompt export` (or one prompt's folder in it)
        dir: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check prompt files: variables, templates, risky patterns, token counts
    Lint {
        /// Prompt files or directories [default: prompts/]
        paths: Vec<PathBuf>,
        /// Count tokens as this model's tokenizer would (tiktoken encodings)
        #[arg(long, default_value = "gpt-4o-mini")]
        model: String,
        /// Fail on warnings too
        #[arg(long)]
        strict: bool,
    },
}

/// Registry errors as the CLI shows them: located errors keep their location, the rest print
/// their message and hint; every one the user can fix exits 2.
pub fn cli_error(error: RegistryError) -> anyhow::Error {
    match error {
        RegistryError::Source(source) => anyhow::Error::new(source),
        error if error.is_user_error() => {
            let hint = error.hint().map(str::to_owned);
            user_error(error.to_string(), hint)
        }
        error => anyhow::Error::new(error),
    }
}

fn default_paths(paths: Vec<PathBuf>, cwd: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !paths.is_empty() {
        return Ok(paths);
    }
    let default = project::root_from(cwd).join("prompts");
    if default.is_dir() {
        Ok(vec![default])
    } else {
        Err(user_error(
            "no prompt files given and there is no prompts/ folder",
            Some("pass prompt files or a folder: `plumb prompt push prompts/triage.yaml`".into()),
        ))
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn labels_text(prompt: &PromptRecord) -> String {
    prompt
        .labels
        .iter()
        .map(|l| format!("{}=v{}", l.label, l.version))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(command: PromptCommand) -> anyhow::Result<Outcome> {
    let cwd = project::current_dir()?;
    let open = |store: &StoreArgs| project::open_registry(store.db.as_deref(), &cwd);
    match command {
        PromptCommand::Push {
            paths,
            message,
            semver,
            json,
            store,
        } => {
            let registry = open(&store)?;
            let paths = default_paths(paths, &cwd)?;
            let reports = registry
                .push_paths(&paths, &PushOptions { message, semver }, &Actor::local())
                .map_err(cli_error)?;
            if json {
                print_json(&json!(reports))?;
                return Ok(Outcome::Ok);
            }
            for report in reports {
                let source = report
                    .source
                    .as_ref()
                    .map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default();
                if report.created {
                    println!(
                        "pushed {} v{} {}{source}",
                        report.name,
                        report.version,
                        short_hash(&report.hash)
                    );
                } else {
                    println!(
                        "unchanged {} v{}{source}{}",
                        report.name,
                        report.version,
                        if report.meta_changed {
                            " (metadata updated)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(Outcome::Ok)
        }
        PromptCommand::List { json, store } => {
            let registry = open(&store)?;
            let prompts = registry.list().map_err(cli_error)?;
            if json {
                let list: Vec<Value> = prompts.iter().map(plumb_registry::prompt_json).collect();
                print_json(&json!(list))?;
                return Ok(Outcome::Ok);
            }
            if prompts.is_empty() {
                eprintln!(
                    "plumb: the registry is empty; push prompt files with `plumb prompt push`"
                );
                return Ok(Outcome::Ok);
            }
            println!(
                "{:<24} {:>6}  {:<30} {:<18} {:<6} status",
                "prompt", "latest", "labels", "owner", "risk"
            );
            for prompt in &prompts {
                println!(
                    "{:<24} {:>6}  {:<30} {:<18} {:<6} {}",
                    prompt.name,
                    format!("v{}", prompt.latest_version),
                    labels_text(prompt),
                    prompt.meta.owner.as_deref().unwrap_or("-"),
                    prompt.meta.risk.as_deref().unwrap_or("-"),
                    match &prompt.deprecation {
                        Some(d) => match &d.replacement {
                            Some(r) => format!("deprecated → {r}"),
                            None => "deprecated".to_owned(),
                        },
                        None => "active".to_owned(),
                    }
                );
            }
            Ok(Outcome::Ok)
        }
        PromptCommand::Show {
            reference,
            render,
            vars,
            json,
            store,
        } => {
            let registry = open(&store)?;
            let resolved = registry.resolve_str(&reference).map_err(cli_error)?;
            if let Some(notice) = plumb_registry::deprecation_notice(&resolved.prompt) {
                eprintln!("warning: {notice}");
            }
            let version = &resolved.version;
            let labels = resolved.prompt.labels_at(version.version);
            if render {
                let values = parse_vars(&vars, &resolved.file)?;
                let template = PromptTemplate::compile(resolved.file.clone())
                    .map_err(|e| user_error(e.to_string(), None))?;
                let messages = template.render(&values).map_err(|e| {
                    user_error(
                        format!("cannot render {reference}: {e}"),
                        Some("pass variables with `--var name=value`".into()),
                    )
                })?;
                if json {
                    print_json(&json!({"messages": messages, "params": resolved.file.params}))?;
                } else {
                    for message in messages {
                        println!("[{}]\n{}\n", message.role.as_str(), message.content);
                    }
                }
                return Ok(Outcome::Ok);
            }
            if json {
                print_json(&json!({
                    "name": version.name, "version": version.version, "hash": version.hash,
                    "semver": version.semver, "message": version.message, "author": version.author,
                    "created_at": version.created_at, "labels": labels,
                    "prompt": plumb_prompt::to_value(&resolved.file, YamlScope::Full),
                }))?;
                return Ok(Outcome::Ok);
            }
            println!(
                "# {} v{}{} · {} · {} · {}",
                version.name,
                version.version,
                version
                    .semver
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                short_hash(&version.hash),
                version.author,
                project::utc_minute(version.created_at)
            );
            if !version.message.is_empty() {
                println!("# {}", version.message);
            }
            if !labels.is_empty() {
                println!("# labels: {}", labels.join(", "));
            }
            print!("{}", plumb_prompt::to_yaml(&resolved.file, YamlScope::Full));
            Ok(Outcome::Ok)
        }
        PromptCommand::History { name, json, store } => {
            let registry = open(&store)?;
            let prompt = registry.prompt(&name).map_err(cli_error)?;
            let versions = registry.db().versions(&name)?;
            let history = registry.db().label_history(&name)?;
            if json {
                let list: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"version": v.version, "hash": v.hash, "semver": v.semver, "message": v.message, "author": v.author, "created_at": v.created_at}))
                    .collect();
                print_json(&json!({"versions": list, "label_moves": history}))?;
                return Ok(Outcome::Ok);
            }
            println!(
                "{:>5}  {:<12} {:<9} {:<16} {:<24} message",
                "ver", "hash", "semver", "when", "author"
            );
            for version in versions.iter().rev() {
                let labels = prompt.labels_at(version.version);
                let tags = if labels.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", labels.join(", "))
                };
                println!(
                    "{:>5}  {:<12} {:<9} {:<16} {:<24} {}{tags}",
                    format!("v{}", version.version),
                    short_hash(&version.hash),
                    version.semver.as_deref().unwrap_or("-"),
                    project::utc_minute(version.created_at),
                    version.author,
                    version.message
                );
            }
            if !history.is_empty() {
                println!("\nlabel moves:");
                for entry in history.iter().rev() {
                    let from = entry.from.map(|v| format!("v{v}")).unwrap_or("-".into());
                    let to = entry.to.map(|v| format!("v{v}")).unwrap_or("-".into());
                    println!(
                        "  {}  {:<12} {from} → {to}  ({}, {})",
                        project::utc_minute(entry.at),
                        entry.label,
                        entry.kind.as_str(),
                        entry.actor
                    );
                }
            }
            Ok(Outcome::Ok)
        }
        PromptCommand::Diff { a, b, store } => {
            let registry = open(&store)?;
            let (old, old_label, new, new_label) = match b {
                Some(b) => {
                    let (old, old_label) = side(&registry, &a)?;
                    let (new, new_label) = side(&registry, &b)?;
                    (old, old_label, new, new_label)
                }
                None => {
                    let path = PathBuf::from(&a);
                    if !path.is_file() {
                        return Err(user_error(
                            format!("`{a}` is not a prompt file, and diff needs two sides"),
                            Some("`plumb prompt diff triage@production triage@latest`, or a file alone to compare it with its latest version".into()),
                        ));
                    }
                    let new = PromptFile::load(&path)?;
                    let reference = format!("{}@latest", new.name);
                    let (old, old_label) = side(&registry, &reference)?;
                    (old, old_label, new, path.display().to_string())
                }
            };
            let style = DiffStyle {
                color: project::use_color(&std::io::stdout()),
            };
            match diff(&old, &new, &old_label, &new_label, style) {
                Some(text) => print!("{text}"),
                None => println!(
                    "no differences in content between {old_label} and {new_label} (hash {})",
                    short_hash(&new.content_hash())
                ),
            }
            Ok(Outcome::Ok)
        }
        PromptCommand::Label {
            name,
            version,
            label,
            force,
            reason,
            dry_run,
            json,
            store,
        } => {
            let registry = open(&store)?;
            let selector = PromptRef::parse(&format!("{name}@{version}"))
                .map_err(|m| user_error(m, None))?
                .selector;
            if dry_run {
                let resolved = registry
                    .resolve(&PromptRef {
                        name: name.clone(),
                        selector,
                    })
                    .map_err(cli_error)?;
                let (evidence, missing) = registry
                    .check_promotion(&name, &label, resolved.version.version)
                    .map_err(cli_error)?;
                if json {
                    print_json(
                        &json!({"allowed": missing.is_empty(), "missing": missing, "evidence": evidence}),
                    )?;
                } else {
                    print_evidence(evidence.as_ref());
                    if missing.is_empty() {
                        println!(
                            "{name}@{label} → v{}: allowed by the policy",
                            resolved.version.version
                        );
                    } else {
                        println!(
                            "{name}@{label} → v{}: refused; missing evidence:",
                            resolved.version.version
                        );
                        for item in &missing {
                            println!("  - {item}");
                        }
                    }
                }
                return Ok(if missing.is_empty() {
                    Outcome::Ok
                } else {
                    Outcome::GateFailed
                });
            }
            let outcome = registry
                .set_label(
                    &name,
                    &label,
                    &selector,
                    &Actor::local(),
                    &MoveOptions { force, reason },
                )
                .map_err(cli_error)?;
            if json {
                print_json(&json!(outcome))?;
                return Ok(Outcome::Ok);
            }
            let from = outcome
                .from
                .map(|v| format!("v{v}"))
                .unwrap_or("unset".into());
            let to = outcome
                .to
                .map(|v| format!("v{v}"))
                .unwrap_or("unset".into());
            if !outcome.moved {
                println!("{name}@{label} is already {to}");
                return Ok(Outcome::Ok);
            }
            print_evidence(outcome.evidence.as_ref());
            if outcome.forced {
                eprintln!("warning: policy overridden (recorded in the audit log); it asked for:");
                for item in &outcome.overridden {
                    eprintln!("  - {item}");
                }
            }
            println!("{name}@{label}: {from} → {to}");
            Ok(Outcome::Ok)
        }
        PromptCommand::Rollback {
            name,
            label,
            reason,
            store,
        } => {
            let registry = open(&store)?;
            let outcome = registry
                .rollback(&name, &label, &Actor::local(), reason)
                .map_err(cli_error)?;
            println!(
                "{name}@{label} rolled back: v{} → v{}",
                outcome.from.unwrap_or_default(),
                outcome.to.unwrap_or_default()
            );
            Ok(Outcome::Ok)
        }
        PromptCommand::Unlabel {
            name,
            label,
            reason,
            store,
        } => {
            let registry = open(&store)?;
            let outcome = registry
                .remove_label(&name, &label, &Actor::local(), reason)
                .map_err(cli_error)?;
            println!(
                "{name}@{label} removed (was v{})",
                outcome.from.unwrap_or_default()
            );
            Ok(Outcome::Ok)
        }
        PromptCommand::Deprecate {
            name,
            replacement,
            reason,
            undo,
            store,
        } => {
            let registry = open(&store)?;
            if undo {
                registry
                    .undeprecate(&name, &Actor::local())
                    .map_err(cli_error)?;
                println!("{name} is active again");
            } else {
                registry
                    .deprecate(&name, replacement.as_deref(), &reason, &Actor::local())
                    .map_err(cli_error)?;
                match replacement {
                    Some(r) => println!("{name} is deprecated; replacement: {r}"),
                    None => println!("{name} is deprecated"),
                }
            }
            Ok(Outcome::Ok)
        }
        PromptCommand::Export {
            dir,
            prompts,
            store,
        } => {
            let registry = open(&store)?;
            let report = bundle::export(&registry, &dir, &prompts).map_err(cli_error)?;
            println!(
                "exported {} prompts ({} versions) to {}",
                report.prompts,
                report.versions,
                dir.display()
            );
            Ok(Outcome::Ok)
        }
        PromptCommand::Import { dir, store } => {
            let registry = open(&store)?;
            let outcomes = bundle::import(&registry, &dir, &Actor::local()).map_err(cli_error)?;
            for outcome in outcomes {
                println!(
                    "imported {}: {} new versions{}",
                    outcome.name,
                    outcome.added,
                    if outcome.created { " (new prompt)" } else { "" }
                );
            }
            Ok(Outcome::Ok)
        }
        PromptCommand::Lint {
            paths,
            model,
            strict,
        } => {
            let paths = default_paths(paths, &cwd)?;
            let files = plumb_registry::collect_prompt_files(&paths).map_err(cli_error)?;
            let count = |text: &str| plumb_provider::tokens::count(&model, text);
            let (mut errors, mut warnings) = (0, 0);
            for path in &files {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    user_error(format!("cannot read {}: {e}", path.display()), None)
                })?;
                let report = lint::lint(&text, path, &count);
                errors += report.errors();
                warnings += report.warnings();
                for finding in &report.findings {
                    println!("{finding}");
                }
                if !report.tokens.is_empty() {
                    let parts: Vec<String> = report
                        .tokens
                        .iter()
                        .map(|t| format!("{} {}", t.part, t.tokens))
                        .collect();
                    println!(
                        "{}: tokens ({model}, variables unrendered): {} · total {}",
                        path.display(),
                        parts.join(" · "),
                        report.total_tokens()
                    );
                }
            }
            println!(
                "{} files: {errors} errors, {warnings} warnings",
                files.len()
            );
            let failing = if strict { errors + warnings } else { errors };
            Ok(if failing > 0 {
                Outcome::GateFailed
            } else {
                Outcome::Ok
            })
        }
    }
}

/// One side of a diff: a prompt file on disk, else a registry reference.
fn side(registry: &Registry, text: &str) -> anyhow::Result<(PromptFile, String)> {
    let path = Path::new(text);
    if path.is_file() {
        return Ok((PromptFile::load(path)?, text.to_owned()));
    }
    let resolved = registry.resolve_str(text).map_err(cli_error)?;
    let label = match PromptRef::parse(text).map(|r| r.selector) {
        Ok(Selector::Version(_)) => text.to_owned(),
        _ => format!("{text} (v{})", resolved.version.version),
    };
    Ok((resolved.file, label))
}

fn print_evidence(evidence: Option<&plumb_registry::Evidence>) {
    let Some(evidence) = evidence else {
        return;
    };
    for suite in &evidence.suites {
        for cell in &suite.cells {
            let rate = cell
                .pass_rate
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or("-".into());
            println!(
                "evidence: {} run {} · {}: {}/{} passed ({rate})",
                suite.suite,
                plumb_eval::summary::short_id(&suite.run),
                cell.provider,
                cell.passed,
                cell.measured
            );
        }
        for comparison in &suite.comparisons {
            println!(
                "evidence: vs v{} on {}: {}",
                comparison.against_version, comparison.provider, comparison.verdict
            );
        }
    }
}

/// `--var name=value`: typed by the prompt's declaration (numbers, booleans and JSON for
/// non-string variables), strings otherwise.
fn parse_vars(pairs: &[String], file: &PromptFile) -> anyhow::Result<Map<String, Value>> {
    let mut values = Map::new();
    for pair in pairs {
        let Some((name, raw)) = pair.split_once('=') else {
            return Err(user_error(
                format!("`--var {pair}` is not name=value"),
                Some("for example `--var ticket='my invoice is wrong'`".into()),
            ));
        };
        let is_string = file
            .variables
            .get(name)
            .is_none_or(|v| v.kind == VarType::String);
        let value = if is_string {
            Value::String(raw.to_owned())
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
        };
        values.insert(name.to_owned(), value);
    }
    Ok(values)
}
