"""One optimizer step of any objective, the hot path: forward, loss, backward, clipping, the optimizer (AdamW, or
Muon + AdamW: ``lumi.train.optim``) and the schedule,
queued on the device without ever waiting for it.

A bare training loop never reads its loss back, so the GPU never idles while Python prepares the next step. This
step keeps that property: the count the loss is averaged over (scored tokens for pretraining) is computed on the
device, unscored positions are ignored rather than removed (``lumi.lm.loss.summed_nats``: no shape depends on the
data), batches go up through pinned memory,
and the step's loss and gradient norm reach the host in a ``StepResult`` that the trainer reads once the next step is
queued. ``benchmarks/bench_train_gpu.py`` times ``TrainStep.step`` against a bare compiled loop and checks it under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from lumi.train.config import TrainerConfig
from lumi.train.distributed import all_reduce_sum, clip_grad_norm, gradient_sync, wrap_for_training
from lumi.train.optim import build_optimizer, build_scheduler


class StepResult:
    """A step's (loss, grad norm), copied to the host behind the step's own work: reading them waits for that step
    only, not for steps queued after it (a plain ``.item()`` would wait for the whole queue)."""

    def __init__(self, loss: torch.Tensor, grad_norm: torch.Tensor):
        values = torch.stack([loss.detach().float(), grad_norm.detach().float()])
        self._ready = None
        if values.device.type == "cuda":
            self._values = torch.empty(2, pin_memory=True)
            self._values.copy_(values, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._values = values

    def read(self) -> tuple[float, float]:
        if self._ready is not None:
            self._ready.synchronize()
        loss, grad_norm = self._values.tolist()
        return loss, grad_norm


Batch = Any  # a tensor or a mapping of tensors: whatever the objective's loss module takes


class TrainStep:
    """The hot path of one optimizer step: forward, loss and backward over this process's micro-batches, gradient
    clipping, the optimizer and the learning-rate schedule, on one process or wrapped for many
    (``lumi.train.distributed``).
    ``loss_module`` is the objective's (``forward(batch, training)`` -> summed loss, ``.model`` the causal LM) and
    ``count(batch)`` the device count that summed loss is averaged over. ``benchmarks/bench_train_gpu.py`` times
    exactly this object against a bare training loop."""

    def __init__(self, loss_module: nn.Module, count: Callable[[Batch], torch.Tensor], config: TrainerConfig,
                 total_steps: int, device: torch.device, world_size: int = 1):
        model = loss_module.model
        self.model, self.count, self.config, self.device, self.world_size = model, count, config, device, world_size
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        if config.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.module = wrap_for_training(loss_module, config.distributed, config.compile)
        self.optimizer = build_optimizer(model, config)  # after wrapping: FSDP2 replaces the parameters
        self.scheduler = build_scheduler(self.optimizer, config, total_steps)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, batch: Batch) -> Batch:
        """A CPU batch (tensor or mapping of tensors) on the device; on CUDA through pinned memory, so the copy does
        not wait for queued work."""
        if isinstance(batch, Mapping):
            return {key: self.to_device(value) for key, value in batch.items()}
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def forward(self, batch: Batch, training: bool) -> torch.Tensor:
        """The objective's summed loss over one batch already on the device, through the wrapped module (with grad
        unless disabled)."""
        with self.autocast():
            return self.module(batch, training)

    def backward(self, micro_batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate the gradient of one step's loss, the exact mean over every counted unit (scored token, pair)
        of the global batch;
        returns that loss and the global gradient norm before clipping, as device tensors. Nothing here waits for
        the device (no value is read back, no shape depends on the data), so the host queues the next step while
        this one runs, as a bare training loop does. Gradients are clipped, not applied."""
        batches = [self.to_device(batch) for batch in micro_batches]
        scored = all_reduce_sum(sum(self.count(batch) for batch in batches)).clamp_min(1)
        step_nats = torch.zeros((), device=self.device)
        for index, batch in enumerate(batches):
            with gradient_sync(self.module, enabled=index == len(batches) - 1):
                nats = self.forward(batch, True)
                # DDP and FSDP2 average gradients over processes; scaling by the world size makes the result the
                # gradient of the global sum / global token count, exactly the single-process objective.
                (nats * self.world_size / scored).backward()
            step_nats += nats.detach()
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        return all_reduce_sum(step_nats) / scored, clip_grad_norm(self.model, max_norm)

    def update(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, micro_batches: list[Batch]) -> StepResult:
        """One whole optimizer step, queued; its (loss, grad norm) arrive in the result."""
        loss, grad_norm = self.backward(micro_batches)
        self.update()
        return StepResult(loss, grad_norm)
