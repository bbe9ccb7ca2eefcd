"""The token arrays of stage 60 (SFT rows: ``<split>_tokens.npy`` + ``<split>_mask.npy``) and stage 85 (DPO pairs:
``<split>_pairs.npz``) as every consumer reads them -- the trainer, evaluate -- verified before use.

A damaged file is refused in one line naming it (a truncated ``.npy``/``.npz``, a missing array, a mask whose shape
differs from its tokens), and so is data that would train silently wrong: an id outside the model's vocabulary (the
embedding lookup would fail mid-run, or on a GPU read garbage), a mask that is not 0/1, a split with no target token
(loss 0: nothing learned), a pair whose chosen or rejected answer has no token.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lumi.core.errors import LumiError
from lumi.core.files import sha256_file, verify_file

PAIR_ARRAYS = ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")
# What np.load raises on a cut-short or damaged file.
_LOAD_ERRORS = (ValueError, EOFError, OSError, zipfile.BadZipFile, KeyError, TypeError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def read_npy(path: Path) -> np.ndarray:
    """A 2-D integer array from ``path`` (no pickles), or one line naming the file."""
    if not path.is_file():
        raise LumiError(f"{path}: missing; rebuild the data")
    try:
        array = np.load(path, allow_pickle=False)
    except _LOAD_ERRORS as exc:
        raise LumiError(f"{path}: damaged ({_first_line(exc)}); rebuild the data") from None
    _check_matrix(path, array)
    return array


def _check_matrix(path: Path | str, array: np.ndarray) -> None:
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise LumiError(f"{path}: damaged: expected a 2-D integer array, found {array.ndim}-D {array.dtype}")


def read_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the archive at ``path``, each a 2-D integer array of one shape, or one line."""
    if not path.is_file():
        raise LumiError(f"{path}: missing; rebuild the data")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise LumiError(f"{path}: damaged: no {', '.join(missing)} array; rebuild the data")
            arrays = {name: archive[name] for name in names}
    except _LOAD_ERRORS as exc:
        raise LumiError(f"{path}: damaged ({_first_line(exc)}); rebuild the data") from None
    for name, array in arrays.items():
        _check_matrix(f"{path}[{name}]", array)
    shapes = {array.shape for array in arrays.values()}
    if len(shapes) != 1:
        raise LumiError(f"{path}: damaged: its arrays differ in shape "
                        f"({', '.join(f'{n} {a.shape}' for n, a in arrays.items())}); rebuild the data")
    return arrays


def check_ids(path: Path | str, ids: np.ndarray, vocab_size: int) -> None:
    """Every id in ``[0, vocab_size)``, else one line naming the file and the first bad row."""
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        value = int(ids[row][bad[row]][0])
        raise LumiError(f"{path}: row {row} holds token id {value}, outside the model's vocabulary of {vocab_size} "
                        "(built with another tokenizer, or damaged); rebuild the data")


def check_mask(path: Path | str, mask: np.ndarray) -> None:
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise LumiError(f"{path}: damaged: a loss mask holds values other than 0 and 1")


def read_sft_split(directory: str | Path, split: str, vocab_size: int | None = None,
                   need_targets: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss mask) of a stage-60 split, verified: same shape, mask 0/1, ids inside ``vocab_size`` (when
    given), and (``need_targets``) at least one target token -- an all-zero mask trains to loss 0 and learns
    nothing."""
    directory = Path(directory)
    tokens, mask = (read_npy(directory / f"{split}_{name}.npy") for name in ("tokens", "mask"))
    if tokens.shape != mask.shape:
        raise LumiError(f"{directory / f'{split}_mask.npy'}: damaged: shape {mask.shape}, its tokens "
                        f"{tokens.shape}; rebuild the data")
    check_mask(directory / f"{split}_mask.npy", mask)
    if vocab_size is not None:
        check_ids(directory / f"{split}_tokens.npy", tokens, vocab_size)
    if need_targets and len(tokens) and not mask[:, 1:].any():
        raise LumiError(f"{directory / f'{split}_mask.npy'}: no target token in split {split!r} (the loss mask is "
                        "all zero: nothing would be learned); rebuild the data")
    return tokens, mask


def read_pairs(directory: str | Path, split: str, vocab_size: int | None = None) -> dict[str, np.ndarray]:
    """The pairs of a stage-85 split, verified: the four arrays of one shape, masks 0/1, ids inside ``vocab_size``
    (when given), and a non-empty answer on both sides of every pair."""
    path = Path(directory) / f"{split}_pairs.npz"
    arrays = read_npz(path, PAIR_ARRAYS)
    for side in ("chosen", "rejected"):
        check_mask(path, arrays[f"{side}_mask"])
        if vocab_size is not None:
            check_ids(f"{path}[{side}_ids]", arrays[f"{side}_ids"], vocab_size)
        empty = np.flatnonzero(arrays[f"{side}_mask"].sum(axis=1) == 0)
        if len(empty):
            raise LumiError(f"{path}: pair {int(empty[0])} has no {side} answer token; rebuild the data")
    return arrays


def array_records(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """``files`` of a stage-60/85 manifest: size and sha256 of each array file, so its readers can verify them."""
    return {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
            for name in names}


def verify_data_files(directory: str | Path, manifest: dict, manifest_name: str = "manifest.json") -> None:
    """A stage-60/85 data dir holds what its manifest recorded: the array files (``files``: size and sha256) and the
    chat tokenizer files (``chat_tokenizer_sha256``). A flipped byte in an array, or an edited tokenizer.json or chat
    template, is refused here, before the trainer uses it or copies it into every checkpoint and later stage. A
    manifest of an older version records less, and less is checked."""
    directory = Path(directory)
    files = manifest.get("files")
    for name, record in (files.items() if isinstance(files, dict) else ()):
        if isinstance(record, dict):
            verify_file(directory / name, directory / manifest_name, record.get("bytes"), record.get("sha256"))
    recorded = manifest.get("chat_tokenizer_sha256")
    for name, digest in (recorded.items() if isinstance(recorded, dict) else ()):
        verify_file(directory / "tokenizer" / name, directory / manifest_name, sha256=digest)
