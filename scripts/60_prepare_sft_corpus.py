#!/usr/bin/env python3
"""Stage 60: build an SFT data dir (``lumi sft-corpus``), e.g.
``python scripts/60_prepare_sft_corpus.py --config config/sft/datasets/alpaca.json --tokenizer-dir DIR --output-dir OUT``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sft-corpus", *sys.argv[1:]], prog=Path(__file__).name))
