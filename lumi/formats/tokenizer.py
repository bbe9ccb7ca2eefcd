"""A stage-20 tokenizer directory as every later stage reads it: its file names, metadata, integrity check and
the two loaders (SentencePiece for packing and training, transformers for evaluation and serving), special ids
checked on every load. Written by ``lumi.data.tokenizer_training``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import sentencepiece as spm

from lumi.core.errors import LumiError
from lumi.core.files import read_manifest_file, sha256_file
from lumi.core.special_tokens import SPECIAL_IDS

if TYPE_CHECKING:  # transformers takes seconds to import; only load_hf_tokenizer needs it
    from transformers import PreTrainedTokenizerBase

TOKENIZER_FORMAT = "lumi-tokenizer/1"
SPM_MODEL, SPM_VOCAB = "spm.model", "spm.vocab"
HF_TOKENIZER, HF_CONFIG = "tokenizer.json", "tokenizer_config.json"
META, REPORT = "tokenizer_meta.json", "validation_report.json"
REQUIRED_FILES = (SPM_MODEL, META, HF_TOKENIZER)
HASHED_FILES = (SPM_MODEL, HF_TOKENIZER, HF_CONFIG)


def verify_special_ids(piece_at: Callable[[int], str], source: str) -> None:
    for token, token_id in SPECIAL_IDS.items():
        found = piece_at(token_id)
        if found != token:
            raise LumiError(f"{source}: id {token_id} is {found!r}, expected {token!r} (lumi/core/special_tokens.py)")


def load_tokenizer_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    for name in REQUIRED_FILES if directory.is_dir() else ():
        if not (directory / name).is_file():
            raise LumiError(f"{directory}: not a tokenizer directory ({name} is missing)")
    return read_manifest_file(directory, META, TOKENIZER_FORMAT, "tokenizer")


def tokenizer_sha256(directory: str | Path) -> str:
    """The recorded sha256 of ``spm.model``: the tokenizer's identity, recorded by every stage that uses it."""
    return load_tokenizer_meta(directory)["sha256"]


def check_tokenizer_integrity(directory: str | Path) -> dict[str, Any]:
    """Recompute the hashes of the model files and refuse any that differs from the metadata; returns the metadata."""
    directory = Path(directory)
    meta = load_tokenizer_meta(directory)
    for name, digest in meta["files"].items():  # spm.model among them; "sha256" repeats its digest
        if sha256_file(directory / name) != digest:
            raise LumiError(f"{directory / name}: sha256 differs from {META} (file modified after training?)")
    return meta


def load_sentencepiece(directory: str | Path, check_integrity: bool = True) -> spm.SentencePieceProcessor:
    """The SentencePiece model of a stage-20 directory, its special ids checked against the layout.
    ``check_integrity=False`` skips the hash check against ``tokenizer_meta.json`` (then only ``spm.model`` is
    needed: ``lumi pack --skip-tokenizer-check``)."""
    directory = Path(directory)
    if check_integrity:
        check_tokenizer_integrity(directory)
    model = directory / SPM_MODEL
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model))
    except (OSError, RuntimeError) as exc:
        raise LumiError(f"{model}: not a readable SentencePiece model ({exc})") from None
    verify_special_ids(sp.id_to_piece, str(model))
    return sp


def load_hf_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The transformers tokenizer (``AutoTokenizer``); same ids as :func:`load_sentencepiece`."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    check_tokenizer_integrity(directory)
    hf = AutoTokenizer.from_pretrained(str(directory))
    verify_special_ids(hf.convert_ids_to_tokens, str(directory / HF_TOKENIZER))
    return hf
