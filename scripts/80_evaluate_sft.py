#!/usr/bin/env python3
"""Stage 80: evaluate an SFT (or DPO) checkpoint with config/evaluation/sft.json (chat-formatted generation checks).
Pass --compare out/evaluation/pretrain to put the stage-50 numbers beside these."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.eval.evaluate import SFT_CONFIG, script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main(SFT_CONFIG, "out/evaluation/sft", Path(__file__).name, __doc__))
