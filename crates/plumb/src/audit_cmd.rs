//! `plumb audit`: the append-only record of registry changes (read-only: nothing in plumb can
//! edit it, and the database refuses updates and deletes).

use clap::Args;
use plumb_store::AuditFilter;

use crate::prompt_cmd::cli_error;
use crate::{Outcome, StoreArgs, project};

#[derive(Args, Clone, Debug)]
pub struct AuditArgs {
    /// Only entries about this prompt (its versions and labels)
    #[arg(long)]
    prompt: Option<String>,
    /// Only this action: push, label, rollback, unlabel, deprecate, undeprecate, meta, import,
    /// key-create, key-revoke
    #[arg(long)]
    action: Option<String>,
    /// How many of the newest entries to show
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// One JSON object per line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(args: AuditArgs) -> anyhow::Result<Outcome> {
    let cwd = project::current_dir()?;
    let registry = project::open_registry(args.store.db.as_deref(), &cwd)?;
    let entries = registry
        .audit(&AuditFilter {
            target: args.prompt,
            action: args.action,
            after_id: None,
            limit: args.limit,
        })
        .map_err(cli_error)?;
    if args.json {
        for entry in &entries {
            println!("{}", serde_json::to_string(entry)?);
        }
        return Ok(Outcome::Ok);
    }
    if entries.is_empty() {
        eprintln!("plumb: the audit log has no matching entries");
        return Ok(Outcome::Ok);
    }
    for entry in entries {
        let when = project::utc_time(entry.at, "%Y-%m-%d %H:%M:%S");
        let change = match (&entry.before, &entry.after) {
            (Some(before), Some(after)) => format!("{before} → {after}"),
            (None, Some(after)) => after.clone(),
            (Some(before), None) => format!("{before} → (none)"),
            (None, None) => String::new(),
        };
        let change = if change.len() > 80 {
            format!("{}…", change.chars().take(80).collect::<String>())
        } else {
            change
        };
        println!(
            "#{:<5} {when}  {:<12} {:<24} {:<28} {change}{}{}",
            entry.id,
            entry.action,
            entry.target,
            entry.actor,
            if entry.forced { "  FORCED" } else { "" },
            entry.reason.map(|r| format!("  — {r}")).unwrap_or_default()
        );
    }
    Ok(Outcome::Ok)
}
