"""AI2 ARC (Clark et al. 2018), Easy and Challenge sets: grade-school science questions, 3-5 choices.

Original release jsonl: ``{id, question: {stem, choices: [{text, label}]}, answerKey}``; the hub copy
(``allenai/ai2_arc``) flattens it to ``{id, question: str, choices: {text: [...], label: [...]}, answerKey}``.
Labels are usually A-D, sometimes 1-4. Prompt as lm-eval's ``arc_easy``: ``"Question: {stem}\\nAnswer:"`` with
`` {choice text}``; metrics acc and acc_norm.
"""

from __future__ import annotations

from lumi.eval.tasks.base import Record, Task, TaskItem, TaskSource, choice_item


def parse(record: Record, index: int) -> TaskItem:
    question = record["question"]
    if isinstance(question, dict):  # original release
        stem = question["stem"]
        texts = [choice["text"] for choice in question["choices"]]
        labels = [choice["label"] for choice in question["choices"]]
    else:  # hub layout
        stem, texts, labels = question, list(record["choices"]["text"]), list(record["choices"]["label"])
    return choice_item(str(record.get("id", index)), f"Question: {stem}\nAnswer:", texts,
                       labels.index(record["answerKey"]))


def _task(name: str, subset: str) -> Task:
    return Task(name, "multiple_choice", ("acc", "acc_norm"),
                TaskSource(dataset="allenai/ai2_arc", dataset_config=subset, split="test"), parse)


ARC_EASY = _task("arc_easy", "ARC-Easy")
ARC_CHALLENGE = _task("arc_challenge", "ARC-Challenge")
