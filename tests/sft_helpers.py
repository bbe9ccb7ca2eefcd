"""Shared pieces of the SFT tests: a stage-20 tokenizer, real conversations from the samples, the chat tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from lumi.data.readers import READERS, ReadStats


def real_conversations(samples_dir: Path) -> list[list[dict]]:
    """Conversations read from the real samples (Alpaca, OpenAssistant export trees, ShareGPT) by our readers."""
    conversations = []
    for name, fmt in (("alpaca_data_first200.json", "alpaca"), ("oasst_export_trees_en100_first30.jsonl", "oasst"),
                      ("sharegpt_preference_llamafactory_first100.json", "sharegpt")):
        path = samples_dir / name
        text = path.read_text(encoding="utf-8")
        records = json.loads(text) if name.endswith(".json") else [json.loads(l) for l in text.splitlines() if l]
        conversations += [c.messages for c in READERS[fmt](records, ReadStats())]
    return conversations
