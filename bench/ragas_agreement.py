#!/usr/bin/env python3
"""plumb's RAG metrics against ragas, the reference implementation, on the same cases with the
same deterministic judge.

What it does, all on loopback:
  1. makes N RAG cases (question, retrieved chunks in rank order, answer, reference answer)
     from a seeded generator: answers mix sentences the chunks state with sentences they do
     not, references likewise, chunks are useful or not, some answers are noncommittal;
  2. starts an oracle judge: an OpenAI-compatible /v1/chat/completions that reads both
     tools' prompts (ragas's PydanticPrompt inputs, plumb's judge prompts) and answers with
     fixed verdicts: a statement is supported / attributed when the context contains it, a
     chunk is useful when it contains a sentence of the reference, and each answer has one
     fixed generated question and noncommittal flag. Both tools get the same verdicts;
  3. starts `plumb serve` with the embedded all-MiniLM-L6-v2 behind /v1/embeddings, so ragas
     embeds with the very model plumb's answer-relevance uses in process;
  4. runs `plumb eval` (context-faithfulness, answer-relevance, context-precision,
     context-recall) and ragas 0.4.3 (Faithfulness, ResponseRelevancy,
     LLMContextPrecisionWithReference, LLMContextRecall; pip, in a temp venv) on the cases;
  5. prints per metric the Spearman correlation and the mean absolute difference, with how
     many cases each tool left unmeasured (plumb) or NaN (ragas).

Usage: python3 bench/ragas_agreement.py [--plumb target/release/plumb] [--cases 36]
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RAGAS = "ragas==0.4.3"
# ragas 0.4.3 imports langchain-community's chat_models.vertexai, gone from 0.4: the 0.3 line.
RAGAS_DEPS = ["langchain<1", "langchain-core<1", "langchain-community<0.4", "langchain-openai<1"]
METRICS = [
    ("context-faithfulness", "faithfulness"),
    ("answer-relevance", "answer_relevancy"),
    ("context-precision", "llm_context_precision_with_reference"),
    ("context-recall", "context_recall"),
]


def log(message):
    print(f"[ragas_agreement] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The cases

PRODUCTS = ["kettle", "toaster", "blender", "lamp", "heater", "fan", "scale", "grinder"]
ATTRIBUTES = [
    ("capacity", lambda r: f"holds {r.randint(1, 9)} litres"),
    ("warranty", lambda r: f"comes with a {r.randint(1, 6)} year warranty"),
    ("colour", lambda r: f"is sold in {r.choice(['red', 'teal', 'black', 'white', 'olive'])}"),
    ("price", lambda r: f"costs {r.randint(20, 300)} euros"),
    ("weight", lambda r: f"weighs {r.randint(2, 40)} hundred grams"),
    ("power", lambda r: f"draws {r.randint(3, 30)} hundred watts"),
    ("origin", lambda r: f"is made in {r.choice(['Porto', 'Lyon', 'Graz', 'Turku', 'Gdansk'])}"),
]
UNRELATED = ["How do I bake sourdough bread", "Who won the chess final",
             "What is the tallest mountain in Peru", "How do tides work"]


def make_cases(n, seed):
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        product = f"Model {chr(65 + i % 26)}{i} {rng.choice(PRODUCTS)}"
        facts = [f"The {product} {make(rng)}." for _, make in ATTRIBUTES]
        attrs = [name for name, _ in ATTRIBUTES]
        order = list(range(len(facts)))
        rng.shuffle(order)
        in_context = order[: rng.randint(2, 5)]
        outside = [j for j in order if j not in in_context]
        # Chunks: the context facts, one or two per chunk, plus distractors about other
        # products, in a random rank order.
        chunks = []
        pending = list(in_context)
        while pending:
            take = min(len(pending), rng.randint(1, 2))
            chunks.append(" ".join(facts[j] for j in pending[:take]))
            pending = pending[take:]
        for _ in range(rng.randint(0, 2)):
            other = f"Model Z{rng.randint(100, 999)} {rng.choice(PRODUCTS)}"
            chunks.append(f"The {other} {rng.choice(ATTRIBUTES)[1](rng)}.")
        rng.shuffle(chunks)
        focus = rng.choice(in_context)
        question = f"What is the {attrs[focus]} of the {product}"
        noncommittal = rng.random() < 0.12
        if noncommittal:
            answer = f"I am not sure about the {product}. I do not know."
        else:
            supported = rng.sample(in_context, rng.randint(1, len(in_context)))
            unsupported = rng.sample(outside, rng.randint(0, min(2, len(outside))))
            sentences = [facts[j] for j in supported + unsupported]
            rng.shuffle(sentences)
            answer = " ".join(sentences)
        reference_facts = [focus] + rng.sample(
            [j for j in order if j != focus], rng.randint(0, 3))
        reference = " ".join(facts[j] for j in reference_facts)
        variant = rng.random()
        if noncommittal:
            generated = f"What is the {attrs[focus]} of the {product}"
        elif variant < 0.45:
            generated = question
        elif variant < 0.8:
            generated = f"Which {attrs[focus]} does the {product} have"
        else:
            generated = rng.choice(UNRELATED)
        cases.append({
            "question": question + "?",
            "contexts": chunks,
            "answer": answer,
            "reference": reference,
            "generated_question": generated + "?",
            "noncommittal": noncommittal,
        })
    return cases


# ---------------------------------------------------------------------------------------------
# The oracle judge

def sentences(text):
    return [s.strip() + "." for s in re.split(r"\.(?:\s+|$)", text.strip()) if s.strip()]


def norm(text):
    return " ".join(text.split())


def supported(statement, context):
    return norm(statement.rstrip(".")) in norm(context)


def between(text, start, end):
    head = text.index(start) + len(start)
    return text[head:text.index(end, head)]


class Oracle:
    def __init__(self, cases):
        self.by_answer = {norm(c["answer"]): c for c in cases}
        self.calls = {"plumb": 0, "ragas": 0}
        self.lock = threading.Lock()

    def count(self, who):
        with self.lock:
            self.calls[who] += 1

    def relevance(self, answer):
        case = self.by_answer[norm(answer)]
        return case["generated_question"], case["noncommittal"]

    def answer(self, text):
        """The verdict for one prompt, as the tool that sent it expects it."""
        if "\ninput: " in text:
            return self.ragas(text)
        self.count("plumb")
        if "List the answer's statements" in text:
            answer = between(text, "[Answer]\n", "\n\nList the answer's statements")
            return {"statements": sentences(answer)}
        if "[Statements]\n" in text:
            context = between(text, "[Context]\n", "\n\n[Statements]\n")
            listed = between(text, "[Statements]\n", "\n\nFor each statement")
            statements = [re.sub(r"^\d+\. ", "", line) for line in listed.splitlines()]
            return {"verdicts": [{"reason": "oracle", "supported": supported(s, context)}
                                 for s in statements]}
        if "noncommittal" in text:
            question, noncommittal = self.relevance(between(text, "[Answer]\n", "\n\nReply as"))
            return {"question": question, "noncommittal": noncommittal}
        if "[Passage]\n" in text:
            reference = between(text, "[Answer]\n", "\n\n[Passage]\n")
            chunk = between(text, "[Passage]\n", "\n\nWas the passage")
            return {"reason": "oracle",
                    "useful": any(supported(s, chunk) for s in sentences(reference))}
        if "[Reference answer]\n" in text:
            context = between(text, "[Context]\n", "\n\n[Reference answer]\n")
            reference = between(text, "[Reference answer]\n", "\n\nSplit the reference")
            return {"statements": [{"statement": s, "reason": "oracle",
                                    "attributed": supported(s, context)}
                                   for s in sentences(reference)]}
        raise ValueError(f"plumb prompt not understood: {text[:200]}")

    def ragas(self, text):
        self.count("ragas")
        data = json.loads(text[text.rindex("\ninput: ") + len("\ninput: "):text.rindex("Output: ")])
        keys = set(data)
        if keys == {"question", "answer"}:
            return {"statements": sentences(data["answer"])}
        if keys == {"context", "statements"}:
            return {"statements": [{"statement": s, "reason": "oracle",
                                    "verdict": int(supported(s, data["context"]))}
                                   for s in data["statements"]]}
        if keys == {"response"}:
            question, noncommittal = self.relevance(data["response"])
            return {"question": question, "noncommittal": int(noncommittal)}
        if keys == {"question", "context", "answer"} and "attributed to the given context" in text:
            return {"classifications": [{"statement": s, "reason": "oracle",
                                         "attributed": int(supported(s, data["context"]))}
                                        for s in sentences(data["answer"])]}
        if keys == {"question", "context", "answer"}:
            useful = any(supported(s, data["context"]) for s in sentences(data["answer"]))
            return {"reason": "oracle", "verdict": int(useful)}
        raise ValueError(f"ragas prompt not understood: {sorted(keys)}")


def serve_oracle(oracle, port):
    class Handler(BaseHTTPRequestHandler):
        # One write per response (headers and body together): with the default unbuffered
        # writes, Nagle and the client's delayed ACK stall every call by ~40 ms.
        wbufsize = 1 << 16

        def log_message(self, *_):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = "\n".join(m["content"] if isinstance(m["content"], str)
                             else " ".join(p.get("text", "") for p in m["content"])
                             for m in body["messages"])
            try:
                content = json.dumps(oracle.answer(text))
                status = 200
            except Exception as error:  # a prompt the oracle does not know: say so loudly
                log(f"oracle: {error}")
                content, status = "", 500
            n = body.get("n") or 1
            reply = {
                "id": "oracle", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "judge"),
                "choices": [{"index": i, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}
                            for i in range(n)],
                "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": len(content) // 4,
                          "total_tokens": (len(text) + len(content)) // 4},
            }
            data = json.dumps(reply).encode() if status == 200 else b'{"error": {"message": "oracle"}}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        # The default backlog of 5 drops concurrent connects; each then waits for the 1 s SYN
        # retransmit.
        request_queue_size = 256
        daemon_threads = True

    server = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---------------------------------------------------------------------------------------------
# The two tools

def wait_http(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    sys.exit(f"{url} did not come up within {timeout} s")


def run_plumb(plumb, work, cases, judge_url):
    suite = {
        "description": "RAG metrics on the agreement cases",
        "prompts": ["{{ answer }}"],
        "providers": ["mock:echo"],
        "defaultTest": {"options": {"provider": {
            "id": f"openai-compatible:{judge_url}#judge", "config": {"api_key": "oracle"}}}},
        "tests": [{
            "vars": {"query": c["question"], "context": c["contexts"], "answer": c["answer"]},
            "assert": [
                {"type": "context-faithfulness"},
                {"type": "answer-relevance"},
                {"type": "context-precision", "value": c["reference"]},
                {"type": "context-recall", "value": c["reference"]},
            ],
        } for c in cases],
    }
    path = os.path.join(work, "suite.json.yaml")
    with open(path, "w") as f:
        json.dump(suite, f)  # JSON is YAML
    out = os.path.join(work, "plumb.json")
    started = time.time()
    done = subprocess.run([plumb, "eval", path, "--no-progress", "--no-cache", "-o", out,
                           "--db", os.path.join(work, "eval.db")],
                          capture_output=True, text=True)
    elapsed = time.time() - started
    if not os.path.exists(out):
        sys.exit(f"plumb eval failed:\n{done.stderr}")
    report = json.load(open(out))
    scores = {name: [None] * len(cases) for name, _ in METRICS}
    for result in report["results"]:
        for assertion in result["assertions"]:
            if not assertion.get("unmeasured"):
                scores[assertion["type"]][result["test_idx"]] = assertion["score"]
    return scores, elapsed


RAGAS_RUNNER = r'''
import json, math, sys, time, warnings
warnings.filterwarnings("ignore")
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from ragas import EvaluationDataset, evaluate
from ragas.embeddings import LangchainEmbeddingsWrapper
from ragas.llms import LangchainLLMWrapper
from ragas.metrics import (Faithfulness, LLMContextPrecisionWithReference, LLMContextRecall,
                           ResponseRelevancy)
from ragas.run_config import RunConfig
config = json.load(open(sys.argv[1]))
llm = LangchainLLMWrapper(ChatOpenAI(model="judge", base_url=config["judge"], api_key="oracle",
                                     temperature=0, max_retries=0))
embeddings = LangchainEmbeddingsWrapper(OpenAIEmbeddings(
    model="minilm", base_url=config["embeddings"], api_key=config["key"],
    check_embedding_ctx_length=False))
dataset = EvaluationDataset.from_list([
    {"user_input": c["question"], "retrieved_contexts": c["contexts"], "response": c["answer"],
     "reference": c["reference"]} for c in config["cases"]])
started = time.time()
result = evaluate(dataset, metrics=[Faithfulness(), ResponseRelevancy(),
                                    LLMContextPrecisionWithReference(), LLMContextRecall()],
                  llm=llm, embeddings=embeddings, show_progress=False, raise_exceptions=False,
                  run_config=RunConfig(max_workers=8, timeout=60))
elapsed = time.time() - started
rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in result.scores]
json.dump({"rows": rows, "elapsed": elapsed}, open(sys.argv[2], "w"))
'''


def ragas_venv(path):
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        log(f"installing {RAGAS} into {path} (pip, once)")
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", RAGAS, *RAGAS_DEPS], check=True)
    return python


def run_ragas(python, work, cases, judge_url, embeddings_url, key):
    config = os.path.join(work, "ragas-config.json")
    json.dump({"cases": cases, "judge": judge_url, "embeddings": embeddings_url, "key": key},
              open(config, "w"))
    runner = os.path.join(work, "ragas_runner.py")
    open(runner, "w").write(RAGAS_RUNNER)
    out = os.path.join(work, "ragas.json")
    done = subprocess.run([python, runner, config, out], capture_output=True, text=True,
                          env=dict(os.environ, RAGAS_DO_NOT_TRACK="true"))
    if done.returncode != 0:
        sys.exit(f"ragas failed:\n{done.stderr[-4000:]}")
    result = json.load(open(out))
    scores = {name: [row.get(column) for row in result["rows"]] for name, column in METRICS}
    return scores, result["elapsed"]


# ---------------------------------------------------------------------------------------------
# Agreement

def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return float("nan")
    return sxy / (sxx * syy) ** 0.5


def spearman(x, y):
    # Scores equal to 6 decimals are ties (ragas's best context precision is 0.9999999999).
    return pearson(ranks([round(v, 6) for v in x]), ranks([round(v, 6) for v in y]))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--plumb", default=os.path.join(here, "..", "target", "release", "plumb"))
    parser.add_argument("--cases", type=int, default=36)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "plumb-bench-ragas"),
                        help="where ragas is installed (kept between runs)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.cases < 30:
        sys.exit("--cases: at least 30")
    plumb = os.path.abspath(args.plumb)
    if not os.path.exists(plumb):
        sys.exit(f"{plumb} not found: build it with `cargo build --release`")

    python = ragas_venv(args.venv)
    work = tempfile.mkdtemp(prefix="plumb-ragas-")
    cases = make_cases(args.cases, args.seed)
    oracle = Oracle(cases)
    judge_port, serve_port = free_port(), free_port()
    server = serve_oracle(oracle, judge_port)
    judge_url = f"http://127.0.0.1:{judge_port}/v1"

    project = os.path.join(work, "project")
    os.makedirs(project)
    with open(os.path.join(project, "plumb.yaml"), "w") as f:
        f.write("gateway:\n  embeddings:\n    minilm: {provider: local:all-minilm-l6-v2}\n")
    env = dict(os.environ, PLUMB_DB=os.path.join(project, "plumb.db"))
    key = subprocess.run([plumb, "keys", "create", "--role", "viewer", "--name", "ragas"],
                         cwd=project, env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    serve = subprocess.Popen([plumb, "serve", "--addr", f"127.0.0.1:{serve_port}"], cwd=project,
                             env=env, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(work, "serve.log"), "w"))
    try:
        wait_http(f"http://127.0.0.1:{serve_port}/api/v1/health")
        log(f"{len(cases)} cases; plumb eval …")
        plumb_scores, plumb_time = run_plumb(plumb, work, cases, judge_url)
        log("ragas evaluate …")
        ragas_scores, ragas_time = run_ragas(python, work, cases, judge_url,
                                             f"http://127.0.0.1:{serve_port}/v1", key)
    finally:
        serve.terminate()
        serve.wait()
        server.shutdown()

    print(f"ragas agreement: {len(cases)} RAG cases, one oracle judge for both tools "
          f"(judge calls: plumb {oracle.calls['plumb']}, ragas {oracle.calls['ragas']}); "
          f"embeddings all-MiniLM-L6-v2 for both")
    print(f"{'metric':<22} {'paired':>6} {'plumb unmeasured':>17} {'ragas NaN':>10} "
          f"{'Spearman':>9} {'mean |diff|':>12} {'plumb mean':>11} {'ragas mean':>11}")
    worst = 1.0
    for name, _ in METRICS:
        ours, theirs = plumb_scores[name], ragas_scores[name]
        pairs = [(a, b) for a, b in zip(ours, theirs) if a is not None and b is not None]
        x = [a for a, _ in pairs]
        y = [b for _, b in pairs]
        rho = spearman(x, y) if len(pairs) > 2 else float("nan")
        mad = sum(abs(a - b) for a, b in pairs) / max(len(pairs), 1)
        worst = min(worst, rho) if rho == rho else worst
        print(f"{name:<22} {len(pairs):>6} {sum(a is None for a in ours):>17} "
              f"{sum(b is None for b in theirs):>10} {rho:>9.3f} {mad:>12.4f} "
              f"{sum(x) / max(len(x), 1):>11.3f} {sum(y) / max(len(y), 1):>11.3f}")
    print(f"wall time: plumb eval {plumb_time:.1f} s, ragas evaluate {ragas_time:.1f} s "
          f"(ragas / plumb {ragas_time / max(plumb_time, 1e-9):.1f}x; same judge, same machine)")
    print(f"lowest Spearman: {worst:.3f} (target >= 0.9)")
    if args.keep:
        print(f"work directory: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
