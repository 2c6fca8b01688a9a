//! Who is acting: roles (viewer < editor < releaser < admin), actors, and API keys, which are
//! shown once at creation and stored only as hashes.

use std::fmt;

use plumb_store::{ApiKeyRecord, NewAudit, RegistryStore};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::now_ms;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads prompts, versions, labels and the audit log.
    Viewer,
    /// Also pushes versions, moves unprotected labels, deprecates.
    Editor,
    /// Also moves protected labels (`production`), still under the promotion policy.
    Releaser,
    /// Also overrides the policy (`force`) and manages API keys.
    Admin,
}

impl Role {
    pub const ALL: [&'static str; 4] = ["viewer", "editor", "releaser", "admin"];

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "releaser" => Some(Role::Releaser),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// `text` as a role, or the hint for an unknown one (the closest role, every accepted one).
    pub fn parse_or_hint(text: &str) -> Result<Role, String> {
        Role::parse(text).ok_or_else(|| {
            let accepted = Role::ALL.join(", ");
            match plumb_core::did_you_mean(text, Role::ALL) {
                Some(best) => format!("did you mean `{best}`? accepted: {accepted}"),
                None => format!("accepted: {accepted}"),
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Releaser => "releaser",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who performs an action, as recorded in the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
    /// The API key the actor authenticated with (none for the local user and dev mode).
    pub key_id: Option<String>,
}

impl Actor {
    /// The local user of the CLI: the database is theirs, so they act as admin. The name comes
    /// from `PLUMB_ACTOR`, else git's `user.email`, else `$USER`.
    pub fn local() -> Actor {
        let name = std::env::var("PLUMB_ACTOR")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(git_user)
            .or_else(|| std::env::var("USER").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "local".to_owned());
        Actor {
            name,
            role: Role::Admin,
            key_id: None,
        }
    }

    pub fn require(&self, role: Role, action: &str) -> Result<(), RegistryError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(RegistryError::Forbidden {
                message: format!(
                    "{action} needs the {role} role; {} is {}",
                    self.name, self.role
                ),
            })
        }
    }
}

fn git_user() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["config", "user.email"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let email = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !email.is_empty()).then_some(email)
}

/// A freshly created key: `secret` is shown once and never stored.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub record: ApiKeyRecord,
    pub secret: String,
}

const KEY_PREFIX: &str = "plumb_";

fn random_hex(bytes: usize) -> Result<String, RegistryError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|error| RegistryError::Internal(format!("no system randomness: {error}")))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// The stored form of a key. Keys carry 192 random bits, so a fast hash is enough: there is
/// nothing to brute-force the way there is with passwords.
pub fn key_hash(secret: &str) -> String {
    plumb_core::hash_hex(secret.as_bytes())
}

pub fn create_key(
    store: &dyn RegistryStore,
    name: &str,
    role: Role,
    actor: &Actor,
) -> Result<NewKey, RegistryError> {
    actor.require(Role::Admin, "creating API keys")?;
    if name.trim().is_empty() {
        return Err(RegistryError::invalid("a key needs a name", Some("name")));
    }
    let id = random_hex(4)?;
    let secret = format!("{KEY_PREFIX}{id}_{}", random_hex(24)?);
    let record = ApiKeyRecord {
        id,
        name: name.trim().to_owned(),
        role: role.as_str().to_owned(),
        hash: key_hash(&secret),
        created_at: now_ms(),
        created_by: actor.name.clone(),
        revoked_at: None,
        last_used_at: None,
    };
    store.create_key(&record)?;
    Ok(NewKey { record, secret })
}

pub fn revoke_key(store: &dyn RegistryStore, id: &str, actor: &Actor) -> Result<(), RegistryError> {
    actor.require(Role::Admin, "revoking API keys")?;
    let id = id.strip_prefix("key:").unwrap_or(id);
    store.revoke_key(
        id,
        &NewAudit {
            at: now_ms(),
            actor: actor.name.clone(),
            action: "key-revoke".into(),
            target: format!("key:{id}"),
            ..NewAudit::default()
        },
    )?;
    Ok(())
}

/// The actor a presented key stands for, or `None` when the key is unknown or revoked.
pub fn authenticate(
    store: &dyn RegistryStore,
    secret: &str,
) -> Result<Option<Actor>, RegistryError> {
    if !secret.starts_with(KEY_PREFIX) {
        return Ok(None);
    }
    let Some(record) = store.key_by_hash(&key_hash(secret))? else {
        return Ok(None);
    };
    if record.revoked_at.is_some() {
        return Ok(None);
    }
    let Some(role) = Role::parse(&record.role) else {
        return Err(RegistryError::Internal(format!(
            "key {} has unknown role `{}`",
            record.id, record.role
        )));
    };
    // Last use is informational, kept to the minute so polling clients do not turn every read
    // into a write; a failed update must not fail the request.
    let now = now_ms();
    if record.last_used_at.is_none_or(|last| now - last >= 60_000) {
        let _ = store.touch_key(&record.id, now);
    }
    Ok(Some(Actor {
        name: format!("key:{} ({})", record.id, record.name),
        role,
        key_id: Some(record.id.clone()),
    }))
}
