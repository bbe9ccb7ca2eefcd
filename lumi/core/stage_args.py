"""What every stage command shares: the common flags and how they turn into a validated config.

Every stage takes ``--config``, ``--output-dir``, ``--force`` and repeatable ``--set dotted.key=value``. Stage-specific
flags (``--vocab-size``, ``--seq-len`` ...) are shorthands for config fields and win over the file and ``--set``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from lumi.core.config import C, load_config


OUTPUT_ROOT = Path("out")  # every stage's default output dir is OUTPUT_ROOT / its name (the demo's layout, out/demo/)


def default_output_dir(name: str) -> Path:
    """Where a stage writes when ``--output-dir`` is not given: ``out/<name>``, one root for every stage."""
    return OUTPUT_ROOT / name


def add_common_arguments(parser: argparse.ArgumentParser, default_config: Path | None,
                         default_output: str) -> None:
    """The flags every stage has. ``default_config``: the stage's general recipe for your own data (never a demo
    config: those are used only when named); ``default_output``: the name of its dir under ``OUTPUT_ROOT``."""
    parser.add_argument("--config", type=Path, default=default_config,
                        help="JSON config file (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=default_output_dir(default_output),
                        help="where to write the result (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output directory (the old one is removed only after success)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set dedup.exact=false (repeatable; JSON values)")


def add_training_run_arguments(parser: argparse.ArgumentParser, budget_fields: str) -> None:
    """The flags of every training stage (pretrain, sft, dpo, grpo): the step budget and resuming.
    ``budget_fields``: the config fields ``--max-steps`` overrides, for its help."""
    parser.add_argument("--max-steps", type=int, help=f"optimizer steps (overrides {budget_fields})")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the newest checkpoint of this run (auto) or from a checkpoint dir")


def stage_config(args: argparse.Namespace, cls: type[C], flags: Mapping[str, Any] | None = None) -> C:
    return load_config(cls, args.config, args.overrides, flags)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count): the default worker-thread count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
