"""``lumi merge-lora``: fold a LoRA adapter into its base model and write a plain ``save_pretrained`` dir (tokenizer,
chat template and generation config included) that any transformers code loads without PEFT."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lumi.loading import write_merged

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter-path", type=Path, required=True, help="a LoRA adapter dir written by lumi sft")
    parser.add_argument("--output-dir", type=Path, required=True, help="where to write the merged model")
    parser.add_argument("--base-model-path", type=Path,
                        help="the base model dir (default: the one the adapter records; its weights must match)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")


def run(args: argparse.Namespace) -> int:
    write_merged(args.adapter_path, args.output_dir, args.base_model_path, args.force)
    log.info("merged %s into %s", args.adapter_path, args.output_dir)
    return 0
