"""README "Train on your own data": every command of its walkthrough, run as written (in-process, through
``lumi.cli.main``) on the real samples -- books + TinyStories, Alpaca + OpenAssistant, HH-RLHF (.jsonl.gz) + ShareGPT
pairs, the micro model on CPU -- and what a new user must see at each step (issue: "your own data, first day")."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import re
import shlex

import pytest
from conftest import REPO_ROOT

from lumi.cli import VERBS, main
from lumi.core.config import CONFIG_DIR
from lumi.core.stage_args import OUTPUT_ROOT
from lumi.data.preference import read_dpo_manifest
from lumi.data.sft_corpus import read_sft_manifest
from lumi.eval.tasks import base as task_base
from lumi.formats.metrics import read_metrics
from lumi.train.config import TrainerConfig
from lumi.train.optim import lr_at, schedule_notes

SAMPLES_IN_README = "../shared/data/samples"
OUTPUT_IN_README = "out/own"


def walkthrough_commands() -> list[str]:
    """The commands of the README section, continuation lines joined, comments dropped."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Train on your own data"):]
    section = section[:section.index("\n## ", 1)]
    block = section[section.index("```bash\n") + 8:]
    block = block[:block.index("```")]
    commands, current = [], ""
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


@pytest.fixture(scope="module")
def walkthrough(samples_dir, tmp_path_factory):
    """Run every command; per command its stdout and log lines. Paths: the samples and a temp output root."""
    out = tmp_path_factory.mktemp("own")
    results = {}
    root = logging.getLogger()
    for command in walkthrough_commands():
        assert command.startswith("lumi "), command
        argv = shlex.split(command.replace(SAMPLES_IN_README, str(samples_dir)).replace(OUTPUT_IN_README, str(out)))
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = records.append  # type: ignore[method-assign]
        root.addHandler(handler)
        previous_level = root.level
        root.setLevel(logging.INFO)
        try:
            import contextlib
            import io
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                code = main(argv[1:])
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)
        assert code == 0, f"{command}\n{stdout.getvalue()}"
        verb = argv[1]
        results.setdefault(verb, []).append({"stdout": stdout.getvalue(),
                                             "log": [r.getMessage() for r in records]})
    return out, results


def test_commands_are_what_the_readme_says(walkthrough):
    out, results = walkthrough
    assert list(results) == ["corpus", "tokenizer", "pack", "pretrain", "evaluate", "sft-corpus", "sft",
                             "dpo-corpus", "dpo"]
    assert len(results["evaluate"]) == 3


def test_1_each_file_is_read_by_its_own_reader(walkthrough):
    out, _ = walkthrough
    sft = read_sft_manifest(out / "sft_data")["sources"]
    assert {name: s["format"] for name, s in sft.items()} == {
        "alpaca_data_first200.json": "alpaca", "oasst_export_trees_en100_first30.jsonl": "oasst"}
    dpo = read_dpo_manifest(out / "dpo_data")["sources"]
    assert {name: s["format"] for name, s in dpo.items()} == {
        "hh_rlhf_harmless_base_test_first300.jsonl.gz": "hh", "sharegpt_preference_llamafactory_first100.json":
        "sharegpt"}
    for source in [*sft.values(), *dpo.values()]:
        assert source["kept"] > 0 and not {"missing_field", "invalid_json", "not_an_object"} & set(source["dropped"])


def test_3_sft_model_is_evaluated_on_its_own_val_data(walkthrough):
    out, _ = walkthrough
    results = json.loads((out / "evaluation_sft" / "evaluation_results.json").read_text())
    assert results["perplexity"] == {} and results["tasks"] == {}
    loss = results["sft_loss"]["val"]
    assert loss["data"]["sft_dir"] == str(out / "sft_data") and loss["data"]["split"] == "val"
    dpo = json.loads((out / "evaluation_dpo" / "evaluation_results.json").read_text())
    assert dpo["preference"]["val"]["pairs"] == read_dpo_manifest(out / "dpo_data")["splits"]["val"]["pairs"]


def test_4_offline_default_evaluation_fails_fast_in_one_line(walkthrough, capsys, monkeypatch):
    """The default config's benchmarks live on the hub: offline (HF_HUB_OFFLINE, as in every test) and with no
    network at all (an endpoint nobody answers), one line that names the --set to a local file; no world task is
    scored for a model of another world."""
    out, _ = walkthrough
    model = out / "checkpoints" / "micro" / "final"
    assert main(["evaluate", "--model-path", str(model), "--output-dir", str(out / "offline")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: task boolq:") and """--set 'tasks.0.source={"path": "FILE"}'""" in err, err
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    task_base.hub_unreachable.cache_clear()
    try:
        assert main(["evaluate", "--model-path", str(model), "--output-dir", str(out / "no_network")]) == 2
    finally:
        task_base.hub_unreachable.cache_clear()
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "cannot be reached" in line and """--set 'tasks.0.source={"path": "FILE"}'""" in line, line
    assert "Retrying" not in err
    results = json.loads((out / "evaluation" / "evaluation_results.json").read_text())
    assert set(results["tasks"]) == {"boolq", "piqa", "arc_easy"}


def test_5_warmup_fits_the_run(walkthrough):
    _, results = walkthrough
    assert any("warmup: 1 steps instead of warmup_steps=50" in line for line in results["sft"][0]["log"])
    assert any("warmup: 0 steps instead of warmup_steps=20" in line for line in results["dpo"][0]["log"])
    config = TrainerConfig(micro_batch_size=1, lr=2e-4, warmup_steps=50)
    assert lr_at(1, config, 5) == pytest.approx(2e-4)  # at its peak after the capped warmup
    never = TrainerConfig(micro_batch_size=1, lr=2e-4, warmup_steps=50, warmup_max_fraction=1.0)
    assert lr_at(3, never, 5) < 2e-4 and any("peak 0.0002 only at the last step" in n
                                             for n in schedule_notes(never, 5))


def test_6_console_shows_val_loss_rewards_and_a_sample(walkthrough):
    _, results = walkthrough
    pretrain, sft, dpo = results["pretrain"][0], results["sft"][0], results["dpo"][0]
    assert any(re.match(r"step 12/12: val/loss [\d.]+", line) for line in pretrain["log"])
    assert "at step 12: val/loss" in pretrain["stdout"] and "sample (greedy, from the start of a val row)" in \
        pretrain["stdout"]
    assert any(re.match(r"step 5/5: val/loss", line) for line in sft["log"]) and "at step 5: val/loss" in \
        sft["stdout"]
    assert any(re.match(r"step 3/3 loss .* accuracy [\d.]+", line) for line in dpo["log"])
    assert "val/rewards/accuracy" in dpo["stdout"]


def test_7_run_dirs_are_named_after_what_was_trained(walkthrough, tmp_path, capsys):
    out, _ = walkthrough
    for final in ("checkpoints/micro/final", "sft/lora/final", "dpo/dpo_lora/final"):
        assert (out / final).is_dir(), final
    assert main(["sft", "--model-path", str(out / "checkpoints" / "micro" / "final"), "--data-dir",
                 str(out / "sft_data"), "--set", "method=full", "--set", "name=lora_books",
                 "--output-dir", str(tmp_path / "sft")]) == 2
    assert "run name 'lora_books' says lora but method is full" in capsys.readouterr().err


def test_8_trainer_and_evaluator_val_losses_agree(walkthrough):
    out, _ = walkthrough
    evaluation = json.loads((out / "evaluation" / "evaluation_results.json").read_text())
    trained = [r["val/loss"] for r in read_metrics(out / "checkpoints" / "micro" / "metrics.jsonl") if "val/loss" in r]
    assert math.isclose(evaluation["perplexity"]["val"]["loss"], trained[-1], rel_tol=1e-4)
    evaluation = json.loads((out / "evaluation_sft" / "evaluation_results.json").read_text())
    trained = [r["val/loss"] for r in read_metrics(out / "sft" / "lora" / "metrics.jsonl") if "val/loss" in r]
    assert math.isclose(evaluation["sft_loss"]["val"]["loss"], trained[-1], rel_tol=1e-4)


def test_9_length_drops_are_reported_with_the_fix(walkthrough):
    out, results = walkthrough
    sft_log, dpo_log = results["sft-corpus"][0]["log"], results["dpo-corpus"][0]["log"]
    oasst = read_sft_manifest(out / "sft_data")["sources"]["oasst_export_trees_en100_first30.jsonl"]
    dropped = oasst["dropped"]["too_long"]
    assert any(f"{dropped} of 30 ({dropped / 30:.0%}) dropped as longer than seq_len 256" in line
               and "overlong=cut_at_turn" in line for line in sft_log)
    assert any("seq_len 256: the context of" in line for line in sft_log + dpo_log)
    sharegpt = read_dpo_manifest(out / "dpo_data")["sources"]["sharegpt_preference_llamafactory_first100.json"]
    assert any(f"{sharegpt['dropped']['too_long']} of 100" in line and "--seq-len" in line for line in dpo_log)


def test_10_one_rule_for_default_configs_and_outputs():
    for verb, (module_name, _) in VERBS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module_name).configure_parser(parser)
        output, config = parser.get_default("output_dir"), parser.get_default("config")
        if output is not None:
            assert output.parts[0] == OUTPUT_ROOT.name, (verb, output)
        if config is not None:
            assert "demo" not in str(config.relative_to(CONFIG_DIR)), (verb, config)
