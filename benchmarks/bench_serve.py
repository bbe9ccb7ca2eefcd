#!/usr/bin/env python
"""The API server under load, through the real ``openai`` client streaming from uvicorn on 127.0.0.1:

1. aggregate completion tokens/s with 1 client, then with 8 concurrent clients (continuous batching: the target is
   >= 2x one client);
2. load: 200 requests from 8 concurrent clients -> errors (target 0), latency p50/p95, time to first token p50/p95,
   aggregate tokens/s.

Without --model-path it builds an untrained ``micro`` checkpoint with a 4k tokenizer the way
bench_eval_batching.py does (its output is random text, and near-uniform logits make an early EOS rare, so requests
run to max_tokens; completion tokens are counted from ``usage`` either way).

    .venv/bin/python benchmarks/bench_serve.py [--model-path DIR] [--max-tokens 64] [--requests 200]
        [--concurrency 8] [--threads 2]
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


def one_request(client: openai.OpenAI, index: int, max_tokens: int) -> dict:
    """Stream one completion; latency, time to first token, completion tokens (from usage), or the error."""
    start = time.perf_counter()
    first = None
    try:
        stream = client.completions.create(model=MODEL, prompt=PROMPTS[index % len(PROMPTS)], max_tokens=max_tokens,
                                           temperature=1.0, seed=index, stream=True,
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


def run_clients(url: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    local = threading.local()

    def task(index: int) -> dict:
        if not hasattr(local, "client"):  # one client (connection pool) per thread, as separate users have
            local.client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        return one_request(local.client, index, max_tokens)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, help="an existing checkpoint (default: build a micro one)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200, help="requests of the load test")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's torch CPU threads (1: on a shared, busy CPU more threads mostly spin-wait)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.getLogger("httpx2").setLevel(logging.WARNING)

    # The server is its own process (`lumi serve`), as in use: the clients' SSE parsing here does not compete with
    # the engine for this interpreter's GIL.
    server_args = ["--model-name", MODEL, "--threads", str(args.threads), "--device", args.device, "--max-batch",
                   str(args.concurrency), "--max-waiting", str(4 * args.concurrency)]
    with tempfile.TemporaryDirectory() as scratch, open(os.devnull, "w") as quiet:
        model_dir = args.model_path or build_checkpoint(Path(scratch))
        with server_process(model_dir, server_args, log=quiet) as (url, health):
            run_clients(url, 4, 2, 8)  # warm-up
            single = run_clients(url, 8, 1, args.max_tokens)
            concurrent = run_clients(url, 4 * args.concurrency, args.concurrency, args.max_tokens)
            load = run_clients(url, args.requests, args.concurrency, args.max_tokens // 2)
        config = json.loads((Path(model_dir) / "config.json").read_text())

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, server torch threads "
          f"{args.threads}, device {args.device}, model {config['num_hidden_layers']} layers x "
          f"{config['hidden_size']}, vocab {config['vocab_size']}, context {config['max_position_embeddings']}")
    print(f"1 client : {single['tokens_per_s']:.1f} tokens/s  ({single['requests']} requests x {args.max_tokens} "
          f"tokens, latency p50 {single['latency_p50_s']:.2f}s)")
    print(f"{args.concurrency} clients: {concurrent['tokens_per_s']:.1f} tokens/s aggregate  "
          f"({concurrent['requests']} requests, latency p50 {concurrent['latency_p50_s']:.2f}s)")
    print(f"ratio {concurrent['tokens_per_s'] / single['tokens_per_s']:.2f}x (target >= 2x)")
    print(f"load: {load['requests']} requests, {args.concurrency} concurrent, {args.max_tokens // 2} tokens each: "
          f"{load['errors']} errors, latency p50 {load['latency_p50_s']:.2f}s p95 {load['latency_p95_s']:.2f}s, "
          f"TTFT p50 {load['ttft_p50_s'] * 1000:.0f}ms p95 {load['ttft_p95_s'] * 1000:.0f}ms, "
          f"{load['tokens_per_s']:.1f} tokens/s" + (f"; first error: {load['first_error']}" if load['errors'] else ""))
    print(json.dumps({"single": single, "concurrent": concurrent, "load": load}))


if __name__ == "__main__":
    main()
