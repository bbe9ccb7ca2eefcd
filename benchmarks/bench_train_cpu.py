"""Benchmark stage 40 on CPU: the trainer's overhead over a bare PyTorch loop on the same model, data and batch.

Builds a small real pipeline once (synthetic-world corpus -> the demo's 2,048-piece BPE tokenizer -> 256-token
packed rows), then compares, on the same core:

(a) **bare loop**: the same model (``build_model`` of the same architecture, same seed), the same loss
    (``summed_nats`` over the scored-token count, document masking on, as the trainer's default),
    the trainer's optimizer (``lumi.train.optim.build_optimizer``: AdamW, or Muon + AdamW with ``--optimizer
    muon``) and gradient clipping, one micro-batch of ``--micro-batch`` rows per step read straight
    from the packed memory map; no scheduler, no logging, nothing else;
(b) **our trainer** end to end: ``Trainer.fit()`` with the demo config (data mixing and stream, scored-token
    counting, LR schedule, non-finite checks, signal handling, and logging at the default interval of 10 steps to
    metrics.jsonl, TensorBoard and the log line).

The two run in lockstep, one bare step just before each trainer step (inside ``Trainer.train_step``, timed on its
own and subtracted from the trainer's time), so both see the same load on a shared machine; running them one after
the other gave pair ratios scattered over +-6%. The trainer is timed from the ``time/elapsed_s`` of its metrics
records at step ``--warmup`` and at the last step, so startup, the step-0 and final evaluations and the final
checkpoint are excluded (no other evaluation or checkpoint falls inside). Overhead = bare tok/s / trainer tok/s - 1,
the median over ``--repeats`` runs; target <= 5%. One intra-op thread (``OMP_NUM_THREADS=1``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_cpu.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lumi.cli import main as lumi  # noqa: E402
from lumi.core.config import CONFIG_DIR, load_config  # noqa: E402
from lumi.formats.metrics import read_metrics  # noqa: E402
from lumi.formats.packed import load_packed_split  # noqa: E402
from lumi.formats.tokenizer import load_tokenizer_meta  # noqa: E402
from lumi.lm.loss import count_scored_tokens, summed_nats  # noqa: E402
from lumi.model import build_model, load_architecture  # noqa: E402
from lumi.train.objectives.pretrain import PretrainConfig, PretrainObjective  # noqa: E402
from lumi.train.optim import build_optimizer  # noqa: E402
from lumi.train.trainer import Trainer  # noqa: E402


def build_data(workdir: Path, corpus_config: Path, corpus_overrides: list[str]) -> tuple[Path, Path]:
    """Stages 10 -> 20 -> 30: ``corpus_config`` (with ``--set`` overrides), then the demo's tokenizer and packing
    configs; a stage whose output dir already exists is skipped."""
    corpus, tokenizer, packed = workdir / "corpus", workdir / "tokenizer", workdir / "packed"
    steps = [["corpus", "--config", str(corpus_config), "--output-dir", str(corpus), *corpus_overrides],
             ["tokenizer", "--config", str(CONFIG_DIR / "demo" / "tokenizer.json"), "--corpus-dir", str(corpus),
              "--output-dir", str(tokenizer)],
             ["pack", "--config", str(CONFIG_DIR / "demo" / "packing.json"), "--corpus-dir", str(corpus),
              "--tokenizer-dir", str(tokenizer), "--output-dir", str(packed)]]
    for step in steps:
        if not Path(step[step.index("--output-dir") + 1]).exists() and lumi(step) != 0:
            raise SystemExit(f"setup failed: lumi {' '.join(step)}")
    return tokenizer, packed


def bench_config(args: argparse.Namespace, tokenizer: Path, packed: Path) -> PretrainConfig:
    return load_config(PretrainConfig, CONFIG_DIR / "demo" / "pretrain.json", [], {
        "tokenizer_dir": str(tokenizer), "data_dirs": [str(packed)], "max_steps": args.steps,
        "micro_batch_size": args.micro_batch, "grad_accumulation": 1, "eval_interval": 10 * args.steps,
        "save_interval": 10 * args.steps, "eval_max_rows": args.micro_batch, "optimizer": args.optimizer})


class BareLoop:
    """The bare loop, one step at a time."""

    def __init__(self, config: PretrainConfig, packed: Path, tokenizer: Path):
        arch = load_architecture(config.model, vocab_size=load_tokenizer_meta(tokenizer)["vocab_size"])
        torch.manual_seed(config.seed)
        self.model = build_model(arch, config.attn_implementation).train()
        self.optimizer = build_optimizer(self.model, config)  # the trainer's, so only the loop around it differs
        self.rows = load_packed_split(packed, "train").rows
        self.micro, self.grad_clip, self.steps = config.micro_batch_size, config.grad_clip, 0

    def step(self) -> float:
        """One optimizer step; returns its wall-clock seconds."""
        start = time.perf_counter()
        first = (self.steps * self.micro) % (len(self.rows) - self.micro)
        batch = torch.from_numpy(np.asarray(self.rows[first:first + self.micro], dtype=np.int64))
        (summed_nats(self.model, batch) / count_scored_tokens(batch)).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return time.perf_counter() - start


def lockstep(config: PretrainConfig, packed: Path, tokenizer: Path, output: Path, warmup: int) -> tuple[float, float]:
    """(bare tok/s, trainer tok/s) over steps ``warmup``+1 .. ``config.max_steps`` of one lockstep run."""
    bare = BareLoop(config, packed, tokenizer)
    bare_seconds: dict[int, float] = {}
    train_step = Trainer.train_step

    def with_bare_step(trainer: Trainer, micro_batches: list[torch.Tensor]) -> tuple[float, float]:
        bare_seconds[trainer.step + 1] = bare.step()
        return train_step(trainer, micro_batches)

    Trainer.train_step = with_bare_step
    try:
        run = Trainer(config, PretrainObjective(config), output, force=True)
        if run.fit() != 0:
            raise SystemExit("the trainer failed")
    finally:
        Trainer.train_step = train_step
    records = {r["step"]: r for r in read_metrics(run.run_dir / "metrics.jsonl") if "time/elapsed_s" in r}
    window = records[config.max_steps]["time/elapsed_s"] - records[warmup]["time/elapsed_s"]
    bare_time = sum(bare_seconds[step] for step in range(warmup + 1, config.max_steps + 1))
    tokens = records[config.max_steps]["train/tokens"] - records[warmup]["train/tokens"]
    return tokens / bare_time, tokens / (window - bare_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="lockstep runs")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed first steps (a multiple of the log interval, 10)")
    parser.add_argument("--micro-batch", type=int, default=16, help="rows of 256 tokens per step")
    parser.add_argument("--documents", type=int, default=3000, help="synthetic-world documents in the corpus")
    parser.add_argument("--workdir", type=Path, help="keep the built data here (default: a temporary dir)")
    parser.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                        help="the optimizer of both loops (muon: Muon for hidden matrices + AdamW, at the same lr)")
    args = parser.parse_args()
    if args.warmup % 10 or not 0 < args.warmup < args.steps:
        parser.error("--warmup must be a positive multiple of 10 below --steps")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        tokenizer, packed = build_data(workdir, CONFIG_DIR / "demo" / "corpus.json",
                                       ["--set", f"sources.0.documents={args.documents}"])
        config = bench_config(args, tokenizer, packed)
        results: dict[str, list[float]] = {"bare": [], "trainer": []}
        for repeat in range(args.repeats):
            bare, ours = lockstep(config, packed, tokenizer, workdir / "runs", args.warmup)
            results["bare"].append(bare)
            results["trainer"].append(ours)
            print(f"repeat {repeat + 1}: bare {bare:,.0f} tok/s, trainer {ours:,.0f} tok/s", flush=True)
    overheads = [b / t - 1 for b, t in zip(results["bare"], results["trainer"])]
    print(json.dumps({"model": config.model, "optimizer": config.optimizer, "micro_batch": args.micro_batch, "seq_len": 256,
                      "timed_steps": args.steps - args.warmup, "threads": torch.get_num_threads(),
                      "bare_tok_per_s": round(statistics.median(results["bare"])),
                      "trainer_tok_per_s": round(statistics.median(results["trainer"])),
                      "overhead_pct_per_run": [round(100 * o, 2) for o in overheads],
                      "overhead_pct": round(100 * statistics.median(overheads), 2), "target_pct": 5.0}, indent=2))


if __name__ == "__main__":
    main()
