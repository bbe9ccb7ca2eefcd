#!/usr/bin/env python3
"""Stage 95: evaluate a DPO model with config/evaluation/dpo.json (held-out reward accuracy and margins, log-prob win
rates against the reference SFT model, greedy answers to held-out prompts, chat generation checks). Pass
--compare out/evaluation_sft to put the SFT model's numbers beside these."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402
from lumi.core.stage_args import default_output_dir  # noqa: E402
from lumi.eval.config import DPO_CONFIG  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]], prog=Path(__file__).name,
                  defaults={"config": DPO_CONFIG, "output_dir": default_output_dir("evaluation_dpo")}))
