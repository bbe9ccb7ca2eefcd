"""LoRA through PEFT: wrap a model, recognise and load adapter dirs, merge an adapter into its base.

An adapter dir is what ``PeftModel.save_pretrained`` writes (``adapter_config.json``, ``adapter_model.safetensors``)
plus the chat tokenizer files and ``lumi_adapter.json``: the base model's path and the sha256 of its weight files, so
a merge (or an evaluation) onto a different base than the one trained on is refused instead of silently producing a
broken model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_RECORD = "lumi_adapter.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def base_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the names and bytes of a ``save_pretrained`` dir's weight files (and its config.json)."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise LumiError(f"{model_dir}: no model weights (*.safetensors) in it")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


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


def record_base(adapter_dir: str | Path, base_dir: str | Path) -> None:
    atomic_write_json(Path(adapter_dir) / ADAPTER_RECORD,
                      {"base_model_path": str(Path(base_dir).resolve()), "base_sha256": base_fingerprint(base_dir)})


def adapter_base(adapter_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """The base model dir of an adapter (the recorded one unless ``base_dir``), refused unless its weights are the
    ones the adapter was trained on."""
    adapter_dir = Path(adapter_dir)
    if not is_adapter_dir(adapter_dir):
        raise LumiError(f"{adapter_dir}: not a LoRA adapter dir ({ADAPTER_CONFIG} missing)")
    record = read_json(adapter_dir / ADAPTER_RECORD, what="adapter record")
    base = Path(base_dir) if base_dir is not None else Path(record["base_model_path"])
    if not (base / "config.json").is_file():
        raise LumiError(f"{adapter_dir}: its base model {base} is not a model dir (no config.json); pass "
                        "--base-model-path")
    found = base_fingerprint(base)
    if found != record["base_sha256"]:
        raise LumiError(f"{adapter_dir}: base model mismatch: {base} has weights sha256 {found[:16]}…, the adapter "
                        f"was trained on {record['base_sha256'][:16]}… ({record['base_model_path']})")
    return base


def load_adapter_model(adapter_dir: str | Path, base_dir: str | Path | None = None,
                       dtype: torch.dtype = torch.float32) -> Any:
    """Base + adapter as a ``PeftModel`` (the plain PEFT loading path), eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = adapter_base(adapter_dir, base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def merged_model(adapter_dir: str | Path, base_dir: str | Path | None = None) -> Any:
    """The adapter folded into its base's weights: a plain ``LlamaForCausalLM``."""
    return load_adapter_model(adapter_dir, base_dir).merge_and_unload()


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


def write_merged(adapter_dir: str | Path, output_dir: str | Path, base_dir: str | Path | None = None,
                 force: bool = False) -> Path:
    """The merged model as a plain chat model dir (weights, chat tokenizer, generation config), written staged."""
    from lumi.data.chat import save_chat_model
    from lumi.core.files import staged_output_dir

    model = merged_model(adapter_dir, base_dir)
    with staged_output_dir(output_dir, force) as staging:
        save_chat_model(model, adapter_dir, staging)
    return Path(output_dir)
