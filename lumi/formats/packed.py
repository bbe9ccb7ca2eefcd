"""The packed dataset format written by stage 30 and read by training and evaluation.

A packed directory holds ``train.bin`` and ``val.bin`` -- flat token streams as raw little-endian ``uint16`` (vocab
<= 65,536) or ``uint32``, each a whole number of rows of ``seq_len`` tokens -- and ``final_manifest.json``.

Each document is ``BOS tokens... EOS``; documents are concatenated and the stream is cut into rows, so a document may
continue from one row into the next. **Labels are not shifted in the data**: a row is both ``input_ids`` and
``labels``, and the model (transformers' causal-LM loss or our fused loss) shifts once. Document boundaries inside a
row are recoverable from the BOS tokens (BOS is a control id that plain text never produces), which is what training
uses to keep packed documents from attending to each other. The tail of a split that does not fill a row is
dropped and recorded (``dropped_tail_tokens``, ``dropped_tail_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lumi.core.errors import LumiError
from lumi.core.files import read_manifest_file, sha256_file, verify_file
from lumi.formats.tokenizer import SPM_MODEL

PACKED_FORMAT = "lumi-packed/1"
MANIFEST = "final_manifest.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class PackedSplit:
    """One split as a read-only memory map of shape (rows, seq_len)."""

    name: str
    rows: np.memmap
    seq_len: int
    documents: int
    bytes: int  # UTF-8 bytes of the text the split's rows hold (dropped tail excluded), for bits per byte

    @property
    def num_rows(self) -> int:
        return int(self.rows.shape[0])

    @property
    def num_tokens(self) -> int:
        return self.num_rows * self.seq_len


def read_packed_manifest(packed_dir: str | Path) -> dict[str, Any]:
    return read_manifest_file(packed_dir, MANIFEST, PACKED_FORMAT, what="packed data")


def load_packed_split(packed_dir: str | Path, split: str) -> PackedSplit:
    packed_dir = Path(packed_dir)
    manifest = read_packed_manifest(packed_dir)
    if split not in manifest["splits"]:
        raise LumiError(f"{packed_dir}: no '{split}' split (have {sorted(manifest['splits'])})")
    info = manifest["splits"][split]
    seq_len = int(manifest["seq_len"])
    path = packed_dir / info["file"]
    dtype = np.dtype(manifest["dtype"])
    verify_file(path, packed_dir / MANIFEST, size=int(info["rows"]) * seq_len * dtype.itemsize)
    if info["rows"] == 0:
        rows = np.zeros((0, seq_len), dtype=dtype)
    else:
        rows = np.memmap(path, dtype=dtype, mode="r", shape=(int(info["rows"]), seq_len))
        check_token_ids(path, rows, int(manifest["vocab_size"]))
    return PackedSplit(split, rows, seq_len, int(info["documents"]), int(info["bytes"]))


def check_token_ids(path: Path, rows: np.ndarray, vocab_size: int, chunk_rows: int = 1 << 16) -> None:
    """Refuse a split holding an id >= ``vocab_size`` (damaged bytes of the right size), naming the file and the
    row, before the embedding lookup fails on it with an IndexError. A full scan: numpy's max runs at ~6.5 GB/s
    (docs/RELIABILITY.md), where the file's sha256 (recorded in the manifest) would cost ~770 MB/s at every start;
    a flipped bit that stays inside the vocabulary is not caught (it is also harmless to a run)."""
    for start in range(0, rows.shape[0], chunk_rows):
        chunk = np.asarray(rows[start:start + chunk_rows])
        if int(chunk.max()) >= vocab_size:
            row = start + int(np.flatnonzero((chunk >= vocab_size).any(axis=1))[0])
            raise LumiError(f"{path}: damaged: row {row} holds token id {int(chunk[row - start].max())} >= "
                            f"vocab_size {vocab_size}; re-pack it")


def unigram_entropy(split: PackedSplit, chunk_rows: int = 4096) -> float:
    """Entropy in nats/token of the split's token frequencies: the loss of the best model that ignores context,
    the baseline a trained model's val loss must beat. Counted chunk by chunk, so memory stays bounded."""
    counts = np.zeros(1, dtype=np.int64)
    for start in range(0, split.num_rows, chunk_rows):
        chunk = np.bincount(np.asarray(split.rows[start:start + chunk_rows]).ravel())
        if len(chunk) > len(counts):
            counts = np.pad(counts, (0, len(chunk) - len(counts)))
        counts[:len(chunk)] += chunk
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def spm_model_sha256(tokenizer_dir: str | Path) -> str:
    """sha256 of the file ``spm.model`` itself: the tokenizer identity recorded in, and checked against, packed data."""
    model = Path(tokenizer_dir) / SPM_MODEL
    if not model.is_file():
        raise LumiError(f"{tokenizer_dir}: tokenizer model {SPM_MODEL} not found")
    return sha256_file(model)


def check_packed_tokenizer(packed_dir: str | Path, tokenizer_dir: str | Path) -> None:
    """Refuse a tokenizer other than the one the packed data was made with (training and evaluation call this)."""
    recorded = read_packed_manifest(packed_dir)["tokenizer_sha256"]
    actual = spm_model_sha256(Path(tokenizer_dir))
    if recorded != actual:
        raise LumiError(f"{packed_dir}: packed with tokenizer sha256 {recorded}, but {tokenizer_dir} has sha256 "
                        f"{actual}; use the tokenizer the data was packed with, or re-pack")
