"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedules.

Weight decay pulls weights towards zero; on RMSNorm gains (which should stay near 1) and on embedding rows (most of
which are rare tokens that receive few gradient updates and would simply be shrunk away) it only does harm, so they
go in a group without decay. A tied output head is the embedding matrix itself, so it is not decayed either.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lumi.train.config import TrainerConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices of linear layers (decayed) and everything else (norms, embeddings, no decay)."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for param in model.parameters():  # yields each shared (tied) parameter once
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and id(param) not in embedding_params else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.AdamW:
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
                             fused=on_cuda or None)


def lr_at(step: int, config: TrainerConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Linear warmup from lr/warmup to lr over ``warmup_steps``, then
    cosine: half a cosine from lr down to min_lr at the last step;
    wsd (warmup-stable-decay): lr until the last ``wsd_decay_fraction`` of the steps, then linear down to min_lr;
    constant: lr.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        span = max(total_steps - 1 - config.warmup_steps, 1)
        progress = min((step - config.warmup_steps) / span, 1.0)
        return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(round(total_steps * config.wsd_decay_fraction), 1)
    decay_start = max(total_steps - decay_steps, config.warmup_steps)
    if step < decay_start:
        return config.lr
    progress = min((step - decay_start + 1) / max(total_steps - decay_start, 1), 1.0)
    return config.lr + (config.min_lr - config.lr) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainerConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR over ``lr_at`` (its step count is saved in checkpoints; the schedule itself is rebuilt from the
    config on resume)."""
    return LambdaLR(optimizer, lambda step: lr_at(step, config, total_steps) / config.lr)
