"""Training checkpoints: ``<run_dir>/step_<N>/`` and ``<run_dir>/final/``, each written atomically.

A checkpoint is a plain ``save_pretrained`` directory (config, safetensors weights, generation config) plus the
tokenizer files, so ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it with no code of ours, plus what exact resume
needs: ``trainer_state.pt`` (optimizer, scheduler, RNG states, data position, step, tokens seen) and the resolved
settings under the name the objective gives (``pretrain_config.json`` for pretraining). The directory is assembled
under a temporary name and renamed into place (``lumi.core.files.staged_output_dir``), so a run killed while saving
never leaves a checkpoint that looks complete.

``checksums.json`` (size and sha256 of every other file) is written last, and weights are checked finite before
anything is written: a checkpoint is *intact* when every file matches it. Resume verifies that before trusting a
checkpoint (``newest_intact_checkpoint``) and skips, naming them, the damaged (a truncated ``model.safetensors``), the
incomplete (half-deleted) and the unreadable, falling back to the newest intact one. Rotation renames a checkpoint
away before deleting it, so an interrupted rotation never leaves a half-deleted ``step_<N>``.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import PreTrainedModel

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, discard_dir, read_json, sha256_file, staged_output_dir

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
PRETRAIN_CONFIG_FILE = "pretrain_config.json"  # a pretraining run's resolved settings (the objective's config_file)
SUMMARY_FILE = "trainer_state.json"
CHECKSUMS_FILE = "checksums.json"
FINAL = "final"
_STEP_DIR = re.compile(r"step_(\d+)")
# What a checkpoint without checksums (an older version's) must hold to be trusted at all.
_REQUIRED = ("config.json", "model.safetensors", STATE_FILE, SUMMARY_FILE)


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
                    config_file: str, config: dict[str, Any], overwrite: bool = False,
                    describe: Callable[[Path], None] | None = None) -> Path:
    """Write one checkpoint directory atomically: ``write_model(staging_dir)`` puts the loadable model there (the
    objective's ``save_model``), then the trainer state and the resolved settings (``config_file``) go beside it,
    then ``describe(staging_dir)`` (the model card of ``final/``), read from those files, before the checksums.
    ``overwrite`` replaces an existing one (``final/``)."""
    with staged_output_dir(directory, force=overwrite) as staging:
        write_model(staging)
        torch.save(trainer_state, staging / STATE_FILE)
        atomic_write_json(staging / config_file, config)
        summary = {k: v for k, v in trainer_state.items() if isinstance(v, (int, float, str))}
        atomic_write_json(staging / SUMMARY_FILE, summary)
        if describe is not None:
            describe(staging)
        # Last: its presence says every file above was written whole.
        atomic_write_json(staging / CHECKSUMS_FILE, {
            item.name: {"bytes": item.stat().st_size, "sha256": sha256_file(item)}
            for item in sorted(staging.iterdir()) if item.is_file()})
    return directory


def check_finite_weights(weights: dict[str, torch.Tensor], step: Any, run_dir: Path) -> None:
    """Refuse to save weights holding a NaN or an infinity: the step's loss is checked before its update, so an
    update that overflowed would otherwise be saved and resumed from as the last good checkpoint. One reduction
    per tensor and a single host read."""
    tensors = [t for t in weights.values() if torch.is_floating_point(t)]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        bad = [name for name, t in weights.items() if torch.is_floating_point(t) and not torch.isfinite(t).all()]
        newest = step_checkpoints(run_dir)
        kept = f"the last good checkpoint is {newest[-1][1]}" if newest else "no checkpoint was saved yet"
        raise LumiError(f"step {step}: non-finite weights after the update ({', '.join(bad[:3])}"
                        f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); not saved, {kept}. Lower lr, "
                        "raise warmup_steps, or check the data")


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot be trusted to resume from (None: intact): a file missing, cut short or changed
    since ``checksums.json`` was written, or no checksums at all and a required file missing."""
    checksums_path = directory / CHECKSUMS_FILE
    if not checksums_path.is_file():
        missing = [name for name in _REQUIRED if not (directory / name).is_file()]
        return f"incomplete: no {CHECKSUMS_FILE} and {', '.join(missing)} missing" if missing else None
    try:
        checksums = read_json(checksums_path, what="checkpoint checksums")
        for name, expected in checksums.items():
            path = directory / name
            if not path.is_file():
                return f"incomplete: {name} missing"
            if path.stat().st_size != expected["bytes"]:
                return f"damaged: {name} is {path.stat().st_size} bytes, {CHECKSUMS_FILE} records {expected['bytes']}"
            if sha256_file(path) != expected["sha256"]:
                return f"damaged: {name} differs from its sha256 in {CHECKSUMS_FILE}"
    except (LumiError, AttributeError, KeyError, TypeError) as exc:
        return f"unreadable {CHECKSUMS_FILE} ({exc})"
    return None


def verified_checkpoint(directory: Path) -> Path:
    """``directory`` if intact, else a LumiError naming what is wrong (``--resume PATH``: no fallback)."""
    problem = checkpoint_problem(directory)
    if problem is not None:
        raise LumiError(f"{directory}: cannot resume from this checkpoint, {problem}")
    return directory


def newest_intact_checkpoint(candidates: list[Path]) -> Path | None:
    """The intact checkpoint of the highest step among ``candidates``. Each one skipped is named in a warning and,
    once an intact one is found, deleted: it cannot be resumed from, and the resumed run saves its step again.
    Raises (deleting nothing) when there are candidates and none is intact: starting over silently would throw
    the run away."""
    ranked, skipped = [], []
    for directory in candidates:
        try:
            ranked.append((checkpoint_step(directory), directory))
        except LumiError as exc:
            log.warning("skipping checkpoint %s: %s", directory, exc)
            skipped.append(directory)
    for _, directory in sorted(ranked, key=lambda item: item[0], reverse=True):
        problem = checkpoint_problem(directory)
        if problem is None:
            for damaged in skipped:
                discard_dir(damaged)
                log.warning("removed the damaged checkpoint %s (resuming from %s)", damaged, directory)
            return directory
        log.warning("skipping checkpoint %s: %s; trying an older one", directory, problem)
        skipped.append(directory)
    if candidates:
        raise LumiError(f"{candidates[0].parent}: no intact checkpoint to resume from (each is named above); "
                        "start over with --force")
    return None


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # cut short or damaged (no checksums to tell)
        raise LumiError(f"{path}: not a readable trainer state ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})") from None
    return state, read_json(directory / config_file, what="checkpoint config")


def checkpoint_step(directory: Path) -> int:
    """The step a checkpoint was saved at, from its small JSON summary (not the optimizer state)."""
    summary = read_json(directory / SUMMARY_FILE, what="checkpoint summary")
    step = summary.get("step") if isinstance(summary, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise LumiError(f"{directory / SUMMARY_FILE}: 'step' is {step!r}, expected a non-negative integer")
    return step


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
        discard_dir(path)
    return doomed
