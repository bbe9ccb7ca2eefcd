"""Benchmark the pretraining recipe: val loss at equal tokens, old default (AdamW + cosine) against the candidates.

Builds its data from real text through the project's stages (10 corpus, the given .txt files split into
paragraphs -> 20 the demo's 2,048-piece BPE tokenizer -> 30 256-token rows, whole documents held out as val), then
trains the micro model (``--model``; the demo's batch shape) through the real ``Trainer`` once per candidate x seed,
all at the same tokens, evaluating the held-out rows every ``--eval-every`` steps. Prints, per
candidate: mean final val loss, its spread (min-max) across seeds, the change against the AdamW + cosine default, and
the tokens each run needed to first reach a target loss (default: the AdamW default's mean final loss; linear
interpolation between evaluations; "-" when a run never got there). The seed sets the init and the data order.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_recipe.py \\
        --texts ../shared/data/samples/gutenberg_pg84.txt ../shared/data/samples/gutenberg_pg11.txt \\
        ../shared/data/samples/tinyshakespeare_train90.txt

``--candidates muon_wsd --seeds 0 --muon-lr 0.01`` runs one point of an lr sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from lumi.core.config import CONFIG_DIR, load_config  # noqa: E402
from lumi.formats.metrics import read_metrics  # noqa: E402
from lumi.train.objectives.pretrain import PretrainConfig, PretrainObjective  # noqa: E402
from lumi.train.trainer import Trainer  # noqa: E402

from bench_train_cpu import build_data as build_stages  # noqa: E402

BASELINE = "adamw_cosine"
CANDIDATES = {  # name -> config fields over the demo's pretraining config
    BASELINE: {"optimizer": "adamw", "schedule": "cosine"},
    "adamw_wsd": {"optimizer": "adamw", "schedule": "wsd"},
    "muon_wsd": {"optimizer": "muon", "schedule": "wsd"},
    "muon_cosine": {"optimizer": "muon", "schedule": "cosine"},
}
SEQ_LEN = 256  # config/demo/packing.json


def build_data(workdir: Path, texts: list[Path]) -> tuple[Path, Path]:
    """Stages 10 -> 20 -> 30 on the given text files (one document per paragraph)."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus_config = workdir / "corpus.json"
    corpus_config.write_text(json.dumps({"sources": [{"type": "local", "name": "texts", "txt_split": "paragraph",
                                                      "paths": [str(path.resolve()) for path in texts]}]}))
    return build_stages(workdir, corpus_config, [])


def run_config(args: argparse.Namespace, candidate: str, seed: int, tokenizer: Path, packed: Path) -> PretrainConfig:
    steps = args.tokens // (args.micro_batch * SEQ_LEN)
    fields = {"name": f"{candidate}_seed{seed}", "model": args.model, "seed": seed, "tokenizer_dir": str(tokenizer),
              "data_dirs": [str(packed)], "max_steps": steps, "micro_batch_size": args.micro_batch,
              "warmup_steps": max(steps // 10, 1), "lr": args.lr, "min_lr": args.lr / 10,
              "eval_interval": args.eval_every, "save_interval": 10 * steps, "eval_max_rows": args.eval_rows,
              "tensorboard": False, **CANDIDATES[candidate]}
    if fields["optimizer"] == "muon":
        fields["muon_lr"] = args.muon_lr or args.lr
    return load_config(PretrainConfig, CONFIG_DIR / "demo" / "pretrain.json", [], fields)


def train(config: PretrainConfig, output: Path) -> list[tuple[int, float]]:
    """(tokens seen, val loss) at every evaluation of one run through the real trainer."""
    run = Trainer(config, PretrainObjective(config), output, force=True)
    if run.fit() != 0:
        raise SystemExit(f"run {config.name} failed")
    tokens_per_step = config.micro_batch_size * SEQ_LEN
    return [(r["step"] * tokens_per_step, r["val/loss"]) for r in read_metrics(run.run_dir / "metrics.jsonl")
            if "val/loss" in r]


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Tokens at which the val-loss curve first reaches ``target`` (linear between evaluations)."""
    for (tokens_before, before), (tokens, loss) in zip(curve, curve[1:]):
        if loss <= target:
            return tokens_before + (tokens - tokens_before) * (before - target) / (before - loss)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=Path, nargs="+", required=True,
                        help="plain-text files to train and hold out on")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="micro", help="architecture (config/architectures/; rows stay 256 tokens)")
    parser.add_argument("--tokens", type=int, default=300_000, help="training tokens per run")
    parser.add_argument("--micro-batch", type=int, default=8, help="rows of 256 tokens per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW's peak lr (the demo's, tuned for micro)")
    parser.add_argument("--muon-lr", type=float,
                        help="Muon's peak lr (match_rms_adamw scale; default: --lr, the shipped configs' rule)")
    parser.add_argument("--eval-every", type=int, default=20, help="steps between val-loss evaluations")
    parser.add_argument("--eval-rows", type=int, default=128, help="held-out rows scored per evaluation")
    parser.add_argument("--target", type=float, help="val loss to reach (default: the AdamW default's mean final); "
                                                     "also what 'vs default' compares with when the default is not run")
    parser.add_argument("--workdir", type=Path, help="keep the built data and runs here (default: a temporary dir)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (one thread each)")
    parser.add_argument("--json", type=Path, help="also write every curve here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        tokenizer, packed = build_data(workdir, args.texts)
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {name: [pool.submit(train, run_config(args, name, seed, tokenizer, packed), workdir / "runs")
                              for seed in args.seeds] for name in args.candidates}
            curves = {name: [future.result() for future in runs] for name, runs in futures.items()}
    finals = {name: [curve[-1][1] for curve in runs] for name, runs in curves.items()}
    means = {name: statistics.mean(values) for name, values in finals.items()}
    target = args.target or means.get(BASELINE) or min(means.values())
    reference = means.get(BASELINE, args.target)  # "vs default": the default's mean, else the given target
    steps = args.tokens // (args.micro_batch * SEQ_LEN)
    print(f"\n{args.model} model, {steps} steps x {args.micro_batch} x {SEQ_LEN} = "
          f"{steps * args.micro_batch * SEQ_LEN:,} tokens per run, seeds {args.seeds}, AdamW lr {args.lr}, "
          f"Muon lr {args.muon_lr or args.lr}, target val loss {target:.4f}, "
          f"wall {time.perf_counter() - started:.0f} s")
    print(f"{'candidate':<14} {'val loss':>9} {'spread':>17} {'vs default':>10}  tokens to target (per seed)")
    for name, values in finals.items():
        reached = [tokens_to_reach(curve, target) for curve in curves[name]]
        change = f"{100 * (means[name] / reference - 1):+.2f}%" if reference else "-"
        print(f"{name:<14} {means[name]:>9.4f} {min(values):>8.4f}-{max(values):<8.4f} {change:>10}  "
              + ", ".join("-" if tokens is None else f"{tokens:,.0f}" for tokens in reached))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "target": target,
                                         "curves": curves}, indent=1))


if __name__ == "__main__":
    main()
