"""What the two fine-tuning objectives (SFT, DPO) share: LoRA or full weights, the model built from the starting
checkpoint (or resumed from one of the run's own checkpoints), and how a checkpoint of it is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Protocol

import torch
from pydantic import Field
from transformers import PreTrainedModel

from lumi.core.config import ConfigModel
from lumi.core.errors import LumiError
from lumi.data.chat import save_chat_model
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
