#!/usr/bin/env bash
# The RFP responder end to end, on the embedded local models (no API key): fetch the axum
# docs, ingest them, measure retrieval on the 40 labeled questions (hybrid vs BM25 vs vectors,
# paired), then answer every question from its top 3 chunks and judge the answers.
set -euo pipefail
cd "$(dirname "$0")"
plumb="${PLUMB:-plumb}"
./fetch-corpus.sh
"$plumb" rag ingest corpus --collection axum
"$plumb" rag eval questions.yaml --collection axum --fusion hybrid --fusion bm25 --fusion vector -k 3
"$plumb" eval suite.yaml
