#!/usr/bin/env python
"""Prints one held-out question of the demo's synthetic world (a fact and a question wording that no training stage
saw) and its expected answer, for the demo's serving step: `python runs/demo_question.py [CORPUS_CONFIG [SEED]]`
(SEED: the world's seed, as `runs/demo.sh --seed` sets it; default the corpus config's)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lumi.corpus.config import resolve_world  # noqa: E402
from lumi.data.synthetic import SyntheticSourceConfig  # noqa: E402
from lumi.eval.synthetic_qa import qa_items  # noqa: E402

if __name__ == "__main__":
    corpus_config = sys.argv[1] if len(sys.argv) > 1 else "demo/corpus.json"
    seed = {"seed": int(sys.argv[2])} if len(sys.argv) > 2 else {}
    item = qa_items(SyntheticSourceConfig.model_validate(resolve_world({"from": corpus_config, **seed})))[0]
    print(item["prompt"])
    print(f"expected: {item['answer']}", file=sys.stderr)
