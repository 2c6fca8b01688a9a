//! `plumb keys create|list|revoke`: API keys for `plumb serve`, shown once, stored as hashes.

use clap::Subcommand;
use plumb_registry::{Actor, Role, auth};
use serde_json::json;

use crate::prompt_cmd::cli_error;
use crate::{Outcome, StoreArgs, project, user_error};

#[derive(Subcommand, Clone, Debug)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once and only its hash is stored
    Create {
        /// viewer (read), editor (push, move unprotected labels), releaser (move production),
        /// admin (override policy, manage keys)
        #[arg(long)]
        role: String,
        /// What the key is for, e.g. `ci` or `payments-service`
        #[arg(long, default_value = "unnamed")]
        name: String,
        /// Print JSON (with the secret) instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys (never their secrets)
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by its id (see `plumb keys list`)
    Revoke {
        /// The key's id (`ab12cd34` or `key:ab12cd34`)
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<Outcome> {
    let cwd = project::current_dir()?;
    match command {
        KeysCommand::Create {
            role,
            name,
            json,
            store,
        } => {
            let parsed = Role::parse_or_hint(&role)
                .map_err(|hint| user_error(format!("unknown role `{role}`"), Some(hint)))?;
            let db = project::open_db(store.db.as_deref(), &cwd)?;
            let key =
                auth::create_key(db.as_ref(), &name, parsed, &Actor::local()).map_err(cli_error)?;
            if json {
                println!(
                    "{}",
                    json!({"id": key.record.id, "name": key.record.name, "role": key.record.role, "key": key.secret})
                );
            } else {
                eprintln!(
                    "created key {} ({}, role {}); this is the only time it is shown:",
                    key.record.id, key.record.name, key.record.role
                );
                println!("{}", key.secret);
            }
            Ok(Outcome::Ok)
        }
        KeysCommand::List { store } => {
            let db = project::open_db(store.db.as_deref(), &cwd)?;
            let keys = plumb_store::RegistryStore::keys(db.as_ref())?;
            if keys.is_empty() {
                eprintln!("plumb: no API keys; create one with `plumb keys create --role viewer`");
                return Ok(Outcome::Ok);
            }
            println!(
                "{:<10} {:<20} {:<9} {:<17} {:<17} status",
                "id", "name", "role", "created", "last used"
            );
            for key in keys {
                println!(
                    "{:<10} {:<20} {:<9} {:<17} {:<17} {}",
                    key.id,
                    key.name,
                    key.role,
                    project::utc_minute(key.created_at),
                    key.last_used_at
                        .map(project::utc_minute)
                        .unwrap_or("-".into()),
                    if key.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
            Ok(Outcome::Ok)
        }
        KeysCommand::Revoke { id, store } => {
            let db = project::open_db(store.db.as_deref(), &cwd)?;
            auth::revoke_key(db.as_ref(), &id, &Actor::local()).map_err(cli_error)?;
            println!("revoked key {id}");
            Ok(Outcome::Ok)
        }
    }
}
