#!/usr/bin/env python3
"""Eval-runner throughput: plumb vs promptfoo on the same suite, same machine, same run.

10,000 test cases × 5 deterministic assertions against the echo provider (`echo` is
promptfoo's id, and plumb accepts it too, so both tools read the very same suite file).
Prints cases/s and peak RSS for each tool and the ratios.

    python3 bench/eval_throughput.py [--cases 10000] [--plumb target/release/plumb]
                                     [--promptfoo-dir DIR] [--runs 3]

promptfoo is installed from npm into a temporary directory unless --promptfoo-dir points at
one that already has it (node_modules/.bin/promptfoo). plumb is the release binary
(`cargo build --release` first). Each tool runs `--runs` times; the best wall time and the
peak RSS of that run are reported (these machines are shared and noisy: compare ratios).
"""

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SUITE = """\
description: throughput benchmark, {cases} cases x 5 assertions
prompts:
  - "Tell me about {{{{ topic }}}} in a {{{{ style }}}} style (request {{{{ id }}}})"
providers:
  - echo
tests: file://tests.csv
defaultTest:
  assert:
    - type: contains
      value: "{{{{ topic }}}}"
    - type: icontains
      value: "{{{{ style }}}}"
    - type: regex
      value: "request \\\\d+"
    - type: not-contains
      value: "zebra crossing"
    - type: starts-with
      value: "Tell me"
"""

TOPICS = ["rust", "ducks", "tea", "volcanoes", "jazz", "bridges", "moss", "comets", "maps", "bees"]
STYLES = ["formal", "casual", "poetic", "terse", "playful"]


def write_suite(directory, cases):
    rng = random.Random(7)
    with open(os.path.join(directory, "tests.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["topic", "style", "id"])
        for index in range(cases):
            writer.writerow([rng.choice(TOPICS), rng.choice(STYLES), str(index)])
    path = os.path.join(directory, "suite.yaml")
    with open(path, "w") as handle:
        handle.write(SUITE.format(cases=cases))
    return path


def measure(command, cwd, env):
    """Runs `command` in a fresh Python child so RUSAGE_CHILDREN covers only it."""
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "start = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
        "wall = time.perf_counter() - start\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'wall': wall, 'rss_kb': rss, 'code': done.returncode,"
        " 'stderr': done.stderr.decode(errors='replace')[-2000:]}))\n"
    )
    output = subprocess.run([sys.executable, "-c", probe, *command], cwd=cwd, env=env, capture_output=True, check=True)
    return json.loads(output.stdout)


def best_of(label, command, cwd, env, runs, expect_codes):
    results = []
    for attempt in range(runs):
        result = measure(command, cwd, env)
        if result["code"] not in expect_codes:
            sys.exit(f"{label} failed (exit {result['code']}):\n{result['stderr']}")
        results.append(result)
        print(f"  {label} run {attempt + 1}: {result['wall']:.2f} s, peak RSS {result['rss_kb'] / 1024:.0f} MiB", flush=True)
    return min(results, key=lambda r: r["wall"])


def install_promptfoo(directory):
    print(f"installing promptfoo from npm into {directory} …", flush=True)
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "promptfoo"],
        cwd=directory,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plumb", default=os.path.join(ROOT, "target", "release", "plumb"))
    parser.add_argument("--promptfoo-dir", default=None)
    args = parser.parse_args()

    if not os.path.isfile(args.plumb):
        sys.exit(f"{args.plumb} not found: run `cargo build --release` first")
    work = tempfile.mkdtemp(prefix="plumb-bench-")
    try:
        suite = write_suite(work, args.cases)
        promptfoo_dir = args.promptfoo_dir or os.path.join(work, "promptfoo")
        promptfoo = os.path.join(promptfoo_dir, "node_modules", ".bin", "promptfoo")
        if not os.path.exists(promptfoo):
            os.makedirs(promptfoo_dir, exist_ok=True)
            install_promptfoo(promptfoo_dir)
        version = subprocess.run([promptfoo, "--version"], capture_output=True, text=True).stdout.strip()

        env = dict(os.environ)
        env.update({
            "NO_COLOR": "1",
            "PROMPTFOO_DISABLE_TELEMETRY": "1",
            "PROMPTFOO_DISABLE_UPDATE": "1",
            "PROMPTFOO_CONFIG_DIR": os.path.join(work, "promptfoo-home"),
            "PLUMB_DB": os.path.join(work, "plumb.db"),
        })
        print(f"suite: {args.cases} cases x 5 assertions, echo provider; machine: {os.cpu_count()} cores")
        # Exit 0 (gate holds): every case passes, in both tools.
        plumb = best_of("plumb", [args.plumb, "eval", suite, "--no-progress"], work, env, args.runs, {0})
        pf = best_of(
            f"promptfoo {version}",
            [promptfoo, "eval", "-c", suite, "--no-cache", "--no-progress-bar", "--no-table"],
            work,
            env,
            args.runs,
            {0},
        )
        plumb_rate = args.cases / plumb["wall"]
        pf_rate = args.cases / pf["wall"]
        print()
        print(f"{'tool':<22} {'wall (s)':>9} {'cases/s':>10} {'peak RSS (MiB)':>15}")
        print(f"{'plumb':<22} {plumb['wall']:>9.2f} {plumb_rate:>10.0f} {plumb['rss_kb'] / 1024:>15.0f}")
        print(f"{'promptfoo ' + version:<22} {pf['wall']:>9.2f} {pf_rate:>10.0f} {pf['rss_kb'] / 1024:>15.0f}")
        print()
        print(f"throughput ratio (plumb / promptfoo): {plumb_rate / pf_rate:.1f}x   (target >= 20x)")
        print(f"peak RSS ratio   (plumb / promptfoo): {plumb['rss_kb'] / pf['rss_kb']:.3f}   (target <= 0.2)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
