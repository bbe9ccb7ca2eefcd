"""LAMBADA (Paperno et al. 2016), OpenAI's detokenized version: predict the last word of a passage.

Records ``{text}`` (the original ``lambada_test.jsonl`` and ``EleutherAI/lambada_openai``). As lm-eval's
``lambada_openai``: context = all but the last space-separated word, continuation = `` {last word}``; acc is 1 when
every continuation token is the greedy choice, and perplexity is ``exp(-mean log-likelihood)`` of the last word.
"""

from __future__ import annotations

from lumi.eval.tasks.base import Record, Task, TaskItem, TaskSource


def parse(record: Record, index: int) -> TaskItem:
    words = record["text"].split(" ")
    if len(words) < 2:
        raise ValueError("a LAMBADA passage needs at least two words")
    last = words[-1]
    return TaskItem(str(index), ((" ".join(words[:-1]), " " + last),), 0, (len(last),))


TASK = Task("lambada", "greedy_continuation", ("acc", "perplexity"),
            TaskSource(dataset="EleutherAI/lambada_openai", dataset_config="default", split="test"), parse)
