"""Stage 97: RL with verifiable rewards (``lumi grpo``) -- the shared ``lumi.train.trainer.Trainer`` loop with the
GRPO objective (``lumi.train.objectives.grpo``: rollouts on Lumi's generation engine, named rewards, group-relative
advantages, grpo / dapo / dr_grpo normalisation; LoRA or full) from an SFT or DPO model.

``--model-path`` is the start model: a merged/full model dir, or a LoRA adapter dir, which is merged into its recorded
base once, into ``<output-dir>/start_merged/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lumi.core.config import CONFIG_DIR
from lumi.core.stage_args import add_common_arguments, add_training_run_arguments, stage_config
from lumi.loading import merged_if_adapter
from lumi.train.finetune import check_run_name
from lumi.train.launch import fit_objective
from lumi.train.objectives.grpo import GRPOConfig, GRPOObjective

DEFAULT_CONFIG = CONFIG_DIR / "rl" / "training" / "gsm8k_lora_tiny.json"
MERGED_START = "start_merged"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", type=Path, help="the SFT or DPO model: a model dir or a LoRA adapter dir "
                                                        "(overrides model_path)")
    add_training_run_arguments(parser, "max_steps/epochs")
    add_common_arguments(parser, DEFAULT_CONFIG, default_output="grpo")


def run(args: argparse.Namespace) -> int:
    model_path = merged_if_adapter(args.model_path, args.output_dir / MERGED_START) if args.model_path else None
    flags = {"model_path": str(model_path) if model_path else None, "max_steps": args.max_steps}
    config = stage_config(args, GRPOConfig, flags)
    check_run_name(config)
    return fit_objective(config, lambda rank, world: GRPOObjective(config, rank=rank, world_size=world),
                         args.output_dir, args.resume, args.force)
