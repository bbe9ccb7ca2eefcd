#!/usr/bin/env python
"""BoolQ items per second on a small model on CPU: batched scoring against one item at a time.

Without --model-path it builds a checkpoint the way the pipeline does -- ``lumi corpus`` on the Tiny Shakespeare
sample, ``lumi tokenizer`` (4k vocabulary), an untrained ``micro`` model (config/architectures/micro.json) saved with
the tokenizer -- in a temporary directory. Scores are identical whatever the batch size (tests/test_eval_scoring.py),
so only the speed differs.

    .venv/bin/python benchmarks/bench_eval_batching.py [--items 64] [--batch-sizes 1 8 16] [--repeats 3]
        [--model-path DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lumi.cli import main as lumi_main  # noqa: E402
from lumi.eval.scoring import score_items  # noqa: E402
from lumi.eval.tasks import TaskSource, get_task, subsample  # noqa: E402
from lumi.formats.model_io import context_length  # noqa: E402
from lumi.loading import load_for_evaluation  # noqa: E402
from lumi.model import build_model, load_architecture  # noqa: E402

SAMPLES = REPO_ROOT.parent / "shared" / "data" / "samples"


def build_checkpoint(directory: Path) -> Path:
    corpus, tokenizer, model_dir = directory / "corpus", directory / "tokenizer", directory / "model"
    for argv in (["corpus", "--input", str(SAMPLES / "tinyshakespeare_train90.txt"), "--txt-split", "paragraph",
                  "--output-dir", str(corpus)],
                 ["tokenizer", "--corpus-dir", str(corpus), "--vocab-size", "4096", "--set", "model_type=bpe",
                  "--output-dir", str(tokenizer)]):
        if lumi_main(argv) != 0:
            raise SystemExit(f"lumi {argv[0]} failed")
    shutil.copytree(tokenizer, model_dir)
    torch.manual_seed(0)
    build_model(load_architecture("micro", vocab_size=4096)).save_pretrained(model_dir)
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, help="an existing checkpoint (default: build a micro one)")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size; the fastest is reported "
                        "(the machine is shared: the minimum is the least disturbed)")
    parser.add_argument("--boolq", type=Path, default=SAMPLES / "boolq_dev_first300.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as scratch:
        model_dir = args.model_path or build_checkpoint(Path(scratch))
        model, tokenizer = load_for_evaluation(model_dir, device="cpu")
        task = get_task("boolq")
        items = subsample(task.load(TaskSource(path=str(args.boolq))), args.items, seed=0)
        print(f"model {model_dir}: {model.num_parameters():,} parameters, context {context_length(model)}; "
              f"{len(items)} BoolQ items ({2 * len(items)} continuations); torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cpus")
        score_items(model, tokenizer, task, items[:4], context_length(model), batch_size=4)  # warm-up
        rates = {}
        for batch_size in args.batch_sizes:
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                score_items(model, tokenizer, task, items, context_length(model), batch_size=batch_size)
                seconds.append(time.perf_counter() - started)
            rates[batch_size] = len(items) / min(seconds)
            print(f"batch_size {batch_size:>3}: {rates[batch_size]:8.2f} items/s (best of {args.repeats})")
        if 1 in rates:
            for batch_size, rate in rates.items():
                if batch_size != 1:
                    print(f"batch_size {batch_size} vs 1: {rate / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
