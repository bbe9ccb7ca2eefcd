#!/usr/bin/env bash
# Stage 40's GPU benchmarks in one command, each writing JSON next to its printed table:
#   loss      the loss path alone (bench_loss_path.py) at tiny's and base's shapes, 32k vocab
#   tiny      the training step at tiny, every variant: bare, hf, lumi, lumi_causal, lumi_flex
#   larger    the training step at small and base: bare, hf, lumi
#   all       the three, in that order
# Each variant compiles before it is timed; "loss tiny" and "larger" are each meant to fit a 10-minute slot (not yet
# timed on a GPU).
# Usage: bash benchmarks/run_gpu_benchmarks.sh [loss|tiny|larger|all ...] [--out DIR]   (default: all, benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
parts=()
while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    loss|tiny|larger|all) parts+=("$1"); shift ;;
    *) echo "run_gpu_benchmarks.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
((${#parts[@]})) || parts=(all)
[[ " ${parts[*]} " == *" all "* ]] && parts=(loss tiny larger)
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] && python=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/torchinductor}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
for part in "${parts[@]}"; do
  case "$part" in
    loss)
      "$python" benchmarks/bench_loss_path.py --device cuda --tokens 32768 --hidden 256 --json "$out/loss_path_tiny.json"
      "$python" benchmarks/bench_loss_path.py --device cuda --tokens 16384 --hidden 768 --json "$out/loss_path_base.json" ;;
    tiny)
      "$python" benchmarks/bench_train_gpu.py --models tiny --variants bare hf lumi lumi_causal lumi_flex \
        --json "$out/train_tiny.json" ;;
    larger)
      "$python" benchmarks/bench_train_gpu.py --models small base --json "$out/train_small_base.json" ;;
  esac
done
