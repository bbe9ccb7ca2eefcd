"""ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}``. In the preference
variant (LLaMA-Factory's ``ranking: true``) the conversation ends with the user and ``chosen`` holds the answer;
for SFT the chosen answer is appended as the assistant turn."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import Conversation, ReadStats, RecordError, per_record, text_field

NAME = "sharegpt"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def looks_like(record: dict) -> bool:
    return isinstance(record.get("conversations"), list)


def _turn(message: Any) -> dict[str, str]:
    speaker = text_field(message, "from")
    if speaker not in ROLES:
        raise RecordError("unknown_role", f"speaker {speaker!r} (expected one of {', '.join(ROLES)})")
    return {"role": ROLES[speaker], "content": text_field(message, "value")}


def convert(record: Any, index: int) -> Conversation:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise RecordError("missing_field", "no list field 'conversations'")
    turns = [_turn(message) for message in record["conversations"]]
    if isinstance(record.get("chosen"), dict) and turns and turns[-1]["role"] == "user":
        turns.append(_turn(record["chosen"]))
    return Conversation(turns, f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[Conversation]:
    return per_record(records, stats, convert)
