"""Benchmark the trainer's ``compile`` option on CPU: the training step compiled against eager, interleaved.

Two ``lumi.train.step.TrainStep`` objects (what ``Trainer.train_step`` runs: the loss module with document masking,
clipping, the optimizer and the lr schedule), the same architecture (``--model``, default micro, the demo's
2,048-piece vocabulary), the same init and the same packed rows (``bench_train_gpu.packed_rows``: BOS doc EOS ...,
random tokens), fp32, one thread; one with ``compile: true`` (``torch.compile`` of the decoder backbone and of the
loss's chunk math), one without. Both first run ``--warmup`` untimed steps (compilation happens there; its time is
printed), then the timed steps alternate, one eager step, one compiled step, so both see the same load on a shared
machine. Prints tokens/s of each and the median of the per-pair time ratios (eager / compiled > 1: compile pays).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_compile_cpu.py                      # micro, AdamW
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_compile_cpu.py --optimizer muon     # the demo's recipe
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from lumi.model import build_model, load_architecture  # noqa: E402
from lumi.train.objectives.pretrain import PackedLMLoss, PretrainConfig, scored_tokens  # noqa: E402
from lumi.train.step import TrainStep  # noqa: E402

from bench_train_gpu import packed_rows  # noqa: E402

VOCAB = 2048  # the demo tokenizer's


def train_step(args: argparse.Namespace, compile_model: bool) -> TrainStep:
    config = PretrainConfig(model=args.model, max_steps=10_000, micro_batch_size=args.micro_batch, lr=3e-3,
                            warmup_steps=20, optimizer=args.optimizer, schedule="cosine", precision="fp32",
                            compile=compile_model)
    torch.manual_seed(0)
    model = build_model(load_architecture(args.model, vocab_size=VOCAB)).train()
    return TrainStep(PackedLMLoss(model, compile_chunks=compile_model), scored_tokens, config, config.max_steps,
                     torch.device("cpu"))


def timed(step: TrainStep, rows: torch.Tensor) -> float:
    start = time.perf_counter()
    step.step([rows])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="micro")
    parser.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    parser.add_argument("--micro-batch", type=int, default=16, help="rows of --seq-len tokens per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each (compilation happens here)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each, interleaved")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = packed_rows(8, args.micro_batch, args.seq_len, VOCAB)
    steps = {"eager": train_step(args, False), "compiled": train_step(args, True)}
    for name, step in steps.items():
        start = time.perf_counter()
        for index in range(args.warmup):
            step.step([batches[index % len(batches)]])
        print(f"{name}: {args.warmup} warm-up steps in {time.perf_counter() - start:.1f} s", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(args.steps):
        for name, step in steps.items():
            seconds[name].append(timed(step, batches[index % len(batches)]))
    tokens = args.micro_batch * args.seq_len
    ratios = [eager / compiled for eager, compiled in zip(seconds["eager"], seconds["compiled"])]
    print(f"{args.model}, {args.optimizer}, {args.micro_batch} x {args.seq_len} tokens per step, fp32, "
          f"{torch.get_num_threads()} thread, {args.steps} interleaved timed steps each")
    for name, times in seconds.items():
        print(f"{name:>9}: {tokens / statistics.median(times):,.0f} tok/s (median step {statistics.median(times):.3f} s)")
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"eager / compiled step time: median {statistics.median(ratios):.3f} "
          f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; > 1: compile is faster)")


if __name__ == "__main__":
    main()
