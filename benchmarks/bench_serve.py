#!/usr/bin/env python
"""The API server against ``model.generate``, through the real ``openai`` client on 127.0.0.1, for each server thread
count and stream interval given (the defaults of ``lumi serve`` are chosen by this measurement: docs/BENCHMARKS.md):

1. interleaved rounds (``--repeats``), each: greedy ``model.generate`` of the prompts in a process of its own, then
   one client streaming the same prompts and token count from ``lumi serve``, then one client asking the same without
   streaming. Both sides are processes that sleep while the other side runs, so a loaded machine's scheduler treats
   them alike; the per-round ratios are reported as median and range (goal: streamed >= 1.0x at greedy), as tokens/s
   and as tokens per CPU-second (the process's user + system time, which load disturbs much less than wall time);
2. 8 concurrent clients -> aggregate tokens/s, ratio to one client (goal >= 3x);
3. load: 200 requests from 8 concurrent clients -> errors (goal 0), latency p50/p95, time to first token p50/p95.

Without --model-path it builds an untrained ``micro`` checkpoint with a 4k tokenizer the way
bench_eval_batching.py does (its output is random text, and near-uniform logits make an early EOS rare, so requests
run to max_tokens; completion tokens are counted from ``usage`` either way).

    .venv/bin/python benchmarks/bench_serve.py [--model-path DIR] [--max-tokens 64] [--repeats 7] [--requests 200]
        [--concurrency 8] [--threads 1 2] [--stream-interval-ms 0 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
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
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from bench_eval_batching import build_checkpoint  # noqa: E402

from lumi.serve.api import DEFAULT_STREAM_INTERVAL_S  # noqa: E402
from lumi.serve.server import server_process  # noqa: E402

MODEL = "bench"
PROMPTS = ["Once upon a time", "The king said to the queen", "In the morning the market",
           "Where is the library? It is", "A long time ago, in a small village by the sea,"]
ROUND_PROMPTS = 8  # prompts per timed round, each side


def one_request(client: openai.OpenAI, index: int, max_tokens: int, greedy: bool = False,
                stream: bool = True) -> dict:
    """One completion (streamed: with usage in its last chunk); latency, time to first token (streamed only),
    completion tokens (from usage), or the error."""
    start = time.perf_counter()
    first = None
    ask = dict(model=MODEL, prompt=PROMPTS[index % len(PROMPTS)], max_tokens=max_tokens,
               temperature=0 if greedy else 1.0, seed=index)
    try:
        if not stream:
            tokens = client.completions.create(**ask).usage.completion_tokens
            return {"latency": time.perf_counter() - start, "ttft": None, "tokens": tokens, "error": None}
        tokens = 0
        for chunk in client.completions.create(**ask, stream=True, stream_options={"include_usage": True}):
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return {"latency": time.perf_counter() - start, "ttft": first, "tokens": tokens, "error": None}
    except openai.OpenAIError as exc:
        return {"latency": time.perf_counter() - start, "ttft": None, "tokens": 0, "error": repr(exc)}


def run_clients(url: str, requests: int, concurrency: int, max_tokens: int, greedy: bool = False,
                stream: bool = True) -> dict:
    local = threading.local()

    def task(index: int) -> dict:
        if not hasattr(local, "client"):  # one client (connection pool) per thread, as separate users have
            local.client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        return one_request(local.client, index, max_tokens, greedy, stream)

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


def generate_worker(model_dir: str, threads: int, max_tokens: int, connection) -> None:
    """Child process: greedy ``model.generate`` of ``max_tokens`` tokens per prompt (no early stop), one prompt at a
    time, a round per request on ``connection``; answers (tokens/s, tokens per CPU-second)."""
    import torch

    from lumi.serve.checkpoint import load_for_serving

    torch.set_num_threads(threads)
    model, tokenizer = load_for_serving(model_dir, device="cpu")
    ids = [torch.tensor([tokenizer.encode(PROMPTS[i % len(PROMPTS)])]) for i in range(ROUND_PROMPTS)]
    with torch.inference_mode():
        model.generate(ids[0], max_new_tokens=4, do_sample=False)  # warm-up
        connection.send("ready")
        while connection.recv():
            start, cpu = time.perf_counter(), time.process_time()
            for prompt in ids:
                model.generate(prompt, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
            tokens = len(ids) * max_tokens
            connection.send((tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)))


def cpu_seconds(process: psutil.Process) -> float:
    """The server's CPU time: its own and its engine process's (``lumi serve`` runs the engine in a child)."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


def timed_round(url: str, server: psutil.Process, max_tokens: int, stream: bool) -> tuple[float, float]:
    """One client, the round's prompts one after another, greedy: (tokens/s, tokens per server CPU-second)."""
    cpu = cpu_seconds(server)
    result = run_clients(url, ROUND_PROMPTS, 1, max_tokens, greedy=True, stream=stream)
    if result["errors"]:
        raise SystemExit(f"a request failed: {result['first_error']}")
    return result["tokens_per_s"], result["tokens"] / (cpu_seconds(server) - cpu)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def measure(model_dir: Path, threads: int, interval_ms: float, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    baseline = context.Process(target=generate_worker, args=(str(model_dir), threads, args.max_tokens, theirs))
    baseline.start()
    # The server is its own process (`lumi serve`), as in use: the clients' SSE parsing here does not compete with
    # the engine for this interpreter's GIL.
    server_args = ["--served-model-name", MODEL, "--threads", str(threads), "--device", args.device, "--max-batch",
                   str(args.concurrency), "--max-waiting", str(4 * args.concurrency),
                   "--stream-interval-ms", str(interval_ms)]
    rounds = {"generate": [], "generate_cpu": [], "streamed": [], "streamed_cpu": [], "plain": [], "plain_cpu": []}
    try:
        ours.recv()
        with open(os.devnull, "w") as quiet, server_process(model_dir, server_args, log=quiet) as (url, _, process):
            server = psutil.Process(process.pid)
            run_clients(url, 4, 2, 8, greedy=True)  # warm-up
            for _ in range(args.repeats):
                ours.send(True)
                for key, value in zip(("generate", "generate_cpu"), ours.recv()):
                    rounds[key].append(value)
                for stream, key in ((True, "streamed"), (False, "plain")):
                    for name, value in zip((key, f"{key}_cpu"), timed_round(url, server, args.max_tokens, stream)):
                        rounds[name].append(value)
            concurrent = run_clients(url, 4 * args.concurrency, args.concurrency, args.max_tokens, greedy=True)
            single = run_clients(url, 4 * args.concurrency, 1, args.max_tokens, greedy=True)
            load = run_clients(url, args.requests, args.concurrency, args.max_tokens // 2)
    finally:
        ours.send(False)
        baseline.join()
    ratios = {f"{key}_x_generate": summary([a / b for a, b in zip(rounds[key], rounds[base])])
              for key, base in (("streamed", "generate"), ("plain", "generate"), ("streamed_cpu", "generate_cpu"),
                                ("plain_cpu", "generate_cpu"))}
    return {"threads": threads, "stream_interval_ms": interval_ms,
            **{key: summary(values) for key, values in rounds.items()}, **ratios,
            "single": single, "concurrent": concurrent, "load": load}


def spread(s: dict, digits: int = 2, suffix: str = "") -> str:
    return f"{s['median']:.{digits}f}{suffix} (range {s['min']:.{digits}f}-{s['max']:.{digits}f})"


def report(result: dict, args: argparse.Namespace) -> None:
    single, concurrent, load = (result[k] for k in ("single", "concurrent", "load"))
    print(f"--- server threads {result['threads']}, stream interval {result['stream_interval_ms']:g} ms: "
          f"{args.repeats} interleaved rounds of {ROUND_PROMPTS} prompts x {args.max_tokens} tokens, greedy")
    print(f"model.generate     : {spread(result['generate'], 1)} tokens/s")
    for key, name in (("streamed", "1 client streamed"), ("plain", "1 client plain   ")):
        print(f"{name}  : {spread(result[key], 1)} tokens/s = {spread(result[f'{key}_x_generate'], suffix='x')} "
              f"model.generate (goal >= 1.0x streamed); per CPU-second "
              f"{spread(result[f'{key}_cpu_x_generate'], suffix='x')}")
    print(f"{args.concurrency} clients          : {concurrent['tokens_per_s']:.1f} tokens/s aggregate = "
          f"{concurrent['tokens_per_s'] / single['tokens_per_s']:.2f}x one client ({single['tokens_per_s']:.1f} "
          f"tokens/s, same {4 * args.concurrency} requests one at a time) (goal >= 3x); one client's TTFT p50 "
          f"{single['ttft_p50_s'] * 1000:.0f}ms")
    print(f"load: {load['requests']} requests, {args.concurrency} concurrent, {args.max_tokens // 2} tokens each: "
          f"{load['errors']} errors, latency p50 {load['latency_p50_s']:.2f}s p95 {load['latency_p95_s']:.2f}s, "
          f"TTFT p50 {load['ttft_p50_s'] * 1000:.0f}ms p95 {load['ttft_p95_s'] * 1000:.0f}ms, "
          f"{load['tokens_per_s']:.1f} tokens/s" + (f"; first error: {load['first_error']}" if load['errors'] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, help="an existing checkpoint (default: build a micro one)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds of generate vs one client")
    parser.add_argument("--requests", type=int, default=200, help="requests of the load test")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="server (and baseline) torch CPU thread counts to compare")
    parser.add_argument("--stream-interval-ms", type=float, nargs="+", default=[DEFAULT_STREAM_INTERVAL_S * 1000],
                        help="server stream intervals to compare (default: lumi serve's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.getLogger("httpx2").setLevel(logging.WARNING)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_path or build_checkpoint(Path(scratch))
        config = json.loads((Path(model_dir) / "config.json").read_text())
        results = [measure(Path(model_dir), threads, interval, args)
                   for threads in args.threads for interval in args.stream_interval_ms]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average (1/5/15 min) "
          f"{'/'.join(f'{x:.1f}' for x in load_before)} before, {'/'.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"after, device {args.device}, model {config['num_hidden_layers']} layers x {config['hidden_size']}, "
          f"vocab {config['vocab_size']}, context {config['max_position_embeddings']}")
    for result in results:
        report(result, args)
    best = max(results, key=lambda r: r["concurrent"]["tokens_per_s"])
    print(f"fastest under {args.concurrency} clients: {best['threads']} thread(s), "
          f"stream interval {best['stream_interval_ms']:g} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
