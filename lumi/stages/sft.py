"""Stage 70: supervised fine-tuning (``lumi sft``) -- the shared ``lumi.train.trainer.Trainer`` loop with the SFT
objective (``lumi.train.objectives.sft``: assistant-only loss on packed conversations, LoRA or full).

``--merge-adapters`` (LoRA) also writes ``<run>/merged/``, the adapter folded into the base (``lumi merge-lora``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lumi.core.config import CONFIG_DIR
from lumi.core.stage_args import add_common_arguments, add_training_run_arguments, stage_config
from lumi.loading import write_merged
from lumi.train.finetune import check_run_name
from lumi.train.launch import fit_objective
from lumi.train.objectives.sft import SFTConfig, SFTObjective
from lumi.train.trainer import Trainer

log = logging.getLogger(__name__)
DEFAULT_CONFIG = CONFIG_DIR / "sft" / "training" / "lora_tiny.json"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", type=Path, help="the base model dir (overrides base_model)")
    parser.add_argument("--data-dir", type=Path, help="stage-60 SFT data dir (overrides data_dir)")
    add_training_run_arguments(parser, "max_steps/epochs")
    parser.add_argument("--merge-adapters", action="store_true", default=None,
                        help="LoRA: also write the merged model to <run>/merged/")
    add_common_arguments(parser, DEFAULT_CONFIG, default_output="sft")


def run(args: argparse.Namespace) -> int:
    flags = {"base_model": str(args.model_path) if args.model_path else None,
             "data_dir": str(args.data_dir) if args.data_dir else None,
             "max_steps": args.max_steps, "merge_adapters": args.merge_adapters}
    config = stage_config(args, SFTConfig, flags)
    check_run_name(config)

    def merge(trainer: Trainer) -> None:
        if config.method == "lora" and config.merge_adapters:
            write_merged(trainer.run_dir / "final", trainer.run_dir / "merged", force=True)
            log.info("merged model in %s", trainer.run_dir / "merged")

    return fit_objective(config, lambda rank, world: SFTObjective(config, rank=rank, world_size=world),
                         args.output_dir, args.resume, args.force, after=merge)
