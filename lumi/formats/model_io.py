"""What loading a checkpoint directory needs below the loader (``lumi.loading``): the device and dtype names, the
tokenizer loader and the tokenizer fingerprint evaluation reports carry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lumi.core.errors import LumiError

# Any one of these makes a directory loadable by AutoTokenizer; we hash all that are present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "spm.model")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` (cuda when available, else cpu) or a torch device string, refused in one line when torch does not
    know it or this machine does not have it (torch's own errors are a parse error or an assertion deep inside)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise LumiError(f"device {device!r}: not a torch device (use auto, cpu, cuda, cuda:N or mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LumiError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                            f"built {'with CUDA ' + torch.version.cuda if torch.version.cuda else 'for CPU only'}); "
                            "use --device cpu or auto")
        if parsed.index is not None and parsed.index >= count:
            raise LumiError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise LumiError(f"device {device!r}: MPS is not available here; use --device cpu or auto")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise LumiError(f"device {device!r}: lumi runs on cpu, cuda or mps")
    return parsed


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the tokenizer files in ``model_dir`` (name + content), so results name the exact tokenizer."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def load_tokenizer(model_dir: str | Path, add_bos: bool | None = None) -> PreTrainedTokenizerBase:
    """``add_bos`` sets whether ``encode`` prepends BOS (None: the tokenizer's own setting). It is passed to
    ``AutoTokenizer`` as ``add_bos_token``, exactly as ``lm_eval --model_args add_bos_token=...`` does, so the token
    ids match lm-eval's for the same setting. The project tokenizer adds no BOS by itself."""
    model_dir = Path(model_dir)
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise LumiError(f"{model_dir}: no tokenizer files (tokenizer.json or tokenizer.model); "
                        "save the tokenizer into the checkpoint directory next to the model")
    try:
        return AutoTokenizer.from_pretrained(model_dir, **({} if add_bos is None else {"add_bos_token": add_bos}))
    except (OSError, ValueError) as exc:
        raise LumiError(f"{model_dir}: tokenizer could not be loaded: {exc}") from None


def context_length(model: PreTrainedModel) -> int:
    """The longest sequence the model was built for (lm-eval reads the same field)."""
    return int(model.config.max_position_embeddings)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
