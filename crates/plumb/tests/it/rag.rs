//! `plumb rag` end to end, as a user runs it: ingest a folder, ingest again, query with the
//! debug view and a gold passage, refusals, and a suite whose tests retrieve their context.
//! Uses the real all-MiniLM-L6-v2 (installed by scripts/test.sh).

use crate::Project;

fn text(output: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn docs(project: &Project) {
    project.write(
        "docs/limits.md",
        "# Limits\n\nEach account may send 600 requests per minute. Above that the API answers \
         with status 429 and a Retry-After header.\n\n## Payload size\n\nRequests larger than \
         10 MB are refused with status 413.\n",
    );
    project.write(
        "docs/billing.md",
        "# Billing\n\nInvoices are sent on the first day of each month. Payment is due within \
         30 days; unpaid accounts are suspended after 60 days.\n",
    );
    project.write(
        "docs/install.md",
        "# Installing\n\nDownload the archive and run the installer. It needs administrator \
         rights on Windows.\n",
    );
    project.write("docs/notes.bin", "\u{0}\u{1}binary");
}

#[test]
fn ingest_query_and_a_suite_that_retrieves() {
    let project = Project::new();
    docs(&project);

    let out = project.plumb(&["rag", "ingest", "docs", "--collection", "help"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("3 added, 0 updated, 0 unchanged, 0 removed, 1 skipped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("docs/notes.bin: `.bin` is not a document type"),
        "{stdout}"
    );

    let out = project.plumb(&["rag", "ingest", "docs", "--collection", "help"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("0 added, 0 updated, 3 unchanged"),
        "{stdout}"
    );

    // A collection keeps its settings.
    let out = project.plumb(&[
        "rag",
        "ingest",
        "docs",
        "--collection",
        "help",
        "--max-tokens",
        "100",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("collection `help` was made with max tokens 256 (given 100)"),
        "{stderr}"
    );

    let out = project.plumb(&[
        "rag",
        "query",
        "help",
        "how many requests per minute may I send?",
        "-k",
        "2",
        "--debug",
        "--gold",
        "600 requests per minute",
        "--answer",
        "You may send 600 requests per minute [1].",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("[1] docs/limits.md § Limits"),
        "{stdout}"
    );
    assert!(stdout.contains("· BM25 #1 ("), "{stdout}");
    assert!(stdout.contains("· vector #"), "{stdout}");
    assert!(
        stdout.contains("gold passage: retrieved at rank 1"),
        "{stdout}"
    );
    assert!(stdout.contains("answer: cites [1]"), "{stdout}");
    assert!(stdout.contains("the gold passage was used"), "{stdout}");

    // Output into a closed pipe ends quietly, not with a panic.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' rag query help 'requests per minute' -k 3 --debug | true",
            env!("CARGO_BIN_EXE_plumb")
        ))
        .current_dir(project.path(""))
        .env("PLUMB_DB", project.path(".plumb/plumb.db"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A listwise reranker (scripted) reverses the fused top 2.
    let out = project.plumb(&[
        "rag",
        "query",
        "help",
        "how many requests per minute may I send?",
        "-k",
        "2",
        "--debug",
        "--rerank",
        "mock:text:{\"ranking\": [2, 1]}",
        "--rerank-depth",
        "2",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("fused rank 2 before rerank"), "{stdout}");
    assert!(
        !stdout.starts_with("[1] docs/limits.md § Limits\n"),
        "{stdout}"
    );

    let out = project.plumb(&["rag", "query", "help", "invoices", "--filter", "colour=red"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("unknown filter key `colour`"), "{stderr}");

    let out = project.plumb(&["rag", "query", "helpp", "x"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("collection `helpp` does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `help`?"), "{stderr}");

    // Retrieval evals: labeled queries, two fusion settings, a gate.
    project.write(
        "labels.yaml",
        "- query: how many requests per minute may I send?\n  gold: 600 requests per minute\n\
         - query: when must invoices be paid?\n  gold: [Payment is due within 30 days]\n\
         - query: installer\n  sources: docs/install.md\n",
    );
    let out = project.plumb(&[
        "rag",
        "eval",
        "labels.yaml",
        "-c",
        "help",
        "--fusion",
        "hybrid",
        "--fusion",
        "bm25",
        "-k",
        "1",
        "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["queries"], 3);
    assert_eq!(report["settings"][0]["label"], "hybrid");
    assert_eq!(report["settings"][0]["recall"]["mean"], 1.0, "{stdout}");
    assert_eq!(report["comparisons"][0]["setting"], "bm25");
    assert_eq!(report["comparisons"][0]["measures"][0]["name"], "recall@1");
    let out = project.plumb(&[
        "rag",
        "eval",
        "labels.yaml",
        "-c",
        "help",
        "--fusion",
        "0,0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    project.write(
        "hard.yaml",
        "- query: what colour is the sky\n  gold: the sky is green\n",
    );
    let out = project.plumb(&[
        "rag",
        "eval",
        "hard.yaml",
        "-c",
        "help",
        "--min-recall",
        "0.5",
    ]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("gate failed: recall@5 0.000 < 0.5"),
        "{stdout}"
    );
    project.write(
        "broken.yaml",
        "- query: x\n  gold: some text\n  relevance: 3\n",
    );
    let out = project.plumb(&["rag", "eval", "broken.yaml", "-c", "help"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("broken.yaml:3"), "{stderr}");

    // A suite whose tests retrieve: the mock answers only when the right chunk reached the
    // prompt, citing it.
    project.write(
        "rules.yaml",
        "- when: [\"600 requests per minute\", \"How many requests\"]\n  output: \"You may send 600 requests per minute [1].\"\n\
         - when: [\"within 30 days\", \"When is payment due\"]\n  output: \"Payment is due within 30 days [1].\"\n\
         - when: \"Question:\"\n  output: \"I do not know [4].\"\n",
    );
    project.write(
        "suite.yaml",
        "prompts:\n  - \"Answer from the context only and cite it as [n].\\n\\n{{ context }}\\n\\nQuestion: {{ question }}\"\n\
         providers: [\"mock:rules:rules.yaml\"]\n\
         defaultTest:\n  context: {collection: help, k: 2}\n  assert:\n    - type: citations\n\
         tests:\n  - vars: {question: How many requests may I send per minute?}\n  - vars: {question: When is payment due?}\n",
    );
    let out = project.plumb(&["eval", "suite.yaml", "--no-progress"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("retrieved context for 2 tests"), "{stderr}");
    assert!(stdout.contains("2/2"), "{stdout}");

    // The retrieved chunks are stored with each case.
    let out = project.plumb(&["runs", "show", "latest", "-o", "run.json"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let report = std::fs::read_to_string(project.path("run.json")).unwrap();
    assert!(report.contains("\"retrieved\""), "{report}");
    assert!(report.contains("docs/limits.md"), "{report}");
    let out = project.plumb(&["runs", "show", "latest", "-o", "run.html"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let html = std::fs::read_to_string(project.path("run.html")).unwrap();
    assert!(html.contains("retrieved chunks"), "{html}");
    assert!(
        html.contains("<code>docs/limits.md § Limits</code>"),
        "{html}"
    );

    // An unknown collection in a suite is an error at its line.
    project.write(
        "bad.yaml",
        "prompts: [\"{{ context }} {{ question }}\"]\nproviders: [mock:echo]\ntests:\n  - vars: {question: q}\n    context: {collection: nope}\n",
    );
    let out = project.plumb(&["eval", "bad.yaml", "--no-progress"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml:5:"), "{stderr}");
    assert!(
        stderr.contains("collection `nope` does not exist"),
        "{stderr}"
    );
}

/// The same commands with the collections in PostgreSQL + pgvector (a real server on
/// loopback): `--store URL` on the rag commands, `PLUMB_RAG_STORE` for a suite.
#[test]
fn collections_in_postgres() {
    let server = plumb_test::PgServer::start();
    let url = server.url();
    let project = Project::new();
    docs(&project);

    let out = project.plumb(&["rag", "--store", &url, "ingest", "docs", "-c", "help"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("3 added, 0 updated, 0 unchanged, 0 removed, 1 skipped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("in postgres://postgres@127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        !project.path(".plumb/rag/help").exists(),
        "nothing is written under .plumb/rag"
    );
    // The flag may also come after the subcommand.
    let out = project.plumb(&["rag", "ingest", "docs", "-c", "help", "--store", &url]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("0 added, 0 updated, 3 unchanged"),
        "{stdout}"
    );

    let out = project.plumb(&["rag", "--store", &url, "list"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("help ") && l.contains(" 3 ")),
        "{stdout}"
    );
    let out = project.plumb(&["rag", "--store", &url, "show", "help"]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("docs/limits.md"), "{stdout}");

    let out = project.plumb(&[
        "rag",
        "--store",
        &url,
        "query",
        "help",
        "how many requests per minute may I send?",
        "-k",
        "2",
        "--debug",
        "--gold",
        "600 requests per minute",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("[1] docs/limits.md § Limits"),
        "{stdout}"
    );
    assert!(stdout.contains("· BM25 #1 ("), "{stdout}");
    assert!(
        stdout.contains("gold passage: retrieved at rank 1"),
        "{stdout}"
    );
    // Filters reach the database.
    let out = project.plumb(&[
        "rag",
        "--store",
        &url,
        "query",
        "help",
        "requests",
        "--filter",
        "source=docs/bill*",
    ]);
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("[1] docs/billing.md"), "{stdout}");
    assert!(!stdout.contains("docs/limits.md"), "{stdout}");

    // The default store (.plumb/rag) does not have it; the message says where it looked.
    let out = project.plumb(&["rag", "query", "help", "x"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("collection `help` does not exist in"),
        "{stderr}"
    );

    // A suite retrieves from the store PLUMB_RAG_STORE names.
    project.write(
        "suite.yaml",
        "prompts: [\"{{ context }}\\n\\nQuestion: {{ question }}\"]\nproviders: [mock:echo]\n\
         tests:\n  - vars: {question: When is payment due?}\n    context: {collection: help, k: 1}\n    assert:\n      - type: contains\n        value: within 30 days\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["eval", "suite.yaml", "--no-progress"])
        .current_dir(project.path(""))
        .env("NO_COLOR", "1")
        .env("PLUMB_DB", project.path(".plumb/plumb.db"))
        .env("PLUMB_RAG_STORE", &url)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("1/1"), "{stdout}");

    // A store that cannot be reached: one error, exit 2, the password not shown.
    let out = project.plumb(&[
        "rag",
        "--store",
        "postgres://plumb:hunter2@127.0.0.1:1/rag",
        "list",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot connect to postgres://plumb@127.0.0.1:1/rag"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
