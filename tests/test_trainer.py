"""The Trainer loop runs an objective other than pretraining, unchanged: batches as dicts of tensors with masked labels
(the shape SFT takes), the objective's own checkpoint config file, and an exact resume of its data position."""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from packed_helpers import nano_architecture
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedModel

import lumi.train.objectives
from lumi.core.errors import LumiError
from lumi.formats.metrics import read_metrics
from lumi.lm.linear_cross_entropy import IGNORE_INDEX
from lumi.model import ArchitectureConfig, build_model
from lumi.train.config import TrainerConfig
from lumi.train.objectives.base import Objective
from lumi.train.trainer import Trainer

OBJECTIVE_MODULES = [importlib.import_module(f"lumi.train.objectives.{m.name}")
                     for m in pkgutil.iter_modules(lumi.train.objectives.__path__) if m.name != "base"]

VOCAB, SEQ = 64, 16


class MaskedLabelsLoss(nn.Module):
    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"]).logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")


class CopyObjective:
    """Rows whose second half repeats the first; only the second half is scored (like assistant-only labels)."""

    name = "copy"
    config_file = "copy_config.json"
    run_name = "copy"

    def __init__(self, config: TrainerConfig, total_steps: int):
        self.config, self.total_steps, self.position = config, total_steps, 0
        self.resolved = {"config": config.model_dump(mode="json"), "total_steps": total_steps}
        self.arch = ArchitectureConfig(**nano_architecture(VOCAB, SEQ, tie_embeddings=True))

    def _batch(self, index: int) -> dict[str, torch.Tensor]:
        half = torch.randint(6, VOCAB, (self.config.micro_batch_size, SEQ // 2),
                             generator=torch.Generator().manual_seed(index))
        input_ids = torch.cat([half, half], dim=1)
        labels = input_ids.clone()
        labels[:, :SEQ // 2] = IGNORE_INDEX
        return {"input_ids": input_ids, "labels": labels}

    def build_model(self, checkpoint: Path | None) -> PreTrainedModel:
        if checkpoint is None:
            return build_model(self.arch)
        return LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)

    def loss_module(self, model: PreTrainedModel, compile: bool) -> nn.Module:
        return MaskedLabelsLoss(model)

    def count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        batches = [self._batch(self.position + i) for i in range(self.config.grad_accumulation)]
        self.position += self.config.grad_accumulation
        return batches

    def step_tokens(self, micro_batches: list[dict[str, torch.Tensor]]) -> int:
        return sum(int(batch["input_ids"].numel()) for batch in micro_batches)

    def evaluate(self, score: Callable[[Any], torch.Tensor]) -> dict[str, float]:
        batch = self._batch(-1)
        return {"val/loss": float(score(batch)) / int(self.count(batch))}

    def save_model(self, directory: Path, model: PreTrainedModel, state_dict: dict | None) -> None:
        model.save_pretrained(directory, state_dict=state_dict)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])

    def describe(self) -> list[str]:
        return ["copy task"]

    def summary(self) -> str:
        return f"{self.position} batches"

    def flops_per_token(self) -> int | None:
        return None

    def batch_shape(self) -> str:
        return f"micro_batch_size={self.config.micro_batch_size} x seq_len={SEQ}"

    def oom_advice(self) -> str:
        return "shorten the copied sequences"


def trainer(output: Path, resume: str | None = None) -> Trainer:
    config = TrainerConfig(micro_batch_size=4, grad_accumulation=2, lr=3e-3, warmup_steps=2, log_interval=1,
                           eval_interval=3, save_interval=3, keep_last_k=1, tensorboard=False, seed=7)
    return Trainer(config, CopyObjective(config, total_steps=8), output, resume=resume, device=torch.device("cpu"))


def losses(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]


@contextlib.contextmanager
def interrupted_after(monkeypatch, step: int) -> Iterator[None]:
    """Within the block, a run gets SIGINT during the step after ``step`` (it saves and exits 130)."""
    original = Trainer.train_step

    def interrupted_step(self, batches):
        if self.step == step:
            signal.raise_signal(signal.SIGINT)
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    yield
    monkeypatch.setattr(Trainer, "train_step", original)


def test_a_second_objective_trains_saves_and_resumes_exactly(tmp_path, monkeypatch):
    whole = trainer(tmp_path / "whole")
    assert whole.fit() == 0
    run = whole.run_dir
    assert (run / "final" / "copy_config.json").is_file() and not (run / "final" / "pretrain_config.json").exists()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("step_")) == ["step_6"]  # keep_last_k=1
    curve = losses(run)
    assert len(curve) == 8 and curve[-1] < curve[0], curve  # the copied half is learnable
    assert whole.tokens_seen == 8 * 2 * 4 * SEQ

    # the same run stopped by SIGINT during step 5, then resumed: same losses, same data position
    with interrupted_after(monkeypatch, 4):
        assert trainer(tmp_path / "split").fit() == 128 + signal.SIGINT
    resumed = trainer(tmp_path / "split", resume="auto")
    assert resumed.step == 5 and resumed.objective.position == 10
    assert resumed.fit() == 0
    assert resumed.objective.position == whole.objective.position == 16
    assert losses(resumed.run_dir) == curve


def test_out_of_memory_advice_names_the_objectives_batch_and_what_its_data_lets_one_lower(tmp_path, monkeypatch):
    def out_of_memory(self, batches):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    with pytest.raises(LumiError) as error:
        trainer(tmp_path / "oom").fit()
    message = str(error.value)
    assert f"step 1: CPU out of memory with micro_batch_size=4 x seq_len={SEQ}" in message
    for advice in ("grad_accumulation", "activation_checkpointing=true", "shorten the copied sequences", "fsdp2"):
        assert advice in message


def test_every_objective_implements_the_whole_interface():
    methods = {name for name, value in vars(Objective).items() if callable(value) and not name.startswith("_")}
    objectives = [CopyObjective] + [cls for module in OBJECTIVE_MODULES for name, cls in vars(module).items()
                                    if name.endswith("Objective") and isinstance(cls, type)
                                    and cls.__module__ == module.__name__]
    assert len(objectives) >= 1 + len(OBJECTIVE_MODULES)  # one per objectives/ module (pretrain, ...) and this file's
    assert {"oom_advice", "batch_shape", "next_step"} <= methods
    for cls in objectives:
        assert {name for name in methods if not callable(getattr(cls, name, None))} == set(), cls


class ScriptedValObjective(CopyObjective):
    """The copy task whose val loss at step N is ``VAL_BY_STEP[N]``: early stopping must act on what it is told."""

    VAL_BY_STEP = {0: 5.0, 1: 4.0, 2: 3.0, 3: 3.5, 4: 2.99, 5: 3.2, 6: 3.1, 7: 3.05}

    def evaluate(self, score: Callable[[Any], torch.Tensor]) -> dict[str, float]:
        return {"val/loss": self.VAL_BY_STEP[self.position // self.config.grad_accumulation]}


def early_stopping_trainer(output: Path, resume: str | None = None, **settings: Any) -> Trainer:
    config = TrainerConfig(micro_batch_size=4, grad_accumulation=2, lr=3e-3, log_interval=1, eval_interval=1,
                           save_interval=1, keep_last_k=10, tensorboard=False, seed=7, **settings)
    return Trainer(config, ScriptedValObjective(config, total_steps=7), output, resume=resume,
                   device=torch.device("cpu"))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(directory / "model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    return all(torch.equal(first[k], second[k]) for k in first)


def test_early_stopping_stops_after_patience_and_keeps_the_best_weights(tmp_path, monkeypatch):
    # val: 5, 4, 3 (best, step 2), 3.5, 2.99 (not better by more than 0.05), 3.2 -> third miss in a row: stop at 5
    run = early_stopping_trainer(tmp_path / "whole", early_stop_patience=3, early_stop_min_delta=0.05)
    assert run.fit() == 0
    assert run.step == 5 and run.early_stop.stopped and run.early_stop.best_step == 2
    assert same_weights(run.run_dir / "final", run.run_dir / "step_2")
    assert not same_weights(run.run_dir / "final", run.run_dir / "step_5")  # the last weights are not the ones kept
    assert len(losses(run.run_dir)) == 5

    # without min_delta step 4's 2.99 is the best, and patience 4 is not used up before the budget ends at step 7
    budget = early_stopping_trainer(tmp_path / "budget", early_stop_patience=4)
    assert budget.fit() == 0 and budget.step == 7 and not budget.early_stop.stopped
    assert same_weights(budget.run_dir / "final", budget.run_dir / "step_4")

    # interrupted after step 3 and resumed: the same stop, the same final weights
    split_dir = tmp_path / "split"
    with interrupted_after(monkeypatch, 3):
        assert early_stopping_trainer(split_dir, early_stop_patience=3, early_stop_min_delta=0.05).fit() == 130
    resumed = early_stopping_trainer(split_dir, resume="auto", early_stop_patience=3, early_stop_min_delta=0.05)
    assert resumed.fit() == 0 and resumed.step == 5 and resumed.early_stop.best_step == 2
    assert same_weights(resumed.run_dir / "final", run.run_dir / "final")
    # a finished, early-stopped run resumed again trains nothing more
    again = early_stopping_trainer(split_dir, resume="auto", early_stop_patience=3, early_stop_min_delta=0.05)
    assert again.fit() == 0 and again.step == 5


def test_early_stopping_without_a_val_loss_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ScriptedValObjective, "evaluate", lambda self, score: {})
    with pytest.raises(LumiError, match="early_stop_patience watches val/loss"):
        early_stopping_trainer(tmp_path / "run", early_stop_patience=2).fit()
