//! Judged assertions with a scripted judge: known verdicts give exact scores, bad answers are
//! asked again then unmeasured, and the response cache covers judge calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use plumb_core::{
    BoxFuture, ChatModel, ChatRequest, ChatResponse, Embedder, FinishReason, ModelError,
    ResponseFormat, TokenLogprob,
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
        let text: Vec<&str> = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        let text = text.join("\n");
        // Only answer-relevance samples its several questions (at RAGAS's 0.3).
        let temperature = if text.contains("noncommittal") {
            0.3
        } else {
            0.0
        };
        assert_eq!(request.params.temperature, Some(temperature));
        assert!(matches!(
            request.params.response_format,
            Some(ResponseFormat::JsonSchema { .. })
        ));
        let content = (self.script)(&text, call);
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
    run_suite_with(dir, yaml, judge, cache, HashMap::new(), None).await
}

async fn run_suite_with(
    dir: &std::path::Path,
    yaml: &str,
    judge: Option<Arc<Judge>>,
    cache: CacheMode,
    embedders: HashMap<String, Arc<dyn Embedder>>,
    model: Option<Arc<dyn ChatModel>>,
) -> Outcome {
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
    run_with_graders(dir, yaml, graders, cache, embedders, model).await
}

async fn run_with_graders(
    dir: &std::path::Path,
    yaml: &str,
    graders: Graders,
    cache: CacheMode,
    embedders: HashMap<String, Arc<dyn Embedder>>,
    model: Option<Arc<dyn ChatModel>>,
) -> Outcome {
    let path = dir.join("suite.yaml");
    std::fs::write(&path, yaml).unwrap();
    let suite = Arc::new(Suite::load(&path).unwrap());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("p.db")).unwrap());
    let outcome = plumb_eval::run(
        suite,
        plumb_eval::Backends {
            models: vec![
                model.unwrap_or_else(|| Arc::new(Fixed("Paris is the capital of France."))),
            ],
            embedders,
            graders,
        },
        store.clone(),
        RunOptions {
            concurrency: 2,
            repeat: 1,
            cache,
            max_cost: None,
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

/// One axis per distinct word: texts with no word in common are orthogonal, equal texts have
/// cosine 1, so answer-relevance's scores are exact.
#[derive(Default)]
struct Words {
    vocabulary: std::sync::Mutex<Vec<String>>,
}

impl Embedder for Words {
    fn id(&self) -> &str {
        "words"
    }
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ModelError>> {
        let mut vocabulary = self.vocabulary.lock().unwrap();
        let vectors = texts
            .iter()
            .map(|text| {
                let mut vector = vec![0f32; 64];
                for word in text.to_lowercase().split_whitespace() {
                    let axis = match vocabulary.iter().position(|w| w == word) {
                        Some(axis) => axis,
                        None => {
                            vocabulary.push(word.to_owned());
                            vocabulary.len() - 1
                        }
                    };
                    vector[axis] += 1.0;
                }
                let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
                vector.iter().map(|x| x / norm).collect()
            })
            .collect();
        Box::pin(async move { Ok(vectors) })
    }
}

fn rag_judge() -> Arc<Judge> {
    Judge::new(|text, _| {
        if text.contains("List the answer's statements") {
            if text.contains("EMPTY") {
                return r#"{"statements": []}"#.into();
            }
            return r#"{"statements": ["Paris is the capital of France.", "Paris has two million people.", "France is in Europe."]}"#.into();
        }
        if text.contains("[Statements]") {
            return r#"{"verdicts": [{"reason": "stated", "supported": true}, {"reason": "not stated", "supported": false}, {"reason": "follows", "supported": true}]}"#.into();
        }
        if text.contains("[Passage]") {
            let passage = text.split("[Passage]").nth(1).unwrap_or("");
            let useful = passage
                .split("Was the passage")
                .next()
                .unwrap_or("")
                .contains("Paris");
            return format!(r#"{{"reason": "r", "useful": {useful}}}"#);
        }
        if text.contains("[Reference answer]") {
            return r#"{"statements": [{"statement": "Paris is the capital of France.", "reason": "said", "attributed": true}, {"statement": "Paris has two million people.", "reason": "absent", "attributed": false}]}"#.into();
        }
        r#"{"reason": "?", "pass": false}"#.into()
    })
}

#[tokio::test]
async fn rag_metrics_give_ragas_scores_from_known_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let judge = rag_judge();
    let yaml = r#"prompts: ['{{ query }}']
providers: [fixed]
tests:
  - vars: {query: What is the capital of France?, context: Paris is the capital and largest city of France.}
    assert: [{type: context-faithfulness, threshold: 0.6}]
  - vars: {query: What is the capital of France?, context: Paris is the capital and largest city of France.}
    assert: [{type: context-faithfulness, threshold: 0.7}]
  - vars: {query: EMPTY, context: anything}
    assert: [{type: context-faithfulness}]
  - vars: {query: What is the capital of France?}
    assert: [{type: context-faithfulness}]
  - vars:
      query: What is the capital of France?
      context: [Paris is the capital of France., Bananas are yellow., The capital city is Paris.]
    assert: [{type: context-precision, threshold: 0.8}]
  - vars:
      query: What is the capital of France?
      contexts: [Bananas are yellow., Paris is the capital of France.]
    assert: [{type: context-precision, value: Paris is the capital., threshold: 0.8}]
  - vars: {query: What is the capital of France?, context: Paris is the capital of France.}
    assert: [{type: context-recall, value: 'Paris is the capital of France. It has two million people.', threshold: 0.5}]
  - vars: {query: What is the capital of France?, context: ''}
    assert: [{type: context-recall, value: Paris.}]
"#;
    let out = run_suite(dir.path(), yaml, Some(judge.clone()), CacheMode::Off).await;
    let verdicts = out.verdicts();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert_eq!(verdicts[0].0, Some(true));
    assert!(close(verdicts[0].1, 2.0 / 3.0), "{verdicts:?}");
    assert_eq!(verdicts[1].0, Some(false), "2/3 < 0.7");
    assert_eq!(verdicts[2].0, None, "no statements: nothing to score");
    assert!(
        out.results[2].assertions[0]
            .reason
            .contains("no statements")
    );
    assert_eq!(verdicts[3].0, None);
    assert!(
        out.results[3].assertions[0]
            .reason
            .contains("needs the retrieved context"),
        "{}",
        out.results[3].assertions[0].reason
    );
    // useful at ranks 1 and 3 of 3: AP = (1/1 + 2/3) / 2
    assert_eq!(verdicts[4].0, Some(true));
    assert!(
        close(verdicts[4].1, (1.0 + 2.0 / 3.0) / 2.0),
        "{verdicts:?}"
    );
    // useful at rank 2 only: AP = 1/2
    assert_eq!(verdicts[5], (Some(false), 0.5));
    assert_eq!(verdicts[6], (Some(true), 0.5));
    assert!(
        out.results[6].assertions[0]
            .reason
            .contains("not in the context: “Paris has two million people.”")
    );
    assert_eq!(verdicts[7].0, None, "an empty context is missing context");
    assert_eq!(out.summary.cells[0].unmeasured, 3);
    let faithful = out.results[0].assertions[0].judge.as_ref().unwrap();
    assert_eq!(faithful.calls, 2, "statements, then verdicts");
    assert_eq!(
        out.results[4].assertions[0].judge.as_ref().unwrap().calls,
        3,
        "one call per chunk"
    );
}

#[tokio::test]
async fn answer_relevance_is_the_mean_cosine_of_generated_questions() {
    let questions = |noncommittal: bool| {
        Judge::new(move |text, call| {
            assert!(text.contains("noncommittal"), "only question generations");
            let question = match call % 3 {
                2 => "banana bread recipe",
                _ => "capital of france",
            };
            format!(r#"{{"question": "{question}", "noncommittal": {noncommittal}}}"#)
        })
    };
    let yaml = "prompts: ['{{ query }}']\nproviders: [fixed]\ntests:\n  - vars: {query: capital of france}\n    assert: [{type: answer-relevance, threshold: 0.6}]\n";
    for (noncommittal, expected) in [(false, 2.0 / 3.0), (true, 0.0)] {
        let dir = tempfile::tempdir().unwrap();
        let judge = questions(noncommittal);
        let mut embedders: HashMap<String, Arc<dyn Embedder>> = HashMap::new();
        embedders.insert(
            plumb_eval::assertion::DEFAULT_EMBEDDER.into(),
            Arc::new(Words::default()),
        );
        let out = run_suite_with(
            dir.path(),
            yaml,
            Some(judge.clone()),
            CacheMode::Off,
            embedders,
            None,
        )
        .await;
        let (pass, score) = out.verdicts()[0];
        assert!((score - expected).abs() < 1e-6, "{score} vs {expected}");
        assert_eq!(pass, Some(!noncommittal));
        assert_eq!(judge.calls.load(Ordering::SeqCst), 3, "n = 3 generations");
        let reason = &out.results[0].assertions[0].reason;
        assert!(reason.contains("3 generated"), "{reason}");
    }
}

#[test]
fn rag_metrics_check_their_shape_when_the_suite_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suite.yaml");
    for (assert, message) in [
        ("{type: context-recall}", "needs a `value`"),
        ("{type: context-faithfulness, value: x}", "takes no `value`"),
        (
            "{type: answer-relevance, threshold: 2}",
            "threshold must be in [0, 1]",
        ),
        (
            "{type: context-faithfulness, rubricPrompt: 'x {{ output }}'}",
            "takes no `rubricPrompt`",
        ),
        ("{type: context-precision, value: [a]}", "reference answer"),
    ] {
        std::fs::write(
            &path,
            format!("prompts: ['q']\nproviders: [fixed]\ntests:\n  - assert: [{assert}]\n"),
        )
        .unwrap();
        let error = Suite::load(&path).unwrap_err().to_string();
        assert!(error.contains(message), "{assert}: {error}");
    }
}

#[tokio::test]
async fn a_dry_run_plan_counts_every_judge_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suite.yaml");
    std::fs::write(
        &path,
        r#"prompts: ['{{ query }}']
providers: [fixed]
tests:
  - vars: {query: q1, context: [a, b, c]}
    assert:
      - {type: llm-rubric, value: fine}
      - {type: g-eval, value: [clarity, tone]}
      - {type: context-precision}
      - {type: context-faithfulness}
      - {type: answer-relevance}
      - {type: context-recall, value: ref}
  - vars: {query: q2}
    assert: [{type: g-eval, value: [clarity, tone]}]
"#,
    )
    .unwrap();
    let suite = Suite::load(&path).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).unwrap());
    let mut graders = Graders {
        default: Some("judge".into()),
        ..Graders::default()
    };
    graders
        .models
        .insert("judge".into(), Ok(rag_judge() as Arc<dyn ChatModel>));
    let models: Vec<Arc<dyn ChatModel>> = vec![Arc::new(Fixed("x"))];
    let options = RunOptions {
        concurrency: 1,
        repeat: 1,
        cache: CacheMode::ReadWrite,
        max_cost: None,
    };
    let plan = plumb_eval::plan::plan(&suite, &models, &graders, store, &options).await;
    assert_eq!(plan.cases, 2);
    // Case 1: rubric 1 + g-eval (2 steps + 2 scores) + precision 3 + faithfulness 2 +
    // relevance 3 + recall 1 = 14; case 2: g-eval's steps are already counted, 2 scores.
    assert_eq!(plan.lines["judge judge"].calls, 16);
    assert_eq!(plan.lines["model fixed"].calls, 2);
    assert!(plan.lines["judge judge"].prompt_tokens > 0);
}

/// Answers with the prompt's last message: each prompt version gives its own output.
struct Echo;

impl ChatModel for Echo {
    fn id(&self) -> &str {
        "echo"
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        let content = request.messages.last().unwrap().content.clone();
        Box::pin(async move {
            Ok(ChatResponse {
                content,
                finish_reason: Some(FinishReason::Stop),
                ..Default::default()
            })
        })
    }
}

#[tokio::test]
async fn select_best_asks_both_orders_and_reports_position_bias() {
    let dir = tempfile::tempdir().unwrap();
    let judge = Judge::new(|text, _| {
        assert!(
            text.contains("[Output 2]"),
            "select-best shows every output: {text}"
        );
        let position = |label: &str| {
            let first = text.split("[Output 2]").next().unwrap();
            if first.contains(label) { 1 } else { 2 }
        };
        let best = if text.contains("t1") {
            position("Answer B") // a consistent pick: B in both orders
        } else if text.contains("t2") {
            1 // always the first shown: position bias
        } else {
            position("Answer A")
        };
        format!(r#"{{"reason": "r", "best": {best}}}"#)
    });
    let yaml = r#"prompts: ['Answer A: {{ q }}', 'Answer B: {{ q }}']
providers: [echo]
tests:
  - vars: {q: t1}
    assert: [{type: select-best, value: the clearest answer}, {type: contains, value: Answer}]
  - vars: {q: t2}
    assert: [{type: select-best, value: the clearest answer}]
  - vars: {q: t3}
    assert: [{type: not-select-best, value: the clearest answer}]
  - vars: {q: t4}
    assert: [{type: contains, value: Answer}]
"#;
    let out = run_suite_with(
        dir.path(),
        yaml,
        Some(judge.clone()),
        CacheMode::Off,
        HashMap::new(),
        Some(Arc::new(Echo)),
    )
    .await;
    let by_case: HashMap<(u32, u32), (Option<bool>, f64)> = out
        .results
        .iter()
        .map(|r| ((r.prompt_idx, r.test_idx), (r.pass, r.score)))
        .collect();
    // t1: B picked in both orders. With `contains` also passing, A scores 0.5.
    assert_eq!(by_case[&(1, 0)], (Some(true), 1.0));
    assert_eq!(by_case[&(0, 0)], (Some(false), 0.5));
    // t2: the first shown both times (A, then B): unmeasured on both sides.
    assert_eq!(by_case[&(0, 1)].0, None);
    assert_eq!(by_case[&(1, 1)].0, None);
    let biased = out.results.iter().find(|r| r.test_idx == 1).unwrap();
    assert!(
        biased.assertions[0].reason.starts_with("position bias"),
        "{}",
        biased.assertions[0].reason
    );
    // t3: not-select-best: A is picked, so A fails and B passes.
    assert_eq!(by_case[&(0, 2)], (Some(false), 0.0));
    assert_eq!(by_case[&(1, 2)], (Some(true), 1.0));
    assert_eq!(by_case[&(0, 3)], (Some(true), 1.0));
    // Two calls (both orders) per compared test; the cost sits on one output only.
    assert_eq!(judge.calls.load(Ordering::SeqCst), 6);
    let infos: Vec<u32> = out
        .results
        .iter()
        .filter(|r| r.test_idx == 0)
        .map(|r| r.assertions[0].judge.as_ref().unwrap().calls)
        .collect();
    assert_eq!(infos.iter().sum::<u32>(), 2, "{infos:?}");
    assert!(out.summary.cells.iter().all(|c| c.position_bias == 1));
}

/// Records the parameters of every request; answers a passing binary verdict.
#[derive(Default)]
struct Capture {
    seen: std::sync::Mutex<Vec<plumb_core::ModelParams>>,
}

impl ChatModel for Capture {
    fn id(&self) -> &str {
        "capture"
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        self.seen.lock().unwrap().push(request.params.clone());
        Box::pin(async move {
            Ok(ChatResponse {
                content: r#"{"reason": "ok", "pass": true}"#.into(),
                finish_reason: Some(FinishReason::Stop),
                ..Default::default()
            })
        })
    }
}

#[tokio::test]
async fn a_graders_sampling_config_reaches_its_calls_and_format_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let capture = Arc::new(Capture::default());
    let mut graders = Graders {
        default: Some("judge".into()),
        ..Graders::default()
    };
    graders
        .models
        .insert("judge".into(), Ok(capture.clone() as Arc<dyn ChatModel>));
    graders.params.insert(
        "judge".into(),
        plumb_core::ModelParams {
            temperature: Some(0.5),
            max_tokens: Some(900),
            seed: Some(3),
            ..Default::default()
        },
    );
    let yaml = suite(&["{type: llm-rubric, value: fine}"]);
    let out = run_with_graders(
        dir.path(),
        &yaml,
        graders,
        CacheMode::Off,
        HashMap::new(),
        None,
    )
    .await;
    let seen = capture.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].temperature, seen[0].max_tokens, seen[0].seed),
        (Some(0.5), Some(900), Some(3))
    );
    assert!(
        seen[0].response_format.is_some(),
        "the verdict schema stays"
    );
    let info = out.results[0].assertions[0].judge.as_ref().unwrap();
    assert_eq!(
        info.params.temperature,
        Some(0.5),
        "the score records what was asked"
    );

    let path = dir.path().join("suite.yaml");
    std::fs::write(
        &path,
        "prompts: ['q']\nproviders: [fixed]\ndefaultTest:\n  options:\n    provider: {id: 'openai:gpt-4.1-mini', config: {response_format: {type: json_object}}}\ntests:\n  - assert: [{type: llm-rubric, value: x}]\n",
    )
    .unwrap();
    let error = Suite::load(&path).unwrap_err().to_string();
    assert!(
        error.contains("`response_format` cannot be set on a grader"),
        "{error}"
    );
}
