"""Early stopping on the val loss, for every trainer (``early_stop_patience`` in ``TrainerConfig``).

Fine-tuning on a few thousand conversations overfits within a few epochs; the usual answer (transformers'
``EarlyStoppingCallback`` with ``load_best_model_at_end``) is to stop once the val loss has stopped improving and to
keep the best evaluated weights, not the last ones. This does the same inside our loop: the best weights are kept as
a CPU copy (one model's worth of host memory, only when early stopping is on) and, with the counters, go into each
checkpoint's trainer state, so a resumed run stops at the same step with the same final weights as an uninterrupted
one.
"""

from __future__ import annotations

from typing import Any

import torch

from lumi.core.errors import LumiError

WATCHED = "val/loss"


class EarlyStopping:
    """Counts evaluations without an improvement of ``val/loss`` by more than ``min_delta``; ``stopped`` once
    ``patience`` of them come in a row."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best_loss: float | None = None
        self.best_step = -1
        self.evals_without_improvement = 0
        self.stopped = False
        self.best_weights: dict[str, torch.Tensor] | None = None  # rank 0's copy (None on the others)

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Take one evaluation's metrics; True when it is the new best (the caller then keeps the weights)."""
        if WATCHED not in metrics:
            raise LumiError(f"early_stop_patience watches {WATCHED}, which this run's evaluation does not give (it "
                            f"gave: {', '.join(metrics) or 'nothing'}; an empty val split?); unset "
                            "early_stop_patience or give the run val data")
        loss = float(metrics[WATCHED])
        if self.best_loss is None or loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.evals_without_improvement = loss, step, 0
            return True
        self.evals_without_improvement += 1
        self.stopped = self.evals_without_improvement >= self.patience
        return False

    def keep(self, weights: dict[str, torch.Tensor] | None) -> None:
        """A CPU copy of ``weights``; tensors that share storage (a tied head) stay shared, so ``save_pretrained``
        writes the copy exactly as it writes the live model."""
        if weights is None:
            self.best_weights = None
            return
        copies: dict[tuple, torch.Tensor] = {}
        self.best_weights = {}
        for name, tensor in weights.items():
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if key not in copies:
                copies[key] = tensor.detach().to("cpu", copy=True)
            self.best_weights[name] = copies[key]

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "stopped": self.stopped,
                "evals_without_improvement": self.evals_without_improvement, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss, self.best_step = state["best_loss"], int(state["best_step"])
        self.evals_without_improvement, self.stopped = int(state["evals_without_improvement"]), bool(state["stopped"])
        self.best_weights = state["best_weights"]
