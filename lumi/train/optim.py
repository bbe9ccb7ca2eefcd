"""The optimizers (AdamW, or Muon for hidden matrices with AdamW for the rest) and the learning-rate schedules.

Weight decay pulls weights towards zero; on RMSNorm gains (which should stay near 1) and on embedding rows (most of
which are rare tokens that receive few gradient updates and would simply be shrunk away) it only does harm, so they
go in a group without decay. A tied output head is the embedding matrix itself, so it is not decayed either.

Muon (``optimizer: "muon"``) orthogonalises the momentum of each hidden 2-D weight matrix (attention and MLP
projections) before applying it, so every direction of the matrix moves at the same rate; embeddings, the output head
and norms are not such matrices (a row per token, a vector) and stay on AdamW, as in nanochat and Moonshot's
recipe. Muon uses ``adjust_lr_fn="match_rms_adamw"`` (update RMS scaled to AdamW's), so ``muon_lr`` lives on AdamW's
scale and carries across widths without a per-width rule.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lumi.train.config import TrainerConfig


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Two AdamW groups: matrices of linear layers (decayed) and everything else (norms, embeddings: not decayed
    unless ``decay_all``)."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for param in model.parameters():  # yields each shared (tied) parameter once
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and id(param) not in embedding_params else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": weight_decay if decay_all else 0.0}]


def muon_split(model: nn.Module, weight_decay: float, decay_all: bool = False) -> tuple[list[dict], list[dict]]:
    """(Muon groups, AdamW groups): the hidden 2-D matrices to Muon; an untied output head (decayed), norms and
    embeddings (not decayed) to AdamW. Empty groups are left out."""
    head_params = {id(p) for p in model.get_output_embeddings().parameters()}
    decay, no_decay = parameter_groups(model, weight_decay, decay_all)
    matrices = [p for p in decay["params"] if id(p) not in head_params and p.ndim == 2]
    adamw_decay = [p for p in decay["params"] if id(p) in head_params or p.ndim != 2]
    groups = [{"params": adamw_decay, "weight_decay": weight_decay}, no_decay]
    return [{"params": matrices, "weight_decay": weight_decay}], [g for g in groups if g["params"]]


class MuonAdamW(torch.optim.Optimizer):
    """Muon and AdamW seen as one optimizer, so the scheduler, the step and checkpoints handle a single object.

    ``param_groups`` are the two optimizers' own group dicts (AdamW's first, so ``param_groups[0]`` is the ``lr``
    the logs report), so a scheduler writing a group's ``lr`` reaches the optimizer that owns it; each group keeps
    its own peak lr (``initial_lr``) and the schedule scales them all alike. ``super().__init__`` is not called: it
    would copy the groups instead of sharing them."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        self.defaults: dict = {}
        self._share_groups()

    def _share_groups(self) -> None:
        self.param_groups = self.adamw.param_groups + self.muon.param_groups

    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("MuonAdamW takes no closure")
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none)
        self.muon.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        self._share_groups()  # loading replaced the two optimizers' group dicts


def build_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    on_cuda = next(model.parameters()).is_cuda
    adamw_settings = {"lr": config.lr, "betas": (config.adam_beta1, config.adam_beta2), "eps": config.adam_eps,
                      "fused": on_cuda or None}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameter_groups(model, config.weight_decay, config.decay_embeddings_and_norms),
                                 **adamw_settings)
    muon_groups, adamw_groups = muon_split(model, config.weight_decay, config.decay_embeddings_and_norms)
    muon = torch.optim.Muon(muon_groups, lr=config.muon_lr or config.lr, momentum=config.muon_momentum,
                            adjust_lr_fn="match_rms_adamw")
    return MuonAdamW(muon, torch.optim.AdamW(adamw_groups, **adamw_settings))


def warmup_steps(config: TrainerConfig, total_steps: int) -> int:
    """The warmup a run of ``total_steps`` gets: ``warmup_steps`` scaled down to at most ``warmup_max_fraction`` of
    the steps (a schedule written for thousands of steps must not leave a 5-step run below its peak lr)."""
    return min(config.warmup_steps, int(total_steps * config.warmup_max_fraction))


def schedule_notes(config: TrainerConfig, total_steps: int) -> list[str]:
    """What the run should be told about its schedule: a capped warmup, a peak lr reached only at the end."""
    warmup, notes = warmup_steps(config, total_steps), []
    if warmup < config.warmup_steps:
        notes.append(f"warmup: {warmup} steps instead of warmup_steps={config.warmup_steps} (at most "
                     f"warmup_max_fraction={config.warmup_max_fraction:g} of this run's {total_steps} steps)")
    if total_steps > 1 and warmup >= total_steps:
        notes.append(f"the learning rate reaches its peak {config.lr:g} only at the last step: the warmup ({warmup} "
                     f"steps) lasts the whole run; lower warmup_steps or warmup_max_fraction")
    return notes


def lr_at(step: int, config: TrainerConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Linear warmup from lr/warmup to lr over ``warmup_steps(config, total_steps)``, then
    cosine: half a cosine from lr down to min_lr at the last step;
    wsd (warmup-stable-decay): lr until the last ``wsd_decay_fraction`` of the steps, then linear down to min_lr;
    constant: lr.
    """
    warmup = warmup_steps(config, total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        span = max(total_steps - 1 - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(round(total_steps * config.wsd_decay_fraction), 1)
    decay_start = max(total_steps - decay_steps, warmup)
    if step < decay_start:
        return config.lr
    progress = min((step - decay_start + 1) / max(total_steps - decay_start, 1), 1.0)
    return config.lr + (config.min_lr - config.lr) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainerConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR over ``lr_at`` (its step count is saved in checkpoints; the schedule itself is rebuilt from the
    config on resume). It scales every group's own peak lr by ``lr_at / lr``, so Muon's ``muon_lr`` follows the
    same warmup and decay as AdamW's ``lr``."""
    return LambdaLR(optimizer, lambda step: lr_at(step, config, total_steps) / config.lr)
