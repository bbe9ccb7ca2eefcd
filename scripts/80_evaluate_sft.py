#!/usr/bin/env python3
"""Stage 80: evaluate an SFT (or DPO) checkpoint with config/evaluation/sft.json (chat-formatted generation checks).
Pass --compare out/evaluation to put the stage-50 numbers beside these."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402
from lumi.core.stage_args import default_output_dir  # noqa: E402
from lumi.eval.config import SFT_CONFIG  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]], prog=Path(__file__).name,
                  defaults={"config": SFT_CONFIG, "output_dir": default_output_dir("evaluation_sft")}))
