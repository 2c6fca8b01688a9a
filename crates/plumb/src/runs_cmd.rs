//! `plumb runs list|show`: stored eval runs.

use std::path::PathBuf;

use clap::Subcommand;
use plumb_eval::report::{self, Style};
use plumb_eval::summary::short_id;

use crate::{Outcome, StoreArgs, project, user_error};

#[derive(Subcommand, Clone, Debug)]
pub enum RunsCommand {
    /// List recent runs, newest first
    List {
        /// How many runs to show
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show a run's summary (and write reports from it)
    Show {
        /// Run id, a unique prefix or suffix of it, or `latest`
        run: String,
        /// Write a report; the extension picks the format (repeatable)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        outputs: Vec<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(command: RunsCommand) -> anyhow::Result<Outcome> {
    let cwd = project::current_dir()?;
    match command {
        RunsCommand::List { limit, store } => {
            let store = project::open_store(store.db.as_deref(), &cwd)?;
            let runs = store.list_runs(limit)?;
            if runs.is_empty() {
                eprintln!("plumb: no runs yet; run `plumb eval` first");
                return Ok(Outcome::Ok);
            }
            println!(
                "{:<10} {:<20} {:<12} {:>7} {:>9}  suite",
                "run", "started", "status", "cases", "pass"
            );
            for run in runs {
                let summary = plumb_eval::summarize(store.as_ref(), &run)?.0;
                let cases: u64 = summary.cells.iter().map(|c| c.cases).sum();
                let passed: u64 = summary.cells.iter().map(|c| c.passed).sum();
                let measured: u64 = summary.cells.iter().map(|c| c.passed + c.failed).sum();
                let rate = if measured > 0 {
                    format!("{:.1}%", passed as f64 / measured as f64 * 100.0)
                } else {
                    "-".into()
                };
                let started = project::utc_time(run.created_at, "%Y-%m-%d %H:%M:%S");
                println!(
                    "{:<10} {:<20} {:<12} {:>7} {:>9}  {}",
                    short_id(&run.id),
                    started,
                    run.status.as_str(),
                    cases,
                    rate,
                    run.suite_path
                );
            }
            Ok(Outcome::Ok)
        }
        RunsCommand::Show {
            run,
            outputs,
            store,
        } => {
            let store = project::open_store(store.db.as_deref(), &cwd)?;
            let record = store.find_run(&run).map_err(|e| {
                user_error(
                    e.to_string(),
                    Some("list runs with `plumb runs list`".into()),
                )
            })?;
            let summary = plumb_eval::summarize(store.as_ref(), &record)?.0;
            let style = Style {
                color: project::use_color(&std::io::stdout()),
            };
            print!("{}", report::terminal(&summary, &[], style));
            for path in &outputs {
                report::write_file(path, store.as_ref(), &record, &summary, &[])?;
                eprintln!("plumb: wrote {}", path.display());
            }
            Ok(Outcome::Ok)
        }
    }
}
