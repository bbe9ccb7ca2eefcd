#!/usr/bin/env python3
"""Stage 105: export a final model to GGUF for llama.cpp and Ollama (``lumi export``), e.g.
``python scripts/105_export.py --model-path out/demo/dpo/demo/final --dtype f16 --output-dir out/demo/export``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]], prog=Path(__file__).name))
