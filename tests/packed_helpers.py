"""Packed data directories built from token ids, for training tests.

They are written in stage 30's format (``lumi/formats/packed.py``) from token-id documents the test chooses, so a test
controls exactly what the model sees (e.g. sequences where each token is a fixed function of the previous one).
Also the nano architecture, the environment of training subprocesses and a run's logged training losses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lumi.core.files import atomic_write_json
from lumi.core.special_tokens import BOS_ID, EOS_ID, SPECIAL_IDS
from lumi.formats.metrics import read_metrics
from lumi.formats.packed import MANIFEST, PACKED_FORMAT, token_dtype
from lumi.formats.tokenizer import tokenizer_sha256

FIRST_TEXT_ID = max(SPECIAL_IDS.values()) + 1  # ids below are special tokens


def nano_architecture(vocab_size: int, seq_len: int, tie_embeddings: bool) -> dict:
    """The 2-layer x 64 model the training tests use: small enough for many short CPU runs."""
    return {"name": "nano", "vocab_size": vocab_size, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
            "num_kv_heads": 2, "intermediate_size": 128, "max_seq_len": seq_len, "rope_theta": 10000.0,
            "tie_embeddings": tie_embeddings, "dropout": 0.0, "init_std": 0.02, "rms_norm_eps": 1e-5}


def subprocess_env(extra: dict | None = None) -> dict:
    """The environment of a training subprocess: one intra-op thread (these models are tiny), plus ``extra``."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **(extra or {})}


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, train/loss)`` of every record of a run's ``metrics.jsonl`` that has a training loss."""
    return [(r["step"], r["train/loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r]


def write_packed_dir(directory: Path, tokenizer_dir: Path, train_docs: list[list[int]], val_docs: list[list[int]],
                     seq_len: int, vocab_size: int, bytes_per_token: int = 4) -> Path:
    """Pack token-id documents (each given without BOS/EOS) into the ``lumi/formats/packed.py`` format: ``BOS doc EOS``
    concatenated, cut into rows, the tail that does not fill a row dropped (as stage 30 does)."""
    directory.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    splits = {}
    for name, docs in (("train", train_docs), ("val", val_docs)):
        stream = np.array([t for doc in docs for t in (BOS_ID, *doc, EOS_ID)], dtype=dtype)
        rows = stream.size // seq_len
        stream[:rows * seq_len].tofile(directory / f"{name}.bin")
        kept_fraction = rows * seq_len / max(stream.size, 1)
        splits[name] = {"file": f"{name}.bin", "rows": rows, "tokens": rows * seq_len, "documents": len(docs),
                        "bytes": round(bytes_per_token * sum(len(doc) for doc in docs) * kept_fraction)}
    atomic_write_json(directory / MANIFEST, {
        "format": PACKED_FORMAT, "seq_len": seq_len, "dtype": dtype.name, "vocab_size": vocab_size,
        "tokenizer_sha256": tokenizer_sha256(tokenizer_dir), "splits": splits})
    return directory


def function_documents(count: int, length: int, vocab_size: int, seed: int, starts: int = 4) -> list[list[int]]:
    """Documents where every token after the first is a fixed function (a permutation) of the one before it; the
    first token is one of ``starts`` choices."""
    low = FIRST_TEXT_ID
    successor = np.random.default_rng(12345).permutation(np.arange(low, vocab_size))
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(count):
        token = int(rng.integers(low, low + starts))
        doc = [token]
        for _ in range(length - 1):
            token = int(successor[token - low])
            doc.append(token)
        docs.append(doc)
    return docs


def random_documents(count: int, vocab_size: int, seed: int, min_len: int = 5, max_len: int = 60) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    low = FIRST_TEXT_ID
    return [rng.integers(low, vocab_size, int(rng.integers(min_len, max_len))).tolist() for _ in range(count)]
