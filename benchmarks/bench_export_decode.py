#!/usr/bin/env python3
"""CPU decode speed of one model three ways, same machine, same prompts, same threads, greedy, one request at a time:
llama.cpp on the exported GGUF (``lumi export``), lumi serve's engine (``lumi.generation.engine``, what the API runs)
and ``model.generate``. Every run makes exactly ``--new-tokens`` tokens (end-of-text ignored), so the rates compare.

    .venv/bin/python benchmarks/bench_export_decode.py --model-path out/demo/dpo/demo/final \\
        --gguf out/demo/export/model-f16.gguf [--threads 1] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.eval.gguf_agreement import PROBE_TEXTS, llama_cpp_version, llama_greedy, lumi_ids, open_gguf  # noqa: E402
from lumi.formats.model_io import load_tokenizer  # noqa: E402
from lumi.loading import load_model  # noqa: E402
from lumi.generation.engine import Engine  # noqa: E402
from lumi.generation.sampling import SamplingParams  # noqa: E402


def rate(run, prompts: list[list[int]], new_tokens: int) -> float:
    run(prompts[0])  # warm-up
    start = time.perf_counter()
    for ids in prompts:
        run(ids)
    return len(prompts) * new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model_path, "model to benchmark", dtype="float32", device="cpu")
    tokenizer = load_tokenizer(args.model_path)
    prompts = [[tokenizer.bos_token_id, *lumi_ids(tokenizer, text)[:32]] for text in PROBE_TEXTS[:8]]
    n = args.new_tokens
    llm = open_gguf(args.gguf, n_ctx=max(map(len, prompts)) + n + 1, threads=args.threads)
    engine = Engine(model, tokenizer, max_batch=1)
    greedy = SamplingParams(max_tokens=n, temperature=0.0)

    def generate(ids: list[int]) -> None:
        with torch.no_grad():
            model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)

    rates = {f"llama.cpp ({args.gguf.name}, {llama_cpp_version()})": rate(lambda ids: llama_greedy(llm, ids, n),
                                                                          prompts, n),
             "lumi serve engine (fp32)": rate(lambda ids: engine.run_all([(ids, greedy)], stop_ids=set()), prompts, n),
             "model.generate (fp32)": rate(generate, prompts, n)}
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, {len(prompts)} prompts x {n} new "
          f"tokens, {time.strftime('%Y-%m-%d %H:%M')}")
    base = rates["model.generate (fp32)"]
    for name, value in rates.items():
        print(f"{name:60} {value:8.1f} tokens/s  {value / base:5.2f}x model.generate")


if __name__ == "__main__":
    main()
