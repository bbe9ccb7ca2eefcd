"""Stage 90 on several processes: torchrun with 2 CPU processes on gloo gives the per-step losses, rewards and
gradient norms of one process with the same global batch -- DDP and FSDP2, each with LoRA (the reference: adapters
disabled) and with full weights and the frozen reference copy (under FSDP2 sharded layer by layer like the policy)."""

from __future__ import annotations

import pytest
import torch
from test_distributed import torchrun
from test_dpo_train import dpo_args, workspace, write_config  # noqa: F401 (workspace: the fixture)

from lumi.cli import main
from lumi.formats.metrics import read_metrics

STEPS = 4
MICRO = 4
# Logged per step: the same numbers whichever process scored which pairs (the training rewards are summed over the
# processes before they are logged).
TRAIN_KEYS = ("train/loss", "train/grad_norm", "train/rewards/chosen", "train/rewards/rejected",
              "train/rewards/margins", "train/rewards/accuracy")
VAL_KEYS = ("val/loss", "val/rewards/margins", "val/rewards/accuracy")


def run_config(tmp_path, method: str, accumulation: int):
    """The global batch is 8 pairs: 2 micro-batches of 4 on one process, 1 on each of two."""
    return write_config(tmp_path, method=method, max_steps=STEPS, micro_batch_size=MICRO,
                        grad_accumulation=accumulation, lr=1e-2 if method == "lora" else 1e-3, eval_interval=STEPS,
                        save_interval=100)


@pytest.fixture(scope="module")
def single_process(workspace, tmp_path_factory):  # noqa: F811
    """method -> the one-process run dir (2 micro-batches of 4 pairs per step), each trained once."""
    runs = {}

    def run_dir(method: str):
        if method not in runs:
            tmp_path = tmp_path_factory.mktemp(f"dpo_single_{method}")
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert main(dpo_args(workspace, run_config(tmp_path, method, 2), tmp_path / "out")) == 0
            finally:
                torch.set_num_threads(threads)
            runs[method] = tmp_path / "out" / f"dpo_{method}"
        return runs[method]

    return run_dir


def assert_same_run(run_dir, reference_dir) -> None:
    got, expected = read_metrics(run_dir / "metrics.jsonl"), read_metrics(reference_dir / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    train = [r for r in expected if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    # It trained: the loss moved 100x the tolerance or more (the comparison is not between two flat lines).
    assert abs(train[-1]["train/loss"] - train[0]["train/loss"]) > 100 * 1e-5 * train[0]["train/loss"]
    for mine, reference in zip(got, expected):
        for key in (*TRAIN_KEYS, *VAL_KEYS):
            if key in reference:
                assert mine[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), (reference["step"], key)


@pytest.mark.parametrize("method, distributed", [("lora", "ddp"), ("full", "ddp"), ("lora", "fsdp2"),
                                                  ("full", "fsdp2")])
def test_dpo_on_two_processes_matches_one_process(workspace, single_process, method, distributed,  # noqa: F811
                                                  tmp_path):
    args = dpo_args(workspace, run_config(tmp_path, method, 1), tmp_path / "out", "--set",
                    f'distributed="{distributed}"')
    result = torchrun("scripts/90_train_dpo.py", *args[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    assert_same_run(tmp_path / "out" / f"dpo_{method}", single_process(method))
