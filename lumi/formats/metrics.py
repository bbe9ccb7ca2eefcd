"""The training metrics log, ``<run_dir>/metrics.jsonl``: one JSON object per record (``step`` plus named values),
written by the trainer (``lumi.train.metrics.MetricsLog``) and read by the evaluation report and the tests."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lumi.core.errors import LumiError
from lumi.core.files import read_text, text_lines

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``. A torn last line (the run was killed mid-write) is dropped with a
    warning; a bad line elsewhere is damage no kill explains and is refused, naming the line."""
    if not path.is_file():
        return []
    lines = [(number, line) for number, line in enumerate(text_lines(read_text(path, "metrics log")), start=1)
             if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer step")
        except ValueError as exc:
            if index == len(lines) - 1:
                log.warning("%s:%d: dropped a torn last record (the run was stopped while writing it)", path, number)
                break
            raise LumiError(f"{path}:{number}: not a metrics record ({exc})") from None
        records.append(record)
    return records
