#!/usr/bin/env python3
"""plumb's ANN index against hnswlib on the same vectors, same machine, same run.

What it does:
  1. installs numpy and hnswlib (pip, into a temp venv; hnswlib compiles from its sdist);
  2. makes N seeded unit vectors of D dimensions in 1000 Gaussian clusters (embedding-like:
     neighbours are near, not uniform noise) and 1000 queries from the same clusters, and
     finds the exact top 10 of each query by inner product (numpy, brute force);
  3. builds plumb's index (crates/plumb-rag/examples/ann.rs over plumb_rag::vectors, the
     index collections use: plumb's own HNSW, plumb_rag::hnsw; on AVX-512 its search walks f16
     copies of the vectors and ranks by the f32 ones) and hnswlib's (f32) with the same M and efConstruction,
     both on every core, and answers the queries on one thread at each ef, ROUNDS times each,
     alternating (this shared machine swings one run by ±30%; figures are medians);
  4. prints recall@10 against exact search and queries/s per ef for both, and the queries/s
     of each at the smallest ef reaching recall@10 >= 0.95 (the issue's target: that recall
     at hnswlib's queries/s or better).

Usage: python3 bench/ann.py [--n 100000] [--dim 384] [--m 16] [--ef-construction 128] [--rounds 3]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EFS = [10, 16, 24, 32, 48, 64, 96, 128]
K = 10


def venv_python(tmp):
    venv = os.path.join(tmp, "venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    print("ann: installing numpy and hnswlib into a temp venv (hnswlib builds from source)…", flush=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "numpy", "hnswlib"],
        check=True,
    )
    return python


WORKER = r"""
import json, sys, time
import numpy as np
mode, tmp, n, dim, m, efc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
efs = [int(e) for e in sys.argv[7].split(",")]
K = 10
if mode == "data":
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    def draw(count):
        pick = rng.integers(0, 1000, count)
        points = centers[pick] + 0.35 * rng.standard_normal((count, dim)).astype(np.float32)
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        return points.astype(np.float32)
    data, queries = draw(n), draw(1000)
    data.astype("<f4").tofile(f"{tmp}/data.f32")
    queries.astype("<f4").tofile(f"{tmp}/queries.f32")
    truth = np.empty((len(queries), K), dtype=np.int64)
    for start in range(0, len(queries), 100):
        scores = queries[start:start + 100] @ data.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        truth[start:start + 100] = np.take_along_axis(top, order, axis=1)
    truth.tofile(f"{tmp}/truth.i64")
elif mode == "hnswlib":
    import hnswlib, os
    data = np.fromfile(f"{tmp}/data.f32", dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(f"{tmp}/queries.f32", dtype="<f4").reshape(-1, dim)
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=len(data), ef_construction=efc, M=m, random_seed=7)
    started = time.perf_counter()
    index.add_items(data, np.arange(len(data)), num_threads=os.cpu_count())
    build = time.perf_counter() - started
    index.set_num_threads(1)
    runs = []
    for ef in efs:
        index.set_ef(max(ef, K))
        started = time.perf_counter()
        labels, _ = index.knn_query(queries, k=K, num_threads=1)
        seconds = time.perf_counter() - started
        labels.astype(np.int64).tofile(f"{tmp}/hnswlib-{ef}.i64")
        runs.append({"ef": ef, "qps": len(queries) / seconds})
    print(json.dumps({"build_seconds": build, "runs": runs}))
elif mode == "recall":
    truth = np.fromfile(f"{tmp}/truth.i64", dtype=np.int64).reshape(-1, K)
    out = {}
    for name in sys.argv[8].split(","):
        found = np.fromfile(f"{tmp}/{name}.i64", dtype=np.int64).reshape(len(truth), -1)[:, :K]
        hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist()))
        out[name] = hits / truth.size
    print(json.dumps(out))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3,
                        help="build and query both this many times, alternating; figures are medians")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="plumb-ann-") as tmp:
        python = venv_python(tmp)
        worker = os.path.join(tmp, "worker.py")
        with open(worker, "w") as f:
            f.write(WORKER)
        common = [tmp, str(args.n), str(args.dim), str(args.m), str(args.ef_construction), ",".join(map(str, EFS))]

        print(f"ann: {args.n} × {args.dim} clustered unit vectors, 1000 queries, exact top {K} by numpy…", flush=True)
        subprocess.run([python, worker, "data", *common], check=True)

        print("ann: building the plumb example (cargo, release)…", flush=True)
        subprocess.run(
            ["cargo", "build", "--release", "--quiet", "-p", "plumb-rag", "--example", "ann"],
            cwd=ROOT, check=True,
        )
        binary = os.path.join(ROOT, "target", "release", "examples", "ann")
        out_ids = os.path.join(tmp, "plumb-all.u64")

        def run_plumb():
            result = subprocess.run(
                [binary, f"{tmp}/data.f32", f"{tmp}/queries.f32", str(args.dim), str(K), str(args.m),
                 str(args.ef_construction), ",".join(map(str, EFS)), out_ids],
                check=True, capture_output=True, text=True,
            )
            return json.loads(result.stdout)

        def run_hnswlib():
            result = subprocess.run([python, worker, "hnswlib", *common], check=True, capture_output=True, text=True)
            return json.loads(result.stdout)

        # This machine's load swings a single run by ±30%: alternate the two, take medians.
        rounds = {"plumb": [], "hnswlib": []}
        for round_ in range(args.rounds):
            print(f"ann: round {round_ + 1} of {args.rounds}: plumb, then hnswlib…", flush=True)
            rounds["plumb"].append(run_plumb())
            rounds["hnswlib"].append(run_hnswlib())

        def median(values):
            values = sorted(values)
            middle = len(values) // 2
            return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

        def medians(tool):
            runs = rounds[tool]
            return {
                "build_seconds": median([r["build_seconds"] for r in runs]),
                "runs": [{"ef": ef, "qps": median([r["runs"][i]["qps"] for r in runs])} for i, ef in enumerate(EFS)],
            }

        plumb, hnsw = medians("plumb"), medians("hnswlib")
        # Split plumb's ids (its last round) per ef into files the recall step reads.
        raw = open(out_ids, "rb").read()
        per = len(raw) // len(EFS)
        for i, ef in enumerate(EFS):
            import array
            ids = array.array("Q", raw[i * per:(i + 1) * per])
            signed = array.array("q", [(-1 if x == 2**64 - 1 else x) for x in ids])
            with open(os.path.join(tmp, f"plumb-{ef}.i64"), "wb") as f:
                f.write(signed.tobytes())

        names = [f"{tool}-{ef}" for tool in ("plumb", "hnswlib") for ef in EFS]
        result = subprocess.run([python, worker, "recall", *common, ",".join(names)], check=True, capture_output=True, text=True)
        recall = json.loads(result.stdout)

    print()
    # What each keeps per vector: hnswlib f32; plumb f32 and, where the CPU converts f16
    # (AVX-512), an f16 copy its search walks over before ranking by the f32 vectors.
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    f16 = all(f"avx512{x}" in flags for x in ("f", "bw", "cd", "dq", "vl"))
    kept = f"f32 + an f16 copy ({6 * args.dim} B)" if f16 else f"f32 ({4 * args.dim} B)"
    print(f"per vector: plumb {kept}, hnswlib f32 ({4 * args.dim} B); recall against exact f32 search; "
          f"medians of {args.rounds} alternating rounds")
    print(f"build ({os.cpu_count()} threads): plumb {plumb['build_seconds']:.1f} s, hnswlib {hnsw['build_seconds']:.1f} s "
          f"(plumb/hnswlib {plumb['build_seconds'] / hnsw['build_seconds']:.2f}×)")
    print(f"{'ef':>5}  {'recall@10 plumb':>16} {'hnswlib':>8}  {'queries/s plumb':>16} {'hnswlib':>8}  {'ratio':>6}")
    for p_run, h_run in zip(plumb["runs"], hnsw["runs"]):
        ef = p_run["ef"]
        print(f"{ef:>5}  {recall[f'plumb-{ef}']:>16.4f} {recall[f'hnswlib-{ef}']:>8.4f}  "
              f"{p_run['qps']:>16.0f} {h_run['qps']:>8.0f}  {p_run['qps'] / h_run['qps']:>5.2f}×")

    def at_target(tool, runs):
        for run in runs:
            if recall[f"{tool}-{run['ef']}"] >= 0.95:
                return run
        return None

    p_best, h_best = at_target("plumb", plumb["runs"]), at_target("hnswlib", hnsw["runs"])
    print()
    if p_best and h_best:
        print(f"at recall@10 ≥ 0.95 (one query thread): plumb {p_best['qps']:.0f} q/s (ef {p_best['ef']}, "
              f"recall {recall['plumb-' + str(p_best['ef'])]:.4f}), hnswlib {h_best['qps']:.0f} q/s (ef {h_best['ef']}, "
              f"recall {recall['hnswlib-' + str(h_best['ef'])]:.4f}): plumb/hnswlib {p_best['qps'] / h_best['qps']:.2f}×")
        ef_index = EFS.index(p_best["ef"]), EFS.index(h_best["ef"])
        ratios = [p["runs"][ef_index[0]]["qps"] / h["runs"][ef_index[1]]["qps"]
                  for p, h in zip(rounds["plumb"], rounds["hnswlib"])]
        print("per round: " + ", ".join(f"{r:.2f}×" for r in ratios))
    else:
        print("a tool did not reach recall@10 0.95 at any ef measured")


if __name__ == "__main__":
    main()
