"""Intel/orca_dpo_pairs: ``{"system": str, "question": str, "chosen": str, "rejected": str}`` (an empty system
string means none)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import PreferencePair, ReadStats, answers_of, per_record, text_field

NAME = "orca"


def looks_like(record: dict) -> bool:
    return "question" in record and isinstance(record.get("chosen"), str)


def convert(record: Any, index: int) -> PreferencePair:
    system, question = text_field(record, "system", required=False), text_field(record, "question")
    prompt = ([{"role": "system", "content": system}] if system.strip() else []) + \
        [{"role": "user", "content": question}]
    return PreferencePair(prompt, *answers_of(record, "chosen", "rejected"), f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[PreferencePair]:
    return per_record(records, stats, convert)
