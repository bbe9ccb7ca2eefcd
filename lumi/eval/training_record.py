"""What a checkpoint records about its own training (``pretrain_config.json``, written with every checkpoint): the
packed data dirs it was trained on and the row length it was trained at. The evaluator defaults to them -- the val
split of the checkpoint's own data, and a text-perplexity window of the trained length (a longer window than the
model ever trained on scores worse, not better) -- instead of guessing a path or using ``max_position_embeddings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lumi.core.files import read_json
from lumi.formats.checkpoint import PRETRAIN_CONFIG_FILE


@dataclass(frozen=True)
class TrainingRecord:
    file: Path  # where it was read from
    data_dirs: tuple[str, ...]  # as given to the trainer (relative paths are relative to where it ran)
    seq_len: int | None


def training_record(model_path: str | Path) -> TrainingRecord | None:
    """The record of a checkpoint written by ``lumi pretrain``; None for any other model directory."""
    path = Path(model_path) / PRETRAIN_CONFIG_FILE
    if not path.is_file():
        return None
    saved = read_json(path, what="checkpoint config")
    seq_len = saved.get("seq_len")
    return TrainingRecord(path, tuple(saved.get("config", {}).get("data_dirs", [])),
                          int(seq_len) if seq_len is not None else None)
