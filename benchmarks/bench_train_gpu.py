"""Benchmark stage 40 on one GPU: tokens/s, MFU and peak memory of our training step against a bare compiled loop.

For each architecture (tiny, small, base; 32k vocab, 1024-token rows, bf16 autocast, fused AdamW, gradient clipping
at 1.0, ``torch.compile``), on the same rows in the same run:

(a) ``bare``: a minimal hand-written LLaMA (nanoGPT style, defined below: RMSNorm, RoPE, grouped-query
    ``scaled_dot_product_attention(is_causal=True)``, SwiGLU, untied head), the whole forward and
    ``F.cross_entropy`` on the full logits compiled as one function -- the issue's "bare compiled loop";
(b) ``hf``: transformers' ``LlamaForCausalLM`` (the model we train), compiled, with its own ``model(labels=...)``
    loss (which upcasts the full logits to fp32);
(c) ``lumi``: our trainer's step, ``lumi.train.step.TrainStep`` (what ``Trainer.train_step`` runs): the
    compiled backbone, the loss from hidden states (``lumi.lm.linear_cross_entropy``: chunks whose gradients are
    computed in the forward pass, chunk math compiled), document masking (block-diagonal attention over the packed
    documents, as in training), the scored-token normalisation, clipping, AdamW and the LR schedule;
and, only when named in ``--variants``, two what-ifs for the attention:
(d) ``lumi_causal``: (c) with ``document_masking: false`` (plain causal attention, as (a) and (b) compute), which
    separates the cost of document masking from the rest (sdpa cannot use its flash kernel with a document mask);
(e) ``lumi_flex``: (c) with ``attn_implementation: flex_attention``, where the document mask is a block-sparse
    ``BlockMask`` instead of a dense one.

For the ``lumi`` variants on CUDA one more step runs under ``torch.cuda.set_sync_debug_mode("error")``: the trainer's
step must never make the host wait for the device (it reads a step's loss only after queueing the next one).

Rows hold documents of random length (BOS ... EOS) of random tokens; (a) and (b) see them as plain causal text.
MFU = ``lumi.model.flops_per_token`` (PaLM convention) x tok/s / the device's dense bf16 peak. Each variant runs
``--warmup`` untimed steps (compilation) then ``--steps`` timed ones; peak memory is ``max_memory_allocated`` over
both. Ratios are against (a). Target: (c) >= 1.0x of (a) in tok/s, and (c)'s peak memory <= (a)'s.

    .venv/bin/python benchmarks/bench_train_gpu.py                      # all three models (meant for < 8 min)
    .venv/bin/python benchmarks/bench_train_gpu.py --models tiny --steps 50
    .venv/bin/python benchmarks/bench_train_gpu.py --device cpu --tiny-smoke   # the code path, on CPU, in seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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
from torch import nn  # noqa: E402

from lumi.core.special_tokens import BOS_ID, EOS_ID, SPECIAL_IDS  # noqa: E402
from lumi.model import ArchitectureConfig, build_model, flops_per_token, load_architecture  # noqa: E402
from lumi.train.metrics import peak_flops  # noqa: E402
from lumi.train.objectives.pretrain import PackedLMLoss, PretrainConfig, scored_tokens  # noqa: E402
from lumi.train.step import TrainStep  # noqa: E402

VOCAB = 32000
MICRO_BATCH = {"tiny": 32, "small": 32, "base": 16}  # the shipped chinchilla_*.json configs' micro_batch_size
SMOKE = {"name": "smoke", "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
         "intermediate_size": 128, "max_seq_len": 64, "rope_theta": 10000.0, "tie_embeddings": False,
         "dropout": 0.0, "init_std": 0.02, "rms_norm_eps": 1e-5}
VARIANTS = ("bare", "hf", "lumi", "lumi_causal", "lumi_flex")


# --- (a) the bare model ------------------------------------------------------------------------------------------

class BareBlock(nn.Module):
    def __init__(self, arch: ArchitectureConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = arch.num_heads, arch.num_kv_heads, arch.head_dim
        self.attn_norm = nn.RMSNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.qkv = nn.Linear(arch.hidden_size, (arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim, bias=False)
        self.out = nn.Linear(arch.hidden_size, arch.hidden_size, bias=False)
        self.mlp_norm = nn.RMSNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.gate_up = nn.Linear(arch.hidden_size, 2 * arch.intermediate_size, bias=False)
        self.down = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=False)

    @staticmethod
    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-second, first), dim=-1) * sin

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1)
        q = self.rope(q.view(batch, length, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = self.rope(k.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        x = x + self.out(attention.transpose(1, 2).reshape(batch, length, -1))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class BareLlama(nn.Module):
    """The same shapes and parameter count as ``build_model(arch)`` (fused q/k/v and gate/up projections)."""

    def __init__(self, arch: ArchitectureConfig):
        super().__init__()
        self.embed = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.blocks = nn.ModuleList(BareBlock(arch) for _ in range(arch.num_layers))
        self.norm = nn.RMSNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        if arch.tie_embeddings:
            self.head.weight = self.embed.weight
        inverse = 1.0 / arch.rope_theta ** (torch.arange(0, arch.head_dim, 2).float() / arch.head_dim)
        angles = torch.outer(torch.arange(arch.max_seq_len).float(), inverse).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=arch.init_std)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        length = inputs.shape[1]
        x = self.embed(inputs)
        for block in self.blocks:
            x = block(x, self.cos[:length], self.sin[:length])
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


# --- the three training steps ------------------------------------------------------------------------------------

Step = Callable[[torch.Tensor], None]


def shifted_targets(rows: torch.Tensor) -> torch.Tensor:
    """Next-token targets for every position; the last has none (ignored)."""
    return torch.cat([rows[:, 1:], torch.full_like(rows[:, :1], -100)], dim=1)


def manual_step(model: nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> Step:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda" or None)

    def step(rows: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of(rows.to(device, non_blocking=True))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bare_step(arch: ArchitectureConfig, device: torch.device, compile_model: bool) -> Step:
    model = BareLlama(arch).to(device).train()
    forward = torch.compile(model) if compile_model else model
    return manual_step(model, lambda rows: forward(rows, shifted_targets(rows)), device)


def hf_step(arch: ArchitectureConfig, device: torch.device, compile_model: bool) -> Step:
    model = build_model(arch).to(device).train()
    if compile_model:
        model.compile()
    return manual_step(model, lambda rows: model(input_ids=rows, labels=rows, use_cache=False).loss, device)


def lumi_step(arch: ArchitectureConfig, device: torch.device, compile_model: bool, document_masking: bool = True,
              attn_implementation: str = "sdpa") -> Step:
    config = PretrainConfig(model=str(arch.name), max_steps=10_000, micro_batch_size=1, lr=3e-4, warmup_steps=10,
                            precision="bf16", compile=compile_model, document_masking=document_masking,
                            attn_implementation=attn_implementation)
    model = build_model(arch, attn_implementation).to(device).train()
    train_step = TrainStep(PackedLMLoss(model, document_masking, compile_chunks=compile_model), scored_tokens, config,
                           config.max_steps, device)

    return lambda rows: train_step.step([rows])


BUILDERS = {"bare": bare_step, "hf": hf_step, "lumi": lumi_step,
            "lumi_causal": lambda *args: lumi_step(*args, document_masking=False),
            "lumi_flex": lambda *args: lumi_step(*args, attn_implementation="flex_attention")}


# --- measurement -------------------------------------------------------------------------------------------------

def packed_rows(count: int, micro: int, seq_len: int, vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` CPU batches of packed rows: BOS doc EOS BOS doc EOS ..., documents of 50..2x seq_len tokens."""
    generator = torch.Generator().manual_seed(seed)
    total = count * micro * seq_len
    stream = torch.randint(len(SPECIAL_IDS), vocab, (total,), generator=generator)
    position = 0
    while position < total:
        stream[position] = BOS_ID
        position += int(torch.randint(50, 2 * seq_len, (1,), generator=generator))
        if position - 1 < total:
            stream[position - 1] = EOS_ID
    return list(stream.view(count, micro, seq_len))


def measure(variant: str, arch: ArchitectureConfig, batches: list[torch.Tensor], device: torch.device,
            warmup: int, steps: int, compile_model: bool) -> dict[str, float]:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    step = BUILDERS[variant](arch, device, compile_model)
    for index in range(warmup):
        step(batches[index % len(batches)])
    synchronize(device)
    start = time.perf_counter()
    for index in range(steps):
        step(batches[index % len(batches)])
    synchronize(device)
    seconds = time.perf_counter() - start
    host_syncs = check_host_syncs(step, batches[0]) if variant.startswith("lumi") and device.type == "cuda" else ""
    tokens_per_s = steps * batches[0].numel() / seconds
    peak = peak_flops(device)
    result = {"tok_per_s": tokens_per_s,
              "mfu": flops_per_token(arch, batches[0].shape[1]) * tokens_per_s / peak if peak else math.nan,
              "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan,
              "host_syncs": host_syncs}
    del step
    return result


def check_host_syncs(step: Step, rows: torch.Tensor) -> str:
    """Run one more step with CUDA's sync debug mode set to error: "none" when nothing in it made the host wait for
    the device (which would leave the GPU idle while the host queues the next step), else the first offender."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(rows)
        return "none"
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small", "base"], help="architectures to run")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS[:3]), choices=VARIANTS,
                        help="what to time, in order; bare first for the ratios (default: bare hf lumi)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps (compilation happens here)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager everywhere")
    parser.add_argument("--tiny-smoke", action="store_true",
                        help="check the code path: a 2-layer 64-wide model, 64-token rows, 2 + 3 steps")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train_gpu: no CUDA GPU here (torch.cuda.is_available() is False). Run it on a GPU "
                         "machine, or check the code path with --device cpu --tiny-smoke.")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    if args.tiny_smoke:
        models = {"smoke": ArchitectureConfig(**SMOKE)}
        micro, seq_len, args.warmup, args.steps = {"smoke": 4}, SMOKE["max_seq_len"], 2, 3
    else:
        models = {name: load_architecture(name, vocab_size=VOCAB) for name in args.models}
        micro, seq_len = MICRO_BATCH, args.seq_len
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, seq_len {seq_len}, bf16 autocast, AdamW (fused on CUDA), "
          f"compile {args.compile}, {args.warmup} warm-up + {args.steps} timed steps per variant", flush=True)
    results = []
    for model_name, arch in models.items():
        batches = packed_rows(4, micro.get(model_name, 16), seq_len, arch.vocab_size)
        baseline = None
        for variant in args.variants:
            try:
                result = measure(variant, arch, batches, device, args.warmup, args.steps, args.compile)
            except Exception as error:  # one broken variant must not cost the rest of a scarce GPU slot
                print(f"{model_name:>6} {variant:>16}: FAILED {type(error).__name__}: {error}"[:2000], flush=True)
                results.append({"model": model_name, "variant": variant, "error": f"{type(error).__name__}: {error}"})
                continue
            baseline = baseline or (result if variant == "bare" else None)
            ratio = result["tok_per_s"] / baseline["tok_per_s"] if baseline else math.nan
            memory = result["peak_mem_gib"] / baseline["peak_mem_gib"] if baseline else math.nan
            results.append({"model": model_name, "variant": variant, "micro_batch": batches[0].shape[0],
                            **result, "speed_vs_bare": ratio, "memory_vs_bare": memory})
            print(f"{model_name:>6} {variant:>16}: {result['tok_per_s']:>12,.0f} tok/s  MFU {result['mfu']:6.1%}  "
                  f"peak {result['peak_mem_gib']:6.2f} GiB  speed x{ratio:.2f}  memory x{memory:.2f} vs bare"
                  + (f"  host syncs in a step: {result['host_syncs']}" if result["host_syncs"] else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "seq_len": seq_len, "results": results}, indent=2))


if __name__ == "__main__":
    main()
