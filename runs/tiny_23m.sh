#!/usr/bin/env bash
# The full recipe for the tiny model (~23M parameters, 32k vocabulary) on real data from the Hugging Face hub:
# 10 corpus -> 20 tokenizer -> 30 pack -> 40 pretrain (500M tokens, Chinchilla-optimal) -> 50 evaluate.
#
# Needs: internet access to the hub (the corpus stage streams FineWeb-Edu, C4, Wikipedia, OpenWebText, Gutenberg;
# do not set HF_HUB_OFFLINE), about 5 GB of disk under $DATA, and a CUDA GPU (bf16, torch.compile). Run it inside
# the project's virtualenv (`lumi` and `torchrun` on PATH). Several GPUs on this machine: NPROC=4 bash runs/tiny_23m.sh
# (the global batch stays 128 rows of 1,024 tokens: micro-batch x accumulation x NPROC).
#
# Every stage is resumable: rerunning the script skips finished stages, resumes an unfinished corpus build, and
# continues pretraining from its newest checkpoint (--resume auto). Remove a stage's directory to redo it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data}                          # corpora, tokenizer and packed rows
CHECKPOINTS=${CHECKPOINTS:-checkpoints/pretrain}
EVALUATION=${EVALUATION:-out/evaluation/tiny_23m}
NPROC=${NPROC:-1}                           # GPUs on this machine
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/torchinductor}

GLOBAL_ROWS=128                             # config/pretrain/training/chinchilla_tiny_500m.json: 32 rows x 4
MICRO=$(( NPROC > 4 ? GLOBAL_ROWS / NPROC : 32 ))
if (( GLOBAL_ROWS % (MICRO * NPROC) )); then
    echo "NPROC=$NPROC does not divide the global batch of $GLOBAL_ROWS rows; use 1, 2, 4, 8, 16, 32 or 64" >&2
    exit 2
fi
ACCUMULATION=$(( GLOBAL_ROWS / (MICRO * NPROC) ))

start=$(date +%s)
stage() { printf '\n=== %s (%ss) ===\n' "$1" "$(( $(date +%s) - start ))"; }

stage "10 corpus: the tokenizer-training mix (50M tokens from all five sources)"
[ -f "$DATA/corpus_tokenizer/manifest.json" ] ||
    lumi corpus --config config/pretrain/corpus/tokenizer_training_mix_50m.json --output-dir "$DATA/corpus_tokenizer"

stage "10 corpus: the pretraining mix (500M tokens)"
[ -f "$DATA/corpus/manifest.json" ] ||
    lumi corpus --config config/pretrain/corpus/tiny_23m_chinchilla.json --output-dir "$DATA/corpus"

stage "20 tokenizer: 32k SentencePiece unigram"
[ -d "$DATA/tokenizer" ] ||
    lumi tokenizer --config config/pretrain/tokenizer/spm32k.json --corpus-dir "$DATA/corpus_tokenizer" \
        --output-dir "$DATA/tokenizer"

stage "30 pack: 1,024-token rows"
[ -d "$DATA/packed" ] ||
    lumi pack --config config/pretrain/packing/default.json --corpus-dir "$DATA/corpus" \
        --tokenizer-dir "$DATA/tokenizer" --output-dir "$DATA/packed"

stage "40 pretrain: tiny, 500M tokens on $NPROC GPU(s), $MICRO rows x $ACCUMULATION accumulation per GPU"
lumi pretrain --config config/pretrain/training/chinchilla_tiny_500m.json --tokenizer-dir "$DATA/tokenizer" \
    --data-dirs "$DATA/packed" --output-dir "$CHECKPOINTS" --describe
torchrun --standalone --nproc_per_node "$NPROC" scripts/40_pretrain.py \
    --config config/pretrain/training/chinchilla_tiny_500m.json --tokenizer-dir "$DATA/tokenizer" \
    --data-dirs "$DATA/packed" --output-dir "$CHECKPOINTS" --resume auto \
    --set "micro_batch_size=$MICRO" --set "grad_accumulation=$ACCUMULATION"

stage "50 evaluate: val bits per byte, zero-shot BoolQ/PIQA/ARC-Easy, generations"
lumi evaluate --config config/evaluation/pretrain.json --model-path "$CHECKPOINTS/tiny/final" \
    --output-dir "$EVALUATION" --force    # val: the packed data the checkpoint records, on its trainer's rows

stage "done"
echo "model: $CHECKPOINTS/tiny/final   metrics: $CHECKPOINTS/tiny/metrics.jsonl (tensorboard --logdir $CHECKPOINTS)"
echo "evaluation: $EVALUATION"
