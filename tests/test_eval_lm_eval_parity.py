"""Parity with lm-evaluation-harness on the same checkpoint and the same local examples (BoolQ, PIQA, ARC-Easy in
their original layouts), offline through lm-eval task configs written by ``lumi.eval.harness``.

* ``lm_eval --model hf --model_args pretrained=DIR`` -- the command line, unchanged -- against ``add_bos: false``
  (the project tokenizer adds no BOS by itself);
* ``model_args=pretrained=DIR,add_bos_token=True`` against our default ``add_bos: true``.

Every per-choice log-likelihood must agree to 1e-4 nats (float32 sums: plus 1e-6 relative) and every accuracy and
standard error exactly (the brief allows 0.5 points).
Skipped when lm-eval is not installed (``pip install lm-eval``); its import and model load take ~15 s.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import head_lines, make_tiny_model_dir, write_tokenizer

from lumi.eval.harness import write_lm_eval_task
from lumi.eval.scoring import score_items
from lumi.eval.tasks import TaskSource, get_task
from lumi.loading import load_for_evaluation

pytest.importorskip("lm_eval")

ITEMS = 20
CONTEXT = 512  # lm-eval refuses (asserts) a continuation longer than the context; PIQA solutions need room


@pytest.fixture(scope="module")
def setup(tmp_path_factory, samples_dir):
    root = tmp_path_factory.mktemp("parity")
    model_dir = make_tiny_model_dir(root / "model", write_tokenizer(root / "tokenizer"), max_seq_len=CONTEXT)
    sources = {
        "boolq": TaskSource(path=str(head_lines(samples_dir / "boolq_dev_first300.jsonl", root / "boolq.jsonl",
                                                ITEMS))),
        "piqa": TaskSource(path=str(head_lines(samples_dir / "piqa_dev_first300.jsonl", root / "piqa.jsonl", ITEMS)),
                           labels_path=str(head_lines(samples_dir / "piqa_dev-labels_first300.lst",
                                                      root / "piqa.lst", ITEMS))),
        "arc_easy": TaskSource(path=str(head_lines(samples_dir / "arc_easy_dev_first300.jsonl", root / "arc.jsonl",
                                                   ITEMS))),
    }
    names = {task: write_lm_eval_task(root / "lm_eval_tasks", task, source) for task, source in sources.items()}
    return root, model_dir, sources, names


def ours(model_dir: Path, sources: dict[str, TaskSource], add_bos: bool) -> dict[str, tuple[dict, list[dict]]]:
    model, tokenizer = load_for_evaluation(model_dir, device="cpu", dtype="auto", add_bos=add_bos)
    return {task: score_items(model, tokenizer, get_task(task), get_task(task).load(source), CONTEXT, batch_size=8)
            for task, source in sources.items()}


def assert_same(our_results, their_metrics: dict, their_samples: dict[str, list[dict]], names: dict[str, str]):
    for task, (summary, records) in our_results.items():
        theirs = sorted(their_samples[names[task]], key=lambda s: s["doc_id"])
        assert len(theirs) == len(records) == ITEMS
        for record, sample in zip(records, theirs):
            their_logprobs = [float(response[0][0]) for response in sample["resps"]]
            assert record["logprobs"] == pytest.approx(their_logprobs, rel=1e-6, abs=1e-4)
        for metric, value in summary["metrics"].items():
            assert value["value"] == pytest.approx(their_metrics[names[task]][f"{metric},none"], abs=1e-9)
            assert value["stderr"] == pytest.approx(their_metrics[names[task]][f"{metric}_stderr,none"], abs=1e-9)


def test_unchanged_lm_eval_command_line_matches_add_bos_false(setup):
    root, model_dir, sources, names = setup
    output = root / "lm_eval_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir}",
                    "--include_path", str(root / "lm_eval_tasks"), "--tasks", ",".join(names.values()),
                    "--device", "cpu", "--batch_size", "8", "--output_path", str(output), "--log_samples"],
                   check=True, env=env, capture_output=True, text=True)
    [results_file] = glob.glob(str(output / "*" / "results_*.json"))
    metrics = json.loads(Path(results_file).read_text())["results"]
    samples = {name: [json.loads(line) for line in
                      Path(glob.glob(str(output / "*" / f"samples_{name}_*.jsonl"))[0]).read_text().splitlines()]
               for name in names.values()}
    assert_same(ours(model_dir, sources, add_bos=False), metrics, samples, names)


def test_add_bos_token_matches_our_default(setup):
    import lm_eval
    from lm_eval.tasks import TaskManager

    root, model_dir, sources, names = setup
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},add_bos_token=True",
                                      tasks=list(names.values()), device="cpu", batch_size=8, log_samples=True,
                                      task_manager=TaskManager(include_path=str(root / "lm_eval_tasks")))
    assert_same(ours(model_dir, sources, add_bos=True), results["results"], results["samples"], names)
