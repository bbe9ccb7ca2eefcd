"""Anthropic HH-RLHF: ``{"chosen": str, "rejected": str}``, each a whole transcript
``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The two share every turn up to the final ``Assistant:``; that shared part
is the (multi-turn) prompt and what follows it in each is the answer. A pair that shares no ``Assistant:`` prefix
cannot be split and is dropped (``no_shared_prefix``)."""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Iterator

from lumi.data.readers.base import PreferencePair, ReadStats, RecordError, answers_of, per_record

NAME = "hh"
ASSISTANT = "\n\nAssistant:"
SPEAKER = re.compile(r"\n\n(Human|Assistant): ?")
ROLES = {"Human": "user", "Assistant": "assistant"}


def looks_like(record: dict) -> bool:
    return isinstance(record.get("chosen"), str) and record["chosen"].lstrip().startswith("Human:") \
        and "prompt" not in record


def transcript_turns(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages (text before the first speaker must be
    empty)."""
    pieces = SPEAKER.split(text)
    if pieces[0].strip():
        raise RecordError("no_speaker", f"text before the first 'Human:' turn: {pieces[0][:60]!r}")
    return [{"role": ROLES[speaker], "content": content.strip()} for speaker, content in zip(pieces[1::2],
                                                                                          pieces[2::2])]


def convert(record: Any, index: int) -> PreferencePair:
    chosen, rejected = answers_of(record, "chosen", "rejected")
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        raise RecordError("no_shared_prefix", "chosen and rejected share no transcript up to an 'Assistant:' turn")
    prompt = transcript_turns(chosen[:cut])
    return PreferencePair(prompt, chosen[cut + len(ASSISTANT):].strip(), rejected[cut + len(ASSISTANT):].strip(),
                          f"{NAME}:{index}")


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[PreferencePair]:
    return per_record(records, stats, convert)
