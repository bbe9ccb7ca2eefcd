"""Interop with lm-evaluation-harness: lm-eval task configs for our local benchmark files, so
``lm_eval --model hf --model_args pretrained=CHECKPOINT --include_path DIR --tasks lumi_local_boolq`` scores exactly
the examples ``lumi evaluate`` scores, offline, and the two can be compared item by item.

The prompt strings are those of lm-eval's own ``boolq`` / ``piqa`` / ``arc_easy`` yamls, rewritten only where the
original release layout differs from the hub copy those yamls read (BoolQ's boolean ``answer``, ARC's nested
``question``). PIQA's separate labels file is merged into one jsonl, the layout lm-eval's hub copy has. The configs
are written as JSON, which YAML parsers read as YAML.
"""

from __future__ import annotations

import json
from pathlib import Path

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_jsonl
from lumi.eval.tasks import TaskSource, get_task

TASK_PREFIX = "lumi_local_"
ARC_LABELS = "(question.choices|map(attribute='label')|list)"
LM_EVAL_PROMPTS = {
    "boolq": {"doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:", "doc_to_target": "{{answer|int}}",
              "doc_to_choice": ["no", "yes"]},
    "piqa": {"doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label",
             "doc_to_choice": "{{[sol1, sol2]}}"},
    "arc_easy": {"doc_to_text": "Question: {{question.stem}}\nAnswer:",
                 "doc_to_target": "{{" + ARC_LABELS + ".index(answerKey)}}",
                 "doc_to_choice": "{{question.choices|map(attribute='text')|list}}"},
}
LM_EVAL_PROMPTS["arc_challenge"] = LM_EVAL_PROMPTS["arc_easy"]


def write_lm_eval_task(directory: Path, task: str, source: TaskSource) -> str:
    """Write ``directory/lumi_local_<task>.yaml`` for a local original-format file; returns the lm-eval task name."""
    if task not in LM_EVAL_PROMPTS:
        raise LumiError(f"no lm-eval config for task {task!r} (have {sorted(LM_EVAL_PROMPTS)})")
    if source.path is None:
        raise LumiError(f"task {task}: lm-eval configs are written for local files only")
    directory.mkdir(parents=True, exist_ok=True)
    data_file = Path(source.path).resolve()
    if task == "piqa":
        data_file = directory / "piqa_with_labels.jsonl"
        records = get_task("piqa").read(source)
        atomic_write_jsonl(data_file, records)
    prompts = LM_EVAL_PROMPTS[task]
    name = TASK_PREFIX + task
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(data_file)}},
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "doc_to_text": prompts["doc_to_text"],
        "doc_to_target": prompts["doc_to_target"],
        "doc_to_choice": prompts["doc_to_choice"],
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in get_task(task).metrics],
        "metadata": {"version": 1.0},
    }
    (directory / f"{name}.yaml").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return name
