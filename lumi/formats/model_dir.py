"""A model directory (a checkpoint, a merged model, an adapter) as every stage after pretraining opens it: found,
verified against what its writer recorded, and its tokenizer identified -- before any weights are read.

What is checked, the same for sft, dpo, evaluate, merge-lora, serve and chat (``lumi.loading.load_model`` calls it):
``config.json`` readable; ``checksums.json`` (every lumi checkpoint and merged model has one, written last) -- size of
every file it lists, and sha256 of those it lists; ``tokenizer_meta.json`` of a pretraining checkpoint; an adapter's
base (``lumi.formats.adapter``), verified the same way. A missing dir that a killed ``--force`` run set aside is named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lumi.core.errors import LumiError
from lumi.core.files import read_json, set_aside_copies, sha256_file, verify_file
from lumi.formats.adapter import adapter_base, is_adapter_dir
from lumi.formats.tokenizer import META as TOKENIZER_META, SPM_MODEL, check_tokenizer_integrity

CHECKSUMS_FILE = "checksums.json"


def tokenizer_identity(directory: str | Path) -> str:
    """The tokenizer's identity: the sha256 of its SentencePiece model (``spm.model``), which every tokenizer dir,
    data dir, checkpoint and merged model of this project carries. The one name (``tokenizer_sha256`` in manifests)
    and the one function; refused, in one line, when the directory has no ``spm.model`` (it cannot tell)."""
    path = Path(directory) / SPM_MODEL
    if not path.is_file():
        raise LumiError(f"{directory}: no {SPM_MODEL}, so its tokenizer cannot be identified (a model dir written "
                        "by lumi carries it; copy the tokenizer's spm.model beside the model)")
    return sha256_file(path)


def require_same_tokenizer(model_dir: str | Path, expected: str, data_dir: str | Path, rebuild: str) -> None:
    """Refuse a model whose tokenizer is not the one the data at ``data_dir`` was built with (``expected``: its
    manifest's ``tokenizer_sha256``); ``rebuild`` says how to rebuild the data."""
    if tokenizer_identity(model_dir) != expected:
        raise LumiError(f"{model_dir}: its tokenizer (spm.model) is not the one {data_dir} was built with; {rebuild}")


def write_checksums(directory: Path) -> None:
    """``checksums.json``: size and sha256 of every other file of ``directory``; written last, so its presence says
    every file above was written whole."""
    from lumi.core.files import atomic_write_json

    atomic_write_json(directory / CHECKSUMS_FILE, {
        item.name: {"bytes": item.stat().st_size, "sha256": sha256_file(item)}
        for item in sorted(directory.iterdir()) if item.is_file() and item.name != CHECKSUMS_FILE})


def verify_checksums(directory: Path) -> None:
    """Every file ``checksums.json`` lists has its recorded size and sha256 (a flipped byte, a truncated weight
    file, an edited tokenizer.json); a directory without one (an older or foreign model) is not checked."""
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        return
    checksums = read_json(path, what="checksums")
    if not isinstance(checksums, dict):
        raise LumiError(f"{path}: expected an object of file -> {{bytes, sha256}}")
    for name, expected in checksums.items():
        if not isinstance(expected, dict):
            raise LumiError(f"{path}: entry {name!r} is not an object of bytes and sha256")
        verify_file(directory / name, path, expected.get("bytes"), expected.get("sha256"))


def _missing(path: Path, what: str) -> LumiError:
    """A missing model dir; when a killed ``--force`` run set the finished one aside, where it is."""
    for parent in (path, *path.parents[:2]):
        kept = set_aside_copies(parent)
        if kept:
            inside = kept[0] / path.relative_to(parent)
            return LumiError(f"{path}: model directory not found (the {what}); an interrupted --force run left "
                             f"the finished one in {inside}: finish the new run (--resume auto) or use that path")
    return LumiError(f"{path}: model directory not found (the {what})")


@dataclass(frozen=True)
class ModelDir:
    """A verified model dir: ``path``; for an adapter, ``base`` (its verified base model dir)."""

    path: Path
    config: dict[str, Any]
    base: "ModelDir | None" = None

    @property
    def is_adapter(self) -> bool:
        return self.base is not None


def open_model_dir(path: str | Path, what: str = "model", allow_adapter: bool = True,
                   base_dir: str | Path | None = None) -> ModelDir:
    """``path`` verified as a model dir (or, when ``allow_adapter``, an adapter dir onto its verified base; ``base_dir``
    overrides the recorded base). ``what`` names its role in messages ("SFT base model", "DPO policy")."""
    path = Path(path)
    if not path.exists():
        raise _missing(path, what)
    if not path.is_dir():
        raise LumiError(f"{path}: not a directory (expected a checkpoint directory: the {what})")
    if is_adapter_dir(path):
        if not allow_adapter:
            raise LumiError(f"{path}: is a LoRA adapter dir, not a base model (the {what}); merge it first "
                            "(lumi merge-lora) or pass the model it was trained on")
        verify_checksums(path)
        if (path / TOKENIZER_META).is_file():  # stage 70/90/97 adapters carry the chat tokenizer's record
            check_tokenizer_integrity(path)
        adapter_config = read_json(path / "adapter_config.json", what="adapter config")
        base = open_model_dir(adapter_base(path, base_dir), f"base model of {path}", allow_adapter=False)
        return ModelDir(path, adapter_config if isinstance(adapter_config, dict) else {}, base)
    if not (path / "config.json").is_file():
        raise LumiError(f"{path}: not a model directory (no config.json, no adapter_config.json)")
    config = read_json(path / "config.json", what="model config")
    if not isinstance(config, dict):
        raise LumiError(f"{path / 'config.json'}: expected a JSON object, found {type(config).__name__}")
    verify_checksums(path)
    if (path / TOKENIZER_META).is_file():  # any lumi checkpoint: its tokenizer files as trained or chat-templated
        check_tokenizer_integrity(path)
    return ModelDir(path, config)
