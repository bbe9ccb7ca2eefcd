"""WinoGrande (Sakaguchi et al. 2020): fill the blank ``_`` with one of two options.

Original release jsonl and ``allenai/winogrande``: ``{sentence, option1, option2, answer: "1"|"2"}``. Scored as
lm-eval's ``winogrande`` (partial scoring): the context differs per choice (the sentence up to the blank, with the
option filled in) and the continuation is the same rest of the sentence; metric acc.
"""

from __future__ import annotations

from lumi.eval.tasks.base import Record, Task, TaskItem, TaskSource


def parse(record: Record, index: int) -> TaskItem:
    sentence = record["sentence"]
    blank = sentence.index("_")
    continuation = " " + sentence[blank + 1:].strip()
    contexts = [sentence[:blank] + record["option1"], sentence[:blank] + record["option2"]]
    gold = {"1": 0, "2": 1}[str(record["answer"])]
    return TaskItem(str(record.get("qID", index)), tuple((c, continuation) for c in contexts), gold,
                    tuple(len(c) for c in contexts))


TASK = Task("winogrande", "multiple_choice", ("acc",),
            TaskSource(dataset="allenai/winogrande", dataset_config="winogrande_xl", split="validation"), parse)
