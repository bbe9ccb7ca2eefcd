"""PIQA (Bisk et al. 2020): pick the better of two solutions to a physical goal.

Original release: ``dev.jsonl`` ``{id, goal, sol1, sol2}`` with the answers in a separate ``dev-labels.lst`` (line i
labels line i: 0 or 1) -- give it as ``labels_path``. The hub copy lm-eval uses (``baber/piqa``) has a ``label``
column. Prompt as lm-eval's ``piqa``: ``"Question: {goal}\\nAnswer:"`` with `` {sol1}`` / `` {sol2}``.
"""

from __future__ import annotations

from pathlib import Path

from lumi.core.errors import LumiError
from lumi.eval.tasks.base import Record, SourceUnreadable, Task, TaskItem, TaskSource, choice_item, read_records
from lumi.core.files import text_lines


def read_labels(path: str | Path) -> list[int]:
    path = Path(path)
    if not path.is_file():
        raise SourceUnreadable(f"{path}: PIQA labels file not found")
    labels = []
    for number, line in enumerate(text_lines(path.read_text(encoding="utf-8")), start=1):
        if line.strip() not in ("0", "1"):
            raise LumiError(f"{path}:{number}: expected a label 0 or 1, got {line.strip()!r}")
        labels.append(int(line))
    return labels


def read(source: TaskSource) -> list[Record]:
    records = read_records(source)
    if source.path is None:
        return records
    if source.labels_path is None:
        raise LumiError(f"task piqa: {source.path} is the original layout without labels; set labels_path to its "
                        "-labels.lst file")
    labels = read_labels(source.labels_path)
    if len(labels) != len(records):
        raise LumiError(f"task piqa: {source.labels_path} has {len(labels)} labels for {len(records)} examples "
                        f"in {source.path}")
    return [{**record, "label": label} for record, label in zip(records, labels)]


def parse(record: Record, index: int) -> TaskItem:
    context = f"Question: {record['goal']}\nAnswer:"
    return choice_item(str(record.get("id", index)), context, [record["sol1"], record["sol2"]], int(record["label"]))


TASK = Task("piqa", "multiple_choice", ("acc", "acc_norm"), TaskSource(dataset="baber/piqa", split="validation"),
            parse, read, local_fields=("path", "labels_path"))
