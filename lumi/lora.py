"""LoRA through PEFT: wrap a model for training and save it as an adapter dir.

An adapter dir is what ``PeftModel.save_pretrained`` writes (``adapter_config.json``, ``adapter_model.safetensors``)
plus the chat tokenizer files and ``lumi_adapter.json``: the base model's path and the sha256 of its weight files, so
a merge (or an evaluation, or serving) onto a different base than the one trained on is refused instead of silently
producing a broken model. Recognising and verifying one is ``lumi.formats.adapter``; loading and merging one is
``lumi.loading``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lumi.core.errors import LumiError
from lumi.formats.adapter import record_base


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct short names of the model's linear layers (what ``target_modules`` may name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def wrap_lora(model: Any, r: int, alpha: float, dropout: float, target_modules: list[str]) -> Any:
    """``peft.get_peft_model`` with a causal-LM LoRA config; target modules the model lacks are refused by name."""
    from peft import LoraConfig, get_peft_model

    available = linear_module_names(model)
    missing = [name for name in target_modules if name not in available]
    if missing:
        raise LumiError(f"LoRA target_modules {missing} are not in the model; its linear layers are "
                        f"{', '.join(available)}")
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), bias="none")
    return get_peft_model(model, config)


def save_adapter(model: Any, tokenizer_dir: str | Path, directory: str | Path, base_dir: str | Path,
                 state_dict: dict | None = None) -> None:
    """An adapter dir: PEFT's adapter files, the chat tokenizer files, the generation config with the end-of-turn
    id, and the base's fingerprint."""
    from lumi.data.chat import copy_chat_tokenizer, set_chat_generation_config

    set_chat_generation_config(model.base_model.model)
    model.save_pretrained(str(directory), state_dict=state_dict)
    model.base_model.model.generation_config.save_pretrained(str(directory))
    copy_chat_tokenizer(tokenizer_dir, directory)
    record_base(directory, base_dir)
