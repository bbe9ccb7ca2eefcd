"""Cloze accuracy on the synthetic world's facts (``lumi.data.synthetic``): does the model complete the canonical
statement of a held-out fact with the right object rather than a same-category distractor?

The source is the world the corpus was generated from (``world``: the corpus config's synthetic source block);
``split`` picks ``heldout`` (default) or ``train`` facts. Chance is ``1 / len(choices)``; results are also broken
down by relation.
"""

from __future__ import annotations

from lumi.core.errors import LumiError
from lumi.data.synthetic import SyntheticSourceConfig
from lumi.eval.tasks.base import Record, Task, TaskItem, TaskSource, choice_item

SPLITS = ("heldout", "validation", "train")


def read(source: TaskSource) -> list[Record]:
    if source.world is None:
        raise LumiError("task synthetic_cloze: set source.world (the corpus config's synthetic source)")
    split = source.split or "heldout"
    if split not in SPLITS:
        raise LumiError(f"task synthetic_cloze: split {split!r}: expected one of {SPLITS}")
    return source.world.world().cloze_items(split)  # type: ignore[arg-type]


def parse(record: Record, index: int) -> TaskItem:
    return choice_item(f"{record['relation']}/{index}", record["context"], list(record["choices"]),
                       int(record["answer"]), group=record["relation"])


TASK = Task("synthetic_cloze", "multiple_choice", ("acc", "acc_norm"),
            TaskSource(world=SyntheticSourceConfig(type="synthetic")), parse, read)
