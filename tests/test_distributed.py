"""Stage 40 on several processes: torchrun with 2 CPU processes on gloo trains exactly like one process with the same
global batch (DDP and FSDP2), rank 0 alone writes the run, a signal to one rank stops both after the same step, and
the 2-process run resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from eval_helpers import write_tokenizer
from lumi.cli import main
from lumi.eval.perplexity import evaluate_packed_split
from lumi.formats.checkpoint import checkpoint_step
from lumi.formats.metrics import read_metrics
from lumi.formats.packed import load_packed_split
from lumi.formats.tokenizer import load_tokenizer_meta
from packed_helpers import function_documents, nano_architecture, subprocess_env, train_losses, write_packed_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN = 32
STEPS = 20
MICRO = 2

SIGNAL_RANK_1 = """
import os, signal, sys
from lumi.train import trainer
original = trainer.Trainer.train_step
def train_step(self, batches):
    if self.rank == 1 and self.step == int(os.environ["SIGNAL_AT"]):
        os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 is told to stop
    return original(self, batches)
trainer.Trainer.train_step = train_step
from lumi.cli import main
sys.exit(main(["pretrain", *sys.argv[1:]]))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    tokenizer = write_tokenizer(root / "tokenizer")
    vocab = load_tokenizer_meta(tokenizer)["vocab_size"]
    arch = root / "nano.json"
    arch.write_text(json.dumps(nano_architecture(vocab, SEQ_LEN, tie_embeddings=False)))
    # Learnable data (each token a fixed function of the previous one): the loss falls fast, so a wrong gradient
    # shows up in the losses of later steps.
    packed = write_packed_dir(root / "web", tokenizer, function_documents(100, 14, vocab, 0),
                              function_documents(16, 14, vocab, 1), SEQ_LEN, vocab)
    config = {"model": str(arch), "tokenizer_dir": str(tokenizer), "data_dirs": [str(packed)], "max_steps": STEPS,
              "micro_batch_size": MICRO, "lr": 0.01, "warmup_steps": 2, "log_interval": 1, "eval_interval": 10,
              "eval_max_rows": 8, "save_interval": 10, "keep_last_k": 2, "tensorboard": False}
    (root / "config.json").write_text(json.dumps(config))
    return {"root": root, "config": root / "config.json"}


def torchrun(script: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
                          env=subprocess_env(env_extra))


def pretrain_args(workspace, output: Path, accumulation: int, *extra: str) -> list[str]:
    return ["--config", str(workspace["config"]), "--output-dir", str(output),
            "--set", f"grad_accumulation={accumulation}", *extra]


def grad_norms(run_dir: Path) -> list[float]:
    return [r["train/grad_norm"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/grad_norm" in r]


@pytest.fixture(scope="module")
def single_process_run(workspace) -> Path:
    """The reference: one process, 4 micro-batches of 2 rows per step (global batch 8)."""
    output = workspace["root"] / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["pretrain", *pretrain_args(workspace, output, 4)]) == 0
    finally:
        torch.set_num_threads(threads)
    return output / "nano"


@pytest.fixture(scope="module")
def ddp_run(workspace) -> tuple[Path, subprocess.CompletedProcess]:
    """Two processes x 2 micro-batches of 2 rows per step (the same global batch of 8)."""
    output = workspace["root"] / "ddp"
    result = torchrun("scripts/40_pretrain.py", *pretrain_args(workspace, output, 2))
    assert result.returncode == 0, result.stderr[-3000:]
    return output / "nano", result


def assert_same_training(run_dir: Path, reference_dir: Path) -> None:
    got, expected = train_losses(run_dir), train_losses(reference_dir)
    assert [step for step, _ in got] == [step for step, _ in expected] == list(range(1, STEPS + 1))
    for (step, loss), (_, reference) in zip(got, expected):
        assert loss == pytest.approx(reference, rel=1e-5), f"step {step}"
    assert expected[-1][1] < expected[0][1] - 0.5  # it trained: the comparison is not between two flat lines
    # AdamW hardly notices a gradient scaled by a constant, the logged norm does (e.g. DDP's average over ranks).
    assert grad_norms(run_dir) == pytest.approx(grad_norms(reference_dir), rel=1e-4)


def test_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(single_process_run, ddp_run):
    run_dir, result = ddp_run
    assert_same_training(run_dir, single_process_run)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [r["step"] for r in read_metrics(single_process_run / "metrics.jsonl")]
    # Rank 0 alone logs: one copy of each line, with the progress fields and an ETA.
    assert result.stderr.count(f"step {STEPS}/{STEPS} loss") == 1 and "tok/s" in result.stderr
    assert f"step 1/{STEPS} loss" in result.stderr and " eta " in result.stderr
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["final", "step_10"]
    assert checkpoint_step(run_dir / "final") == STEPS
    # The val loss the trainer logs (scored through the DDP wrapper) is the evaluator's on the saved weights.
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")  # a plain save_pretrained checkpoint
    config = json.loads((run_dir / "final" / "pretrain_config.json").read_text())["config"]
    evaluated = evaluate_packed_split(model, load_packed_split(config["data_dirs"][0], "val"),
                                      batch_size=config["micro_batch_size"], max_rows=config["eval_max_rows"])
    assert records[-1]["val/loss"] == pytest.approx(evaluated["loss"], rel=1e-6)
    assert records[-1]["val/loss_causal"] == pytest.approx(evaluated["causal"]["loss"], rel=1e-6)  # whole rows


def test_ddp_with_muon_on_two_processes_matches_one_process(workspace):
    """Muon orthogonalises the whole, all-reduced gradient on every rank, so DDP changes only rounding. Muon's
    Newton-Schulz runs in bf16, where summation-order differences of the gradient flip roundings: measured 0.3% apart
    at most over 20 steps, as one process with another accumulation split is (0.16%); AdamW agrees to 1e-5. Muon
    ignores the gradient's scale, so the gradient norm of the first step checks the all-reduce's averaging."""
    muon = ("--set", 'optimizer="muon"', "--set", "muon_lr=0.02")
    single, ddp = workspace["root"] / "muon_single", workspace["root"] / "muon_ddp"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["pretrain", *pretrain_args(workspace, single, 4, *muon)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = torchrun("scripts/40_pretrain.py", *pretrain_args(workspace, ddp, 2, *muon))
    assert result.returncode == 0, result.stderr[-3000:]
    got, expected = train_losses(ddp / "nano"), train_losses(single / "nano")
    assert [step for step, _ in got] == [step for step, _ in expected] == list(range(1, STEPS + 1))
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-2)
    # the first step's norm comes from identical weights: the all-reduce's average, checked tightly
    assert grad_norms(ddp / "nano")[0] == pytest.approx(grad_norms(single / "nano")[0], rel=1e-5)
    assert expected[-1][1] < expected[0][1] - 0.5


def test_fsdp2_on_two_processes_matches_one_process(workspace, single_process_run):
    output = workspace["root"] / "fsdp2"
    result = torchrun("scripts/40_pretrain.py",
                      *pretrain_args(workspace, output, 2, "--set", 'distributed="fsdp2"'))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = output / "nano"
    assert_same_training(run_dir, single_process_run)
    # The checkpoint holds whole weights gathered from the shards, under the model's own names.
    got, expected = load_file(run_dir / "step_10" / "model.safetensors"), load_file(
        single_process_run / "step_10" / "model.safetensors")
    assert got.keys() == expected.keys()
    assert all(torch.allclose(got[k], expected[k], rtol=1e-4, atol=1e-6) for k in expected)


def test_signal_to_one_rank_stops_both_and_the_two_process_run_resumes_exactly(workspace, ddp_run, tmp_path):
    reference, _ = ddp_run
    script = tmp_path / "signal_rank_1.py"
    script.write_text(SIGNAL_RANK_1)
    output = tmp_path / "out"
    args = pretrain_args(workspace, output, 2)
    stopped = torchrun(str(script), *args, env_extra={"SIGNAL_AT": "12"})
    assert stopped.returncode != 0 and "stopped by SIGTERM after step 13" in stopped.stdout, stopped.stderr[-3000:]
    run_dir = output / "nano"
    assert checkpoint_step(run_dir / "step_13") == 13 and not (run_dir / "final").exists()

    refused = torchrun("scripts/40_pretrain.py", *args)  # rank 0's refusal reaches every process: no hang
    assert refused.returncode != 0 and "pass --resume auto" in refused.stderr

    resumed = torchrun("scripts/40_pretrain.py", *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step_13" in resumed.stderr
    assert train_losses(run_dir) == train_losses(reference)
    final, expected = load_file(run_dir / "final" / "model.safetensors"), load_file(
        reference / "final" / "model.safetensors")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
