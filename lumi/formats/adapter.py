"""A LoRA adapter dir as files: what ``PeftModel.save_pretrained`` writes (``adapter_config.json``,
``adapter_model.safetensors``) plus ``lumi_adapter.json``, the base model's path and the sha256 of its weight files.

This is the file-only half of LoRA (no torch, no peft): recognising an adapter dir and finding and verifying its base,
so that every reader -- sft, dpo, evaluate, merge-lora, serve, chat -- refuses an adapter whose base changed, the
same way, before any weights are loaded (``lumi.loading``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, read_json

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_RECORD = "lumi_adapter.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _files_sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def base_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the names and bytes of a ``save_pretrained`` dir's weight files (and its config.json)."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise LumiError(f"{model_dir}: no model weights (*.safetensors) in it")
    return _files_sha256(files)


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """sha256 over an adapter dir's weight files and ``adapter_config.json``: what a merged copy is derived from."""
    adapter_dir = Path(adapter_dir)
    return _files_sha256(sorted(p for p in adapter_dir.iterdir()
                                if p.suffix in WEIGHT_SUFFIXES or p.name == ADAPTER_CONFIG))


def record_base(adapter_dir: str | Path, base_dir: str | Path) -> None:
    atomic_write_json(Path(adapter_dir) / ADAPTER_RECORD,
                      {"base_model_path": str(Path(base_dir).resolve()), "base_sha256": base_fingerprint(base_dir)})


def _peft_base(adapter_dir: Path) -> Path:
    """The base PEFT's own config names (an adapter written by another tool has no lumi record)."""
    config = read_json(adapter_dir / ADAPTER_CONFIG, what="adapter config")
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise LumiError(f"{adapter_dir / ADAPTER_CONFIG}: no base_model_name_or_path, so the base model is unknown; "
                        "pass --base-model-path")
    return Path(base)


def adapter_base(adapter_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """The base model dir of an adapter (the recorded one unless ``base_dir``), refused unless its weights are the
    ones the adapter was trained on. An adapter without ``lumi_adapter.json`` (written by another tool) is loaded
    onto the base its PEFT config names, with a warning that nothing can check that base."""
    adapter_dir = Path(adapter_dir)
    if not is_adapter_dir(adapter_dir):
        raise LumiError(f"{adapter_dir}: not a LoRA adapter dir ({ADAPTER_CONFIG} missing)")
    if not (adapter_dir / ADAPTER_RECORD).is_file():
        base = Path(base_dir) if base_dir is not None else _peft_base(adapter_dir)
        log.warning("%s: no %s, so its base %s cannot be checked (an adapter written by another tool)",
                    adapter_dir, ADAPTER_RECORD, base)
        record = None
    else:
        record = read_json(adapter_dir / ADAPTER_RECORD, what="adapter record")
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str)
                                                   for k in ("base_model_path", "base_sha256")):
            raise LumiError(f"{adapter_dir / ADAPTER_RECORD}: expected base_model_path and base_sha256 strings")
        base = Path(base_dir) if base_dir is not None else Path(record["base_model_path"])
    if not (base / "config.json").is_file():
        raise LumiError(f"{adapter_dir}: its base model {base} is not a model dir (no config.json); pass "
                        "--base-model-path")
    if record is not None:
        found = base_fingerprint(base)
        if found != record["base_sha256"]:
            raise LumiError(f"{adapter_dir}: base model mismatch: {base} has weights sha256 {found[:16]}…, the "
                            f"adapter was trained on {record['base_sha256'][:16]}… ({record['base_model_path']})")
    return base
