#!/usr/bin/env python3
"""Stage 50: evaluate a pretrained checkpoint (same as `lumi evaluate`, whose defaults these are)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.eval.evaluate import PRETRAIN_CONFIG, script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main(PRETRAIN_CONFIG, "out/evaluation/pretrain", Path(__file__).name, __doc__))
