#!/usr/bin/env bash
# Fetches the corpus of the RFP-responder example: the Markdown guides that the axum 0.8.9
# crate ships (src/docs/**/*.md and README.md, MIT), from crates.io's package store, checked
# against the checksum in the crates.io index. Writes examples/rag/corpus/ (not committed).
set -euo pipefail
cd "$(dirname "$0")"
version=0.8.9
sha256=31b698c5f9a010f6573133b09e0de5408834d0c82f8d7475a89fc1867a71cd90
if [ -f corpus/.complete ]; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
curl -sSfL -o "$tmp/axum.crate" "https://static.crates.io/crates/axum/axum-$version.crate"
echo "$sha256  $tmp/axum.crate" | sha256sum --check --quiet
tar -xzf "$tmp/axum.crate" -C "$tmp"
rm -rf corpus
mkdir -p corpus
cp "$tmp/axum-$version/README.md" corpus/README.md
cp -r "$tmp/axum-$version/src/docs/." corpus/
touch corpus/.complete
echo "fetch-corpus: axum $version docs → examples/rag/corpus ($(find corpus -name '*.md' | wc -l) Markdown files)"
