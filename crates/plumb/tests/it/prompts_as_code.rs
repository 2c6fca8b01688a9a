//! The README's "Prompts as code" flow through the binary: push → eval → promote under the
//! policy → refused regression → recorded override → rollback → export/import, plus lint,
//! keys and `serve` refusals.

use super::{Project, code, stderr, stdout};

const POLICY: &str = "promotion:\n  production:\n    suites: [evals/triage.yaml]\n";

const V1: &str = r#"name: triage
description: Route support tickets
owner: support
risk: medium
messages:
  - role: system
    content: You route support tickets.
  - role: user
    content: "Ticket: {{ ticket }}"
variables:
  ticket: {type: string}
"#;

/// Drops the ticket from the prompt: echo answers lose it, every case fails.
const V2: &str = r#"name: triage
messages:
  - role: system
    content: You route support tickets.
  - role: user
    content: "Ticket: (redacted)"
variables:
  ticket: {type: string, default: ""}
"#;

fn suite(prompts: &str) -> String {
    let mut text = format!("prompts: {prompts}\nproviders: [echo]\ntests:\n");
    for word in [
        "refund", "crash", "login", "parcel", "invoice", "timeout", "password", "tracking",
    ] {
        text.push_str(&format!(
            "  - vars: {{ticket: {word}}}\n    assert: [{{type: contains, value: {word}}}]\n"
        ));
    }
    text
}

#[test]
fn push_eval_promote_refuse_override_rollback() {
    let project = Project::new();
    project.write("plumb.yaml", POLICY);
    project.write("prompts/triage.yaml", V1);
    project.write("evals/triage.yaml", &suite("[triage@latest]"));

    let out = project.plumb(&["prompt", "push", "-m", "first version"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pushed triage v1"),
        "{}",
        stdout(&out)
    );
    let out = project.plumb(&["prompt", "push"]);
    assert!(
        stdout(&out).contains("unchanged triage v1"),
        "{}",
        stdout(&out)
    );

    // No evidence yet: refused, saying exactly what is missing.
    let out = project.plumb(&["prompt", "label", "triage", "1", "production"]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no completed run of evals/triage.yaml evaluated triage v1"),
        "{}",
        stderr(&out)
    );

    let out = project.plumb(&[
        "eval",
        "evals/triage.yaml",
        "-o",
        "v1.jsonl",
        "--no-progress",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let shown = project.plumb(&["prompt", "show", "triage@1", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let hash = shown["hash"].as_str().unwrap();
    let results = std::fs::read_to_string(project.path("v1.jsonl")).unwrap();
    assert!(
        results.contains(&format!("\"prompt_hash\":\"{hash}\"")),
        "{results}"
    );

    let out = project.plumb(&["prompt", "label", "triage", "1", "production"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("unset → v1"), "{}", stdout(&out));
    assert!(stdout(&out).contains("8/8 passed"), "{}", stdout(&out));

    // Version 2 regresses; the suite now compares it with production.
    project.write(
        "evals/triage.yaml",
        &suite("[triage@latest, triage@production]"),
    );
    project.write("prompts/triage.yaml", V2);
    let out = project.plumb(&["prompt", "push", "-m", "redact tickets"]);
    assert!(
        stdout(&out).contains("pushed triage v2"),
        "{}",
        stdout(&out)
    );
    let out = project.plumb(&["prompt", "diff", "triage@production", "triage@latest"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("-Ticket: [-{{ ticket }}-]"),
        "{}",
        stdout(&out)
    );
    let out = project.plumb(&["eval", "evals/triage.yaml", "--no-progress"]);
    assert_eq!(code(&out), 1, "the gate fails: {}", stderr(&out));
    let out = project.plumb(&["prompt", "label", "triage", "2", "production", "--dry-run"]);
    assert_eq!(code(&out), 1);
    let out = project.plumb(&["prompt", "label", "triage", "2", "production"]);
    assert_eq!(code(&out), 2);
    let refusal = stderr(&out);
    assert!(refusal.contains("8 of 8 cases failed"), "{refusal}");
    assert!(
        refusal.contains("significantly worse than triage v1"),
        "{refusal}"
    );
    assert!(refusal.contains("--force --reason"), "{refusal}");

    let out = project.plumb(&["prompt", "label", "triage", "2", "production", "--force"]);
    assert_eq!(code(&out), 2, "--force needs --reason");
    let out = project.plumb(&[
        "prompt",
        "label",
        "triage",
        "2",
        "production",
        "--force",
        "--reason",
        "incident 7",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("policy overridden"),
        "{}",
        stderr(&out)
    );

    let out = project.plumb(&["prompt", "rollback", "triage", "production"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("v2 → v1"), "{}", stdout(&out));
    let out = project.plumb(&["prompt", "show", "triage@production"]);
    assert!(stdout(&out).starts_with("# triage v1"), "{}", stdout(&out));

    let out = project.plumb(&["audit", "--json", "--prompt", "triage"]);
    let entries: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["push", "label", "push", "label", "rollback"]);
    assert_eq!(entries[3]["forced"], true);
    assert_eq!(entries[3]["reason"], "incident 7");

    project.plumb(&["prompt", "label", "triage", "2", "canary"]);
    let out = project.plumb(&["prompt", "unlabel", "triage", "canary", "--reason", "done"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = project.plumb(&["prompt", "show", "triage@canary"]);
    assert_eq!(code(&out), 2);

    // Export, import into a fresh database, export again: the same files.
    let out = project.plumb(&["prompt", "export", "exported"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let other_db = project.path("other.db");
    let other_db = other_db.to_str().unwrap();
    let out = project.plumb(&["prompt", "import", "exported", "--db", other_db]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = project.plumb(&["prompt", "export", "again", "--db", other_db]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for file in ["prompt.yaml", "v1.yaml", "v2.yaml"] {
        let a = std::fs::read_to_string(project.path(&format!("exported/triage/{file}"))).unwrap();
        let b = std::fs::read_to_string(project.path(&format!("again/triage/{file}"))).unwrap();
        assert_eq!(a, b, "{file}");
    }
}

#[test]
fn registry_bad_input_exits_2() {
    let project = Project::new();
    project.write(
        "prompts/bad.yaml",
        "name: bad\nmessages:\n  - role: usr\n    content: hi\n",
    );
    let out = project.plumb(&["prompt", "push", "prompts/bad.yaml"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("prompts/bad.yaml"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("did you mean `user`"),
        "{}",
        stderr(&out)
    );
    let out = project.plumb(&["prompt", "list"]);
    assert!(
        stderr(&out).contains("registry is empty"),
        "nothing was written"
    );

    project.write(
        "prompts/ok.yaml",
        "name: ok\nmessages:\n  - role: user\n    content: hi\n",
    );
    let out = project.plumb(&["prompt", "push", "prompts/ok.yaml"]);
    assert_eq!(code(&out), 0);
    let out = project.plumb(&["prompt", "show", "ok@7"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("ok has no version 7"),
        "{}",
        stderr(&out)
    );
    let out = project.plumb(&["prompt", "show", "okk"]);
    assert!(
        stderr(&out).contains("did you mean `ok`?"),
        "{}",
        stderr(&out)
    );
    let out = project.plumb(&["prompt", "label", "ok", "1", "latest"]);
    assert_eq!(code(&out), 2);
    let out = project.plumb(&["prompt", "push", "prompts/ok.yaml", "--semver", "one"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("not a semantic version"),
        "{}",
        stderr(&out)
    );
    let out = project.plumb(&["prompt", "import", "nowhere"]);
    assert_eq!(code(&out), 2);
    let out = project.plumb(&["keys", "create", "--role", "releasr"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("did you mean `releaser`"),
        "{}",
        stderr(&out)
    );
    let out = project.plumb(&["serve", "--dev", "--addr", "0.0.0.0:0"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("only binds to loopback"),
        "{}",
        stderr(&out)
    );
    // A suite naming a registry prompt that is not there.
    project.write(
        "suite.yaml",
        "prompts: [ok@production]\nproviders: [echo]\ntests: [{vars: {}}]\n",
    );
    let out = project.plumb(&["eval", "suite.yaml"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("suite.yaml:1"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no label `production`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn lint_fails_on_errors_and_keys_show_once() {
    let project = Project::new();
    project.write(
        "prompts/vars.yaml",
        "name: vars\nmessages:\n  - role: user\n    content: \"{{ questoin }}\"\nvariables:\n  question: {type: string}\n",
    );
    let out = project.plumb(&["prompt", "lint"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("vars.yaml:4: error[undefined-variable]"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("tokens (gpt-4o-mini"),
        "{}",
        stdout(&out)
    );
    project.write(
        "prompts/vars.yaml",
        "name: vars\nmessages:\n  - role: user\n    content: \"{{ question }}\"\nvariables:\n  question: {type: string}\n  extra: {type: string, default: x}\n",
    );
    let out = project.plumb(&["prompt", "lint"]);
    assert_eq!(code(&out), 0, "warnings pass: {}", stdout(&out));
    let out = project.plumb(&["prompt", "lint", "--strict"]);
    assert_eq!(code(&out), 1, "--strict fails on warnings");

    let out = project.plumb(&["keys", "create", "--role", "editor", "--name", "ci"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let secret = stdout(&out).trim().to_owned();
    assert!(secret.starts_with("plumb_"), "{secret}");
    let out = project.plumb(&["keys", "list"]);
    assert!(stdout(&out).contains("editor"));
    assert!(
        !stdout(&out).contains(&secret),
        "secrets are never shown again"
    );
}
