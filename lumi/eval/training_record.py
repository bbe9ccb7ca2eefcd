"""What a checkpoint records about its own training (the resolved settings written with every checkpoint:
``pretrain_config.json``, ``sft_config.json``, ``dpo_config.json``): the data it was trained on and the row length it
was trained at. The evaluator defaults to them -- the val split of the checkpoint's own data (packed text after
pretraining, the SFT data dir's assistant tokens after SFT), and a text-perplexity window of the trained length (a
longer window than the model ever trained on scores worse, not better) -- instead of guessing a path or using
``max_position_embeddings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lumi.core.files import read_json
from lumi.formats.checkpoint import PRETRAIN_CONFIG_FILE

SFT_CONFIG_FILE, DPO_CONFIG_FILE = "sft_config.json", "dpo_config.json"  # the SFT and DPO objectives' config_file


@dataclass(frozen=True)
class TrainingRecord:
    file: Path  # where it was read from
    stage: Literal["pretrain", "sft", "dpo"]
    data_dirs: tuple[str, ...]  # as given to the trainer (relative paths are relative to where it ran)
    seq_len: int | None
    eval_rows: int | None  # val rows its trainer scored (eval_max_rows): the evaluator's default, so the two agree


def training_record(model_path: str | Path) -> TrainingRecord | None:
    """The record of a checkpoint (or adapter) written by ``lumi pretrain``, ``lumi sft`` or ``lumi dpo``; None for
    any other model directory."""
    for stage, name in (("pretrain", PRETRAIN_CONFIG_FILE), ("sft", SFT_CONFIG_FILE), ("dpo", DPO_CONFIG_FILE)):
        path = Path(model_path) / name
        if path.is_file():
            saved = read_json(path, what="checkpoint config")
            config = saved.get("config", {})
            data_dirs = config.get("data_dirs", []) if stage == "pretrain" else [config.get("data_dir")]
            seq_len, eval_rows = saved.get("seq_len"), config.get("eval_max_rows")
            return TrainingRecord(path, stage, tuple(d for d in data_dirs if d),  # type: ignore[arg-type]
                                  int(seq_len) if seq_len is not None else None,
                                  int(eval_rows) if isinstance(eval_rows, int) else None)
    return None
