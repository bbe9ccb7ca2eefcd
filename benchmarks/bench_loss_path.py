"""Benchmark the loss path alone: output projection + cross-entropy, forward and backward, time and peak memory.

The logits are the largest tensor of a small model's step: with a 32k vocab the loss path must not dominate memory,
so which implementation is fastest is measured rather than assumed. On the same hidden states, output weight and
targets, in the same run:

- ``full``: ``F.linear`` then ``F.cross_entropy(logits.float())`` over all the logits, what ``LlamaForCausalLM(labels=)``
  does (transformers upcasts the whole logits tensor to fp32);
- ``full_compiled``: the same compiled with ``torch.compile``, as in a bare compiled training loop (the compiler
  fuses the upcast into the cross-entropy);
- ``checkpointed``: chunks of ``--chunk-tokens`` under activation checkpointing, recomputing each chunk's logits in
  backward (lumi's loss before it switched to the next two);
- ``fused``: ``lumi.lm.linear_cross_entropy`` -- chunks whose gradients are computed in the forward pass, eager;
- ``fused_compiled``: the same with its chunk math compiled (what the trainer runs with ``compile: true``).

Each variant runs ``--warmup`` untimed iterations (compilation) and ``--iters`` timed ones. Peak memory is the growth
over what was live before the timed iterations: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``), a coarser figure that includes allocator
slack. Ratios are against ``full_compiled``. On CUDA the matmuls run under bf16 autocast, on CPU in fp32 (the
trainer's precision on each).

    .venv/bin/python benchmarks/bench_loss_path.py                         # CPU: 8,192 tokens x 256 wide x 32k vocab
    .venv/bin/python benchmarks/bench_loss_path.py --device cuda --tokens 32768   # tiny's micro batch 32 x 1024
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from lumi.lm.linear_cross_entropy import DEFAULT_CHUNK_TOKENS, linear_cross_entropy  # noqa: E402

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def full_logits(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def checkpointed_chunks(chunk_tokens: int) -> Loss:
    def loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, targets.numel(), chunk_tokens):
            piece = slice(start, start + chunk_tokens)
            total = total + checkpoint(full_logits, hidden[piece], weight, targets[piece], use_reentrant=False)
        return total
    return loss


def variants(chunk_tokens: int) -> dict[str, Loss]:
    return {"full": full_logits,
            "full_compiled": torch.compile(full_logits),
            "checkpointed": checkpointed_chunks(chunk_tokens),
            "fused": lambda h, w, t: linear_cross_entropy(h, w, t, chunk_tokens=chunk_tokens),
            "fused_compiled": lambda h, w, t: linear_cross_entropy(h, w, t, chunk_tokens=chunk_tokens,
                                                                   compiled=True)}


def live_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status_kib("VmRSS") * 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_kib("VmHWM") * 1024


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(loss: Loss, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, device: torch.device,
            warmup: int, iters: int) -> dict[str, float]:
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> float:
        hidden.grad = weight.grad = None
        with autocast:
            value = loss(hidden, weight, targets)
        value.backward()
        return float(value.detach())

    for _ in range(warmup):
        step()
    hidden.grad = weight.grad = None
    gc.collect()
    synchronize(device)
    before = live_bytes(device)
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(iters):
        value = step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    return {"ms": seconds * 1e3, "peak_gib": (peak_bytes(device) - before) / 2**30, "loss": value / targets.numel()}


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else float("nan")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192, help="scored positions (micro batch x seq len)")
    parser.add_argument("--hidden", type=int, default=256, help="model width (tiny: 256, small: 512, base: 768)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS)
    parser.add_argument("--variants", nargs="+", default=["full", "full_compiled", "checkpointed", "fused",
                                                           "fused_compiled"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=generator).to(device).requires_grad_()
    weight = (0.02 * torch.randn(args.vocab, args.hidden, generator=generator)).to(device).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=generator).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    logits_gib = args.tokens * args.vocab * 4 / 2**30
    print(f"device {name}, torch {torch.__version__}: {args.tokens:,} tokens x {args.hidden} wide x "
          f"{args.vocab:,} vocab (fp32 logits {logits_gib:.2f} GiB), chunks of {args.chunk_tokens:,}, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}", flush=True)
    losses = variants(args.chunk_tokens)
    results = {}
    for variant in args.variants:
        try:
            results[variant] = measure(losses[variant], hidden, weight, targets, device, args.warmup, args.iters)
        except Exception as error:  # one broken variant must not cost the rest of a scarce GPU slot
            print(f"{variant:>15}: FAILED {type(error).__name__}: {error}"[:2000], flush=True)
    baseline = results.get("full_compiled")
    for variant, result in results.items():
        ratios = (f"  time x{ratio(result['ms'], baseline['ms']):.2f}  "
                  f"memory x{ratio(result['peak_gib'], baseline['peak_gib']):.2f} vs full_compiled") if baseline else ""
        print(f"{variant:>15}: {result['ms']:9.1f} ms/iter  peak +{result['peak_gib']:6.3f} GiB  "
              f"loss {result['loss']:.4f}{ratios}", flush=True)
    if args.json:
        settings = {key: value for key, value in vars(args).items() if key not in ("json", "device")}
        args.json.write_text(json.dumps({"device": name, **settings, "results": results}, indent=2))


if __name__ == "__main__":
    main()
