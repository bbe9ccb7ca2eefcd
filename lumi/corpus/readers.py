"""Readers for local document files: ``.jsonl``, ``.json`` (array or JSON lines), either gzipped, ``.parquet`` and
``.txt`` with a configurable document split.

Each reader yields ``(doc_id, text)``; ``text`` is ``None`` for a document whose bytes are not valid UTF-8, so the
pipeline can skip and count it instead of failing the whole file. Files are decoded with ``surrogateescape``: invalid
bytes become lone surrogates, which no valid text contains, so one check per document finds them.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Iterator, Literal

import pyarrow.parquet as pq

from lumi.core.errors import LumiError
from lumi.core.files import parse_json, text_lines

TxtSplit = Literal["file", "line", "paragraph", "separator"]
FileFormat = Literal["auto", "jsonl", "json", "parquet", "txt"]
_SURROGATE = re.compile("[\udc80-\udcff]")


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"),
                        (".parquet", "parquet"), (".txt", "txt"), (".text", "txt")):
        if name.endswith(suffix):
            return fmt
    raise LumiError(f"{path}: cannot tell the format from the extension (use .jsonl, .json, .parquet or .txt, "
                    "optionally .gz, or set the source's 'format')")


def _valid(text: str) -> str | None:
    return None if _SURROGATE.search(text) else text


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # bad header, truncated stream, corrupt deflate data
            raise LumiError(f"{path}: not a valid gzip file ({exc})") from None
    return raw.decode("utf-8", errors="surrogateescape")


def _record_text(record: object, column: str, path: Path, where: str) -> str | None:
    if not isinstance(record, dict):
        raise LumiError(f"{path}:{where}: expected a JSON object per document, got {type(record).__name__}")
    if column not in record:
        raise LumiError(f"{path}:{where}: no column '{column}' (columns: {', '.join(sorted(record)) or 'none'})")
    value = record[column]
    if not isinstance(value, str):
        raise LumiError(f"{path}:{where}: column '{column}' is {type(value).__name__}, expected a string")
    return _valid(value)


def read_json_records(path: Path, text_column: str) -> Iterator[tuple[str, str | None]]:
    """JSON lines, or one JSON array of objects (told apart by the first non-blank character)."""
    content = _open_text(path)
    if content.lstrip()[:1] == "[":
        records = parse_json(content, path)
        for index, record in enumerate(records):
            yield f"{path.name}:{index}", _record_text(record, text_column, path, f"item {index}")
        return
    for line_no, line in enumerate(text_lines(content), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:  # not parse_json_lines: a line broken by undecodable bytes is skipped
            if _SURROGATE.search(line):  # undecodable bytes broke the JSON syntax: skip the line, count it
                yield f"{path.name}:{line_no}", None
                continue
            raise LumiError(f"{path}:{line_no}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        yield f"{path.name}:{line_no}", _record_text(record, text_column, path, str(line_no))


def read_parquet(path: Path, text_column: str) -> Iterator[tuple[str, str | None]]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise LumiError(f"{path}: not a readable parquet file ({exc})") from None
    if text_column not in parquet.schema_arrow.names:
        raise LumiError(f"{path}: no column '{text_column}' (columns: {', '.join(parquet.schema_arrow.names)})")
    index = 0
    for batch in parquet.iter_batches(columns=[text_column], batch_size=4096):
        for text in batch.column(0).to_pylist():
            yield f"{path.name}:{index}", text if isinstance(text, str) else None
            index += 1


def read_txt(path: Path, split: TxtSplit, separator: str) -> Iterator[tuple[str, str | None]]:
    content = _open_text(path)
    if split == "file":
        parts = [content]
    elif split == "line":
        parts = text_lines(content)
    elif split == "paragraph":
        parts = re.split(r"\n[ \t]*\n", content)
    else:
        # The separator stands on a line of its own (TinyStories' "<|endoftext|>" layout) or inline.
        parts = content.split(separator)
    index = 0
    for part in parts:
        if part.strip():
            yield f"{path.name}:{index}", _valid(part)
            index += 1


def read_file(path: Path, fmt: str = "auto", text_column: str = "text", txt_split: TxtSplit = "file",
              separator: str = "<|endoftext|>") -> Iterator[tuple[str, str | None]]:
    if not path.is_file():
        raise LumiError(f"{path}: input file not found")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt in ("jsonl", "json"):
        return read_json_records(path, text_column)
    if fmt == "parquet":
        return read_parquet(path, text_column)
    return read_txt(path, txt_split, separator)
