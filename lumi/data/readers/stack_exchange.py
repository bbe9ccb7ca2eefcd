"""stack-exchange-paired (lvwerra/stack-exchange-paired): ``{"question", "response_j" (preferred), "response_k"}``."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import PreferencePair, ReadStats, answers_of, per_record, text_field

NAME = "stack_exchange"


def looks_like(record: dict) -> bool:
    return "response_j" in record and "response_k" in record


def convert(record: Any, index: int) -> PreferencePair:
    question = text_field(record, "question")
    return PreferencePair([{"role": "user", "content": question}], *answers_of(record, "response_j", "response_k"),
                          f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[PreferencePair]:
    return per_record(records, stats, convert)
