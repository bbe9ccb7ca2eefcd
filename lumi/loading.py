"""The one way into a model: ``load_model`` verifies a model or adapter dir (``lumi.formats.model_dir``) and is the
only ``from_pretrained`` call site for models -- sft's base, dpo's policy and reference, fine-tuning resume,
evaluate, merge-lora, serve and chat all go through it, so each refuses the same damage in the same one line.

A derived copy (an adapter merged into its base, for dpo) is keyed by the content hash of what it was derived from
(``derived_from.json``) and rebuilt when that differs, never reused because it merely exists.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, output_path, read_json, staged_output_dir
from lumi.formats.adapter import adapter_fingerprint, base_fingerprint, is_adapter_dir
from lumi.formats.lineage import copy_lineage
from lumi.formats.model_dir import ModelDir, open_model_dir, verify_checksums, write_checksums
from lumi.formats.model_io import DTYPES, load_tokenizer, resolve_device

log = logging.getLogger(__name__)

DERIVED_RECORD = "derived_from.json"
# What from_pretrained raises on damaged files: SafetensorError (truncated weights), RuntimeError (shapes that differ
# from the config), ValueError/TypeError/KeyError (a config transformers cannot read), OSError (a missing file),
# RecursionError (a config nested too deeply).
_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, TypeError, KeyError,
                                                  AttributeError, RecursionError)


def _load_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (*_LOAD_ERRORS, SafetensorError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _from_pretrained(path: Path, what: str, dtype: Any, attn_implementation: str | None) -> Any:
    from transformers import AutoModelForCausalLM

    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=False, **options)
    except _load_errors() as exc:
        raise LumiError(f"{path}: model could not be loaded ({_first_line(exc)}; the {what})") from None


def _with_adapter(model: Any, adapter: Path, trainable: bool) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    except _load_errors() as exc:
        raise LumiError(f"{adapter}: adapter could not be loaded ({_first_line(exc)})") from None


def _dtype(dtype: str) -> Any:
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise LumiError(f"dtype {dtype!r}: expected auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(model_dir: str | Path | ModelDir, purpose: str, dtype: str = "float32", device: str | None = None,
               attn_implementation: str | None = None,
               adapter: Literal["merge", "peft", "refuse"] = "merge", trainable: bool = False,
               base_dir: str | Path | None = None) -> Any:
    """The model of ``model_dir``, verified first (``open_model_dir``). ``purpose`` names its role in messages
    ("SFT base model"). An adapter dir is loaded onto its verified base and merged (``adapter="merge"``: a plain
    ``LlamaForCausalLM``), kept as a ``PeftModel`` (``"peft"``; ``trainable`` for resuming training) or refused.
    ``dtype="auto"`` keeps the checkpoint's dtype (an adapter: float32). ``device`` None leaves it on the CPU;
    the model is in eval mode unless ``trainable``."""
    opened = model_dir if isinstance(model_dir, ModelDir) else open_model_dir(
        model_dir, purpose, allow_adapter=adapter != "refuse", base_dir=base_dir)
    torch_dtype = _dtype(dtype)
    if opened.is_adapter:
        base = _from_pretrained(opened.base.path, f"base model of {purpose}",
                                torch.float32 if torch_dtype == "auto" else torch_dtype, attn_implementation)
        model = _with_adapter(base, opened.path, trainable)
        if adapter == "merge":
            model = model.merge_and_unload()
    else:
        model = _from_pretrained(opened.path, purpose, torch_dtype, attn_implementation)
    if device is not None:
        model = model.to(resolve_device(device))
    return model if trainable else model.eval()


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))


def load_with_tokenizer(model_dir: str | Path, purpose: str, device: str = "auto", dtype: str = "auto",
                        add_bos: bool | None = True) -> tuple[Any, Any]:
    """Model (merged when an adapter) and tokenizer for evaluate, serve and chat: the tokenizer comes from the
    directory itself, or for an adapter without tokenizer files from its base; a pair whose special-token ids or
    sizes disagree is refused. ``add_bos``: see ``lumi.formats.model_io.load_tokenizer``."""
    opened = open_model_dir(model_dir, purpose)
    tokenizer_dir = opened.path if _has_tokenizer(opened.path) or not opened.is_adapter else opened.base.path
    tokenizer = load_tokenizer(tokenizer_dir, add_bos)
    model = load_model(opened, purpose, dtype, device)
    for name in ("bos_token_id", "eos_token_id"):
        model_id, tokenizer_id = getattr(model.config, name, None), getattr(tokenizer, name, None)
        if model_id is not None and tokenizer_id is not None and model_id != tokenizer_id:
            raise LumiError(f"{model_dir}: {name} is {model_id} in config.json but {tokenizer_id} in the tokenizer")
    if len(tokenizer) > model.config.vocab_size:
        raise LumiError(f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the model only "
                        f"{model.config.vocab_size} embeddings")
    return model, tokenizer


def load_adapter_onto(model: Any, adapter_dir: str | Path, trainable: bool = True) -> Any:
    """An adapter checkpoint of this run loaded onto the already loaded starting model (fine-tuning resume),
    its files verified first."""
    verify_checksums(Path(adapter_dir))
    return _with_adapter(model, Path(adapter_dir), trainable)


def _merge_into(adapter_dir: Path, staging: Path, base_dir: str | Path | None) -> None:
    from lumi.data.chat import save_chat_model

    save_chat_model(load_model(adapter_dir, "adapter to merge", base_dir=base_dir), adapter_dir, staging)
    copy_lineage(adapter_dir, staging)


def write_merged(adapter_dir: str | Path, output_dir: str | Path, base_dir: str | Path | None = None,
                 force: bool = False) -> Path:
    """The adapter folded into its base as a plain chat model dir (weights, chat tokenizer, generation config,
    ``checksums.json`` last), written staged. An output dir that is, holds or lies inside the adapter is refused:
    ``--force`` would destroy the adapter being merged."""
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    source, target = output_path(adapter_dir), output_path(output_dir)
    if source == target or source in target.parents or target in source.parents:
        raise LumiError(f"--output-dir {output_dir}: is or contains the adapter {adapter_dir}; choose another "
                        "directory (replacing it would destroy the adapter)")
    opened = open_model_dir(adapter_dir, "adapter to merge", base_dir=base_dir)
    if not opened.is_adapter:
        raise LumiError(f"{adapter_dir}: not a LoRA adapter dir (adapter_config.json missing)")
    with staged_output_dir(output_dir, force) as staging:
        _merge_into(adapter_dir, staging, base_dir)
        write_checksums(staging)
    return output_dir


def derived_merged(adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """``adapter_dir`` merged into its base at ``output_dir``, reused only when ``derived_from.json`` there records
    this adapter's and this base's content hashes and its files still match their checksums; otherwise (another
    adapter's copy, a damaged or truncated one) rebuilt in its place, saying why."""
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    opened = open_model_dir(adapter_dir, "SFT adapter")
    source = {"adapter_sha256": adapter_fingerprint(adapter_dir),
              "base_sha256": base_fingerprint(opened.base.path)}
    record = output_dir / DERIVED_RECORD
    if output_dir.exists():
        why = "made by an older version (no derived_from.json)"
        try:
            if record.is_file():
                found = read_json(record, what="derived-from record")
                same = isinstance(found, dict) and all(found.get(key) == value for key, value in source.items())
                why = None if same else "made from another adapter or base"
            if why is None:
                open_model_dir(output_dir, "merged model", allow_adapter=False)
        except LumiError as exc:
            why = f"damaged ({exc})"
        if why is None:
            return output_dir
        log.warning("%s: %s; merging %s again", output_dir, why, adapter_dir)
    else:
        log.info("merging the SFT adapter %s into its base: %s", adapter_dir, output_dir)
    with staged_output_dir(output_dir, force=True) as staging:
        _merge_into(adapter_dir, staging, None)
        # the content hashes key the copy; the path lets lineage (lumi.formats.lineage) follow it to the adapter
        atomic_write_json(staging / DERIVED_RECORD, {**source, "adapter_path": str(adapter_dir.absolute())})
        write_checksums(staging)
    return output_dir


def merged_if_adapter(model_path: str | Path, merged_dir: str | Path) -> Path:
    """A model dir to train from: ``model_path`` itself, or, for a LoRA adapter dir, its merge into ``merged_dir``
    (``derived_merged``: reused only when derived from this very adapter and base and intact)."""
    return derived_merged(model_path, merged_dir) if is_adapter_dir(model_path) else Path(model_path)


def load_for_evaluation(model_dir: str | Path, device: str = "auto", dtype: str = "auto",
                        add_bos: bool | None = True) -> tuple[Any, Any]:
    """``load_with_tokenizer`` for lumi evaluate (``dtype="auto"`` keeps the checkpoint's, as ``lm_eval`` does)."""
    return load_with_tokenizer(model_dir, "model to evaluate", device, dtype, add_bos)
