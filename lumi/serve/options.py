"""What ``lumi chat`` and ``lumi serve`` share: the model flags and how they become a running engine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lumi.core.errors import LumiError
from lumi.serve.checkpoint import load_for_serving
from lumi.generation.engine import Engine


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", type=Path, required=True,
                        help="checkpoint dir (save_pretrained model + tokenizer) or a PEFT adapter dir")
    parser.add_argument("--device", default="auto", help="torch device (default auto: cuda if available)")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    parser.add_argument("--max-batch", type=int, default=8, help="concurrent requests (KV cache slots)")
    parser.add_argument("--prefill-chunk", type=int, default=256,
                        help="prompt tokens prefilled per engine step (longer prompts are split)")
    parser.add_argument("--max-waiting", type=int, default=64,
                        help="requests allowed to wait for a slot (more: 503 server busy)")
    parser.add_argument("--context", type=int,
                        help="most tokens (prompt + output) per request; sizes the KV cache (default: the model's)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: half the CPUs this process may use, at least 1; "
                             "chosen by benchmarks/bench_serve.py, docs/BENCHMARKS.md)")


def default_threads() -> int:
    """Half the usable CPUs: the other half is left to the event loop, tokenization and the clients. Measured on
    2 shared cores (docs/BENCHMARKS.md): 1 thread served 8 clients several times faster than torch's default of 2,
    which spin-waits for cores the other work holds."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, usable // 2)


def engine_from_args(args: argparse.Namespace) -> Engine:
    """The loaded model in a (not yet started) engine."""
    threads = default_threads() if args.threads is None else args.threads
    if threads < 1:
        raise LumiError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    model, tokenizer = load_for_serving(args.model_path, args.device, args.dtype)
    return Engine(model, tokenizer, max_batch=args.max_batch, prefill_chunk=args.prefill_chunk,
                  max_waiting=args.max_waiting, context=args.context)
