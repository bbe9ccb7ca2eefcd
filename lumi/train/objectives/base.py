"""What the trainer loop (``lumi.train.trainer.Trainer``) asks of a stage: its objective.

The loop owns resume, the run dir, signals, the wait-free step, the non-finite stop, the log/eval/save cadence,
checkpoint rotation, metrics and the out-of-memory advice; an objective owns its data, its model and loss, what its
checkpoint holds and how it is loaded, and its evaluation. Pretraining (``objectives/pretrain.py``) is one; SFT and
DPO are the next ones, with no change to the loop. docs/ARCHITECTURE.md shows how a stage puts the two together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from transformers import PreTrainedModel

Batch = Any  # a tensor or a mapping of tensors (CPU), as the objective's loss module takes it


class Objective(Protocol):
    name: str  # the progress bar's label ("pretrain")
    config_file: str  # the resolved settings file inside each checkpoint ("pretrain_config.json")
    run_name: str  # the run dir's name under --output-dir when the config names none
    total_steps: int  # optimizer steps of the whole run
    resolved: dict[str, Any]  # what a resume must match; resolved["config"] is the config as a dict

    def build_model(self, checkpoint: Path | None) -> PreTrainedModel:
        """A fresh model (or the stage's base model) when ``checkpoint`` is None, else the one that checkpoint
        holds (written by ``save_model``); float32, on the CPU."""

    def loss_module(self, model: PreTrainedModel, compile: bool) -> nn.Module:
        """The module DDP/FSDP2 wrap: ``.model`` is ``model``; ``forward(batch, training)`` returns the summed loss
        (0-dim tensor) of a batch already on the device."""

    def count(self, batch: Batch) -> torch.Tensor:
        """What the summed loss is averaged over (scored tokens; pairs for DPO), as a device tensor: never read on
        the host, so the step does not wait for the device."""

    def next_step(self) -> list[Batch]:
        """This process's micro-batches for the next optimizer step, on the CPU."""

    def step_tokens(self, micro_batches: list[Batch]) -> int:
        """Tokens one optimizer step processed over all processes (throughput, MFU, tokens seen), from host data."""

    def evaluate(self, score: Callable[[Batch], torch.Tensor]) -> dict[str, float]:
        """Metrics to log at an evaluation; ``score(cpu_batch)`` is the summed loss through the wrapped module in
        eval mode, no grad (every process calls this; rank 0 logs it)."""

    def save_model(self, directory: Path, model: PreTrainedModel, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Write the loadable model into a checkpoint's staging dir (``state_dict``: whole weights under FSDP2)."""

    def state_dict(self) -> dict[str, Any]:
        """The data position, stored in the trainer state under "data"."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def describe(self) -> list[str]:
        """Lines logged when training starts."""

    def summary(self) -> str:
        """What the final line says after "trained N steps (T tokens; ...)"."""

    def flops_per_token(self) -> int | None:
        """Training FLOPs per token for MFU (None: no MFU)."""

    # Optional: ``interval_metrics() -> dict[str, float]``, objective-specific training metrics merged into each
    # log line (DPO: rewards, margins, reward accuracy since the previous line).

    def batch_shape(self) -> str:
        """How a micro-batch is sized, named in the out-of-memory advice ("micro_batch_size=8 x seq_len=512 (tiny)")."""

    def oom_advice(self) -> str:
        """What this stage's data lets one lower on running out of memory, beside the loop's own advice (micro-batch
        size, activation checkpointing, FSDP2, a smaller model): "re-pack the data with a shorter seq_len"."""
