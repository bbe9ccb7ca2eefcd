"""Tiny checkpoint directories for the evaluator's tests: the project's real tokenizer (stage 20, trained on a small
synthetic-world corpus) copied next to a real ``LlamaForCausalLM`` saved with ``save_pretrained``, as checkpoints are.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from helpers import make_corpus_dir
from packed_helpers import nano_architecture

from lumi.core.files import atomic_write_jsonl
from lumi.data.synthetic import SyntheticWorld
from lumi.model import ArchitectureConfig, build_model
from lumi.data.tokenizer_training import TokenizerConfig, train_tokenizer

TINY_VOCAB = 512


def training_text(num_documents: int = 300) -> list[str]:
    """Synthetic-world documents: English-like text that is not any benchmark's."""
    return list(SyntheticWorld.generate(seed=0, num_people=40, num_places=8).documents(num_documents, seed=1))


def write_tokenizer(directory: Path, vocab_size: int = TINY_VOCAB) -> Path:
    """A stage-20 tokenizer directory (BPE, byte fallback, the project's special ids) at ``directory``."""
    with tempfile.TemporaryDirectory() as scratch:
        corpus = make_corpus_dir(Path(scratch) / "corpus", training_text())
        train_tokenizer(corpus, directory, TokenizerConfig(vocab_size=vocab_size, model_type="bpe",
                                                           holdout_fraction=0.05, num_threads=1))
    return directory


def make_tiny_model_dir(directory: Path, tokenizer_dir: Path | None, seed: int = 0, max_seq_len: int = 128,
                        init_std: float = 0.1) -> Path:
    """A checkpoint: 2 layers, hidden 64, random weights (``init_std`` large enough that choices get clearly
    different scores), plus the files of ``tokenizer_dir`` (none when it is None). Deterministic for a seed."""
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        for item in Path(tokenizer_dir).iterdir():
            shutil.copy2(item, directory / item.name)
    arch = ArchitectureConfig(**{**nano_architecture(TINY_VOCAB, max_seq_len, tie_embeddings=True),
                                 "name": "test-tiny", "init_std": init_std})
    torch.manual_seed(seed)
    build_model(arch).save_pretrained(directory)
    return directory


def write_jsonl(path: Path, records: list[dict]) -> Path:
    atomic_write_jsonl(path, records)
    return path


def head_lines(source: Path, destination: Path, lines: int) -> Path:
    """The first ``lines`` lines of a sample file (tests score a few dozen items, not 300)."""
    with open(source, encoding="utf-8") as handle:
        destination.write_text("".join(line for _, line in zip(range(lines), handle)), encoding="utf-8")
    return destination
