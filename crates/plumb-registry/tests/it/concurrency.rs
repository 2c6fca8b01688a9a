use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use plumb_prompt::Selector;
use plumb_registry::{MoveOptions, PushOptions, RegistryError, deployment_stack};
use plumb_store::{AuditFilter, MoveKind};

use crate::{admin, open, prompt};

const PUSHES: usize = 25;
const MOVES: usize = 25;

/// Two writers, each with its own connection to one database file (as two `plumb` processes
/// would have), push to the same prompt at once: every push lands, numbers are distinct and
/// consecutive.
#[test]
fn racing_pushers_get_distinct_versions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plumb.db");
    open(&db); // create the schema before the race
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|worker| {
            let db = db.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let registry = open(&db);
                barrier.wait();
                let mut versions = Vec::new();
                for index in 0..PUSHES {
                    let file = prompt("race", &format!("worker {worker} push {index}"));
                    let report = registry
                        .push(&file, &PushOptions::default(), &admin(), None)
                        .unwrap();
                    assert!(report.created);
                    versions.push(report.version);
                }
                versions
            })
        })
        .collect();
    let mut all: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    all.sort_unstable();
    let expected: Vec<u64> = (1..=2 * PUSHES as u64).collect();
    assert_eq!(all, expected);
    let registry = open(&db);
    let versions = registry.versions("race").unwrap();
    let hashes: HashSet<&str> = versions.iter().map(|v| v.hash.as_str()).collect();
    assert_eq!(hashes.len(), 2 * PUSHES);
}

/// Two writers move one label at once. A move based on a stale view is refused (never
/// silently overwritten); retried, every move lands, and the history is one unbroken chain.
#[test]
fn racing_label_moves_are_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plumb.db");
    let registry = open(&db);
    for index in 0..4 {
        registry
            .push(
                &prompt("race", &format!("v{index}")),
                &PushOptions::default(),
                &admin(),
                None,
            )
            .unwrap();
    }
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2u64)
        .map(|worker| {
            let db = db.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let registry = open(&db);
                barrier.wait();
                let mut conflicts = 0;
                for index in 0..MOVES as u64 {
                    // Each worker alternates between its own two versions, so every move
                    // changes the label.
                    let target = worker * 2 + index % 2 + 1;
                    loop {
                        match registry.set_label(
                            "race",
                            "staging",
                            &Selector::Version(target),
                            &admin(),
                            &MoveOptions::default(),
                        ) {
                            Ok(outcome) if outcome.moved => break,
                            // The other worker set the same version first: move on.
                            Ok(_) => break,
                            Err(RegistryError::Conflict(_)) => conflicts += 1,
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let history = registry.db().label_history("race").unwrap();
    let moves: Vec<_> = history.iter().filter(|m| m.kind == MoveKind::Set).collect();
    assert!(moves.len() >= MOVES, "{} moves", moves.len());
    for pair in moves.windows(2) {
        assert_eq!(
            pair[1].from, pair[0].to,
            "a move was based on a stale label"
        );
    }
    let audit = registry
        .audit(&AuditFilter {
            action: Some("label".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(audit.len(), moves.len());
    let current = registry.prompt("race").unwrap().labels[0].version;
    assert_eq!(Some(current), moves.last().unwrap().to);
    assert_eq!(
        deployment_stack(&history, "staging").last().copied(),
        Some(current)
    );
}
