"""The training metrics log, ``<run_dir>/metrics.jsonl``: one JSON object per record (``step`` plus named values),
written by the trainer (``lumi.train.metrics.MetricsLog``) and read by the evaluation report and the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
