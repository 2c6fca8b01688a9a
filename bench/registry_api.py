#!/usr/bin/env python3
"""Registry API: how fast `plumb serve` answers what clients poll and write.

Pushes a prompt with 200 versions, creates a viewer key, then measures over keep-alive
HTTP/1.1 connections from `--clients` threads for `--seconds` each:

  * resolve 200  GET /api/v1/resolve/triage@production (full prompt file in the body)
  * resolve 304  the same with If-None-Match (what a polling client pays most of the time)
  * push         POST /api/v1/prompts/triage/versions with new content each time (201)

and prints requests/s and p50/p99 latency per operation. There is no peer in this run:
Langfuse, the nearest one, needs PostgreSQL, ClickHouse, Redis and S3.

    python3 bench/registry_api.py [--plumb target/release/plumb] [--clients 4] [--seconds 5]
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPT = """\
name: triage
description: Route support tickets
messages:
  - role: system
    content: |-
      You are a customer support assistant. Classify the ticket into exactly one category:
      billing, bug, account or shipping. Reply with the category only. (revision {n})
  - role: user
    content: "Ticket: {{{{ ticket }}}}"
params: {{temperature: 0, max_tokens: 4}}
variables:
  ticket: {{type: string}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return result.stdout


def measure(name, port, headers, clients, seconds, make_request):
    latencies = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    errors = []

    def worker(index):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        local = []
        counter = 0
        while time.perf_counter() < deadline:
            method, path, body, expect = make_request(index, counter)
            counter += 1
            start = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            local.append(time.perf_counter() - start)
            if response.status != expect:
                errors.append(response.status)
                break
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        sys.exit(f"{name}: unexpected status {errors[0]}")
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(f"{name:<14} {len(latencies) / elapsed:>10.0f} {pick(0.5):>9.2f} {pick(0.99):>9.2f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plumb", default=os.path.join(ROOT, "target", "release", "plumb"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    if not os.path.exists(args.plumb):
        sys.exit(f"{args.plumb} not found: run `cargo build --release` first")
    work = tempfile.mkdtemp(prefix="plumb-registry-bench-")
    env = dict(os.environ, NO_COLOR="1", PLUMB_DB=os.path.join(work, "plumb.db"))
    os.makedirs(os.path.join(work, "prompts"))
    path = os.path.join(work, "prompts", "triage.yaml")
    for n in range(200):
        with open(path, "w") as f:
            f.write(PROMPT.format(n=n))
        run([args.plumb, "prompt", "push", "-m", f"revision {n}"], work, env)
    run([args.plumb, "prompt", "label", "triage", "200", "production", "--force",
         "--reason", "benchmark setup"], work, env)
    viewer = run([args.plumb, "keys", "create", "--role", "viewer", "--name", "bench"], work, env).strip()
    editor = run([args.plumb, "keys", "create", "--role", "editor", "--name", "bench"], work, env).strip()
    port = free_port()
    server = subprocess.Popen(
        [args.plumb, "serve", "--addr", f"127.0.0.1:{port}"], cwd=work, env=env,
        stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        probe = http.client.HTTPConnection("127.0.0.1", port)
        probe.request("GET", "/api/v1/resolve/triage@production",
                      headers={"Authorization": f"Bearer {viewer}"})
        response = probe.getresponse()
        response.read()
        etag = response.getheader("ETag")
        print(f"plumb serve, {args.clients} keep-alive clients, {args.seconds:.0f} s each, "
              f"{os.cpu_count()} cores\n")
        print(f"{'operation':<14} {'req/s':>10} {'p50 (ms)':>9} {'p99 (ms)':>9}")
        read = {"Authorization": f"Bearer {viewer}"}
        measure("resolve 200", port, read, args.clients, args.seconds,
                lambda i, n: ("GET", "/api/v1/resolve/triage@production", None, 200))
        measure("resolve 304", port, dict(read, **{"If-None-Match": etag}), args.clients,
                args.seconds,
                lambda i, n: ("GET", "/api/v1/resolve/triage@production", None, 304))
        write = {"Authorization": f"Bearer {editor}", "Content-Type": "application/json"}

        def push(i, n):
            prompt = {"messages": [{"role": "user", "content": f"client {i} push {n}: {{{{ t }}}}"}],
                      "variables": {"t": {"type": "string"}}}
            return ("POST", "/api/v1/prompts/triage/versions",
                    json.dumps({"prompt": prompt, "message": "bench"}), 201)

        measure("push", port, write, args.clients, args.seconds, push)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
