use plumb_prompt::{PromptRef, Selector};
use plumb_registry::{
    Actor, MoveOptions, ProjectConfig, PushOptions, Registry, RegistryError, Role, auth,
};
use plumb_store::{AuditFilter, NewAudit, RegistryStore, SqliteStore};

use crate::{admin, open, prompt};

#[test]
fn unchanged_content_makes_no_new_version_and_metadata_is_not_content() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("db"));
    let first = registry
        .push(
            &prompt("triage", "Route."),
            &PushOptions::default(),
            &admin(),
            None,
        )
        .unwrap();
    assert_eq!((first.version, first.created), (1, true));
    let mut described = prompt("triage", "Route.");
    described.description = Some("now described".into());
    described.owner = Some("team".into());
    let again = registry
        .push(&described, &PushOptions::default(), &admin(), None)
        .unwrap();
    assert_eq!(
        (again.version, again.created, again.meta_changed),
        (1, false, true)
    );
    let second = registry
        .push(
            &prompt("triage", "Route tickets."),
            &PushOptions::default(),
            &admin(),
            None,
        )
        .unwrap();
    assert_eq!((second.version, second.created), (2, true));
    let resolved = registry.resolve_str("triage@1").unwrap();
    assert_eq!(resolved.file.owner.as_deref(), Some("team"));
    assert_eq!(resolved.file.messages[0].content, "Route.");
    assert_eq!(registry.resolve_str("triage").unwrap().version.version, 2);
}

#[test]
fn unknown_references_name_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("db"));
    registry
        .push(
            &prompt("triage", "Route."),
            &PushOptions::default(),
            &admin(),
            None,
        )
        .unwrap();
    let error = registry.resolve_str("triag@1").unwrap_err();
    assert!(matches!(error, RegistryError::NotFound { .. }), "{error:?}");
    assert_eq!(error.hint(), Some("did you mean `triage`?"));
    let error = registry.resolve_str("triage@9").unwrap_err();
    assert!(error.to_string().contains("no version 9"), "{error}");
    let error = registry.resolve_str("triage@prod").unwrap_err();
    assert!(error.to_string().contains("no label `prod`"), "{error}");
    assert!(registry.resolve_str("triage@").is_err());
}

#[test]
fn rollback_walks_back_through_deployments() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("db"));
    for (index, text) in ["one", "two", "three"].iter().enumerate() {
        registry
            .push(&prompt("p", text), &PushOptions::default(), &admin(), None)
            .unwrap();
        registry
            .set_label(
                "p",
                "staging",
                &Selector::Version(index as u64 + 1),
                &admin(),
                &MoveOptions::default(),
            )
            .unwrap();
    }
    let back = registry.rollback("p", "staging", &admin(), None).unwrap();
    assert_eq!((back.from, back.to), (Some(3), Some(2)));
    let back = registry.rollback("p", "staging", &admin(), None).unwrap();
    assert_eq!((back.from, back.to), (Some(2), Some(1)));
    let error = registry
        .rollback("p", "staging", &admin(), None)
        .unwrap_err();
    assert!(error.to_string().contains("no earlier version"), "{error}");
    let audit = registry
        .audit(&AuditFilter {
            target: Some("p".into()),
            action: Some("rollback".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].before.as_deref(), Some("v3"));
}

#[test]
fn production_needs_a_releaser_and_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("db"));
    registry
        .push(&prompt("p", "x"), &PushOptions::default(), &admin(), None)
        .unwrap();
    let editor = Actor {
        name: "ed".into(),
        role: Role::Editor,
        key_id: None,
    };
    let error = registry
        .set_label(
            "p",
            "production",
            &Selector::Latest,
            &editor,
            &MoveOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Forbidden { .. }),
        "{error:?}"
    );
    let releaser = Actor {
        name: "rel".into(),
        role: Role::Releaser,
        key_id: None,
    };
    let error = registry
        .set_label(
            "p",
            "production",
            &Selector::Latest,
            &releaser,
            &MoveOptions::default(),
        )
        .unwrap_err();
    let RegistryError::Policy { missing, .. } = &error else {
        panic!("{error:?}");
    };
    assert!(
        missing[0].contains("sets no promotion policy"),
        "{missing:?}"
    );
    // A releaser cannot override; an admin can, with a reason, and it is recorded.
    let force = MoveOptions {
        force: true,
        reason: Some("hotfix".into()),
    };
    let error = registry
        .set_label("p", "production", &Selector::Latest, &releaser, &force)
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Forbidden { .. }),
        "{error:?}"
    );
    let no_reason = MoveOptions {
        force: true,
        reason: None,
    };
    let error = registry
        .set_label("p", "production", &Selector::Latest, &admin(), &no_reason)
        .unwrap_err();
    assert!(error.to_string().contains("--reason"), "{error}");
    let outcome = registry
        .set_label("p", "production", &Selector::Latest, &admin(), &force)
        .unwrap();
    assert!(outcome.forced && outcome.moved);
    let audit = registry.audit(&AuditFilter::default()).unwrap();
    let last = audit.last().unwrap();
    assert!(last.forced);
    assert_eq!(last.reason.as_deref(), Some("hotfix"));
    assert!(
        last.details
            .as_deref()
            .unwrap()
            .contains("sets no promotion policy")
    );
}

#[test]
fn policy_config_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plumb.yaml");
    let error = ProjectConfig::parse(
        "promotion:\n  production:\n    suites: [a.yaml]\n    role: relaser\n",
        &path,
        dir.path(),
    )
    .unwrap_err();
    assert!(error.hint.unwrap().contains("did you mean `releaser`"));
    let error = ProjectConfig::parse("promotoin: {}\n", &path, dir.path()).unwrap_err();
    assert_eq!(error.line, Some(1));
    // Config may raise, never lower, the bar for production.
    let config = ProjectConfig::parse(
        "promotion:\n  production:\n    suites: [a.yaml]\n    role: editor\n",
        &path,
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.role_for("production"), Role::Releaser);
}

#[test]
fn keys_are_stored_as_hashes_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let store = SqliteStore::open(&db).unwrap();
    let key = auth::create_key(&store, "ci", Role::Editor, &admin()).unwrap();
    assert!(key.secret.starts_with("plumb_"));
    let stored = store.keys().unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].hash, key.secret);
    assert!(!format!("{stored:?}").contains(&key.secret));
    let actor = auth::authenticate(&store, &key.secret).unwrap().unwrap();
    assert_eq!(actor.role, Role::Editor);
    assert!(auth::authenticate(&store, "plumb_nope").unwrap().is_none());
    let viewer = Actor {
        name: "v".into(),
        role: Role::Viewer,
        key_id: None,
    };
    assert!(auth::create_key(&store, "x", Role::Admin, &viewer).is_err());
    auth::revoke_key(&store, &key.record.id, &admin()).unwrap();
    assert!(auth::authenticate(&store, &key.secret).unwrap().is_none());
}

#[test]
fn the_audit_log_cannot_be_edited() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let store = SqliteStore::open(&db).unwrap();
    store
        .append_audit(&NewAudit {
            at: 1,
            actor: "a".into(),
            action: "push".into(),
            target: "p".into(),
            ..NewAudit::default()
        })
        .unwrap();
    drop(store);
    // Even with direct SQL access, the database refuses to rewrite history.
    let connection = rusqlite_connection(&db);
    let update = connection.execute("UPDATE audit SET actor = 'mallory'", []);
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = connection.execute("DELETE FROM audit", []);
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

fn rusqlite_connection(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn references_parse_in_suites_and_registry_alike() {
    let parsed = PromptRef::parse("triage@production").unwrap();
    assert_eq!(parsed.selector, Selector::Label("production".into()));
    let dir = tempfile::tempdir().unwrap();
    let registry: Registry = open(&dir.path().join("db"));
    let error = registry
        .set_label(
            "nope",
            "staging",
            &Selector::Latest,
            &admin(),
            &MoveOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(error, RegistryError::NotFound { .. }));
    registry
        .push(&prompt("p", "x"), &PushOptions::default(), &admin(), None)
        .unwrap();
    let error = registry
        .set_label(
            "p",
            "latest",
            &Selector::Latest,
            &admin(),
            &MoveOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(error, RegistryError::Invalid { .. }), "{error:?}");
}
