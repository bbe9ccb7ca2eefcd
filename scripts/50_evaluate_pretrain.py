#!/usr/bin/env python3
"""Stage 50: evaluate a pretrained checkpoint (same as `lumi evaluate`, whose defaults these are)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]], prog=Path(__file__).name))
