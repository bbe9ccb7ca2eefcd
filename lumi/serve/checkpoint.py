"""Load what the server serves: a ``save_pretrained`` model directory (pretrained, merged, DPO, any
``LlamaForCausalLM`` dir with a tokenizer) or a PEFT adapter directory (``adapter_config.json`` naming its base).

Safetensors only and never ``trust_remote_code``: a checkpoint is data, not code. An adapter is merged into its base
once at load time (``merge_and_unload``), so serving costs what the merged model costs.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lumi.core.errors import LumiError
from lumi.formats.model_io import DTYPES, load_tokenizer, resolve_device

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(model_dir: Path) -> bool:
    return (Path(model_dir) / ADAPTER_CONFIG).is_file()


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))


def _load_base(source: str | Path, dtype: str) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES.get(dtype, "auto"), use_safetensors=True,
                                                    trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise LumiError(f"{source}: model could not be loaded (safetensors weights required): {exc}") from None


def load_for_serving(model_dir: str | Path, device: str = "auto",
                     dtype: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (eval mode, on ``device``) and tokenizer. The tokenizer comes from the directory itself, or for an
    adapter without tokenizer files from its base; it adds BOS to completion prompts as pretraining data has it."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LumiError(f"{model_dir}: model directory not found")
    if dtype != "auto" and dtype not in DTYPES:
        raise LumiError(f"dtype {dtype!r}: expected auto or one of {sorted(DTYPES)}")
    if is_adapter_dir(model_dir):
        from peft import PeftModel  # only adapter directories need peft

        base = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise LumiError(f"{model_dir / ADAPTER_CONFIG}: no base_model_name_or_path, so the base model is unknown")
        try:
            model = PeftModel.from_pretrained(_load_base(base, dtype), model_dir).merge_and_unload()
        except (OSError, ValueError) as exc:
            raise LumiError(f"{model_dir}: adapter could not be loaded onto {base}: {exc}") from None
        tokenizer_dir = model_dir if _has_tokenizer(model_dir) else Path(base)
    else:
        if not (model_dir / "config.json").is_file():
            raise LumiError(f"{model_dir}: not a model directory (no config.json, no {ADAPTER_CONFIG})")
        model, tokenizer_dir = _load_base(model_dir, dtype), model_dir
    tokenizer = load_tokenizer(tokenizer_dir, add_bos=True)
    if len(tokenizer) > model.config.vocab_size:
        raise LumiError(f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the model only "
                        f"{model.config.vocab_size} embeddings")
    return model.to(resolve_device(device)).eval(), tokenizer
