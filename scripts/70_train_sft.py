#!/usr/bin/env python3
"""Stage 70: supervised fine-tuning (``lumi sft``), e.g.
``python scripts/70_train_sft.py --config config/sft/training/lora_tiny.json --model-path BASE --data-dir SFTDIR --output-dir OUT``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sft", *sys.argv[1:]], prog=Path(__file__).name))
