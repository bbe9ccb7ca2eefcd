#!/usr/bin/env bash
# The whole Lumi-Lab pipeline on the built-in synthetic world: offline, on CPU, a few minutes on 2 cores.
# `make demo` runs this inside .venv. Every stage writes its own directory under $OUT; rerunning replaces them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/demo}
export HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/torchinductor}
start=$(date +%s)
stage() { printf '\n=== %s (%ss) ===\n' "$1" "$(( $(date +%s) - start ))"; }

stage "10 corpus: the synthetic world"
lumi corpus --config config/demo/corpus.json --output-dir "$OUT/corpus" --force

stage "20 tokenizer"
lumi tokenizer --config config/demo/tokenizer.json --corpus-dir "$OUT/corpus" --output-dir "$OUT/tokenizer" --force

stage "30 pack"
lumi pack --config config/demo/packing.json --corpus-dir "$OUT/corpus" --tokenizer-dir "$OUT/tokenizer" \
    --output-dir "$OUT/packed" --force

stage "report"
python runs/demo_report.py "$OUT"
