"""Stage 40: pretrain a LLaMA-style model on packed data (``lumi pretrain``).

The loop is ``lumi.train.trainer.Trainer`` (resume, signals, non-finite stop, checkpoints: see there), the objective
``lumi.train.objectives.pretrain`` (packed rows, next-token loss, token budget). This module is the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lumi.core.config import CONFIG_DIR
from lumi.core.stage_args import add_common_arguments, add_training_run_arguments, stage_config
from lumi.formats.packed import read_packed_manifest
from lumi.model import describe, load_architecture
from lumi.train.launch import fit_objective
from lumi.train.objectives.pretrain import (PretrainConfig, PretrainObjective, budget_summary, tokenizer_vocab_size,
                                            total_steps)
from lumi.train.trainer import Trainer

DEFAULT_CONFIG = CONFIG_DIR / "pretrain" / "training" / "chinchilla_tiny_500m.json"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dirs", nargs="+", type=Path, metavar="DIR",
                        help="packed data directories from stage 30 (overrides the config's data_dirs)")
    parser.add_argument("--data-weights", nargs="+", type=float, metavar="W",
                        help="mixing weight per data dir, in the same order (default: equal)")
    parser.add_argument("--tokenizer-dir", type=Path, help="tokenizer directory from stage 20 (overrides the config)")
    add_training_run_arguments(parser, "max_steps/max_tokens")
    parser.add_argument("--describe", action="store_true",
                        help="print the architecture, exact parameter counts, FLOPs/token and the token budget, "
                             "then exit without training")
    add_common_arguments(parser, DEFAULT_CONFIG, default_output="checkpoints")


def describe_run(config: PretrainConfig) -> str:
    """What ``--describe`` prints: the tokenizer's vocab and the data's row length when they exist, else the
    architecture file's vocab and max_seq_len (said so)."""
    tokenizer_dir = Path(config.tokenizer_dir)
    vocab = tokenizer_vocab_size(tokenizer_dir) if tokenizer_dir.is_dir() else None
    arch = load_architecture(config.model, vocab_size=vocab)
    packed = next((Path(d) for d in config.data_dirs if Path(d).is_dir()), None)
    seq_len = int(read_packed_manifest(packed)["seq_len"]) if packed else arch.max_seq_len
    tokens_per_step = config.micro_batch_size * config.grad_accumulation * seq_len
    lines = [describe(arch, seq_len), budget_summary(arch, total_steps(config, tokens_per_step), tokens_per_step)]
    if vocab is None:
        lines.append(f"(no tokenizer at {tokenizer_dir}: vocab_size from the architecture file)")
    if packed is None:
        lines.append(f"(no packed data yet: rows assumed to be max_seq_len = {seq_len} tokens)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    flags = {"data_dirs": [str(p) for p in args.data_dirs] if args.data_dirs else None,
             "data_weights": args.data_weights,
             "tokenizer_dir": str(args.tokenizer_dir) if args.tokenizer_dir else None,
             "max_steps": args.max_steps}
    config = stage_config(args, PretrainConfig, flags)
    if args.describe:
        print(describe_run(config))
        return 0

    def show_sample(trainer: Trainer) -> None:
        if trainer.world_size == 1:
            prompt, continuation = trainer.objective.sample(trainer.model)
            print(f"sample (greedy, from the start of a val row): {prompt!r} -> {continuation!r}")

    return fit_objective(config, lambda rank, world: PretrainObjective(config, rank=rank, world_size=world),
                         args.output_dir, args.resume, args.force, after=show_sample)
