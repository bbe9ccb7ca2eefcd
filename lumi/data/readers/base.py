"""What every reader shares: the conversation it yields, the error a bad record raises, the drop counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

MAX_EXAMPLES = 3  # bad records shown per reason


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    id: str
    lang: str | None = None  # the language the dataset records, when it records one


class RecordError(ValueError):
    """A record this reader cannot use; ``reason`` is the counter it is dropped under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class ReadStats:
    """Records read and dropped by reason, with the first few dropped records described."""

    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(detail)


Reader = Callable[[Iterable[Any], ReadStats], Iterator[Conversation]]


def text_field(record: Any, name: str, required: bool = True) -> str:
    """``record[name]`` as a string; a missing (when required) or non-string field is a RecordError."""
    if not isinstance(record, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    if name not in record or record[name] is None:
        if required:
            raise RecordError("missing_field", f"no field {name!r} (fields: {', '.join(sorted(map(str, record)))})")
        return ""
    value = record[name]
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"field {name!r} is {type(value).__name__}, expected a string")
    return value


def per_record(records: Iterable[Any], stats: ReadStats,
               convert: Callable[[Any, int], Conversation]) -> Iterator[Conversation]:
    """Apply ``convert`` to each record, counting it, and dropping (and counting) the ones it refuses."""
    for index, record in enumerate(records):
        stats.read += 1
        try:
            yield convert(record, index)
        except RecordError as exc:
            stats.drop(exc.reason, f"record {index}: {exc}")


def user_turn(instruction: str, extra: str) -> str:
    """The instruction with its input/context below it (kept, not dropped: it is often needed to answer)."""
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def pair(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


@dataclass
class PreferencePair:
    """One preference record: the prompt (messages ending with a user turn) and two answers to it."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    id: str


def answers_of(record: Any, chosen: str, rejected: str) -> tuple[str, str]:
    """The two answer strings of a flat record (``text_field`` checks)."""
    return text_field(record, chosen), text_field(record, rejected)
