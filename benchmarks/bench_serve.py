#!/usr/bin/env python
"""The API server under load, through the real ``openai`` client streaming from ``lumi serve`` on 127.0.0.1, for each
server thread count given (the thread count is chosen by this measurement; docs/BENCHMARKS.md):

1. ``model.generate`` (greedy, the same prompts and token count, in this process with the same thread count): the
   baseline tokens/s;
2. one client (greedy, streamed) -> ratio to ``model.generate`` (goal >= 1.0x);
3. 8 concurrent clients -> aggregate tokens/s, ratio to one client (goal >= 3x);
4. load: 200 requests from 8 concurrent clients -> errors (goal 0), latency p50/p95, time to first token p50/p95.

Without --model-path it builds an untrained ``micro`` checkpoint with a 4k tokenizer the way
bench_eval_batching.py does (its output is random text, and near-uniform logits make an early EOS rare, so requests
run to max_tokens; completion tokens are counted from ``usage`` either way).

    .venv/bin/python benchmarks/bench_serve.py [--model-path DIR] [--max-tokens 64] [--requests 200]
        [--concurrency 8] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from bench_eval_batching import build_checkpoint  # noqa: E402

from lumi.serve.server import server_process  # noqa: E402

MODEL = "bench"
PROMPTS = ["Once upon a time", "The king said to the queen", "In the morning the market",
           "Where is the library? It is", "A long time ago, in a small village by the sea,"]


def one_request(client: openai.OpenAI, index: int, max_tokens: int, greedy: bool = False) -> dict:
    """Stream one completion; latency, time to first token, completion tokens (from usage), or the error."""
    start = time.perf_counter()
    first = None
    try:
        stream = client.completions.create(model=MODEL, prompt=PROMPTS[index % len(PROMPTS)], max_tokens=max_tokens,
                                           temperature=0 if greedy else 1.0, seed=index, stream=True,
                                           stream_options={"include_usage": True})
        tokens = 0
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return {"latency": time.perf_counter() - start, "ttft": first, "tokens": tokens, "error": None}
    except openai.OpenAIError as exc:
        return {"latency": time.perf_counter() - start, "ttft": None, "tokens": 0, "error": repr(exc)}


def run_clients(url: str, requests: int, concurrency: int, max_tokens: int, greedy: bool = False) -> dict:
    local = threading.local()

    def task(index: int) -> dict:
        if not hasattr(local, "client"):  # one client (connection pool) per thread, as separate users have
            local.client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        return one_request(local.client, index, max_tokens, greedy)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(task, range(requests)))
    wall = time.perf_counter() - start
    ok = [r for r in results if r["error"] is None]
    latencies = sorted(r["latency"] for r in ok)
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    return {"requests": requests, "concurrency": concurrency, "errors": len(results) - len(ok),
            "first_error": next((r["error"] for r in results if r["error"]), None),
            "tokens": sum(r["tokens"] for r in ok), "wall_s": wall,
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def generate_baseline(model_dir: Path, threads: int, max_tokens: int, repeats: int = 8) -> dict:
    """Greedy ``model.generate`` of ``max_tokens`` tokens per prompt (no early stop), one prompt at a time."""
    import torch

    from lumi.serve.checkpoint import load_for_serving

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, tokenizer = load_for_serving(model_dir, device="cpu")
        ids = [torch.tensor([tokenizer.encode(PROMPTS[i % len(PROMPTS)])]) for i in range(repeats + 1)]
        with torch.inference_mode():
            model.generate(ids[0], max_new_tokens=4, do_sample=False)  # warm-up
            start = time.perf_counter()
            for prompt in ids[1:]:
                model.generate(prompt, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
            wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return {"tokens_per_s": repeats * max_tokens / wall, "wall_s": wall}


def measure(model_dir: Path, threads: int, args: argparse.Namespace) -> dict:
    baseline = generate_baseline(model_dir, threads, args.max_tokens)
    # The server is its own process (`lumi serve`), as in use: the clients' SSE parsing here does not compete with
    # the engine for this interpreter's GIL.
    server_args = ["--served-model-name", MODEL, "--threads", str(threads), "--device", args.device, "--max-batch",
                   str(args.concurrency), "--max-waiting", str(4 * args.concurrency)]
    with open(os.devnull, "w") as quiet, server_process(model_dir, server_args, log=quiet) as (url, _health):
        run_clients(url, 4, 2, 8, greedy=True)  # warm-up
        single = run_clients(url, 8, 1, args.max_tokens, greedy=True)
        concurrent = run_clients(url, 4 * args.concurrency, args.concurrency, args.max_tokens, greedy=True)
        load = run_clients(url, args.requests, args.concurrency, args.max_tokens // 2)
    return {"threads": threads, "generate": baseline, "single": single, "concurrent": concurrent, "load": load}


def report(result: dict, args: argparse.Namespace) -> None:
    baseline, single, concurrent, load = (result[k] for k in ("generate", "single", "concurrent", "load"))
    print(f"--- server threads {result['threads']}")
    print(f"model.generate : {baseline['tokens_per_s']:.1f} tokens/s (greedy, {args.max_tokens} tokens a prompt)")
    print(f"1 client       : {single['tokens_per_s']:.1f} tokens/s  = {single['tokens_per_s'] / baseline['tokens_per_s']:.2f}x "
          f"model.generate (goal >= 1.0x); TTFT p50 {single['ttft_p50_s'] * 1000:.0f}ms")
    print(f"{args.concurrency} clients      : {concurrent['tokens_per_s']:.1f} tokens/s aggregate = "
          f"{concurrent['tokens_per_s'] / single['tokens_per_s']:.2f}x one client (goal >= 3x)")
    print(f"load: {load['requests']} requests, {args.concurrency} concurrent, {args.max_tokens // 2} tokens each: "
          f"{load['errors']} errors, latency p50 {load['latency_p50_s']:.2f}s p95 {load['latency_p95_s']:.2f}s, "
          f"TTFT p50 {load['ttft_p50_s'] * 1000:.0f}ms p95 {load['ttft_p95_s'] * 1000:.0f}ms, "
          f"{load['tokens_per_s']:.1f} tokens/s" + (f"; first error: {load['first_error']}" if load['errors'] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, help="an existing checkpoint (default: build a micro one)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200, help="requests of the load test")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="server (and baseline) torch CPU thread counts to compare")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.getLogger("httpx2").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_path or build_checkpoint(Path(scratch))
        config = json.loads((Path(model_dir) / "config.json").read_text())
        results = [measure(Path(model_dir), threads, args) for threads in args.threads]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, device {args.device}, model {config['num_hidden_layers']} layers x "
          f"{config['hidden_size']}, vocab {config['vocab_size']}, context {config['max_position_embeddings']}")
    for result in results:
        report(result, args)
    best = max(results, key=lambda r: r["concurrent"]["tokens_per_s"])
    print(f"fastest under {args.concurrency} clients: {best['threads']} thread(s)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
