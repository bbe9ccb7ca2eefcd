"""What the fine-tuning objectives (SFT, DPO, GRPO) share: LoRA or full weights, the model built from the starting
checkpoint (or resumed from one of the run's own checkpoints), how a checkpoint of it is saved, and
``FineTuneObjective``, the base whose step budget, row order and model loading the three objectives use instead of
a copy each."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, TypeVar

import torch
from pydantic import Field
from transformers import PreTrainedModel

from lumi.core.config import ConfigModel, config_to_dict
from lumi.core.errors import LumiError
from lumi.data.chat import save_chat_model
from lumi.data.packed_stream import MixedRowSampler
from lumi.formats.lineage import artifact_worlds, worlds_in_config, write_lineage
from lumi.loading import load_adapter_onto, load_model
from lumi.lora import save_adapter, wrap_lora


class LoraSettings(ConfigModel):
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: float = Field(32.0, gt=0, description="LoRA scale numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                      min_length=1, description="names of the linear layers that get adapters")


class FineTuneSettings(Protocol):
    """The fields of SFTConfig and DPOConfig these helpers read."""

    method: Literal["lora", "full"]
    lora: LoraSettings
    attn_implementation: str
    micro_batch_size: int
    grad_accumulation: int
    seed: int
    max_steps: int | None
    epochs: float | None


def build_finetune_model(config: FineTuneSettings, load_start: Callable[[], PreTrainedModel],
                         checkpoint: Path | None) -> PreTrainedModel:
    """A fresh run: the starting model (``load_start``), wrapped in LoRA adapters for method lora. A resume: the
    run's checkpoint -- a full ``save_pretrained`` dir, or an adapter dir loaded onto the starting model."""
    if config.method == "full":
        if checkpoint is None:
            return load_start()
        return load_model(checkpoint, "checkpoint to resume from", attn_implementation=config.attn_implementation,
                          adapter="refuse", trainable=True)
    lora = config.lora
    if checkpoint is None:
        return wrap_lora(load_start(), lora.r, lora.alpha, lora.dropout, lora.target_modules)
    return load_adapter_onto(load_start(), checkpoint, trainable=True)


def save_finetune_model(config: FineTuneSettings, model: PreTrainedModel, tokenizer_dir: Path, directory: Path,
                        start: Path, state_dict: dict[str, torch.Tensor] | None) -> None:
    """An adapter dir recording its base (``start``), or a full chat model dir; both with the chat tokenizer."""
    if config.method == "lora":
        save_adapter(model, tokenizer_dir, directory, start, state_dict)
    else:
        save_chat_model(model, tokenizer_dir, directory, state_dict)


def method_description(config: FineTuneSettings) -> str:
    lora = config.lora
    return f"LoRA r={lora.r} alpha={lora.alpha} on {', '.join(lora.target_modules)}" if config.method == "lora" \
        else "full"


def check_run_name(config: FineTuneSettings) -> None:
    """A run name (the checkpoint dir's) that names the other method is refused: a full fine-tune never lands in a
    dir called ``lora_...`` (the name came from a config whose ``method`` was overridden)."""
    name = (getattr(config, "name", None) or "").lower()
    other = "full" if config.method == "lora" else "lora"
    if other in name.replace("-", "_").split("_"):
        raise LumiError(f"run name {name!r} says {other} but method is {config.method}; --set name=NAME (or drop "
                        f"name: the run dir is then named after the method)")


Batch = TypeVar("Batch")


class FineTuneObjective:
    """The part of the Objective protocol (``lumi.train.objectives.base``) that SFT, DPO and GRPO share.

    A subclass sets ``config``, ``rank``, ``world_size``, ``start`` (the model dir training starts from, recorded as
    an adapter's base), ``start_purpose`` (how a refusal names it), ``tokenizer_dir`` (the chat tokenizer files each
    checkpoint gets) and, for data of fixed-length rows, ``seq_len`` and ``rows_description`` (checked against the
    model's context when it is loaded); then calls ``plan_steps``."""

    config: FineTuneSettings
    rank: int
    world_size: int
    start: Path
    start_purpose: str
    tokenizer_dir: Path
    seq_len: int | None = None
    rows_description = "rows of"

    def plan_steps(self, items: int, per_process: int, stage: str) -> None:
        """The seeded order of the ``items`` training examples, ``global_items`` of them per optimizer step over
        every process, and ``total_steps``: max_steps, or enough steps for ``epochs`` passes."""
        config = self.config
        self.sampler = MixedRowSampler([items], [1.0], config.seed)
        self.global_items = per_process * self.world_size
        if config.max_steps is not None:
            self.total_steps = config.max_steps
        elif config.epochs is not None:
            self.total_steps = max(1, math.ceil(config.epochs * items / self.global_items))
        else:
            raise LumiError(f"set max_steps or epochs in the {stage} config (or pass --max-steps)")

    def rank_micro_batches(self, make_batch: Callable[[list[int]], Batch]) -> list[Batch]:
        """This rank's micro-batches of the next global batch, in the sampler's seeded order: micro-batch ``a`` of
        rank ``r`` is slice ``(a * world + r) * micro`` (as pretraining slices its rows)."""
        rows = [row for _, row in self.sampler.next_rows(self.global_items)]
        micro = self.config.micro_batch_size
        return [make_batch(rows[(step * self.world_size + self.rank) * micro:][:micro])
                for step in range(self.config.grad_accumulation)]

    def load_start(self) -> PreTrainedModel:
        """The starting model, verified and trainable; refused when the data's rows do not fit its context."""
        model = load_model(self.start, self.start_purpose, attn_implementation=self.config.attn_implementation,
                           adapter="refuse", trainable=True)
        context = model.config.max_position_embeddings
        if self.seq_len is not None and context < self.seq_len:
            raise LumiError(f"{getattr(self.config, 'data_dir', self.start)}: {self.rows_description} {self.seq_len} "
                            f"tokens exceed the model's context of {context}; rebuild the data with --seq-len")
        return model

    def build_model(self, checkpoint: Path | None) -> PreTrainedModel:
        return build_finetune_model(self.config, self.load_start, checkpoint)

    @functools.cached_property
    def worlds(self) -> set[str]:
        """The synthetic worlds a checkpoint of this run derives from (its starting model's, its data's, those its
        config names), recorded in each checkpoint's ``lineage.json``."""
        data_dir = getattr(self.config, "data_dir", None)
        return (artifact_worlds(self.start) | (artifact_worlds(data_dir) if data_dir else set())
                | worlds_in_config(config_to_dict(self.config)))

    def save_model(self, directory: Path, model: PreTrainedModel, state_dict: dict[str, torch.Tensor] | None) -> None:
        save_finetune_model(self.config, model, self.tokenizer_dir, directory, self.start, state_dict)
        write_lineage(directory, self.worlds)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def flops_per_token(self) -> int | None:
        return None
