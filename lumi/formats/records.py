"""Local record files of the SFT and DPO stages (and the JSON lines the evaluator reads back): one JSON array, or
JSON lines, either optionally gzipped. Every such read goes through here, and JSON lines through
``lumi.core.files.json_line_values`` (only ``\\n`` / ``\\r\\n`` end a line; a UTF-8 BOM is not data)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lumi.core.errors import LumiError
from lumi.core.files import json_line_values, parse_json, parse_json_lines, read_text


@dataclass(frozen=True)
class BadRecord:
    """A line of a JSON-lines file that is not JSON: where it is and why, counted by the stage, never parsed."""

    where: str
    cause: str


def read_record_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path`` (gunzipped when it ends in ``.gz``); a missing, corrupt or undecodable file is
    one LumiError naming it and ``what`` it is."""
    path = Path(path)
    if not path.name.lower().endswith(".gz"):
        return read_text(path, what)
    if not path.is_file():
        raise LumiError(f"{path}: {what} not found")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:  # bad header, truncated stream, corrupt deflate data
        raise LumiError(f"{path}: {what} is not a valid gzip file ({exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LumiError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_records(path: str | Path, what: str) -> list[Any]:
    """The records of a JSON array or JSON-lines file (told apart by the first non-blank character); a line that is
    not JSON comes back as a ``BadRecord`` naming ``path:line`` and the cause, for the stage to count."""
    text = read_record_text(path, what)
    if text.lstrip()[:1] == "[":
        return parse_json(text, path)
    return [value if problem is None else BadRecord(f"{Path(path).name}:{number}", problem)
            for number, value, problem in json_line_values(text)]


def read_json_lines(path: str | Path, what: str) -> list[Any]:
    """Every record of a JSON-lines file a stage wrote (strict: a bad line is a LumiError naming its number)."""
    return [value for _, value in parse_json_lines(read_record_text(path, what), path)]
