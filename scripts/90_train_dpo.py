#!/usr/bin/env python3
"""Stage 90: preference-tune an SFT model (``lumi dpo``), e.g.
``python scripts/85_prepare_dpo_corpus.py --config config/dpo/training/lora_tiny.json --model-path SFT_DIR --data-dir DPO_DIR --output-dir OUT``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["dpo", *sys.argv[1:]], prog=Path(__file__).name))
