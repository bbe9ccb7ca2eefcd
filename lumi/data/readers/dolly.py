"""Dolly (databricks/databricks-dolly-15k): ``instruction``, ``context`` (reference text for closed QA, extraction
and summarisation; often empty), ``response``, ``category``; the context goes below the instruction."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import Conversation, ReadStats, pair, per_record, text_field, user_turn

NAME = "dolly"


def looks_like(record: dict) -> bool:
    return "instruction" in record and "response" in record


def convert(record: Any, index: int) -> Conversation:
    prompt = user_turn(text_field(record, "instruction"), text_field(record, "context", required=False))
    return Conversation(pair(prompt, text_field(record, "response")), f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[Conversation]:
    return per_record(records, stats, convert)
