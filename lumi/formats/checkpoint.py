"""Training checkpoints: ``<run_dir>/step_<N>/`` and ``<run_dir>/final/``, each written atomically.

A checkpoint is a plain ``save_pretrained`` directory (config, safetensors weights, generation config) plus the
tokenizer files, so ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it with no code of ours, plus what exact resume
needs: ``trainer_state.pt`` (optimizer, scheduler, RNG states, data position, step, tokens seen) and the resolved
settings under the name the objective gives (``pretrain_config.json`` for pretraining). The directory is assembled
under a temporary name and renamed into place (``lumi.core.files.staged_output_dir``), so a run killed while saving
never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import PreTrainedModel

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, read_json, staged_output_dir

STATE_FILE = "trainer_state.pt"
PRETRAIN_CONFIG_FILE = "pretrain_config.json"  # a pretraining run's resolved settings (the objective's config_file)
SUMMARY_FILE = "trainer_state.json"
FINAL = "final"
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dir_name(step: int) -> str:
    return f"step_{step}"


def rng_state() -> dict[str, Any]:
    """Every random generator training may touch. numpy's key array is stored as a list so the file loads with
    ``torch.load(weights_only=True)``."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = dict(numpy_state["state"], key=np.array(numpy_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, write_model: Callable[[Path], None], trainer_state: dict[str, Any],
                    config_file: str, config: dict[str, Any], overwrite: bool = False) -> Path:
    """Write one checkpoint directory atomically: ``write_model(staging_dir)`` puts the loadable model there (the
    objective's ``save_model``), then the trainer state and the resolved settings (``config_file``) go beside it.
    ``overwrite`` replaces an existing one (``final/``)."""
    with staged_output_dir(directory, force=overwrite) as staging:
        write_model(staging)
        torch.save(trainer_state, staging / STATE_FILE)
        atomic_write_json(staging / config_file, config)
        summary = {k: v for k, v in trainer_state.items() if isinstance(v, (int, float, str))}
        atomic_write_json(staging / SUMMARY_FILE, summary)
    return directory


def save_pretrained_with_tokenizer(directory: Path, model: PreTrainedModel, tokenizer_dir: Path,
                                   state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``save_pretrained`` plus every file of the tokenizer directory: what transformers needs to load the checkpoint.
    ``state_dict`` supplies whole weights when the model's own are sharded (FSDP2)."""
    model.save_pretrained(directory, state_dict=state_dict)
    for item in sorted(Path(tokenizer_dir).iterdir()):
        if item.is_file():
            shutil.copy2(item, directory / item.name)


def load_trainer_state(directory: Path, config_file: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer state, resolved settings saved as ``config_file``) of a checkpoint."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise LumiError(f"{directory}: not a training checkpoint ({STATE_FILE} missing)")
    return torch.load(path, map_location="cpu", weights_only=True), read_json(directory / config_file,
                                                                              what="checkpoint config")


def checkpoint_step(directory: Path) -> int:
    """The step a checkpoint was saved at, from its small JSON summary (not the optimizer state)."""
    return int(read_json(directory / SUMMARY_FILE, what="checkpoint summary")["step"])


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints, oldest first (temporary directories have other names and are ignored)."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return sorted(found)


def rotate_checkpoints(run_dir: Path, keep_last_k: int) -> list[Path]:
    """Delete all but the newest ``keep_last_k`` step checkpoints; returns what was deleted."""
    doomed = [path for _, path in step_checkpoints(run_dir)[:-keep_last_k]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
