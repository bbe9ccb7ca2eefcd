"""BoolQ (Clark et al. 2019): yes/no questions about a Wikipedia passage.

Original release (``dev.jsonl``) and ``google/boolq`` on the hub: ``{question, title, answer: bool, passage}``;
the SuperGLUE copy (``aps/super_glue``, ``boolq``) has ``label`` 0/1 instead. Prompt as lm-eval's ``boolq`` task:
``"{passage}\\nQuestion: {question}?\\nAnswer:"`` with continuations `` no`` / `` yes``; metric acc.
"""

from __future__ import annotations

from lumi.eval.tasks.base import Record, Task, TaskItem, TaskSource, choice_item


def parse(record: Record, index: int) -> TaskItem:
    if "label" in record:
        gold = int(record["label"])
    elif isinstance(record["answer"], bool):
        gold = int(record["answer"])
    else:
        raise TypeError(f"'answer' must be true/false, got {record['answer']!r}")
    context = f"{record['passage']}\nQuestion: {record['question']}?\nAnswer:"
    return choice_item(str(index), context, ["no", "yes"], gold)


TASK = Task("boolq", "multiple_choice", ("acc",), TaskSource(dataset="google/boolq", split="validation"), parse)
