"""Alpaca (tatsu-lab/alpaca, Stanford ``alpaca_data.json``): ``instruction``, ``input`` (often empty), ``output``;
the ``input`` goes below the instruction in the user turn."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import Conversation, ReadStats, pair, per_record, text_field, user_turn

NAME = "alpaca"


def looks_like(record: dict) -> bool:
    return "instruction" in record and "output" in record


def convert(record: Any, index: int) -> Conversation:
    prompt = user_turn(text_field(record, "instruction"), text_field(record, "input", required=False))
    return Conversation(pair(prompt, text_field(record, "output")), f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[Conversation]:
    return per_record(records, stats, convert)
