"""OpenAI-style chat records: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import Conversation, ReadStats, RecordError, per_record, text_field

NAME = "messages"


def looks_like(record: dict) -> bool:
    return isinstance(record.get("messages"), list)


def convert(record: Any, index: int) -> Conversation:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise RecordError("missing_field", "no list field 'messages'")
    turns = [{"role": text_field(m, "role"), "content": text_field(m, "content")} for m in record["messages"]]
    return Conversation(turns, f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[Conversation]:
    return per_record(records, stats, convert)
