#!/usr/bin/env python3
"""Stage 97: RL with verifiable rewards (GRPO) from an SFT or DPO model (``lumi grpo``), e.g.
``python scripts/97_train_grpo.py --config config/rl/training/demo.json --model-path DPO_DIR --output-dir OUT``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["grpo", *sys.argv[1:]], prog=Path(__file__).name))
