"""Single-turn ``{"prompt", "response"}`` records: the synthetic world's SFT pairs (``SyntheticWorld.sft_pairs``,
one question about one fact each) and any file of that shape."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import Conversation, ReadStats, pair, per_record, text_field

NAME = "pairs"


def looks_like(record: dict) -> bool:
    return "prompt" in record and "response" in record


def convert(record: Any, index: int) -> Conversation:
    return Conversation(pair(text_field(record, "prompt"), text_field(record, "response")), f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[Conversation]:
    return per_record(records, stats, convert)
