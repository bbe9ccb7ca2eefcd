"""Benchmark stages 60 and 70 on CPU: SFT corpus conversations/s, and SFT training tokens/s against pretraining
tokens/s on the same model, rows and batch.

Builds the demo pipeline small (synthetic-world corpus -> the demo's 2,048-piece tokenizer -> 256-token rows ->
the micro model pretrained for ``--pretrain-steps``), then

(a) stage 60 (``lumi sft-corpus``) on the Alpaca sample (``--alpaca``, 200 records) and on the synthetic world's
    3,360 pairs, conversations/s from its manifest (reading, filters, MinHash, templating + tokenization, packing);
(b) ``lumi pretrain`` (the same micro architecture, demo config), ``lumi sft`` with LoRA (r=16
    on every linear layer) and full fine-tuning, each ``--steps`` steps of 16 x 256 tokens, in rounds of
    pretrain / LoRA / full (``--repeats``), so all three see the same load; tokens/s is the median of the
    ``train/tok_per_s`` records after the first (warm-up) interval.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sft.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lumi.cli import main as lumi  # noqa: E402
from lumi.core.config import CONFIG_DIR  # noqa: E402
from lumi.core.files import atomic_write_json  # noqa: E402
from lumi.formats.metrics import read_metrics  # noqa: E402

SAMPLES = REPO_ROOT.parent / "shared" / "data" / "samples"


def run(*args: str) -> None:
    if lumi(list(args)) != 0:
        raise SystemExit(f"lumi {' '.join(args)} failed")


def tokens_per_second(run_dir: Path) -> float:
    rates = [r["train/tok_per_s"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/tok_per_s" in r]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--pretrain-steps", type=int, default=30)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--alpaca", type=Path, default=SAMPLES / "alpaca_data_first200.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        run("corpus", "--config", str(CONFIG_DIR / "demo" / "corpus.json"), "--output-dir", str(work / "corpus"),
            "--set", f"sources.0.documents={args.documents}")
        run("tokenizer", "--config", str(CONFIG_DIR / "demo" / "tokenizer.json"), "--corpus-dir",
            str(work / "corpus"), "--output-dir", str(work / "tokenizer"))
        run("pack", "--config", str(CONFIG_DIR / "demo" / "packing.json"), "--corpus-dir", str(work / "corpus"),
            "--tokenizer-dir", str(work / "tokenizer"), "--output-dir", str(work / "packed"))
        pretrain = ["pretrain", "--config", str(CONFIG_DIR / "demo" / "pretrain.json"), "--tokenizer-dir",
                    str(work / "tokenizer"), "--data-dirs", str(work / "packed")]
        run(*pretrain, "--output-dir", str(work / "base"), "--max-steps", str(args.pretrain_steps))
        base = work / "base" / "demo" / "final"

        corpus_rates = {}
        for name, extra in (("alpaca sample", ["--input", str(args.alpaca), "--set", "languages=null",
                                               "--seq-len", "256"]),
                            ("synthetic world", ["--config", str(CONFIG_DIR / "sft" / "datasets" / "demo.json")])):
            out = work / f"sft_data_{len(corpus_rates)}"
            run("sft-corpus", *extra, "--tokenizer-dir", str(base), "--output-dir", str(out))
            manifest = json.loads((out / "manifest.json").read_text())
            corpus_rates[name] = manifest["conversations_per_second"]
        data = work / "sft_data_1"

        common = {"micro_batch_size": 16, "grad_accumulation": 1, "lr": 1e-3, "max_steps": args.steps,
                  "log_interval": 5, "eval_interval": 10_000, "save_interval": 10_000, "tensorboard": False}
        configs = {"lora": {**common, "method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
                   "full": {**common, "method": "full"}}
        rates: dict[str, list[float]] = {"pretrain": [], "lora": [], "full": []}
        for repeat in range(args.repeats):
            out = work / f"pretrain_{repeat}"
            # the same architecture from its seeded init: speed does not depend on the weights' values
            run(*pretrain, "--output-dir", str(out), "--max-steps", str(args.steps), "--set", "log_interval=5",
                "--set", "eval_interval=10000", "--set", "save_interval=10000", "--set", "tensorboard=false")
            rates["pretrain"].append(tokens_per_second(out / "demo"))
            for method, config in configs.items():
                path = work / f"{method}.json"
                atomic_write_json(path, {**config, "name": method})
                out = work / f"{method}_{repeat}"
                run("sft", "--config", str(path), "--model-path", str(base), "--data-dir", str(data),
                    "--output-dir", str(out))
                rates[method].append(tokens_per_second(out / method))
    print("stage 60 conversations/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in corpus_rates.items()))
    pretrain_rate = statistics.median(rates["pretrain"])
    print(f"pretrain (micro, 16 x 256): {pretrain_rate:,.0f} tok/s")
    for method in ("lora", "full"):
        rate = statistics.median(rates[method])
        print(f"SFT {method}: {rate:,.0f} tok/s = {rate / pretrain_rate:.2f} x pretraining")


if __name__ == "__main__":
    main()
