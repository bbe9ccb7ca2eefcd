"""Readers of instruction / chat datasets: one module per format, each turning that format's records into
conversations (``{"role", "content"}`` message lists). ``READERS`` maps a format name to its reader; ``detect``
names the format of a record."""

from __future__ import annotations

from lumi.data.readers import alpaca, dolly, messages, oasst, pairs, sharegpt
from lumi.data.readers.base import Conversation, Reader, ReadStats, RecordError

READERS: dict[str, Reader] = {module.NAME: module.read for module in (alpaca, dolly, oasst, sharegpt, messages,
                                                                       pairs)}
FORMATS = tuple(READERS)


def detect(record: object) -> str | None:
    """The format whose characteristic fields the record has (None when none fits)."""
    if not isinstance(record, dict):
        return None
    for module in (oasst, sharegpt, messages, dolly, alpaca, pairs):
        if module.looks_like(record):
            return module.NAME
    return None


__all__ = ["Conversation", "FORMATS", "READERS", "ReadStats", "Reader", "RecordError", "detect"]
