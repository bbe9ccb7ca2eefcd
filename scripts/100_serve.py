#!/usr/bin/env python3
"""Stage 100: serve a checkpoint. `--mode interactive` is `lumi chat` (terminal), `--mode api` is `lumi serve`
(OpenAI-compatible API + web chat page); every other flag is passed on (see `lumi chat --help`, `lumi serve --help`)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.cli import main  # noqa: E402

MODES = {"interactive": "chat", "api": "serve"}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__, add_help=False)
    parser.add_argument("--mode", choices=sorted(MODES), default="interactive")
    known, rest = parser.parse_known_args()
    sys.exit(main([MODES[known.mode], *rest], prog=f"{Path(__file__).name} --mode {known.mode}"))
