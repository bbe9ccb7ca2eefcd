"""The training metrics log, ``<run_dir>/metrics.jsonl``: one JSON object per record (``step`` plus named values),
written by the trainer (``lumi.train.metrics.MetricsLog``) and read by the evaluation report and the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lumi.core.files import parse_json_lines, read_text

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [record for _, record in parse_json_lines(read_text(path, "metrics log"), path)]
