"""Stage 97 on several processes: torchrun with 2 CPU processes on gloo (DDP) gives the per-step losses, gradient
norms, rewards and zero-signal fractions of one process with the same global batch: each process samples its own
whole groups, every rollout is seeded by its row in the global batch, and the loss normalisation spans both."""

from __future__ import annotations

import pytest
import torch
from test_distributed import torchrun
from test_grpo_train import REGISTER, TEST_REWARD, chat_model, grpo_args, write_config  # noqa: F401 (fixture)

from lumi.cli import main
from lumi.data import rewards
from lumi.formats.metrics import read_metrics

STEPS = 3
KEYS = ("train/loss", "train/grad_norm", "train/reward", "train/reward_std", "train/zero_signal_groups",
        "train/completion_length", "val/reward")
LAUNCHER = REGISTER + """
sys.path.insert(0, {root!r})
from lumi.cli import main
sys.exit(main(["grpo", *sys.argv[1:]]))
"""


def test_grpo_on_two_processes_matches_one_process(chat_model, tmp_path, monkeypatch):  # noqa: F811
    """The global batch is 16 completions (4 prompts x 4): 2 micro-batches of 8 on one process, 1 on each of two.
    The per-token (dapo) loss: its denominator, the completion tokens, spans both processes' batches."""
    config = write_config(tmp_path, max_steps=STEPS, micro_batch_size=8, grad_accumulation=2, loss_type="dapo",
                          eval_interval=STEPS, lr=1e-2)
    monkeypatch.setitem(rewards.REWARDS, TEST_REWARD, lambda completion, reference: float(len(completion) % 2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(grpo_args(chat_model, config, tmp_path / "single")) == 0
    finally:
        torch.set_num_threads(threads)
    launcher = tmp_path / "launch_grpo.py"
    launcher.write_text(LAUNCHER.format(root=str(__import__("pathlib").Path(__file__).resolve().parent.parent)))
    args = grpo_args(chat_model, config, tmp_path / "ddp", "--set", "grad_accumulation=1")
    result = torchrun(str(launcher), *args[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    got = read_metrics(tmp_path / "ddp" / "grpo_lora" / "metrics.jsonl")
    expected = read_metrics(tmp_path / "single" / "grpo_lora" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    train = [r for r in expected if "train/loss" in r]
    # It trained (the comparison is not between zeros): gradients flowed and the sampled completions changed.
    assert len(train) == STEPS and all(r["train/grad_norm"] > 1e-3 for r in train)
    assert len({r["train/completion_length"] for r in train}) > 1
    for mine, reference in zip(got, expected):
        for key in KEYS:
            if key in reference:
                assert mine[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), (reference["step"], key)
