"""The zero-shot tasks, one module per source format, by name."""

from __future__ import annotations

from lumi.core.errors import LumiError
from lumi.eval.tasks import arc, boolq, hellaswag, lambada, piqa, synthetic_cloze, winogrande
from lumi.eval.tasks.base import Task, TaskItem, TaskSource, subsample

TASKS: dict[str, Task] = {task.name: task for task in (
    boolq.TASK, piqa.TASK, arc.ARC_EASY, arc.ARC_CHALLENGE, hellaswag.TASK, winogrande.TASK, lambada.TASK,
    synthetic_cloze.TASK)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise LumiError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


__all__ = ["TASKS", "Task", "TaskItem", "TaskSource", "get_task", "subsample"]
