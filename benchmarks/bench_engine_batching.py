#!/usr/bin/env python
"""Generated tokens per second of the serving engine alone (no HTTP), against transformers:

- our engine, 1 request at a time, then N requests at once (continuous batching over the slot KV cache);
- ``model.generate`` one request at a time (the evaluator's way);
- transformers' own continuous batching, ``model.generate_batch`` (paged attention), on the same N requests.

All greedy, the same prompts and ``--max-tokens``; tokens are counted from the outputs (an early EOS counts what was
generated). Without --model-path it builds an untrained ``micro`` checkpoint as bench_eval_batching.py does.

    .venv/bin/python benchmarks/bench_engine_batching.py [--model-path DIR] [--requests 16] [--max-tokens 64]
        [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from bench_eval_batching import build_checkpoint  # noqa: E402
from bench_serve import PROMPTS  # noqa: E402

from lumi.serve.checkpoint import load_for_serving  # noqa: E402
from lumi.generation.engine import Engine  # noqa: E402
from lumi.generation.sampling import SamplingParams  # noqa: E402


def timed(run) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = run()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, help="an existing checkpoint (default: build a micro one)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer = load_for_serving(args.model_path or build_checkpoint(Path(scratch)), device=args.device)
    prompts = [tokenizer.encode(PROMPTS[i % len(PROMPTS)]) for i in range(args.requests)]
    greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    engine = Engine(model, tokenizer, max_batch=args.requests)
    stop_ids = sorted(engine.stop_ids)
    device = next(model.parameters()).device

    def engine_run(batch: int) -> int:
        tokens = 0
        for start in range(0, len(prompts), batch):
            requests = [engine.submit(ids, greedy) for ids in prompts[start:start + batch]]
            tokens += sum(len(out.token_ids) for request in requests for out in request)
        return tokens

    def generate_run() -> int:
        tokens = 0
        for ids in prompts:
            output = model.generate(torch.tensor([ids], device=device), do_sample=False,
                                    max_new_tokens=args.max_tokens, eos_token_id=stop_ids,
                                    pad_token_id=tokenizer.pad_token_id)
            tokens += output.shape[1] - len(ids)
        return tokens

    def generate_batch_run() -> int:
        config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=stop_ids,
                                  pad_token_id=tokenizer.pad_token_id)
        outputs = model.generate_batch(prompts, generation_config=config)
        return sum(len(output.generated_tokens) for output in outputs.values())

    results = {}
    with engine, torch.inference_mode():
        engine_run(4)  # warm-up
        results["engine, 1 request at a time"] = timed(lambda: engine_run(1))
        results[f"engine, {args.requests} requests at once"] = timed(lambda: engine_run(args.requests))
    with torch.inference_mode():
        results["model.generate, 1 request at a time"] = timed(generate_run)
        try:
            generate_batch_run()  # warm-up (and its own set-up)
            results[f"model.generate_batch, {args.requests} requests"] = timed(generate_batch_run)
        except Exception as exc:  # an optional comparison: report, do not fail the benchmark
            print(f"model.generate_batch failed: {type(exc).__name__}: {exc}")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{args.threads}, device {device}, model {model.config.num_hidden_layers} layers x "
          f"{model.config.hidden_size}, {args.requests} greedy requests x {args.max_tokens} tokens")
    baseline = results["engine, 1 request at a time"]
    for name, (seconds, tokens) in results.items():
        rate = tokens / seconds
        print(f"{name:40s} {rate:8.1f} tokens/s  ({tokens} tokens in {seconds:.2f}s; "
              f"{rate / (baseline[1] / baseline[0]):.2f}x the engine's single stream)")


if __name__ == "__main__":
    main()
