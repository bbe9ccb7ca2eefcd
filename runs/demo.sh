#!/usr/bin/env bash
# The whole Lumi-Lab pipeline on the built-in synthetic world: offline, on CPU, a few minutes on 2 cores:
# 10 corpus -> 20 tokenizer -> 30 pack -> 40 pretrain -> 50 evaluate -> 60 SFT corpus -> 70 SFT -> 80 evaluate ->
# 85 DPO corpus -> 90 DPO -> 95 evaluate -> 100 serve (one question through the OpenAI-compatible API) -> 105 export
# (GGUF, checked in llama.cpp) -> report.
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

stage "40 pretrain: the micro model on CPU"
lumi pretrain --config config/demo/pretrain.json --tokenizer-dir "$OUT/tokenizer" --data-dirs "$OUT/packed" \
    --output-dir "$OUT/checkpoints" --force

stage "50 evaluate: val bits per byte, held-out fact cloze, generation checks"
lumi evaluate --config config/evaluation/demo.json --model-path "$OUT/checkpoints/demo/final" \
    --output-dir "$OUT/evaluation" --force

stage "60 SFT corpus: the world's question/answer pairs for its train facts"
lumi sft-corpus --config config/sft/datasets/demo.json --tokenizer-dir "$OUT/checkpoints/demo/final" \
    --output-dir "$OUT/sft_data" --force

stage "70 SFT: the pretrained micro model learns to answer"
lumi sft --config config/sft/training/demo.json --model-path "$OUT/checkpoints/demo/final" \
    --data-dir "$OUT/sft_data" --output-dir "$OUT/sft" --force

stage "80 evaluate: held-out facts asked with held-out wordings, before (stage 50) and after SFT"
lumi evaluate --config config/evaluation/sft_demo.json --model-path "$OUT/sft/demo/final" \
    --set sft_loss.0.sft_dir="$OUT/sft_data" --compare "$OUT/evaluation" --output-dir "$OUT/evaluation_sft" --force

stage "85 DPO corpus: the world's preference pairs for its train facts"
lumi dpo-corpus --config config/dpo/datasets/demo.json --tokenizer-dir "$OUT/sft/demo/final" \
    --output-dir "$OUT/dpo_data" --force

stage "90 DPO: prefer the stated fact over a wrong one, another fact, a refusal or the bare name"
lumi dpo --config config/dpo/training/demo.json --model-path "$OUT/sft/demo/final" --data-dir "$OUT/dpo_data" \
    --output-dir "$OUT/dpo" --force

stage "95 evaluate: held-out reward accuracy; correct and refusing answers before (stage 80) and after DPO"
lumi evaluate --config config/evaluation/dpo_demo.json --model-path "$OUT/dpo/demo/final" \
    --set preference.0.dpo_dir="$OUT/dpo_data" --set preference.0.reference_model="$OUT/sft/demo/final" \
    --compare "$OUT/evaluation_sft" --output-dir "$OUT/evaluation_dpo" --force

stage "100 serve: start the API on the final chat model, ask one question through the openai client, stop it"
python runs/ask_served_model.py --model-path "$OUT/dpo/demo/final" --max-tokens 32 \
    --question "$(python runs/demo_question.py)" | tee "$OUT/served_answer.txt"

stage "105 export: the final chat model as GGUF for llama.cpp and Ollama, run in llama.cpp against Lumi"
lumi export --model-path "$OUT/dpo/demo/final" --dtype f16 --verify --output-dir "$OUT/export" --force

stage "report"
python runs/demo_report.py "$OUT"
