"""Run a task's items through the model and turn log-likelihoods into lm-eval's metrics.

* ``acc``: the choice with the highest summed log-likelihood is the gold one (ties: the first, as ``np.argmax``).
* ``acc_norm``: the same after dividing each log-likelihood by the length **in characters** of the choice string
  (lm-eval's ``completion_len``; the leading space is not counted).
* greedy-continuation tasks (LAMBADA): ``acc`` is 1 when every continuation token is the argmax, ``perplexity`` is
  ``exp(-mean log-likelihood)`` over items.
* ``stderr``: sample standard deviation / sqrt(n), lm-eval's ``mean_stderr``.
* ``chance``: the expected accuracy of a uniform random guess (mean of 1/number of choices); ``majority_baseline``:
  the accuracy of always answering the most common gold index -- both printed beside each score.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lumi.eval.loglikelihood import encode_pair, padding_id, score_continuations
from lumi.eval.tasks import Task, TaskItem


def mean_and_stderr(values: list[float]) -> dict[str, float | None]:
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"value": mean, "stderr": None}
    return {"value": mean, "stderr": float(np.std(values, ddof=1) / math.sqrt(len(values)))}


def score_items(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, items: list[TaskItem],
                max_length: int, batch_size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Returns (summary, per-item records). All requests of all items go through one batched scorer."""
    pairs = [encode_pair(tokenizer, context, continuation) for item in items for context, continuation in item.requests]
    scores = iter(score_continuations(model, pairs, max_length=max_length, batch_size=batch_size,
                                      pad_id=padding_id(tokenizer)))
    per_metric: dict[str, list[float]] = defaultdict(list)
    by_group: dict[str, list[float]] = defaultdict(list)
    records = []
    for item in items:
        item_scores = [next(scores) for _ in item.requests]
        logprobs = np.array([s.logprob for s in item_scores])
        record: dict[str, Any] = {"id": item.item_id, "gold": item.gold, "logprobs": logprobs.tolist(),
                                  "tokens": [s.num_tokens for s in item_scores],
                                  "truncated": any(s.truncated for s in item_scores)}
        if task.kind == "greedy_continuation":
            record["acc"] = float(item_scores[0].is_greedy)
            per_metric["acc"].append(record["acc"])
            per_metric["logprob"].append(float(logprobs[0]))
        else:
            pred = int(np.argmax(logprobs))
            pred_norm = int(np.argmax(logprobs / np.maximum(np.array(item.choice_lengths, dtype=float), 1.0)))
            record.update(pred=pred, pred_norm=pred_norm, acc=float(pred == item.gold),
                          acc_norm=float(pred_norm == item.gold))
            for metric in task.metrics:
                per_metric[metric].append(record[metric])
            if item.group is not None:
                by_group[item.group].append(record["acc"])
        records.append(record)

    metrics: dict[str, Any] = {}
    for metric in task.metrics:
        if metric == "perplexity":
            metrics[metric] = {"value": math.exp(-float(np.mean(per_metric["logprob"]))), "stderr": None}
        else:
            metrics[metric] = mean_and_stderr(per_metric[metric])
    summary: dict[str, Any] = {"kind": task.kind, "num_items": len(items), "metrics": metrics,
                               "truncated_items": sum(r["truncated"] for r in records)}
    if task.kind == "multiple_choice":
        summary["chance"] = float(np.mean([1 / len(item.requests) for item in items]))
        summary["majority_baseline"] = Counter(item.gold for item in items).most_common(1)[0][1] / len(items)
    if by_group:
        summary["acc_by_group"] = {group: mean_and_stderr(values) for group, values in sorted(by_group.items())}
    return summary, records
