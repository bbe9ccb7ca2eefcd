#!/usr/bin/env python3
"""Stage 30: tokenize a corpus and pack it into fixed-length rows (same as `lumi pack ...`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pack", *sys.argv[1:]], prog=Path(__file__).name))
