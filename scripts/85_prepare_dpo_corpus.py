#!/usr/bin/env python3
"""Stage 85: build a DPO data dir (``lumi dpo-corpus``), e.g.
``python scripts/85_prepare_dpo_corpus.py --config config/dpo/datasets/hh_rlhf.json --tokenizer-dir SFT_DIR --output-dir OUT``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["dpo-corpus", *sys.argv[1:]], prog=Path(__file__).name))
