#!/usr/bin/env python
"""Rollout tokens per second of a GRPO step (stage 97): ``--prompts`` prompts x ``--group`` sampled completions of up
to ``--max-tokens`` tokens at temperature 1, generated

- by Lumi's engine (``Engine.run_all``, continuous batching over ``--batch`` KV-cache slots), the way
  ``lumi grpo`` samples;
- by ``model.generate`` at the same batch: ``--batch`` rows at a time (``--batch / --group`` left-padded prompts x
  ``num_return_sequences=--group``), the way TRL's GRPOTrainer samples without vLLM.

Tokens are counted from the outputs up to and including the first stop token (``generate`` pads finished rows until
the longest is done; those pads are not counted). Without --model-path it builds an untrained ``micro`` checkpoint as
bench_eval_batching.py does (random weights rarely stop early, so both generate about ``--max-tokens`` per row).

    .venv/bin/python benchmarks/bench_grpo_rollout.py [--model-path DIR] [--prompts 8] [--group 4] [--batch 16]
        [--max-tokens 32] [--threads 1] [--device auto]
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

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from bench_eval_batching import build_checkpoint  # noqa: E402

from lumi.data.synthetic import SyntheticWorld  # noqa: E402
from lumi.generation.engine import Engine  # noqa: E402
from lumi.generation.sampling import SamplingParams  # noqa: E402
from lumi.serve.checkpoint import load_for_serving  # noqa: E402
from lumi.serve.prompts import chat_ids, has_chat_template  # noqa: E402


def counted(row: list[int], stop_ids: set[int]) -> int:
    """Tokens of a generated row up to and including its first stop token."""
    for index, token in enumerate(row):
        if token in stop_ids:
            return index + 1
    return len(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, help="a chat checkpoint (default: build an untrained micro one)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (num_generations)")
    parser.add_argument("--batch", type=int, default=16, help="rows generated at once (a multiple of --group)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each; the best is reported")
    args = parser.parse_args()
    if args.batch % args.group:
        raise SystemExit("--batch must be a multiple of --group")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer = load_for_serving(args.model_path or build_checkpoint(Path(scratch)), device=args.device)
    questions = [pair["prompt"] for pair in SyntheticWorld.generate(seed=0).sft_pairs("train")[:args.prompts]]
    prompts = [chat_ids(tokenizer, [{"role": "user", "content": q}]) if has_chat_template(tokenizer)
               else tokenizer.encode(q) for q in questions]
    device = next(model.parameters()).device
    context = max(map(len, prompts)) + args.max_tokens
    engine = Engine(model, tokenizer, max_batch=args.batch, context=context)
    stop_ids = engine.stop_ids

    def engine_run() -> int:
        requests = [(ids, SamplingParams(temperature=1.0, max_tokens=args.max_tokens, seed=index * args.group + g))
                    for index, ids in enumerate(prompts) for g in range(args.group)]
        return sum(counted(c.token_ids, stop_ids) for c in engine.run_all(requests))

    def generate_run() -> int:
        tokens, per_call = 0, args.batch // args.group
        tokenizer.padding_side = "left"
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start:start + per_call]
            width = max(map(len, chunk))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            output = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                    max_new_tokens=args.max_tokens, num_return_sequences=args.group,
                                    eos_token_id=sorted(stop_ids), pad_token_id=tokenizer.pad_token_id)
            tokens += sum(counted(row[width:].tolist(), stop_ids) for row in output)
        return tokens

    results = {}
    with torch.inference_mode():
        for name, run in (("lumi engine (run_all)", engine_run), ("transformers model.generate", generate_run)):
            run()  # warm-up
            best = None
            for _ in range(args.repeats):
                start = time.perf_counter()
                tokens = run()
                seconds = time.perf_counter() - start
                best = max(best or (0.0, 0, 0.0), (tokens / seconds, tokens, seconds))
            results[name] = best

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{args.threads}, device {device}, model {model.config.num_hidden_layers} layers x "
          f"{model.config.hidden_size}; {args.prompts} prompts x {args.group} samples (temperature 1) x up to "
          f"{args.max_tokens} tokens, {args.batch} rows at once")
    baseline = results["transformers model.generate"][0]
    for name, (rate, tokens, seconds) in results.items():
        print(f"{name:30s} {rate:8.1f} tokens/s  ({tokens} tokens in {seconds:.2f}s; {rate / baseline:.2f}x "
              "model.generate)")


if __name__ == "__main__":
    main()
