#!/usr/bin/env python3
"""Stage 20: train the SentencePiece tokenizer (same as `lumi tokenizer`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tokenizer", *sys.argv[1:]], prog=Path(__file__).name))
