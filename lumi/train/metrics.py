"""Where training metrics go: ``metrics.jsonl`` (the record tests and tools read), TensorBoard, and optionally wandb;
and how a logging interval's loss and tokens/s are measured (``IntervalMeter``).

Opening the log drops records after ``kept_step``: on resume from step k, what the dead run logged after its last
checkpoint goes from ``metrics.jsonl`` and TensorBoard opens with ``purge_step=k+1``, so the logs read as one
uninterrupted run; a fresh run passes -1 and starts empty.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_jsonl
from lumi.formats.metrics import METRICS_FILE, read_metrics

# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts) for MFU; other devices report no MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def shown_metrics(values: dict[str, float]) -> str:
    """An evaluation's metrics on one console line (``val/loss 4.791 val/perplexity 120.4``)."""
    return " ".join(f"{name} {value:.4g}" for name, value in values.items())


class MetricsLog:
    def __init__(self, run_dir: Path, kept_step: int, tensorboard: bool, wandb_project: str | None,
                 run_name: str, config: dict[str, Any]):
        self.path = run_dir / METRICS_FILE
        kept = [r for r in read_metrics(self.path) if r["step"] <= kept_step]
        atomic_write_jsonl(self.path, kept)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it pulls in tensorboard

            self._tensorboard = SummaryWriter(run_dir / "tensorboard", purge_step=kept_step + 1)
        self._wandb = None
        if wandb_project:
            if importlib.util.find_spec("wandb") is None:
                raise LumiError(f"wandb_project={wandb_project!r} but wandb is not installed (pip install wandb)")
            import wandb

            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config, resume="allow")

    def log(self, step: int, values: dict[str, Any]) -> None:
        record = {"step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


class IntervalMeter:
    """Loss, tokens and training time since the last train-metric record. Time is the wall clock between records
    less evaluation and checkpoint time: steps run asynchronously, so timing the ``train_step`` calls would only
    count the time to queue them."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.nats = self.tokens = self.excluded = 0.0
        self.grad_norm = math.nan
        self.start = time.perf_counter()

    def add(self, loss: float, grad_norm: float, tokens: int) -> None:
        self.nats += loss * tokens
        self.tokens += tokens
        self.grad_norm = grad_norm  # the latest step's

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def mean_loss(self) -> float:
        return self.nats / self.tokens

    def tokens_per_second(self) -> float:
        return self.tokens / (time.perf_counter() - self.start - self.excluded)
