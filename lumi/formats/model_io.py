"""Load a checkpoint directory (``save_pretrained`` model + tokenizer files) for evaluation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lumi.core.errors import LumiError
from lumi.formats.tokenizer import META as TOKENIZER_META, check_tokenizer_integrity

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


def load_model(model_dir: str | Path, device: str = "auto", dtype: str = "auto") -> PreTrainedModel:
    """``dtype="auto"`` keeps the checkpoint's dtype, as ``lm_eval --model hf`` does by default. A LoRA adapter dir
    is loaded merged into the base it records (refused if the base's weights changed), in fp32 unless ``dtype``."""
    from lumi.lora import is_adapter_dir, merged_model

    model_dir = Path(model_dir)
    if is_adapter_dir(model_dir):
        return merged_model(model_dir).to(DTYPES.get(dtype, torch.float32)).to(resolve_device(device)).eval()
    if not (model_dir / "config.json").is_file():
        raise LumiError(f"{model_dir}: not a model directory (no config.json)")
    if dtype != "auto" and dtype not in DTYPES:
        raise LumiError(f"dtype {dtype!r}: expected auto or one of {sorted(DTYPES)}")
    target = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES.get(dtype, "auto"))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        # Truncated or damaged weights (SafetensorError), a config whose shapes differ from the weights
        # (RuntimeError "size mismatch"), a config transformers cannot read (ValueError).
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LumiError(f"{model_dir}: model could not be loaded ({type(exc).__name__}: {reason})") from None
    return model.to(target).eval()


def load_for_evaluation(model_dir: str | Path, device: str = "auto", dtype: str = "auto",
                        add_bos: bool | None = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from one directory, refusing a pair whose special-token ids disagree."""
    if not Path(model_dir).is_dir():
        raise LumiError(f"{model_dir}: model directory not found" if not Path(model_dir).exists()
                        else f"{model_dir}: not a directory (expected a checkpoint directory)")
    if (Path(model_dir) / TOKENIZER_META).is_file():  # a lumi checkpoint: its tokenizer files are the trained ones
        check_tokenizer_integrity(model_dir)
    tokenizer = load_tokenizer(model_dir, add_bos)
    model = load_model(model_dir, device, dtype)
    for name in ("bos_token_id", "eos_token_id"):
        model_id, tokenizer_id = getattr(model.config, name, None), getattr(tokenizer, name, None)
        if model_id is not None and tokenizer_id is not None and model_id != tokenizer_id:
            raise LumiError(f"{model_dir}: {name} is {model_id} in config.json but {tokenizer_id} in the tokenizer")
    if len(tokenizer) > model.config.vocab_size:
        raise LumiError(f"{model_dir}: tokenizer has {len(tokenizer)} tokens but the model only "
                        f"{model.config.vocab_size} embeddings")
    return model, tokenizer


def context_length(model: PreTrainedModel) -> int:
    """The longest sequence the model was built for (lm-eval reads the same field)."""
    return int(model.config.max_position_embeddings)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
