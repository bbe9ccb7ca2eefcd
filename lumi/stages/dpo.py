"""Stage 90: preference tuning (``lumi dpo``) -- the shared ``lumi.train.trainer.Trainer`` loop with the DPO objective
(``lumi.train.objectives.dpo``: sigmoid, IPO or hinge loss; LoRA or full) from an SFT model.

``--model-path`` is the SFT model: a merged/full model dir, or a LoRA adapter dir from stage 70, which is merged into
its recorded base once, into ``<output-dir>/sft_merged/`` (the policy's start and the reference).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lumi.core.config import CONFIG_DIR
from lumi.core.stage_args import add_common_arguments, add_training_run_arguments, stage_config
from lumi.loading import merged_if_adapter
from lumi.train.finetune import check_run_name
from lumi.train.launch import fit_objective
from lumi.train.objectives.dpo import DPOConfig, DPOObjective

DEFAULT_CONFIG = CONFIG_DIR / "dpo" / "training" / "lora_tiny.json"
MERGED_SFT = "sft_merged"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", type=Path, help="the SFT model: a model dir or a LoRA adapter dir "
                                                        "(overrides model_path)")
    parser.add_argument("--data-dir", type=Path, help="stage-85 DPO data dir (overrides data_dir)")
    add_training_run_arguments(parser, "max_steps/epochs")
    add_common_arguments(parser, DEFAULT_CONFIG, default_output="dpo")


def run(args: argparse.Namespace) -> int:
    model_path = merged_if_adapter(args.model_path, args.output_dir / MERGED_SFT) if args.model_path else None
    flags = {"model_path": str(model_path) if model_path else None,
             "data_dir": str(args.data_dir) if args.data_dir else None, "max_steps": args.max_steps}
    config = stage_config(args, DPOConfig, flags)
    check_run_name(config)
    return fit_objective(config, lambda rank, world: DPOObjective(config, rank=rank, world_size=world),
                         args.output_dir, args.resume, args.force)
