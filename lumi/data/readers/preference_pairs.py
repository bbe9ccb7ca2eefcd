"""Flat preference pairs ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL's standard explicit-prompt
layout, and the synthetic world's ``preference_pairs``)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import PreferencePair, ReadStats, answers_of, per_record, text_field

NAME = "pairs"


def looks_like(record: dict) -> bool:
    return isinstance(record.get("prompt"), str) and isinstance(record.get("chosen"), str)


def convert(record: Any, index: int) -> PreferencePair:
    return PreferencePair([{"role": "user", "content": text_field(record, "prompt")}],
                          *answers_of(record, "chosen", "rejected"), f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[PreferencePair]:
    return per_record(records, stats, convert)
