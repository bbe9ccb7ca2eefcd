"""Fault injection in the training loop (docs/RELIABILITY.md, stage 40): resume survives damaged, incomplete and
half-deleted checkpoints and a torn metrics line, falling back to the newest intact checkpoint with a warning naming
each one skipped, and reproduces the uninterrupted run; non-finite weights are never saved; one run per run dir.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from eval_helpers import write_tokenizer
from fault_helpers import dead_pid, flip_byte, one_error_line, truncate
from packed_helpers import nano_architecture, random_documents, train_losses, write_packed_dir

from lumi.cli import main
from lumi.core.errors import LumiError
from lumi.core.files import output_lock
from lumi.formats.checkpoint import CHECKSUMS_FILE, SUMMARY_FILE, check_finite_weights, rotate_checkpoints
from lumi.formats.metrics import read_metrics
from lumi.formats.tokenizer import load_tokenizer_meta
from lumi.model import ArchitectureConfig, build_model

SEQ_LEN = 32
STEPS = 6


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A tokenizer, packed data, a config, and a reference run of STEPS steps saving step_2, step_4 and final."""
    root = tmp_path_factory.mktemp("faults_training")
    tokenizer = write_tokenizer(root / "tokenizer")
    vocab = load_tokenizer_meta(tokenizer)["vocab_size"]
    arch = root / "nano.json"
    arch.write_text(json.dumps(nano_architecture(vocab, SEQ_LEN, tie_embeddings=True)))
    packed = write_packed_dir(root / "packed", tokenizer, random_documents(200, vocab, 0),
                              random_documents(20, vocab, 1), SEQ_LEN, vocab)
    config = root / "pretrain.json"
    config.write_text(json.dumps({
        "model": str(arch), "tokenizer_dir": str(tokenizer), "data_dirs": [str(packed)], "max_steps": STEPS,
        "micro_batch_size": 2, "lr": 0.005, "warmup_steps": 1, "log_interval": 1, "eval_interval": 3,
        "eval_max_rows": 4, "save_interval": 2, "keep_last_k": 2, "tensorboard": False}))
    assert main(["pretrain", "--config", str(config), "--output-dir", str(root / "reference")]) == 0
    return {"root": root, "tokenizer": tokenizer, "config": config, "reference": root / "reference" / "nano"}


def interrupted_copy(workspace, tmp_path) -> Path:
    """The reference run as a run killed after step_4 would leave it: no final/, records up to step 4."""
    run_dir = tmp_path / "out" / "nano"
    shutil.copytree(workspace["reference"], run_dir)
    shutil.rmtree(run_dir / "final")
    return run_dir


def resume(workspace, tmp_path) -> int:
    return main(["pretrain", "--config", str(workspace["config"]), "--output-dir", str(tmp_path / "out"),
                 "--resume", "auto"])


@pytest.mark.parametrize("damage", [
    lambda c: truncate(c / "model.safetensors"),
    lambda c: truncate(c / "trainer_state.pt"),
    lambda c: flip_byte(c / "model.safetensors"),
    lambda c: (c / CHECKSUMS_FILE).unlink() or (c / "trainer_state.pt").unlink(),  # incomplete
    lambda c: (c / SUMMARY_FILE).write_text(json.dumps({"step": "four"})),
], ids=["truncated-weights", "truncated-state", "flipped-weights", "incomplete", "non-integer-step"])
def test_resume_skips_a_damaged_newest_checkpoint_and_matches_the_uninterrupted_run(workspace, tmp_path, caplog,
                                                                                     damage):
    run_dir = interrupted_copy(workspace, tmp_path)
    damage(run_dir / "step_4")
    with caplog.at_level("INFO"):
        assert resume(workspace, tmp_path) == 0
    assert f"skipping checkpoint {run_dir / 'step_4'}" in caplog.text
    assert f"resumed from {run_dir / 'step_2'} at step 2" in caplog.text
    assert train_losses(run_dir) == train_losses(workspace["reference"])  # bitwise: same run from step 2


def test_resume_is_not_blocked_by_a_half_deleted_older_checkpoint(workspace, tmp_path, caplog):
    run_dir = interrupted_copy(workspace, tmp_path)
    for name in ("model.safetensors", SUMMARY_FILE, "trainer_state.pt"):  # an old rotation's rmtree, interrupted
        (run_dir / "step_2" / name).unlink()
    assert resume(workspace, tmp_path) == 0
    assert train_losses(run_dir) == train_losses(workspace["reference"])


def test_resume_with_no_intact_checkpoint_says_so_in_one_line(workspace, tmp_path, capsys):
    run_dir = interrupted_copy(workspace, tmp_path)
    for step in (2, 4):
        truncate(run_dir / f"step_{step}" / "model.safetensors")
    assert resume(workspace, tmp_path) == 2
    assert "no intact checkpoint to resume from" in one_error_line(capsys.readouterr().err)


def test_resume_from_a_named_damaged_checkpoint_is_refused(workspace, tmp_path, capsys):
    run_dir = interrupted_copy(workspace, tmp_path)
    truncate(run_dir / "step_4" / "model.safetensors")
    assert main(["pretrain", "--config", str(workspace["config"]), "--output-dir", str(tmp_path / "out"),
                 "--resume", str(run_dir / "step_4")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(run_dir / "step_4") in line and "model.safetensors is" in line, line


def test_torn_last_metrics_line_is_dropped_with_a_warning(workspace, tmp_path, caplog):
    run_dir = interrupted_copy(workspace, tmp_path)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 5, "train/lo')  # killed mid-write
    with caplog.at_level("WARNING"):
        assert resume(workspace, tmp_path) == 0
    assert "dropped a torn last record" in caplog.text
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines][-1] == STEPS  # every line parses, the torn one is gone
    assert train_losses(run_dir) == train_losses(workspace["reference"])


def test_a_damaged_metrics_line_that_is_not_the_last_is_refused(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "x\n{"step": 3}\n')
    with pytest.raises(LumiError, match=r"metrics.jsonl:2: not a metrics record"):
        read_metrics(path)


def test_non_finite_weights_are_never_saved(workspace, tmp_path):
    arch = ArchitectureConfig(**nano_architecture(load_tokenizer_meta(workspace["tokenizer"])["vocab_size"],
                                                  SEQ_LEN, tie_embeddings=True))
    model = build_model(arch)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
    shutil.copytree(workspace["reference"] / "step_2", tmp_path / "step_2")
    with pytest.raises(LumiError, match=r"step 7: non-finite weights after the update \(model.layers.1.mlp.down_proj"
                                        r".*not saved, the last good checkpoint is .*step_2"):
        check_finite_weights(model.state_dict(), 7, tmp_path)
    check_finite_weights(build_model(arch).state_dict(), 7, tmp_path)  # finite weights pass


def test_a_second_run_on_the_same_run_dir_is_refused_naming_the_first(workspace, tmp_path, capsys):
    run_dir = interrupted_copy(workspace, tmp_path)
    before = (run_dir / "metrics.jsonl").read_bytes()
    with output_lock(run_dir):  # what the first run holds while it trains
        assert resume(workspace, tmp_path) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{run_dir}: in use by pid {os.getpid()} on " in line and "pytest" in line, line  # the holder's command
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # the first run's records are untouched


def test_leftovers_of_killed_runs_are_removed_at_the_next_start(workspace, tmp_path, caplog):
    run_dir = interrupted_copy(workspace, tmp_path)
    pid = dead_pid()
    leftovers = [run_dir.parent / f".nano.old-{pid}",  # the old run a killed --force had set aside
                 run_dir / f".step_6.tmp-{pid}-x1y2",  # a checkpoint a killed save was staging
                 run_dir / f".step_0.del-{pid}"]  # a rotation killed while deleting
    for path in leftovers:
        (path / "junk").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        assert resume(workspace, tmp_path) == 0
    for path in leftovers:
        assert not path.exists() and f"removed {path}, left by process {pid}" in caplog.text


def test_rotation_never_leaves_a_half_deleted_checkpoint_under_its_name(workspace, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(workspace["reference"], run_dir)

    def interrupted_rmtree(path, *args, **kwargs):
        (Path(path) / "model.safetensors").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        rotate_checkpoints(run_dir, keep_last_k=1)
    assert not (run_dir / "step_2").exists() and (run_dir / "step_4" / "model.safetensors").is_file()


def test_force_on_a_symlinked_run_dir_replaces_its_target_and_keeps_the_link(workspace, tmp_path):
    target = tmp_path / "real-run"
    shutil.copytree(workspace["reference"], target)
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "nano"
    link.symlink_to(target)
    assert main(["pretrain", "--config", str(workspace["config"]), "--output-dir", str(tmp_path / "out"),
                 "--force"]) == 0
    assert link.is_symlink() and (target / "final" / CHECKSUMS_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "real-run"]  # the old run was removed at the end


# --- item 1 of issue #24: a killed --force run never costs the finished run it replaces ----------------------------

def killed_force_run(workspace, tmp_path) -> tuple[Path, Path]:
    """What a --force run killed after its step_2 leaves: the finished run it replaces set aside as
    ``.nano.old-<dead pid>``, its own unfinished run in the run dir."""
    run_dir = interrupted_copy(workspace, tmp_path)
    shutil.rmtree(run_dir / "step_4")
    aside = run_dir.parent / f".nano.old-{dead_pid()}"
    shutil.copytree(workspace["reference"], aside)
    return run_dir, aside


def finished_copies(run_dir: Path) -> list[Path]:
    """Every finished run of ``run_dir``'s name beside it (the run dir itself or a set-aside copy)."""
    return sorted(p for p in run_dir.parent.iterdir() if (p / "final" / CHECKSUMS_FILE).is_file()
                  and (p == run_dir or p.name.startswith(".nano.old-")))


def watch_saves(monkeypatch, run_dir: Path) -> list[list[Path]]:
    """The finished copies that exist at every checkpoint save of the run (a kill there would leave those)."""
    from lumi.train.trainer import Trainer

    seen, original = [], Trainer.save

    def save(self, name, *args, **kwargs):
        seen.append(finished_copies(run_dir))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Trainer, "save", save)
    return seen


def test_a_refused_command_keeps_the_finished_run_a_killed_force_run_set_aside(workspace, tmp_path, capsys):
    run_dir, aside = killed_force_run(workspace, tmp_path)
    assert main(["pretrain", "--config", str(workspace["config"]), "--output-dir", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "interrupted --force run" in line and str(aside) in line, line
    assert finished_copies(run_dir) == [aside]


def test_resuming_a_killed_force_run_keeps_the_finished_one_until_it_finishes(workspace, tmp_path, monkeypatch):
    run_dir, aside = killed_force_run(workspace, tmp_path)
    seen = watch_saves(monkeypatch, run_dir)
    assert resume(workspace, tmp_path) == 0
    assert seen and all(copies == [aside] for copies in seen)  # until final/ was written, the old one was there
    assert finished_copies(run_dir) == [run_dir] and not aside.exists()
    assert train_losses(run_dir) == train_losses(workspace["reference"])  # the resumed run is still exact


def test_force_over_a_killed_force_run_keeps_exactly_one_finished_copy(workspace, tmp_path, monkeypatch):
    run_dir, aside = killed_force_run(workspace, tmp_path)
    seen = watch_saves(monkeypatch, run_dir)
    assert main(["pretrain", "--config", str(workspace["config"]), "--output-dir", str(tmp_path / "out"),
                 "--force"]) == 0
    assert seen and all(len(copies) == 1 and copies[0].name.startswith(".nano.old-") for copies in seen)
    assert finished_copies(run_dir) == [run_dir]
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["nano"]


def test_a_reader_of_the_missing_final_is_told_where_the_finished_run_waits(workspace, tmp_path):
    from lumi.loading import load_for_evaluation

    run_dir, aside = killed_force_run(workspace, tmp_path)
    with pytest.raises(LumiError, match="interrupted --force run left the finished one in " +
                       str(aside / "final").replace(".", r"\.")):
        load_for_evaluation(run_dir / "final", device="cpu")
    load_for_evaluation(aside / "final", device="cpu")  # and it is whole
