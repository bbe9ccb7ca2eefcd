#!/usr/bin/env python3
"""Merge a LoRA adapter into its base (``lumi merge-lora``):
``python scripts/helpers/merge_lora.py --adapter-path checkpoints/sft/lora/final --output-dir out/merged``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["merge-lora", *sys.argv[1:]], prog=Path(__file__).name))
