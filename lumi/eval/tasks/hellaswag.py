"""HellaSwag (Zellers et al. 2019): choose the plausible ending of an ActivityNet / WikiHow context.

Original release jsonl (``hellaswag_val.jsonl``) and ``Rowan/hellaswag`` share the fields used here:
``{activity_label, ctx_a, ctx_b, endings: [4], label}`` (an int in the original, a string on the hub). Context and
endings go through lm-eval's ``hellaswag`` preprocessing (WikiHow bracket artifacts removed); metrics acc, acc_norm.
"""

from __future__ import annotations

import re

from lumi.eval.tasks.base import Record, Task, TaskItem, TaskSource, choice_item


def preprocess(text: str) -> str:
    """lm-eval's ``hellaswag.utils.preprocess``, verbatim in behaviour."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def parse(record: Record, index: int) -> TaskItem:
    context = record["ctx_a"] + " " + record["ctx_b"].capitalize()
    query = preprocess(record["activity_label"] + ": " + context)
    return choice_item(str(record.get("ind", index)), query, [preprocess(e) for e in record["endings"]],
                       int(record["label"]))


TASK = Task("hellaswag", "multiple_choice", ("acc", "acc_norm"),
            TaskSource(dataset="Rowan/hellaswag", split="validation"), parse)
