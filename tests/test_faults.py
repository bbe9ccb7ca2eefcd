"""Fault injection across stages 10-50 (docs/RELIABILITY.md): every failure ends in one line naming the path and the
cause (exit 2), damaged outputs are named from what their manifests record, interrupted or killed runs leave
nothing behind that blocks or misleads the next one, and nothing finished is lost.

Faults are real: a nearly full or read-only tmpfs (root only, see fault_helpers), bytes flipped or cut in real stage
outputs, signals and SIGKILL at chosen points in real subprocesses.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import make_tiny_model_dir, training_text, write_tokenizer
from fault_helpers import dead_pid, flip_byte, nearly_full_filesystem, one_error_line, read_only_filesystem, truncate
from helpers import make_corpus_dir
from packed_helpers import nano_architecture, subprocess_env

from lumi.cli import main
from lumi.core.config import load_config
from lumi.core.errors import LumiError
from lumi.core.files import output_lock, sha256_file, staged_output_dir, text_lines
from lumi.corpus.engine import datatrove_console_to
from lumi.corpus.readers import read_file
from lumi.eval.tasks.base import TaskSource, read_records
from lumi.formats.corpus import MANIFEST as CORPUS_MANIFEST, iter_text_batches
from lumi.formats.packed import MANIFEST as PACKED_MANIFEST, load_packed_split
from lumi.formats.tokenizer import load_tokenizer_meta
from lumi.data.packing import PackingConfig, pack_corpus
from lumi.train.objectives.pretrain import PretrainConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN = 32


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """Real outputs of stages 10-40 on a tiny synthetic corpus, and the config files that make them."""
    root = tmp_path_factory.mktemp("faults")
    texts = [doc[:400] for doc in training_text(200)]
    inputs = root / "input.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    corpus = make_corpus_dir(root / "corpus", texts, shard_bytes=20_000)
    tokenizer = write_tokenizer(root / "tokenizer")
    pack_corpus(corpus, tokenizer, root / "packed", PackingConfig(seq_len=SEQ_LEN, val_fraction=0.1, num_threads=1))
    arch = root / "nano.json"
    arch.write_text(json.dumps(nano_architecture(load_tokenizer_meta(tokenizer)["vocab_size"], SEQ_LEN, True)))
    pretrain = root / "pretrain.json"
    pretrain.write_text(json.dumps({
        "model": str(arch), "tokenizer_dir": str(tokenizer), "data_dirs": [str(root / "packed")], "max_steps": 4,
        "micro_batch_size": 2, "lr": 0.005, "log_interval": 1, "eval_interval": 2, "eval_max_rows": 4,
        "save_interval": 2, "keep_last_k": 2, "tensorboard": False}))
    evaluation = root / "evaluation.json"
    evaluation.write_text(json.dumps({"device": "cpu", "perplexity": [
        {"name": "val", "packed_dir": str(root / "packed"), "packed_split": "val", "max_rows": 4}]}))
    model = make_tiny_model_dir(root / "model", tokenizer, max_seq_len=SEQ_LEN)
    return {"root": root, "input": inputs, "corpus": corpus, "tokenizer": tokenizer, "packed": root / "packed",
            "pretrain": pretrain, "evaluation": evaluation, "model": model}


def stage_argv(pipeline: dict[str, Path], stage: str, output: Path) -> list[str]:
    """The command line of ``stage`` writing to ``output``, from the pipeline's inputs."""
    return {
        "corpus": ["corpus", "--input", str(pipeline["input"])],
        "tokenizer": ["tokenizer", "--corpus-dir", str(pipeline["corpus"]), "--set", "vocab_size=512",
                      "--set", "model_type=bpe", "--set", "num_threads=1", "--set", "holdout_fraction=0.05"],
        "pack": ["pack", "--corpus-dir", str(pipeline["corpus"]), "--tokenizer-dir", str(pipeline["tokenizer"]),
                 "--seq-len", str(SEQ_LEN)],
        "pretrain": ["pretrain", "--config", str(pipeline["pretrain"])],
        "evaluate": ["evaluate", "--config", str(pipeline["evaluation"]), "--model-path", str(pipeline["model"])],
    }[stage] + ["--output-dir", str(output)]


def run_lumi(argv: list[str], code: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "lumi", *argv]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=subprocess_env({"PYTHONPATH": str(REPO_ROOT), **(env or {})}))


STAGES = ["corpus", "tokenizer", "pack", "pretrain", "evaluate"]


# --- 1. full disk, read-only, uncreatable output path: exit 2, one line naming the path and the cause -------------

@pytest.mark.parametrize("stage", STAGES)
def test_full_disk_ends_in_one_line_naming_the_output(pipeline, tmp_path, stage):
    # Room for the first files but not the outputs (evaluate's are a few KB): the writers themselves hit the fault.
    with nearly_full_filesystem(tmp_path / "disk", free_bytes=4096 if stage == "evaluate" else 16384) as disk:
        result = run_lumi(stage_argv(pipeline, stage, disk / "out"))
        assert result.returncode == 2, result.stderr
        line = one_error_line(result.stderr)
        assert str(disk / "out") in line and "no space left on the device" in line, line
        left = sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.name != "ballast")
        if stage in ("corpus", "pretrain"):  # resumable: the finished part stays (and the message says so)
            assert not [p for p in left if ".tmp-" in p or p.endswith(".lock")], left
        else:
            assert left == [], left


@pytest.mark.parametrize("stage", STAGES)
def test_read_only_output_ends_in_one_line(pipeline, tmp_path, stage):
    with read_only_filesystem(tmp_path / "ro") as disk:
        result = run_lumi(stage_argv(pipeline, stage, disk / "out"))
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert str(disk / "out") in line and "read-only file system" in line, line


@pytest.mark.parametrize("stage", STAGES)
def test_output_under_a_regular_file_ends_in_one_line(pipeline, tmp_path, stage, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(stage_argv(pipeline, stage, blocker / "out")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "a-file" in line and "not a directory" in line, line


def test_console_comes_back_when_its_log_cannot_be_flushed(tmp_path):
    """datatrove's console goes to logs/console.log while a corpus stage runs; when flushing that log hits the full
    disk, the terminal must still be restored, or the error that follows is written into the log alone."""
    console = os.fstat(2).st_ino
    with nearly_full_filesystem(tmp_path / "disk", free_bytes=0) as disk:
        with pytest.raises(RuntimeError, match="the stage failed"):
            with datatrove_console_to(disk / "console.log"):
                sys.stderr.write("x" * 3000)  # buffered: its flush, on the way out, meets the full disk
                raise RuntimeError("the stage failed")
    assert os.fstat(2).st_ino == console


# --- 4. damaged stage outputs are named from what their manifests record --------------------------------------

def copy_dir(source: Path, target: Path) -> Path:
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    return target


@pytest.mark.parametrize("damage", [flip_byte, truncate])
@pytest.mark.parametrize("stage", ["tokenizer", "pack"])
def test_damaged_corpus_shard_is_named(pipeline, tmp_path, capsys, damage, stage):
    corpus = copy_dir(pipeline["corpus"], tmp_path / "corpus")
    shard = sorted(corpus.glob("shard_*.parquet"))[-1]
    damage(shard)
    argv = stage_argv({**pipeline, "corpus": corpus}, stage, tmp_path / "out")
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(shard) in line and "damaged" in line, line
    assert not (tmp_path / "out").exists()


def test_packed_ids_beyond_the_vocabulary_are_named(pipeline, tmp_path, capsys):
    packed = copy_dir(pipeline["packed"], tmp_path / "packed")
    manifest = json.loads((packed / PACKED_MANIFEST).read_text())
    rows = np.memmap(packed / "train.bin", dtype=manifest["dtype"], mode="r+").reshape(-1, SEQ_LEN)
    rows[3, 5] = manifest["vocab_size"]  # same size, one id out of range
    rows.flush()
    with pytest.raises(LumiError, match=r"train.bin: damaged: row 3 holds token id \d+ >= vocab_size"):
        load_packed_split(packed, "train")
    config = json.loads(pipeline["pretrain"].read_text())
    (tmp_path / "pretrain.json").write_text(json.dumps({**config, "data_dirs": [str(packed)]}))
    assert main(["pretrain", "--config", str(tmp_path / "pretrain.json"), "--output-dir", str(tmp_path / "run")]) == 2
    assert "row 3 holds token id" in one_error_line(capsys.readouterr().err)


def test_truncated_packed_split_is_named(pipeline, tmp_path):
    packed = copy_dir(pipeline["packed"], tmp_path / "packed")
    truncate(packed / "val.bin")
    with pytest.raises(LumiError, match=r"val.bin: damaged: \d+ bytes, .* records \d+"):
        load_packed_split(packed, "val")


def test_pack_records_split_hashes(pipeline):
    manifest = json.loads((pipeline["packed"] / PACKED_MANIFEST).read_text())
    for info in manifest["splits"].values():
        assert info["sha256"] == sha256_file(pipeline["packed"] / info["file"])


# --- 5. corpus resume covers the inputs' identity -----------------------------------------------------------------

KILL_AFTER_SCAN = """
import os, signal, sys
from lumi.corpus import engine
engine.read_scan_stats = lambda build, tasks: os.kill(os.getpid(), signal.SIGKILL)
from lumi.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_corpus_resume_rebuilds_when_an_input_changed(tmp_path):
    source = tmp_path / "f.jsonl"
    source.write_text("".join(json.dumps({"text": f"old document number {i} " * 8}) + "\n" for i in range(30)))
    argv = ["corpus", "--input", str(source), "--output-dir", str(tmp_path / "corpus")]
    killed = run_lumi(argv, code=KILL_AFTER_SCAN)
    assert killed.returncode == -signal.SIGKILL
    source.write_text("".join(json.dumps({"text": f"new document number {i} " * 8}) + "\n" for i in range(20)))
    resumed = run_lumi(argv)
    assert resumed.returncode == 0, resumed.stderr
    assert "inputs changed" in resumed.stderr and str(source) in resumed.stderr
    texts = [t for batch in iter_text_batches(tmp_path / "corpus") for t in batch]
    assert len(texts) == 20 and all(t.startswith("new document") for t in texts)


# --- 6, 7. valid JSON lines with raw U+2028; corrupt gzip -------------------------------------------------------

def test_json_lines_split_on_newline_only(tmp_path):
    text = "first\u2028line\u0085next\x1cend\x0cfeed"
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\r\n" + json.dumps({"text": "b"}) + "\n",
                    encoding="utf-8")
    assert [t for _, t in read_file(path)] == [text, "b"]
    assert [r["text"] for r in read_records(TaskSource(path=str(path)))] == [text, "b"]
    assert text_lines("a\u2028b\nc") == ["a\u2028b", "c"]


def test_corrupt_deflate_data_is_a_clear_error(tmp_path):
    data = bytearray(gzip.compress(b'{"text": "hello world"}\n' * 200))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(LumiError, match="docs.jsonl.gz: not a valid gzip file"):
        list(read_file(path))


# --- 8. evaluate checks the checkpoint before using it -----------------------------------------------------------

def broken_model(pipeline, tmp_path, damage) -> Path:
    model = copy_dir(pipeline["model"], tmp_path / "model")
    damage(model)
    return model


@pytest.mark.parametrize("damage, expected", [
    (lambda m: (m / "tokenizer.json").write_text((m / "tokenizer.json").read_text() + " "),
     r"tokenizer.json: sha256 differs from tokenizer_meta.json"),
    (lambda m: truncate(m / "model.safetensors"), r"model could not be loaded \(SafetensorError"),
    (lambda m: (m / "config.json").write_text(json.dumps({**json.loads((m / "config.json").read_text()),
                                                           "vocab_size": 999})), r"model could not be loaded"),
], ids=["tampered-tokenizer", "truncated-weights", "vocab-mismatch"])
def test_evaluate_refuses_a_damaged_checkpoint(pipeline, tmp_path, capsys, damage, expected):
    model = broken_model(pipeline, tmp_path, damage)
    argv = stage_argv({**pipeline, "model": model}, "evaluate", tmp_path / "out")
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(model) in line and re.search(expected, line), line


@pytest.mark.parametrize("device, expected", [("tpu9", "not a torch device"), ("meta", "runs on cpu, cuda or mps")]
                         + ([] if torch.cuda.is_available() else [("cuda", "CUDA is not available")]))
def test_evaluate_refuses_an_unusable_device(pipeline, tmp_path, capsys, device, expected):
    assert main(stage_argv(pipeline, "evaluate", tmp_path / "out") + ["--device", device]) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_evaluate_reads_every_task_before_scoring_the_first(pipeline, tmp_path, capsys, caplog):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"activity_label": "x", "ctx_a": "a", "ctx_b": "b", "endings": ["c", "d"],
                                "label": 0}) + "\n")
    config = {"device": "cpu", "tasks": [{"task": "hellaswag", "source": {"path": str(good)}},
                                         {"task": "arc_easy", "source": {"path": str(tmp_path / "missing.jsonl")}}]}
    (tmp_path / "eval.json").write_text(json.dumps(config))
    argv = ["evaluate", "--config", str(tmp_path / "eval.json"), "--model-path", str(pipeline["model"]),
            "--output-dir", str(tmp_path / "out")]
    with caplog.at_level("INFO"):
        assert main(argv) == 2
    assert "missing.jsonl" in one_error_line(capsys.readouterr().err)
    assert "task: hellaswag" not in caplog.text  # nothing was scored before the bad file was found


# --- 3 (validation half). non-finite and absurd hyper-parameters -------------------------------------------------

@pytest.mark.parametrize("value, problem", [("Infinity", "finite number"), ("NaN", "finite number"),
                                            ("-Infinity", "finite number"), ("1e39", "less than or equal to 1")])
def test_non_finite_or_absurd_lr_is_refused(pipeline, value, problem):
    with pytest.raises(LumiError, match=f"field 'lr': input should be (a )?{problem}"):
        load_config(PretrainConfig, pipeline["pretrain"], [f"lr={value}"])


# --- 10. leftovers, SIGTERM, symlinked outputs, locks, permissions --------------------------------------------------

def test_stale_staging_of_a_dead_process_is_removed_and_said(pipeline, tmp_path, caplog):
    pid = dead_pid()
    stale = tmp_path / f".packed.tmp-{pid}-abcd1234"
    (stale / "junk").mkdir(parents=True)
    alive = tmp_path / f".packed.tmp-{os.getppid()}-live"  # a running process's staging is never touched
    alive.mkdir()
    with caplog.at_level("WARNING"):
        assert main(stage_argv(pipeline, "pack", tmp_path / "packed")) == 0
    assert not stale.exists() and alive.exists()
    assert f"removed {stale}, left by process {pid}, no longer running" in caplog.text


def test_set_aside_output_of_a_process_killed_between_renames_is_restored(tmp_path):
    final = tmp_path / "out"
    aside = tmp_path / f".out.old-{dead_pid()}"
    aside.mkdir()
    (aside / "precious").write_text("finished output")
    with pytest.raises(LumiError, match="already exists; pass --force"):
        with staged_output_dir(final, force=False):
            pass
    assert (final / "precious").read_text() == "finished output" and not aside.exists()  # moved back first
    with staged_output_dir(final, force=True) as staging:
        (staging / "new").write_text("x")
    assert not aside.exists() and sorted(p.name for p in final.iterdir()) == ["new"]


SIGTERM_WHILE_PACKING = """
import os, signal, sys
from lumi.data import packing
original = packing.PackedSplitWriter.write
def write(self, documents, text_bytes):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(self, documents, text_bytes)
packing.PackedSplitWriter.write = write
from lumi.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_unwinds_a_stage_like_sigint(pipeline, tmp_path):
    result = run_lumi(stage_argv(pipeline, "pack", tmp_path / "packed"), code=SIGTERM_WHILE_PACKING)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "stopped by SIGTERM"
    assert list(tmp_path.iterdir()) == []  # no staging directory, no lock file, no output


def test_force_on_a_symlinked_output_replaces_its_target_and_keeps_the_link(pipeline, tmp_path):
    target = tmp_path / "real-packed"
    target.mkdir()
    (target / "old").write_text("previous output")
    link = tmp_path / "packed"
    link.symlink_to(target)
    assert main(stage_argv(pipeline, "pack", link) + ["--force"]) == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / PACKED_MANIFEST).is_file() and not (target / "old").exists()


def test_a_second_builder_of_the_same_output_is_refused_naming_the_first(pipeline, tmp_path, capsys):
    with output_lock(tmp_path / "packed"):
        assert main(stage_argv(pipeline, "pack", tmp_path / "packed")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"in use by pid {os.getpid()}" in line and "wait for it to finish or stop it" in line
    assert main(stage_argv(pipeline, "pack", tmp_path / "packed")) == 0  # released


def test_outputs_get_the_permissions_mkdir_gives(pipeline, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(stage_argv(pipeline, "pack", tmp_path / "packed")) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "packed").stat().st_mode & 0o777 == 0o755


# --- 11. smaller: nesting, directories, which input a message blames --------------------------------------------

def test_deeply_nested_config_is_one_line(pipeline, tmp_path, capsys):
    config = tmp_path / "deep.json"
    config.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    assert main(stage_argv(pipeline, "pack", tmp_path / "out") + ["--config", str(config)]) == 2
    assert "nested too deeply" in one_error_line(capsys.readouterr().err)


def test_a_directory_given_as_a_file_is_called_a_directory(pipeline, tmp_path, capsys):
    assert main(stage_argv(pipeline, "pack", tmp_path / "out") + ["--config", str(tmp_path)]) == 2
    assert "is a directory, not a file" in one_error_line(capsys.readouterr().err)


def test_a_bad_flag_value_is_blamed_on_the_flag_not_the_config(pipeline, tmp_path, capsys):
    argv = stage_argv(pipeline, "pack", tmp_path / "out")
    argv[argv.index("--seq-len") + 1] = "0"
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --seq-len: ") and ".json" not in line, line


def test_a_whole_config_is_never_dumped_into_a_message(pipeline, capsys):
    with pytest.raises(LumiError) as caught:
        load_config(PretrainConfig, pipeline["pretrain"], ["max_steps=null"])  # fails the model-level check
    assert "set max_steps or max_tokens" in str(caught.value) and "tokenizer_dir" not in str(caught.value)


def test_shard_hash_is_checked_as_it_is_read(pipeline, tmp_path):
    corpus = copy_dir(pipeline["corpus"], tmp_path / "corpus")
    manifest = json.loads((corpus / CORPUS_MANIFEST).read_text())
    assert all("file_bytes" in shard and "sha256" in shard for shard in manifest["shards"])
    flip_byte(corpus / manifest["shards"][0]["file"])
    with pytest.raises(LumiError, match="sha256 differs"):
        next(iter_text_batches(corpus))
