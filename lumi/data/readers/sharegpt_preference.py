"""ShareGPT preference (LLaMA-Factory's ``formatting: sharegpt, ranking: true``): ``{"conversations": [{"from",
"value"}, ...] ending with the human turn, "chosen": {"from": "gpt", "value"}, "rejected": {...}}``."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import PreferencePair, ReadStats, RecordError, per_record
from lumi.data.readers.sharegpt import _turn

NAME = "sharegpt"


def looks_like(record: dict) -> bool:
    return isinstance(record.get("conversations"), list) and "chosen" in record


def convert(record: Any, index: int) -> PreferencePair:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise RecordError("missing_field", "no list field 'conversations'")
    answers = []
    for name in ("chosen", "rejected"):
        if not isinstance(record.get(name), dict):
            raise RecordError("missing_field", f"no message field {name!r}")
        answers.append(_turn(record[name])["content"])
    return PreferencePair([_turn(m) for m in record["conversations"]], *answers, f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[PreferencePair]:
    return per_record(records, stats, convert)
