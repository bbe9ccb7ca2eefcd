"""GRPO math (stage 97): group-relative advantages and the clipped policy-gradient loss with its normalisations.

A prompt's G sampled completions form a group; a completion's advantage is its reward minus the group's mean reward,
divided by the group's standard deviation (``scale_rewards="group"``, the GRPO paper, Shao et al. 2024), by the
batch's (``"batch"``) or by nothing (``"none"``, Dr. GRPO, Liu et al. 2025). A group whose rewards are all equal has
advantage 0 everywhere: it carries no signal, and is counted (``zero_signal``).

The per-token loss is PPO's clipped surrogate ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` with ``r`` the
ratio of the policy to the old (rollout) policy, plus ``beta`` x the k3 estimate of KL(policy || reference)
``exp(ref - logp) - (ref - logp) - 1`` when ``beta > 0``, times the ratio ``r`` (``kl_ratio_correction``, TRL's
``use_bias_correction_kl``, default on): the completions were sampled from the old policy, so the estimate of KL under
the current one is importance-weighted (a no-op while ``r`` is 1). Three normalisations turn it into a scalar:

* ``grpo`` (the GRPO paper): each completion's mean over its tokens, then the mean over completions;
* ``dapo`` (DAPO, Yu et al. 2025; TRL's default ``loss_type``): the sum over every completion token of the batch
  divided by their number, so long completions weigh by their length;
* ``dr_grpo`` (Dr. GRPO): the sum over tokens divided by completions x ``max_completion_length`` (a constant), so
  neither the length bias of ``grpo`` nor a batch-dependent denominator.

The formulas are TRL's ``GRPOTrainer._compute_loss`` (trl 1.16, token-level importance sampling), which
``tests/test_grpo_loss.py`` uses as the oracle. Each loss is returned as a (summed loss, count) pair, so the shared
trainer's step loss ``sum of sums / sum of counts`` over micro-batches and processes is the normalisation of the whole
step's batch, whatever its split.
"""

from __future__ import annotations

from typing import Literal

import torch

LossType = Literal["grpo", "dapo", "dr_grpo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "dapo", "dr_grpo")
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
STD_EPSILON = 1e-4  # added to the standard deviation before dividing (TRL's value)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages per completion, zero_signal per group) for ``rewards`` of consecutive groups of ``group_size``.
    The standard deviation is the unbiased one (TRL's ``nanstd``); ``zero_signal`` marks the groups whose rewards
    are all equal."""
    if scale not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale!r}; expected one of {', '.join(SCALE_REWARDS)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"rewards ({rewards.numel()}) must be whole groups of at least 2 (group_size {group_size})")
    grouped = rewards.float().view(-1, group_size)
    group_std = grouped.std(dim=1)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (group_std[:, None] + STD_EPSILON)
    elif scale == "batch":
        advantages = advantages / (rewards.float().std() + STD_EPSILON)
    zero_signal = torch.isclose(group_std, torch.zeros_like(group_std))
    return advantages.reshape(-1), zero_signal


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              loss_type: str = "dapo", epsilon_low: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None, max_completion_length: int | None = None,
              kl_ratio_correction: bool = True) -> dict[str, torch.Tensor]:
    """The loss of a batch of completions as ``{"loss": summed loss, "count": what the sum is averaged over}`` plus
    summed statistics: ``tokens`` (completion tokens), ``kl`` (summed per-token KL; 0 without a reference),
    ``clipped`` (tokens whose ratio was clipped: low with A < 0, high with A > 0).

    ``logps``, ``old_logps``, ``ref_logps`` and ``mask`` are (rows, positions): per-token log-probabilities of the
    completion tokens and 1 where a position scores a completion token. ``advantages`` is (rows,). ``kl`` is the
    estimate the loss uses (ratio-weighted under ``kl_ratio_correction``)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown GRPO loss type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    advantages = advantages[:, None].to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)
    kl = torch.zeros_like(per_token)
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        if kl_ratio_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    rows = torch.ones_like(mask[:, 0]).sum()
    if loss_type == "grpo":
        loss, count = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum(), rows
    elif loss_type == "dapo":
        loss, count = (per_token * mask).sum(), mask.sum()
    else:
        if max_completion_length is None:
            raise ValueError("the dr_grpo loss needs max_completion_length")
        loss, count = (per_token * mask).sum(), rows * max_completion_length
    clipped = ((ratio < 1 - epsilon_low) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    return {"loss": loss, "count": count, "tokens": mask.sum().detach(), "kl": (kl * mask).sum().detach(),
            "clipped": (clipped.to(mask.dtype) * mask).sum().detach()}
