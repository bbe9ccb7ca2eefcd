"""``lumi evaluate`` end to end on a tiny checkpoint: results file and schema, per-item samples, report with tables
and plots, comparison with a previous run, generation signals, and one-line refusals of bad input (exit 2)."""

from __future__ import annotations

import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
from eval_helpers import make_tiny_model_dir, training_text, write_tokenizer
from helpers import make_corpus_dir

from lumi.cli import main
from lumi.core.config import load_config
from lumi.core.special_tokens import EOS_ID, IM_END_ID, IM_START_TOKEN
from lumi.eval.config import EvaluationConfig
from lumi.eval.generation import format_prompt, load_prompts, repeated_ngram_rate, run_generation, stop_token_ids
from lumi.eval.report import compare_results, load_previous_results
from lumi.loading import load_for_evaluation
from lumi.eval.evaluate import RESULTS_SCHEMA
from lumi.eval.report import RESULTS_FILE
from lumi.data.packing import PackingConfig, pack_corpus

REPO_ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N = 12  # items per task


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, samples_dir, fixtures_dir):
    """Two checkpoints (different seeds) inside a training run dir with metrics.jsonl, packed data, a config."""
    root = tmp_path_factory.mktemp("eval_cli")
    tokenizer = write_tokenizer(root / "tokenizer")
    corpus = make_corpus_dir(root / "corpus", [doc[:300] for doc in training_text(150)])
    pack_corpus(corpus, tokenizer, root / "packed", PackingConfig(seq_len=64, val_fraction=0.2, num_threads=1))
    run_dir = root / "run"
    models = [make_tiny_model_dir(run_dir / f"step_{seed}", tokenizer, seed=seed, max_seq_len=128) for seed in (0, 1)]
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "train/loss": 6 - s / 50, **({"val/loss": 6.2 - s / 50} if s % 25 == 0 else {})}) + "\n"
        for s in range(1, 101)))
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps({"_comment": "test", "story": ["Once upon a time"], "facts": ["Tova lives in"]}))
    config = {
        "batch_size": 4, "device": "cpu",
        "perplexity": [{"name": "val", "packed_dir": str(root / "packed")},
                       {"name": "alice", "text_file": str(samples_dir / "gutenberg_pg11.txt"), "max_chars": 3000,
                        "stride": 64}],
        "tasks": [
            {"task": "boolq", "source": {"path": str(samples_dir / "boolq_dev_first300.jsonl")}, "max_samples": N},
            {"task": "piqa", "source": {"path": str(samples_dir / "piqa_dev_first300.jsonl"),
                                        "labels_path": str(samples_dir / "piqa_dev-labels_first300.lst")},
             "max_samples": N},
            {"task": "arc_easy", "source": {"path": str(samples_dir / "arc_easy_dev_first300.jsonl")},
             "max_samples": N},
            {"task": "hellaswag", "source": {"path": str(fixtures_dir / "eval" / "hellaswag_original_layout.jsonl")}},
            {"task": "lambada", "source": {"path": str(fixtures_dir / "eval" / "lambada_original_layout.jsonl")}},
            {"task": "winogrande",
             "source": {"path": str(fixtures_dir / "eval" / "winogrande_original_layout.jsonl")}},
            {"task": "synthetic_cloze", "source": {"world": {"type": "synthetic", "seed": 0, "people": 20,
                                                             "places": 6}}, "max_samples": N},
        ],
        "generation": {"prompts_file": str(prompts), "max_new_tokens": 6, "samples_per_prompt": 1},
    }
    (root / "eval.json").write_text(json.dumps(config))
    return {"root": root, "models": models, "config": root / "eval.json", "packed": root / "packed",
            "tokenizer": tokenizer}


def evaluate(workspace, output: Path, *extra: str, model: int = 0) -> int:
    return main(["evaluate", "--model-path", str(workspace["models"][model]), "--config", str(workspace["config"]),
                 "--output-dir", str(output), *extra])


@pytest.fixture(scope="module")
def first_run(workspace):
    output = workspace["root"] / "out_first"
    assert evaluate(workspace, output) == 0
    return output


def test_results_file_schema_and_outputs(workspace, first_run):
    results = json.loads((first_run / RESULTS_FILE).read_text())
    assert results["schema"] == RESULTS_SCHEMA
    assert results["model"]["path"] == str(workspace["models"][0].resolve())
    assert len(results["tokenizer_fingerprint"]) == 64
    assert set(results["versions"]) >= {"torch", "transformers", "datasets", "python", "lumi"}
    assert results["started"] <= results["finished"]
    assert results["config"]["tasks"][0]["task"] == "boolq"
    assert set(results["tasks"]) == {"boolq", "piqa", "arc_easy", "hellaswag", "lambada", "winogrande",
                                       "synthetic_cloze"}
    for name, summary in results["tasks"].items():
        lines = (first_run / "samples" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == summary["num_items"]
        for metric in summary["metrics"].values():
            assert set(metric) == {"value", "stderr"}
    assert results["tasks"]["boolq"]["num_items"] == N and results["tasks"]["boolq"]["items_available"] == 300
    assert results["tasks"]["boolq"]["chance"] == 0.5 and results["tasks"]["arc_easy"]["chance"] == 0.25
    assert set(results["tasks"]["lambada"]["metrics"]) == {"acc", "perplexity"}
    assert "chance" not in results["tasks"]["lambada"]
    assert results["tasks"]["boolq"]["data"]["sha256"]  # the exact benchmark file is recorded
    assert results["tasks"]["synthetic_cloze"]["acc_by_group"]
    val, alice = results["perplexity"]["val"], results["perplexity"]["alice"]
    assert val["rows"] == val["data"]["rows_total"] and val["perplexity"] > 1
    # a packed split is scored in both modes: each document alone (loss) and whole rows (causal); text has one mode
    assert set(val["causal"]) == {"loss", "perplexity", "bits_per_byte"} and "causal" not in alice
    assert val["causal"]["perplexity"] == pytest.approx(math.exp(val["causal"]["loss"]))
    assert alice["data"]["chars_scored"] == 3000 and alice["bytes"] == len(
        (Path(alice["data"]["text_file"]).read_text()[:3000]).encode())
    generations = [json.loads(line) for line in (first_run / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 2 * 2  # 2 prompts x (greedy + 1 sample)
    assert all(g["num_tokens"] <= 6 for g in generations)


def test_report_has_tables_chance_and_plots(first_run):
    report = (first_run / "report.md").read_text()
    assert "| task | metric | value | stderr | chance | majority | n |" in report
    assert "| boolq | acc |" in report and "| val |" in report
    assert "- val: each packed document scored alone; whole rows (documents see the earlier ones of their row): loss" \
        in report
    assert "## Generation smoke checks" in report
    assert "![loss_curves](loss_curves.png)" in report and "metrics.jsonl" in report
    for png in ("loss_curves.png", "benchmarks.png"):
        assert (first_run / png).read_bytes()[:8] == PNG_MAGIC


def test_compare_with_a_previous_run(workspace, first_run):
    output = workspace["root"] / "out_second"
    assert evaluate(workspace, output, "--compare", str(first_run), model=1) == 0
    current = json.loads((output / RESULTS_FILE).read_text())
    previous = json.loads((first_run / RESULTS_FILE).read_text())
    rows = current["comparison"]["rows"]
    assert current["comparison"]["same_tokenizer"]
    boolq = next(r for r in rows if r["name"] == "boolq" and r["metric"] == "acc")
    assert boolq["previous"] == previous["tasks"]["boolq"]["metrics"]["acc"]["value"]
    assert boolq["delta"] == pytest.approx(current["tasks"]["boolq"]["metrics"]["acc"]["value"] - boolq["previous"])
    val = next(r for r in rows if r["name"] == "val" and r["metric"] == "loss")
    assert val["delta"] != 0  # another seed, another model
    assert "## Comparison" in (output / "report.md").read_text()


def test_compare_reads_a_schema_1_results_file_whose_fingerprint_key_was_tokenizer_sha256(first_run, tmp_path):
    current = json.loads((first_run / RESULTS_FILE).read_text())
    old = {k: v for k, v in current.items() if k != "tokenizer_fingerprint"}
    for fingerprint, same in ((current["tokenizer_fingerprint"], True), ("0" * 64, False)):
        path = tmp_path / f"{same}.json"
        path.write_text(json.dumps({**old, "schema": "lumi-evaluation/1", "tokenizer_sha256": fingerprint}))
        assert compare_results(current, load_previous_results(path), str(path))["same_tokenizer"] is same


def test_existing_output_needs_force(workspace, first_run, tmp_path, capsys):
    output = shutil.copytree(first_run, tmp_path / "out")
    assert evaluate(workspace, output, "--set", "tasks=[]") == 2
    assert "pass --force" in capsys.readouterr().err
    assert evaluate(workspace, output, "--force", "--set", "tasks=[]", "--set", "perplexity=[]") == 0
    assert json.loads((output / RESULTS_FILE).read_text())["tasks"] == {}
    assert not (output / "samples").exists()  # the old output was replaced whole, not merged


def test_model_dir_without_tokenizer(tmp_path, workspace, capsys):
    model_dir = make_tiny_model_dir(tmp_path / "no_tokenizer", tokenizer_dir=None)
    code = main(["evaluate", "--model-path", str(model_dir), "--config", str(workspace["config"]),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "no tokenizer files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_config_and_paths_exit_2(tmp_path, workspace, capsys):
    config = json.loads(workspace["config"].read_text())
    cases = [
        ({**config, "tasks": [{"task": "mmlu"}]}, "unknown task 'mmlu'"),
        ({**config, "max_length": 4096}, "exceeds the model's context of 128"),
        ({**config, "tasks": [{"task": "boolq", "source": {"path": str(tmp_path / "missing.jsonl")}}]},
         "missing.jsonl: benchmark file not found"),
    ]
    for index, (data, message) in enumerate(cases):
        path = tmp_path / f"config{index}.json"
        path.write_text(json.dumps(data))
        code = main(["evaluate", "--model-path", str(workspace["models"][0]), "--config", str(path),
                     "--output-dir", str(tmp_path / f"out{index}")])
        assert code == 2
        assert message in capsys.readouterr().err
    assert main(["evaluate", "--model-path", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_packed_data_from_another_tokenizer_is_refused(tmp_path, workspace, capsys):
    packed = shutil.copytree(workspace["packed"], tmp_path / "packed")
    manifest = json.loads((packed / "final_manifest.json").read_text())
    (packed / "final_manifest.json").write_text(json.dumps({**manifest, "tokenizer_sha256": "0" * 64}))
    code = evaluate(workspace, tmp_path / "out", "--set", f'perplexity=[{{"name": "v", "packed_dir": "{packed}"}}]',
                    "--set", "tasks=[]")
    assert code == 2
    assert "packed with tokenizer sha256 000" in capsys.readouterr().err


def test_generation_stops_at_eos_on_a_model_that_learned_to(tmp_path, workspace):
    model, tokenizer = load_for_evaluation(make_tiny_model_dir(tmp_path / "m", workspace["tokenizer"], max_seq_len=32),
                                           device="cpu")
    sentence = tokenizer.encode("The cat sat on the mat.") + [EOS_ID]
    ids = torch.tensor([sentence])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    outputs, summary = run_generation(model, tokenizer, {"c": ["The cat"]}, "plain", max_new_tokens=20, greedy=True,
                                      samples_per_prompt=0, sampling={}, repetition_ngram=3, seed=0)
    [greedy] = outputs
    assert greedy["text"] == " sat on the mat." and greedy["stopped_at_eos"]
    assert greedy["num_tokens"] == len(sentence) - 1 - len(tokenizer.encode("The cat"))  # EOS not counted
    assert summary["modes"]["greedy"]["all"]["stop_rate"] == 1.0


def test_generation_helpers(workspace):
    assert repeated_ngram_rate([1, 2, 3, 4], 2) == 0.0
    assert repeated_ngram_rate([7, 7, 7, 7, 7], 2) == pytest.approx(3 / 4)
    assert repeated_ngram_rate([1], 3) == 0.0
    _, tokenizer = load_for_evaluation(workspace["models"][0], device="cpu")
    chat = format_prompt(tokenizer, "Hi?", "chat")
    assert chat.startswith(f"{IM_START_TOKEN}user\nHi?") and chat.endswith(f"{IM_START_TOKEN}assistant\n")
    assert stop_token_ids(tokenizer, "chat") == [EOS_ID, IM_END_ID]
    assert stop_token_ids(tokenizer, "plain") == [EOS_ID]


def test_scripts_show_their_own_defaults(monkeypatch, capsys):
    for script, config in (("50_evaluate_pretrain.py", "pretrain.json"), ("80_evaluate_sft.py", "sft.json")):
        monkeypatch.setattr(sys, "argv", [script, "--help"])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO_ROOT / "scripts" / script), run_name="__main__")
        assert exit_info.value.code == 0
        assert f"evaluation/{config})" in capsys.readouterr().out.replace("\n", "").replace(" ", "")


def test_shipped_configs_and_prompts_are_valid():
    configs = sorted((REPO_ROOT / "config" / "evaluation").glob("*.json"))
    prompts = REPO_ROOT / "config" / "evaluation" / "smoke_test_prompts.json"
    assert prompts in configs and len(configs) >= 4
    for path in configs:
        if path == prompts:
            assert all(load_prompts(path).values())
        else:
            config = load_config(EvaluationConfig, path)
            assert config.tasks or config.synthetic_qa, path  # each scores something
            assert config.generation is not None or not config.tasks, path  # benchmark configs also generate


# --- defaults from the checkpoint's own training record, and the shipped configs offline ---------------------------

def test_default_perplexity_is_the_checkpoints_own_val_data_at_its_trained_length(workspace, tmp_path, samples_dir,
                                                                                  caplog):
    """A checkpoint records its data dirs and seq_len (pretrain_config.json): `training_data` scores the val split
    of that data, said in the log, the results and the report, and the text window is the trained seq_len (64),
    not the model's 128 positions."""
    model = make_tiny_model_dir(tmp_path / "ckpt", workspace["tokenizer"], max_seq_len=128)
    (model / "pretrain_config.json").write_text(json.dumps({"config": {"data_dirs": [str(workspace["packed"])]},
                                                            "seq_len": 64}))
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({"device": "cpu", "perplexity": [
        {"name": "val", "training_data": True, "max_rows": 4},
        {"name": "alice", "text_file": str(samples_dir / "gutenberg_pg11.txt"), "max_chars": 2000}]}))
    output = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert main(["evaluate", "--model-path", str(model), "--config", str(config), "--output-dir",
                     str(output)]) == 0
    results = json.loads((output / RESULTS_FILE).read_text())
    val = results["perplexity"]["val"]
    assert val["data"]["packed_dir"] == str(workspace["packed"]) and val["data"]["split"] == "val"
    assert "the data the checkpoint was trained on" in val["data"]["chosen"]
    assert f"val = the val split of {workspace['packed']}" in caplog.text
    assert results["perplexity"]["alice"]["window"] == 64 and results["model"]["context_length"] == 128
    report = (output / "report.md").read_text()
    assert "- val: the val split of" in report and "- alice: sliding window of 64 tokens" in report


def test_training_data_of_a_model_that_records_none_is_a_clear_error(workspace, tmp_path, capsys):
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({"device": "cpu", "perplexity": [{"name": "val", "training_data": True}]}))
    assert main(["evaluate", "--model-path", str(workspace["models"][0]), "--config", str(config),
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar
    assert err.startswith("error: perplexity 'val': ") and "records no training data" in err
    assert """--set 'perplexity.0={"name": "val", "packed_dir": "DIR"}'""" in err


def test_shipped_config_offline_names_the_task_its_hub_source_and_the_local_fix(workspace, tmp_path, capsys):
    """config/evaluation/pretrain.json reads BoolQ from google/boolq; with no network and no cache that is one line
    naming the task, the source and the --set that points it at a local file, and exit 2."""
    assert main(["evaluate", "--model-path", str(workspace["models"][0]), "--output-dir", str(tmp_path / "out"),
                 "--device", "cpu", "--set", "perplexity=[]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar
    assert err.startswith("error: task boolq: dataset google/boolq split=validation could not be loaded")
    assert """--set 'tasks.0.source={"path": "FILE"}'""" in err
    assert not (tmp_path / "out").exists()


def test_shipped_config_with_its_benchmarks_pointed_at_local_files(workspace, tmp_path, samples_dir):
    """Following that advice works: the shipped config, its benchmarks set to the local original-layout files."""
    sources = {0: {"path": str(samples_dir / "boolq_dev_first300.jsonl")},
               1: {"path": str(samples_dir / "piqa_dev_first300.jsonl"),
                   "labels_path": str(samples_dir / "piqa_dev-labels_first300.lst")},
               2: {"path": str(samples_dir / "arc_easy_dev_first300.jsonl")}}
    sets = [arg for index, source in sources.items() for arg in ("--set", f"tasks.{index}.source={json.dumps(source)}")]
    output = tmp_path / "out"
    assert main(["evaluate", "--model-path", str(workspace["models"][0]), "--output-dir", str(output),
                 "--device", "cpu", "--max-samples", "4", "--set", "perplexity=[]", "--set", "generation=null",
                 *sets]) == 0
    results = json.loads((output / RESULTS_FILE).read_text())
    assert set(results["tasks"]) == {"boolq", "piqa", "arc_easy"}  # no world task for a model of another world
    assert results["tasks"]["boolq"]["data"]["source"] == sources[0]["path"]
