"""lm-evaluation-harness's ``local-completions`` model (what people point at vLLM or llama-server) scores a
log-likelihood task against ``lumi serve`` exactly as ``lumi evaluate`` scores it on the same checkpoint: echo +
logprobs on token-id prompts, several prompts per request. Per-choice log-likelihoods agree to 1e-4 nats and the
accuracy to 1e-4. Skipped when lm-eval is not installed."""

from __future__ import annotations

import pytest
from eval_helpers import head_lines, make_tiny_model_dir, write_tokenizer

from lumi.eval.harness import write_lm_eval_task
from lumi.eval.scoring import score_items
from lumi.eval.tasks import TaskSource, get_task
from lumi.loading import load_for_evaluation
from lumi.generation.engine import Engine
from lumi.serve.api import ServerSettings, create_app
from lumi.serve.checkpoint import load_for_serving
from lumi.serve.server import running_server

pytest.importorskip("lm_eval")

ITEMS = 20
CONTEXT = 512
TASK = "arc_easy"  # short items: no truncation on either side


def test_lm_eval_local_completions_equals_lumi_evaluate(tmp_path, samples_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    model_dir = make_tiny_model_dir(tmp_path / "model", write_tokenizer(tmp_path / "tokenizer"), max_seq_len=CONTEXT)
    source = TaskSource(path=str(head_lines(samples_dir / "arc_easy_dev_first300.jsonl", tmp_path / "arc.jsonl",
                                            ITEMS)))
    name = write_lm_eval_task(tmp_path / "lm_eval_tasks", TASK, source)

    # lm-eval's HF tokenizer adds no BOS (the project tokenizer adds none by itself): ours with add_bos false
    model, tokenizer = load_for_evaluation(model_dir, device="cpu", dtype="auto", add_bos=False)
    summary, records = score_items(model, tokenizer, get_task(TASK), get_task(TASK).load(source), CONTEXT,
                                   batch_size=8)

    served_model, served_tokenizer = load_for_serving(model_dir, device="cpu")
    with Engine(served_model, served_tokenizer, max_batch=4) as engine:
        with running_server(create_app(engine, served_tokenizer, ServerSettings(model_id="tiny"))) as url:
            results = lm_eval.simple_evaluate(
                model="local-completions",
                model_args=(f"model=tiny,base_url={url}/v1/completions,tokenizer={model_dir},"
                            f"tokenizer_backend=huggingface,max_length={CONTEXT - 1},batch_size=4,max_retries=1"),
                tasks=[name], log_samples=True, task_manager=TaskManager(include_path=str(tmp_path / "lm_eval_tasks")))

    theirs = sorted(results["samples"][name], key=lambda s: s["doc_id"])
    assert len(theirs) == len(records) == ITEMS
    for record, sample in zip(records, theirs):
        assert record["logprobs"] == pytest.approx([float(r[0][0]) for r in sample["resps"]], rel=1e-6, abs=1e-4)
    for metric, value in summary["metrics"].items():
        assert value["value"] == pytest.approx(results["results"][name][f"{metric},none"], abs=1e-4)
