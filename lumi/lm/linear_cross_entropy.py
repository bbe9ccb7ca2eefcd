"""Output projection + cross-entropy over chunks of tokens, with the gradients computed during the forward pass.

Why hand-written: with a 32k vocabulary the logits are the largest tensor of a small model's step (tiny at micro
batch 32 x 1024: 1.05G logits, 4.2 GB in fp32). ``model(labels=...)`` in transformers materialises them and upcasts
them to fp32; recomputing them chunk by chunk under activation checkpointing saves the memory but runs the output
projection (over half of tiny's FLOPs) one extra time. Here each chunk of ``chunk_tokens`` positions computes its
logits once, turns them straight into the loss and into ``softmax - onehot``, and multiplies that back into the
gradients of the hidden states and of the output weight; only those two gradients (no logits) are kept for the
backward pass, which just scales them. So the FLOPs are the ones of a plain forward + backward and at most one chunk
of logits is alive at a time. This is the "fused linear cross-entropy" of liger-kernel and of Apple's Cut Cross
Entropy, written in plain torch: liger's Triton kernels did not run under ``torch.compile`` when tried, while this
chunk function compiles (``compiled=True``) so the fp32 upcast, log-sum-exp and ``softmax - onehot`` fuse into a
few kernels over the chunk.

The matmuls run in the autocast dtype (bf16 on GPU), the softmax in fp32, and the output weight's gradient is
accumulated over chunks in fp32 and handed back in the weight's own dtype.
"""

from __future__ import annotations

import functools

import torch

DEFAULT_CHUNK_TOKENS = 4096
IGNORE_INDEX = -100  # a target that is not scored (as in F.cross_entropy and transformers)


def chunk_nll_and_grads(hidden: torch.Tensor, weight: torch.Tensor,
                        targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed nats, d nats / d hidden, d nats / d weight) of one chunk: ``hidden`` (n, d), ``weight`` (V, d),
    ``targets`` (n,), where ``IGNORE_INDEX`` targets add nothing."""
    scored = (targets != IGNORE_INDEX)[:, None]
    index = targets.clamp(min=0)[:, None]
    logits = (hidden @ weight.T).float()
    log_normalizer = logits.logsumexp(dim=-1, keepdim=True)
    nats = torch.where(scored, log_normalizer - logits.gather(-1, index), 0.0).sum()
    # In place, so eager mode holds two chunk-sized tensors at most (the compiler fuses these anyway).
    grad_logits = logits.sub_(log_normalizer).exp_()  # softmax
    grad_logits.scatter_add_(-1, index, torch.full_like(grad_logits[:, :1], -1.0)).masked_fill_(~scored, 0.0)
    grad_logits = grad_logits.to(hidden.dtype)
    return nats, grad_logits @ weight, grad_logits.T @ hidden


@functools.cache
def compiled_chunk_nll_and_grads():
    """``chunk_nll_and_grads`` compiled once per process: specialised to the chunk shape first (every full chunk has
    it), recompiled for any size once a shorter last chunk shows up."""
    return torch.compile(chunk_nll_and_grads)


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunks compute the loss and both gradients in the forward pass; backward only scales what they kept."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                compute_dtype: torch.dtype, compiled: bool) -> torch.Tensor:
        chunk = compiled_chunk_nll_and_grads() if compiled else chunk_nll_and_grads
        hidden_in, weight_in = hidden.to(compute_dtype), weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden_in)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, targets.numel(), chunk_tokens):
            piece = slice(start, start + chunk_tokens)
            nats, chunk_grad_hidden, chunk_grad_weight = chunk(hidden_in[piece], weight_in, targets[piece])
            total += nats
            grad_hidden[piece] = chunk_grad_hidden
            grad_weight += chunk_grad_weight
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return ((grad_hidden * grad_total).to(ctx.hidden_dtype), (grad_weight * grad_total).to(ctx.weight_dtype),
                None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.LongTensor, *,
                         chunk_tokens: int = DEFAULT_CHUNK_TOKENS, compiled: bool = False) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32 nats) of ``hidden @ weight.T`` against ``targets``.

    ``hidden`` (n, d) and ``targets`` (n,) are flattened positions, ``IGNORE_INDEX`` where nothing is scored;
    ``weight`` is the (V, d) output embedding.
    Under autocast the matmuls run in the autocast dtype, as ``F.linear`` would; the gradients come back in the
    inputs' own dtypes. Without grad the chunks only compute the loss.
    """
    device_type = hidden.device.type
    autocast = torch.is_autocast_enabled(device_type)
    compute_dtype = torch.get_autocast_dtype(device_type) if autocast else hidden.dtype
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, compute_dtype, compiled)
        hidden, weight = hidden.to(compute_dtype), weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.numel(), chunk_tokens):
            piece = slice(start, start + chunk_tokens)
            logits = (hidden[piece] @ weight.T).float()
            total += torch.nn.functional.cross_entropy(logits, targets[piece], ignore_index=IGNORE_INDEX,
                                                       reduction="sum")
        return total
