//! The runner through its public seam: a suite on disk, scripted models, a real SQLite store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use plumb_core::{
    BoxFuture, ChatModel, ChatRequest, ChatResponse, FinishReason, ModelError, ModelErrorKind,
    Usage,
};
use plumb_eval::{CacheMode, CaseResult, Observer, RunError, RunOptions, Suite, gate, summarize};
use plumb_store::{RunStatus, SqliteStore, Store};

mod judges;

/// Echoes the last message; counts calls; optionally fails with a given kind.
struct Scripted {
    calls: AtomicUsize,
    fail: Option<ModelErrorKind>,
}

impl Scripted {
    fn new(fail: Option<ModelErrorKind>) -> Arc<Scripted> {
        Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            fail,
        })
    }
}

impl ChatModel for Scripted {
    fn id(&self) -> &str {
        "scripted"
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let result = match self.fail {
            Some(kind) => Err(ModelError::new(kind, "scripted failure")),
            None => Ok(ChatResponse {
                content: request
                    .messages
                    .last()
                    .map(|m| m.content.clone())
                    .unwrap_or_default(),
                finish_reason: Some(FinishReason::Stop),
                usage: Usage {
                    prompt_tokens: 5,
                    completion_tokens: 2,
                },
                ..Default::default()
            }),
        };
        Box::pin(async move { result })
    }
}

fn write_suite(dir: &Path, n_tests: usize) -> Suite {
    let tests: String = (0..n_tests)
        .map(|i| format!("  - vars: {{n: '{i}'}}\n"))
        .collect();
    let text = format!(
        "prompts: ['value {{{{ n }}}}']\nproviders: [scripted]\ndefaultTest:\n  assert: [{{type: contains, value: value}}]\ntests:\n{tests}"
    );
    let path = dir.join("suite.yaml");
    std::fs::write(&path, text).unwrap();
    Suite::load(&path).unwrap()
}

fn options(cache: CacheMode) -> RunOptions {
    RunOptions {
        concurrency: 2,
        repeat: 1,
        cache,
        max_cost: None,
    }
}

/// Cancels the run after `after` results.
struct CancelAfter {
    after: usize,
    seen: AtomicUsize,
    cancel: Arc<AtomicBool>,
}

impl Observer for CancelAfter {
    fn started(&self, _total: u64, _done: u64) {}
    fn finished(&self, _result: &CaseResult) {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            self.cancel.store(true, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn interrupted_runs_resume_without_redoing_cases() {
    let dir = tempfile::tempdir().unwrap();
    let suite = Arc::new(write_suite(dir.path(), 40));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let model = Scripted::new(None);
    let cancel = Arc::new(AtomicBool::new(false));
    let observer = Arc::new(CancelAfter {
        after: 5,
        seen: AtomicUsize::new(0),
        cancel: cancel.clone(),
    });
    let outcome = plumb_eval::run(
        suite.clone(),
        plumb_eval::Backends::models(vec![model.clone()]),
        store.clone(),
        options(CacheMode::Off),
        None,
        observer,
        cancel,
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, RunStatus::Interrupted);
    let first = store.completed_cases(&outcome.run_id).unwrap().len();
    assert!(
        (5..40).contains(&first),
        "{first} cases after the interruption"
    );

    let resumed = plumb_eval::run(
        suite,
        plumb_eval::Backends::models(vec![model.clone()]),
        store.clone(),
        options(CacheMode::Off),
        Some(outcome.run_id.clone()),
        Arc::new(plumb_eval::Silent),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    assert_eq!(resumed.status, RunStatus::Completed);
    assert_eq!(store.completed_cases(&outcome.run_id).unwrap().len(), 40);
    assert_eq!(model.calls.load(Ordering::SeqCst), 40, "no case ran twice");
    let run = store.find_run(&outcome.run_id).unwrap();
    let (summary, _) = summarize(store.as_ref(), &run).unwrap();
    assert_eq!(summary.cells[0].passed, 40);
}

#[tokio::test]
async fn cache_replays_and_read_only_misses_are_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let suite = Arc::new(write_suite(dir.path(), 6));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let model = Scripted::new(None);
    let run = |cache| {
        plumb_eval::run(
            suite.clone(),
            plumb_eval::Backends::models(vec![model.clone() as Arc<dyn ChatModel>]),
            store.clone(),
            options(cache),
            None,
            Arc::new(plumb_eval::Silent),
            Arc::new(AtomicBool::new(false)),
        )
    };
    run(CacheMode::ReadWrite).await.unwrap();
    assert_eq!(model.calls.load(Ordering::SeqCst), 6);
    let replay = run(CacheMode::ReadOnly).await.unwrap();
    assert_eq!(model.calls.load(Ordering::SeqCst), 6, "replay made no call");
    let (summary, _) = summarize(store.as_ref(), &store.find_run(&replay.run_id).unwrap()).unwrap();
    assert_eq!(summary.cells[0].cached, 6);

    let other = Arc::new(write_suite(tempfile::tempdir().unwrap().path(), 7));
    let error = plumb_eval::run(
        other,
        plumb_eval::Backends::models(vec![model.clone()]),
        store.clone(),
        options(CacheMode::ReadOnly),
        None,
        Arc::new(plumb_eval::Silent),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    // Six of the seven requests are recorded; the seventh is a miss.
    assert!(
        matches!(error, Err(RunError::Fatal { error, .. }) if error.kind == ModelErrorKind::CacheMiss)
    );
}

#[tokio::test]
async fn model_errors_are_unmeasured_not_failures() {
    let dir = tempfile::tempdir().unwrap();
    let suite = Arc::new(write_suite(dir.path(), 3));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let outcome = plumb_eval::run(
        suite.clone(),
        plumb_eval::Backends::models(vec![Scripted::new(Some(ModelErrorKind::Server))]),
        store.clone(),
        options(CacheMode::Off),
        None,
        Arc::new(plumb_eval::Silent),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    let (summary, _) =
        summarize(store.as_ref(), &store.find_run(&outcome.run_id).unwrap()).unwrap();
    let cell = &summary.cells[0];
    assert_eq!((cell.passed, cell.failed, cell.unmeasured), (0, 0, 3));
    assert_eq!(cell.pass_rate, None);
    assert!(
        gate(&summary, &suite.thresholds).is_some(),
        "unmeasured cases fail the default gate"
    );
}

#[tokio::test]
async fn configuration_errors_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let suite = Arc::new(write_suite(dir.path(), 50));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let model = Scripted::new(Some(ModelErrorKind::Auth));
    let error = plumb_eval::run(
        suite,
        plumb_eval::Backends::models(vec![model.clone()]),
        store.clone(),
        options(CacheMode::Off),
        None,
        Arc::new(plumb_eval::Silent),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    assert!(matches!(error, Err(RunError::Fatal { .. })));
    assert!(
        model.calls.load(Ordering::SeqCst) < 50,
        "the run stopped early"
    );
    assert_eq!(store.list_runs(1).unwrap()[0].status, RunStatus::Failed);
}

#[tokio::test]
async fn repeats_measure_flakiness() {
    let dir = tempfile::tempdir().unwrap();
    let suite = Arc::new(write_suite(dir.path(), 4));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let outcome = plumb_eval::run(
        suite,
        plumb_eval::Backends::models(vec![Scripted::new(None)]),
        store.clone(),
        RunOptions {
            concurrency: 4,
            repeat: 3,
            cache: CacheMode::ReadWrite,
            max_cost: None,
        },
        None,
        Arc::new(plumb_eval::Silent),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    let (summary, _) =
        summarize(store.as_ref(), &store.find_run(&outcome.run_id).unwrap()).unwrap();
    assert_eq!(summary.cells[0].cases, 12);
    assert_eq!(summary.cells[0].repeated_tests, 4);
    assert_eq!(summary.cells[0].flake_rate(), Some(0.0));
}
