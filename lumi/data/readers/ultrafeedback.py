"""UltraFeedback binarized (HuggingFaceH4/ultrafeedback_binarized): ``{"prompt": str, "prompt_id", "chosen":
[{"role", "content"}, ...], "rejected": [...], "messages", "score_chosen", "score_rejected"}``; ``chosen`` and
``rejected`` are whole conversations that end with the answer and share every message before it (the prompt)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import PreferencePair, ReadStats, RecordError, per_record, text_field

NAME = "ultrafeedback"


def looks_like(record: dict) -> bool:
    return isinstance(record.get("chosen"), list) and isinstance(record.get("rejected"), list)


def _messages(record: Any, name: str) -> list[dict[str, str]]:
    value = record.get(name) if isinstance(record, dict) else None
    if not isinstance(value, list) or not value:
        raise RecordError("missing_field", f"no message list {name!r}")
    messages = [{"role": text_field(m, "role"), "content": text_field(m, "content")} for m in value]
    if messages[-1]["role"] != "assistant":
        raise RecordError("no_assistant_turn", f"{name!r} does not end with an assistant message")
    return messages


def convert(record: Any, index: int) -> PreferencePair:
    chosen, rejected = _messages(record, "chosen"), _messages(record, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("no_shared_prefix", "chosen and rejected differ before their last message")
    key = record.get("prompt_id") if isinstance(record.get("prompt_id"), str) else str(index)
    return PreferencePair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], f"{NAME}:{key}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[PreferencePair]:
    return per_record(records, stats, convert)
