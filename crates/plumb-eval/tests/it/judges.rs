//! Judged assertions with a scripted judge: known verdicts give exact scores, bad answers are
//! asked again then unmeasured, and the response cache covers judge calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use plumb_core::{
    BoxFuture, ChatModel, ChatRequest, ChatResponse, FinishReason, ModelError, ResponseFormat,
    TokenLogprob,
};
use plumb_eval::judge::Graders;
use plumb_eval::{CacheMode, CaseResult, RunOptions, Suite, summarize};
use plumb_store::{SqliteStore, Store};

type Script = dyn Fn(&str, usize) -> String + Send + Sync;

/// Answers a judge request with `script(request text, call number)`; checks that every judge
/// request asks for a schema at temperature 0.
struct Judge {
    calls: AtomicUsize,
    script: Box<Script>,
    logprobs: Vec<TokenLogprob>,
}

impl Judge {
    fn new(script: impl Fn(&str, usize) -> String + Send + Sync + 'static) -> Arc<Judge> {
        Arc::new(Judge {
            calls: AtomicUsize::new(0),
            script: Box::new(script),
            logprobs: Vec::new(),
        })
    }
}

impl ChatModel for Judge {
    fn id(&self) -> &str {
        "judge"
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        assert_eq!(request.params.temperature, Some(0.0));
        assert!(matches!(
            request.params.response_format,
            Some(ResponseFormat::JsonSchema { .. })
        ));
        let text: Vec<&str> = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        let content = (self.script)(&text.join("\n"), call);
        let logprobs = self.logprobs.clone();
        Box::pin(async move {
            Ok(ChatResponse {
                content,
                finish_reason: Some(FinishReason::Stop),
                logprobs,
                ..Default::default()
            })
        })
    }
}

/// The system under test: answers `mock:text`-style with a fixed reply per prompt.
struct Fixed(&'static str);

impl ChatModel for Fixed {
    fn id(&self) -> &str {
        "fixed"
    }
    fn chat<'a>(
        &'a self,
        _request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        let content = self.0.to_owned();
        Box::pin(async move {
            Ok(ChatResponse {
                content,
                finish_reason: Some(FinishReason::Stop),
                ..Default::default()
            })
        })
    }
}

struct Outcome {
    results: Vec<CaseResult>,
    summary: plumb_eval::Summary,
}

impl Outcome {
    /// (pass, score) of each case, in case order.
    fn verdicts(&self) -> Vec<(Option<bool>, f64)> {
        self.results.iter().map(|r| (r.pass, r.score)).collect()
    }
}

async fn run_suite(
    dir: &std::path::Path,
    yaml: &str,
    judge: Option<Arc<Judge>>,
    cache: CacheMode,
) -> Outcome {
    let path = dir.join("suite.yaml");
    std::fs::write(&path, yaml).unwrap();
    let suite = Arc::new(Suite::load(&path).unwrap());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("p.db")).unwrap());
    let mut graders = Graders {
        default: Some("judge".into()),
        ..Graders::default()
    };
    if let Some(judge) = judge {
        graders
            .models
            .insert("judge".into(), Ok(judge as Arc<dyn ChatModel>));
    }
    graders
        .models
        .insert("broken".into(), Err("unknown provider `broken`".into()));
    let outcome = plumb_eval::run(
        suite,
        plumb_eval::Backends {
            models: vec![Arc::new(Fixed("Paris is the capital of France."))],
            embedders: HashMap::new(),
            graders,
        },
        store.clone(),
        RunOptions {
            concurrency: 2,
            repeat: 1,
            cache,
        },
        None,
        Arc::new(plumb_eval::Silent),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    let run = store.find_run(&outcome.run_id).unwrap();
    let mut results = Vec::new();
    store
        .for_each_result(&run.id, &mut |record| {
            results.push(serde_json::from_str(&record.payload).unwrap());
            Ok(())
        })
        .unwrap();
    let (summary, _) = summarize(store.as_ref(), &run).unwrap();
    Outcome { results, summary }
}

fn suite(asserts: &[&str]) -> String {
    let tests: String = asserts
        .iter()
        .map(|a| format!("  - assert: [{a}]\n"))
        .collect();
    format!("prompts: ['What is the capital of France?']\nproviders: [fixed]\ntests:\n{tests}")
}

#[tokio::test]
async fn rubric_verdicts_give_exact_scores_and_never_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let judge = Judge::new(|text, _| {
        if text.contains("mentions Paris") {
            r#"{"reason": "it names Paris", "pass": true}"#.into()
        } else if text.contains("is polite") {
            r#"{"reason": "curt", "score": 0.55}"#.into()
        } else {
            r#"{"reason": "no", "pass": false}"#.into()
        }
    });
    let out = run_suite(
        dir.path(),
        &suite(&[
            "{type: llm-rubric, value: mentions Paris}",
            "{type: not-llm-rubric, value: mentions Paris}",
            "{type: llm-rubric, value: is polite, threshold: 0.5}",
            "{type: llm-rubric, value: is polite, threshold: 0.6}",
            "{type: llm-rubric, value: mentions Rome}",
        ]),
        Some(judge.clone()),
        CacheMode::Off,
    )
    .await;
    assert_eq!(
        out.verdicts(),
        vec![
            (Some(true), 1.0),
            (Some(false), 0.0),
            (Some(true), 0.55),
            (Some(false), 0.55),
            (Some(false), 0.0)
        ]
    );
    let first = &out.results[0].assertions[0];
    let info = first.judge.as_ref().unwrap();
    assert_eq!((info.model.as_str(), info.calls), ("judge", 1));
    assert_eq!(info.prompt_hash.len(), 64);
    assert_eq!(info.params.temperature, Some(0.0));
    assert_eq!(judge.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn garbage_is_asked_again_then_unmeasured_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let judge = Judge::new(|text, _| {
        if text.contains("fixable") && text.contains("cannot be used") {
            r#"{"reason": "ok now", "pass": true}"#.into()
        } else if text.contains("fixable") || text.contains("hopeless") {
            "I think it is fine!".into()
        } else {
            r#"{"reason": "fine", "pass": true}"#.into()
        }
    });
    let out = run_suite(
        dir.path(),
        &suite(&[
            "{type: llm-rubric, value: fixable}",
            "{type: llm-rubric, value: hopeless}",
            "{type: llm-rubric, value: fine, provider: broken}",
            "{type: contains, value: Rome}, {type: llm-rubric, value: hopeless}",
            "{type: contains, value: Paris}, {type: llm-rubric, value: hopeless}",
        ]),
        Some(judge.clone()),
        CacheMode::Off,
    )
    .await;
    let r = &out.results;
    assert_eq!(r[0].pass, Some(true), "the re-ask fixed it");
    assert_eq!(r[0].assertions[0].judge.as_ref().unwrap().calls, 2);
    assert_eq!(r[1].pass, None);
    assert!(r[1].assertions[0].unmeasured);
    assert!(
        r[1].error
            .as_ref()
            .unwrap()
            .contains("holds no JSON object"),
        "{:?}",
        r[1].error
    );
    assert_eq!(
        r[2].pass, None,
        "an unknown grader leaves the case unmeasured"
    );
    assert!(
        r[2].error
            .as_ref()
            .unwrap()
            .contains("unknown provider `broken`")
    );
    assert_eq!(
        r[3].pass,
        Some(false),
        "a measured failure decides the case"
    );
    assert_eq!(r[4].pass, None, "a measured pass does not");
    let cell = &out.summary.cells[0];
    assert_eq!((cell.passed, cell.failed, cell.unmeasured), (1, 1, 3));
}

#[tokio::test]
async fn thresholds_decide_around_unmeasured_assertions_only_when_they_cannot_matter() {
    let dir = tempfile::tempdir().unwrap();
    let judge = Judge::new(|_, _| "nothing".into());
    let yaml = concat!(
        "prompts: ['q']\nproviders: [fixed]\ntests:\n",
        "  - threshold: 0.5\n    assert: [{type: contains, value: Paris, weight: 3}, {type: llm-rubric, value: x}]\n",
        "  - threshold: 0.9\n    assert: [{type: contains, value: Rome, weight: 3}, {type: llm-rubric, value: x}]\n",
        "  - threshold: 0.5\n    assert: [{type: contains, value: Paris}, {type: llm-rubric, value: x, weight: 2}]\n",
    );
    let out = run_suite(dir.path(), yaml, Some(judge), CacheMode::Off).await;
    let passes: Vec<Option<bool>> = out.results.iter().map(|r| r.pass).collect();
    assert_eq!(passes, vec![Some(true), Some(false), None]);
}

#[tokio::test]
async fn factuality_closedqa_and_configured_scores() {
    let dir = tempfile::tempdir().unwrap();
    let judge = Judge::new(|text, _| {
        if text.contains("Expert answer") {
            let choice = if text.contains("Lyon") {
                "D"
            } else if text.contains("E-case") {
                "E"
            } else {
                "B"
            };
            format!(r#"{{"reasoning": "compared", "choice": "{choice}"}}"#)
        } else if text.contains("names a city") {
            r#"Reasoning first. {"reasoning": "Paris is a city", "answer": "Y"}"#.into()
        } else {
            r#"{"reasoning": "no", "answer": "N"}"#.into()
        }
    });
    let yaml = concat!(
        "prompts: ['q']\nproviders: [fixed]\ntests:\n",
        "  - assert: [{type: factuality, value: Paris}]\n",
        "  - assert: [{type: model-graded-factuality, value: Lyon}]\n",
        "  - options: {factuality: {differButFactual: 0.25}}\n",
        "    assert: [{type: factuality, value: E-case, threshold: 0.5}]\n",
        "  - assert: [{type: model-graded-closedqa, value: names a city}]\n",
        "  - assert: [{type: model-graded-closedqa, value: names a river}]\n",
    );
    let out = run_suite(dir.path(), yaml, Some(judge), CacheMode::Off).await;
    assert_eq!(
        out.verdicts(),
        vec![
            (Some(true), 1.0),
            (Some(false), 0.0),
            (Some(false), 0.25),
            (Some(true), 1.0),
            (Some(false), 0.0)
        ]
    );
    assert!(out.results[0].assertions[0].reason.starts_with("(B)"));
}

#[tokio::test]
async fn g_eval_generates_steps_once_and_weights_scores_by_logprobs() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Arc::new(AtomicUsize::new(0));
    let counted = steps.clone();
    let mut judge = Judge::new(move |text, _| {
        if text.contains("write 3 or 4 short") {
            counted.fetch_add(1, Ordering::SeqCst);
            r#"{"steps": ["Read it", "Check it is correct"]}"#.into()
        } else {
            assert!(text.contains("1. Read it\n2. Check it is correct"));
            r#"{"reason": "correct", "score": 8}"#.into()
        }
    });
    let tests = "  - assert: [{type: g-eval, value: correctness}]\n".repeat(4);
    let yaml = format!("prompts: ['q']\nproviders: [fixed]\ntests:\n{tests}");
    let out = run_suite(dir.path(), &yaml, Some(judge.clone()), CacheMode::Off).await;
    assert_eq!(
        steps.load(Ordering::SeqCst),
        1,
        "steps generated once per criterion"
    );
    for result in &out.results {
        assert_eq!((result.pass, result.score), (Some(true), 0.8));
    }
    let step_calls: u32 = out
        .results
        .iter()
        .map(|r| r.assertions[0].judge.as_ref().unwrap().calls)
        .sum();
    assert_eq!(step_calls, 4 + 1, "the steps call is counted once");

    Arc::get_mut(&mut judge)
        .unwrap_or_else(|| panic!("one owner"))
        .logprobs = vec![TokenLogprob {
        token: "8".into(),
        logprob: 0.5f64.ln(),
        top: vec![("8".into(), 0.5f64.ln()), ("6".into(), 0.5f64.ln())],
    }];
    let dir = tempfile::tempdir().unwrap();
    let out = run_suite(dir.path(), &yaml, Some(judge), CacheMode::Off).await;
    assert_eq!(
        (out.results[0].pass, out.results[0].score),
        (Some(true), 0.7)
    );
}

#[tokio::test]
async fn judge_calls_are_cached_and_missing_graders_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let judge = Judge::new(|_, _| r#"{"reason": "fine", "pass": true}"#.into());
    let yaml = suite(&[
        "{type: llm-rubric, value: fine}",
        "{type: llm-rubric, value: also fine}",
    ]);
    run_suite(dir.path(), &yaml, Some(judge.clone()), CacheMode::ReadWrite).await;
    let again = run_suite(dir.path(), &yaml, Some(judge.clone()), CacheMode::ReadWrite).await;
    assert_eq!(
        judge.calls.load(Ordering::SeqCst),
        2,
        "the re-run re-judged nothing"
    );
    assert!(
        again.results[0].assertions[0]
            .judge
            .as_ref()
            .unwrap()
            .cached
    );

    let none = run_suite(
        tempfile::tempdir().unwrap().path(),
        &yaml,
        None,
        CacheMode::Off,
    )
    .await;
    assert_eq!(none.results[0].pass, None);
    assert!(
        none.results[0]
            .error
            .as_ref()
            .unwrap()
            .contains("grader `judge` was not built")
    );
}

#[test]
fn rubric_prompts_must_only_read_known_variables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suite.yaml");
    std::fs::write(
        &path,
        "prompts: ['q']\nproviders: [fixed]\ntests:\n  - vars: {tone: warm}\n    assert:\n      - type: llm-rubric\n        value: x\n        rubricPrompt: 'Grade {{ output }} for {{ tone }} by {{ rubric }}'\n      - type: llm-rubric\n        value: x\n        rubricPrompt: 'Grade {{ outptu }}'\n",
    )
    .unwrap();
    let error = Suite::load(&path).unwrap_err().to_string();
    assert!(error.contains("reads `outptu`"), "{error}");
    assert!(error.contains("suite.yaml:9:"), "{error}");

    std::fs::write(
        &path,
        "prompts: ['q']\nproviders: [fixed]\ntests:\n  - assert: [{type: llm-rubric, value: x, threshold: 1.5}]\n",
    )
    .unwrap();
    assert!(
        Suite::load(&path)
            .unwrap_err()
            .to_string()
            .contains("threshold must be in [0, 1]")
    );
    std::fs::write(
        &path,
        "prompts: ['q']\nproviders: [fixed]\ntests:\n  - assert: [{type: factuality}]\n",
    )
    .unwrap();
    assert!(
        Suite::load(&path)
            .unwrap_err()
            .to_string()
            .contains("the reference answer")
    );
}
