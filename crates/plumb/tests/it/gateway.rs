//! `plumb serve` as a gateway, driven by the official `openai` Python client: a real process,
//! a real socket, the SDK's own request and SSE parsing.

use std::process::Command;

use super::{Project, code, free_port, stderr, stdout};

/// The official client, installed by `scripts/test.sh` (its folder is in
/// `PLUMB_TEST_OPENAI_PYTHONPATH`), or already importable by `python3`.
fn python_with_openai() -> Command {
    let mut command = Command::new("python3");
    if let Some(path) = std::env::var_os("PLUMB_TEST_OPENAI_PYTHONPATH") {
        command.env("PYTHONPATH", path);
    }
    let probe = Command::new("python3")
        .args(["-c", "import openai"])
        .envs(std::env::var_os("PLUMB_TEST_OPENAI_PYTHONPATH").map(|p| ("PYTHONPATH", p)))
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "the official openai Python client is needed: run scripts/test.sh (it installs it), or \
         set PLUMB_TEST_OPENAI_PYTHONPATH to a folder holding it"
    );
    command
}

const CLIENT: &str = r#"
import sys, openai
base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
raw = client.chat.completions.with_raw_response.create(
    model="echo-model", messages=[{"role": "user", "content": "ping"}],
    extra_headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
r = raw.parse()
print("complete", r.choices[0].message.content, r.model, r.usage.total_tokens > 0)
print("trace", raw.headers["x-plumb-trace-id"], r.id)
import json, urllib.request
feedback = urllib.request.Request(base + "/feedback", method="POST",
    data=json.dumps({"trace_id": r.id, "score": 1, "label": "good"}).encode(),
    headers={"authorization": "Bearer " + key, "content-type": "application/json"})
print("feedback", urllib.request.urlopen(feedback).status)
stream = client.chat.completions.create(
    model="echo-model", messages=[{"role": "user", "content": "stream ping"}],
    stream=True, stream_options={"include_usage": True})
chunks = list(stream)
print("stream", "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
      chunks[-1].usage.total_tokens > 0)
print("models", [m.id for m in client.models.list()])
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
except openai.NotFoundError as e:
    print("notfound", e.body["code"])
p = client.chat.completions.create(model="prompt:route@latest", messages=[],
    extra_body={"variables": {"ticket": "printer on fire"}})
print("prompt", p.model, "printer on fire" in p.choices[0].message.content)
vectors = client.embeddings.create(model="minilm", input=["a cat", "a dog"])
print("embeddings", len(vectors.data), len(vectors.data[0].embedding))
def cached(text):
    return client.chat.completions.with_raw_response.create(
        model="cached-model", messages=[{"role": "user", "content": text}])
first = cached("What is the capital of France?")
close = cached("Which city is the capital of France?")
far = cached("How do I bake sourdough bread at home?")
local = client.chat.completions.create(model="local-model", max_tokens=8, temperature=0,
    messages=[{"role": "user", "content": "Say hello."}])
local_chunks = list(client.chat.completions.create(model="local-model", max_tokens=8,
    temperature=0, stream=True, messages=[{"role": "user", "content": "Say hello."}]))
print("local", local.choices[0].message.content != "", local.usage.completion_tokens > 0,
      "".join(c.choices[0].delta.content or "" for c in local_chunks if c.choices)
      == local.choices[0].message.content)
print("semantic", first.headers["x-plumb-cache"], close.headers["x-plumb-cache"],
      far.headers["x-plumb-cache"], close.parse().choices[0].message.content)
try:
    openai.OpenAI(base_url=base, api_key="plumb_bad", max_retries=0).models.list()
except openai.AuthenticationError as e:
    print("unauthorized", e.body["code"])
"#;

#[test]
fn the_official_openai_client_works_against_plumb_serve() {
    let mut python = python_with_openai();
    let project = Project::new();
    project.write(
        "plumb.yaml",
        "gateway:\n  models:\n    echo-model:\n      targets: [{provider: echo}]\n    cached-model:\n      targets: [{provider: echo}]\n      cache: {ttl_s: 600, semantic: {threshold: 0.8}}\n    local-model:\n      targets: [{provider: 'local:smollm2-135m'}]\n  embeddings:\n    minilm: {provider: local:all-minilm-l6-v2}\n",
    );
    project.write(
        "prompts/route.yaml",
        "name: route\nmodel: echo-model\nmessages:\n  - role: user\n    content: \"Ticket: {{ ticket }}\"\nvariables:\n  ticket: {type: string}\n",
    );
    let out = project.plumb(&["prompt", "push", "prompts/route.yaml"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = project.plumb(&["keys", "create", "--role", "viewer", "--name", "sdk"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let key = stdout(&out).trim().to_owned();
    let port = free_port();
    let served = project.serve(port);
    let (mut server, banner, lines) = (served.child, served.banner, served.stderr);
    assert!(banner.contains("echo-model → echo"), "{banner}");
    let output = python
        .args(["-c", CLIENT, &format!("http://127.0.0.1:{port}/v1"), &key])
        .output()
        .unwrap();
    // SIGTERM: a graceful stop, which writes every queued trace before exiting.
    let terminated = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let exit = server.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(exit.success(), "{exit:?}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("traces written")),
        "{rest:?}"
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("complete ping echo-model True"),
        "{printed}"
    );
    assert!(printed.contains("stream stream ping True"), "{printed}");
    assert!(
        printed.contains("models ['echo-model', 'cached-model', 'local-model', 'minilm']"),
        "{printed}"
    );
    assert!(printed.contains("embeddings 2 384"), "{printed}");
    assert!(printed.contains("notfound model_not_found"), "{printed}");
    assert!(
        printed.contains("unauthorized invalid_api_key"),
        "{printed}"
    );
    assert!(printed.contains("feedback 201"), "{printed}");
    assert!(printed.contains("prompt prompt:route@1 True"), "{printed}");
    // Semantic cache on the embedded embedder: a paraphrase is answered with the first answer.
    assert!(
        printed.contains("semantic miss semantic miss What is the capital of France?"),
        "{printed}"
    );

    // The request log, read back by the CLI: one trace per model call (the completion, the
    // stream, the unknown model, the embeddings), the caller's trace continued.
    let trace_line = printed.lines().find(|l| l.starts_with("trace ")).unwrap();
    let mut words = trace_line.split(' ').skip(1);
    let (trace_id, response_id) = (words.next().unwrap(), words.next().unwrap());
    assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    let tail = project.plumb(&["traces", "tail", "--no-follow", "--json"]);
    assert_eq!(code(&tail), 0, "{}", stderr(&tail));
    let traces: Vec<serde_json::Value> = stdout(&tail)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(traces.len(), 10, "{traces:?}");
    let models: Vec<&str> = traces
        .iter()
        .map(|t| t["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models[..5],
        [
            "echo-model",
            "echo-model",
            "nope",
            "prompt:route@latest",
            "minilm"
        ]
    );
    // The embedded model answers through the gateway like any other target, streamed too.
    assert!(printed.contains("local True True True"), "{printed}");
    assert_eq!(traces[8]["target"], "local:smollm2-135m");
    assert_eq!(traces[9]["stream"], true);
    let caching: Vec<&str> = traces[5..8]
        .iter()
        .map(|t| t["cache"].as_str().unwrap())
        .collect();
    assert_eq!(caching, ["miss", "semantic", "miss"]);
    assert!(traces[6]["detail"]["cache_similarity"].as_f64().unwrap() >= 0.8);
    assert_eq!(traces[3]["prompt"], "route");
    assert_eq!(traces[3]["prompt_version"], 1);
    assert_eq!(traces[1]["stream"], true);
    assert_eq!(traces[2]["status"], 404);
    assert!(traces.iter().all(|t| t["key_id"].as_str().is_some()));

    let show = project.plumb(&["traces", "show", response_id]);
    assert_eq!(code(&show), 0, "{}", stderr(&show));
    let shown = stdout(&show);
    for needle in [
        trace_id,
        "parent span",
        "00f067aa0ba902b7",
        "echo ok",
        "\"label\":\"good\"",
    ] {
        assert!(shown.contains(needle), "missing {needle}:\n{shown}");
    }
    let export_path = project.path("traces.jsonl");
    let export = project.plumb(&[
        "traces",
        "export",
        "--model",
        "echo-model",
        "--output",
        export_path.to_str().unwrap(),
    ]);
    assert_eq!(code(&export), 0, "{}", stderr(&export));
    let exported = std::fs::read_to_string(&export_path).unwrap();
    assert_eq!(exported.lines().count(), 2);
    let by_prompt = project.plumb(&["traces", "tail", "--no-follow", "--prompt", "route"]);
    assert_eq!(
        stdout(&by_prompt).lines().count(),
        1,
        "{}",
        stdout(&by_prompt)
    );
    assert!(exported.contains("\"feedback\":[{"), "{exported}");

    let missing = project.plumb(&["traces", "show", "nope"]);
    assert_eq!(code(&missing), 2);
    assert!(stderr(&missing).contains("no trace `nope`"));
    let bad_since = project.plumb(&["traces", "export", "--since", "yesterday"]);
    assert_eq!(code(&bad_since), 2);
    assert!(stderr(&bad_since).contains("--since `yesterday`"));
}
