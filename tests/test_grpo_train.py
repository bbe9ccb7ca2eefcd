"""Stage 97 (lumi grpo) end to end on a micro chat model: rollouts on the generation engine, metrics (reward, zero-signal
groups, KL, clip fraction, lengths, rollout speed and share), checkpoints, the trainer's log-probs of rollouts equal to
the engine's cached decoding, exact resume after SIGKILL, and bad input one line, exit 2.

A random micro model never answers a world question exactly, so exact match gives every group equal rewards (no
signal: counted and reported). The runs that must learn use a test reward registered in ``REWARDS`` (its value
depends on the sampled text, so groups differ) -- the rewards themselves are tested in ``test_rl_data.py``."""

from __future__ import annotations

import signal

import pytest
import torch
from eval_helpers import make_tiny_model_dir, write_tokenizer
from fault_helpers import KILL_AT_STEP as KILL_SCRIPT
from packed_helpers import train_losses
from safetensors.torch import load_file
from test_sft_train import run_cli

from lumi.cli import main
from lumi.core.files import atomic_write_json
from lumi.data import rewards
from lumi.data.chat import chat_tokenizer, get_template, save_chat_tokenizer
from lumi.formats.metrics import read_metrics
from lumi.generation.engine import Engine
from lumi.generation.sampling import SamplingParams
from lumi.lm.preference import token_logps

WORLD = {"type": "synthetic", "people": 20, "places": 4}
TEST_REWARD = "test_text_parity"
REGISTER = f"""
import sys
from lumi.data import rewards
rewards.REWARDS[{TEST_REWARD!r}] = lambda completion, reference: float(len(completion) % 2)
"""
KILL_AT_STEP = REGISTER + KILL_SCRIPT  # the test reward registered in the killed process too


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A micro "SFT model": random weights, the chat tokenizer files as stage 70 writes them."""
    root = tmp_path_factory.mktemp("grpo")
    tokenizer_dir = write_tokenizer(root / "tokenizer")
    model = make_tiny_model_dir(root / "sft", tokenizer_dir, max_seq_len=128, init_std=0.02)
    (model / "tokenizer_meta.json").unlink()
    template = get_template("chatml")
    save_chat_tokenizer(chat_tokenizer(tokenizer_dir, template), template, model, tokenizer_dir)
    return model


@pytest.fixture
def test_reward(monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, TEST_REWARD, lambda completion, reference: float(len(completion) % 2))


def write_config(tmp_path, **overrides):
    config = {"prompts": [{"type": "synthetic", "world": WORLD}], "val_fraction": 0.1,
              "rewards": {TEST_REWARD: 1.0}, "num_generations": 4, "max_completion_length": 12,
              "method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
              "max_steps": 4, "micro_batch_size": 4, "grad_accumulation": 2, "rollout_slots": 8, "lr": 1e-3,
              "warmup_steps": 1, "log_interval": 1, "eval_interval": 2, "save_interval": 100, "eval_max_prompts": 4,
              "tensorboard": False, "seed": 7, **overrides}
    path = tmp_path / "grpo.json"
    atomic_write_json(path, config)
    return path


def grpo_args(model, config, output, *extra):
    return ["grpo", "--config", str(config), "--model-path", str(model), "--output-dir", str(output), *extra]


@pytest.mark.parametrize("method, weights, loss_type, beta", [
    ("lora", "adapter_model.safetensors", "dapo", 0.0), ("full", "model.safetensors", "grpo", 0.05)])
def test_a_run_logs_rl_metrics_and_saves_a_loadable_model(chat_model, tmp_path, test_reward, method, weights,
                                                          loss_type, beta):
    config = write_config(tmp_path, method=method, loss_type=loss_type, beta=beta, lr=1e-3 if method == "lora"
                          else 1e-4)
    assert main(grpo_args(chat_model, config, tmp_path / "out")) == 0
    run = tmp_path / "out" / f"grpo_{method}"
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for record in train:
        assert 0 <= record["train/reward"] <= 1 and record["train/reward_std"] >= 0
        assert 0 <= record["train/zero_signal_groups"] < 1  # the parity reward differs within most groups
        assert 0 < record["train/completion_length"] <= 12 and record["rollout/tok_per_s"] > 0
        assert 0 < record["time/rollout_share"] < 1 and record["train/tok_per_s"] > 0
        assert record["train/clip_fraction"] == 0  # one update per rollout batch: the ratio is 1
        assert (record["train/kl"] > 0) == (beta > 0 and record["step"] > 1)  # the policy moved off the reference
        assert record["train/grad_norm"] > 0
    assert [r["step"] for r in records if "val/reward" in r] == [0, 2, 4]
    assert (run / "final" / weights).is_file() and (run / "final" / "grpo_config.json").is_file()
    assert (run / "final" / "chat_template_config.json").is_file()
    if method == "lora":  # an adapter dir as --model-path: merged once into its base, then trained on
        again = tmp_path / "again"
        assert main(grpo_args(run / "final", write_config(tmp_path, max_steps=1, eval_interval=100), again)) == 0
        assert (again / "start_merged" / "config.json").is_file() and (again / "grpo_lora" / "final").is_dir()


def test_num_iterations_reuses_a_rollout_batch_and_its_ratio_clips(chat_model, tmp_path, test_reward):
    """num_iterations 3: steps 1, 4 sample (their log lines carry rollout metrics), steps 2-3 and 5-6 update on the
    same batch against its sampling-time log-probs, so the ratio leaves 1 and tokens get clipped (a high lr and a
    tight clip make that certain at this size)."""
    config = write_config(tmp_path, max_steps=6, num_iterations=3, lr=5e-2, epsilon=0.01, eval_interval=100)
    assert main(grpo_args(chat_model, config, tmp_path / "out")) == 0
    train = [r for r in read_metrics(tmp_path / "out" / "grpo_lora" / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in train if "train/reward" in r] == [1, 4]
    assert all(r["train/clip_fraction"] == 0 for r in train if r["step"] in (1, 4))  # ratio 1 at the first update
    assert any(r["train/clip_fraction"] > 0 for r in train if r["step"] not in (1, 4))


def test_exact_match_on_a_random_model_has_no_signal_and_says_so(chat_model, tmp_path, capsys):
    config = write_config(tmp_path, rewards={"exact_match": 1.0}, max_steps=2)
    assert main(grpo_args(chat_model, config, tmp_path / "out")) == 0
    train = [r for r in read_metrics(tmp_path / "out" / "grpo_lora" / "metrics.jsonl") if "train/loss" in r]
    assert all(r["train/zero_signal_groups"] == 1 and r["train/reward"] == 0 for r in train)
    assert all(r["train/loss"] == 0 and r["train/grad_norm"] == 0 for r in train)
    assert "4 of 4 groups (this process's) had equal rewards: no signal" in capsys.readouterr().out


def test_trainer_log_probs_of_rollouts_equal_the_engines_cached_decoding(chat_model):
    """Sampled engine rollouts (4 at once), scored twice: by the engine's own path -- the slot KV cache, prefill then
    one token at a time (``forward_with_cache``) -- and by the trainer's full forward (``token_logps``). They agree
    to float tolerance (measured max difference: docs/TRAINING.md), so the detached trainer forward is the rollout
    policy's log-prob; a greedy completion is the argmax of the trainer's logits at every position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lumi.generation.kv_cache import SlotKVCache, forward_with_cache

    model = AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    prompt = tokenizer.encode("Where does Mira live?")
    requests = [(prompt, SamplingParams(temperature=1.0, max_tokens=10, seed=seed)) for seed in range(3)]
    requests.append((prompt, SamplingParams(temperature=0.0, max_tokens=10)))
    completions = [c.token_ids for c in Engine(model, tokenizer, max_batch=4, context=64).run_all(requests)]
    assert len({tuple(c) for c in completions}) > 1
    differences = []
    for row, completion in enumerate(completions):
        ids = torch.tensor([prompt + completion])
        cache = SlotKVCache(model, 1, 64)
        logits = [forward_with_cache(model, cache, ids[:, :len(prompt)], [0], torch.arange(len(prompt))[None],
                                     logits_to_keep=1)[0, -1]]
        for position in range(len(prompt), ids.shape[1] - 1):
            logits.append(forward_with_cache(model, cache, ids[:, position:position + 1], [0],
                                             torch.tensor([[position]]))[0, -1])
        engine_logps = torch.log_softmax(torch.stack(logits).float(), -1).gather(
            -1, torch.tensor(completion)[:, None]).squeeze(-1)
        with torch.no_grad():
            trainer_logits = model(ids).logits[0, len(prompt) - 1:-1]
            trainer_logps = token_logps(model, ids)[0, len(prompt) - 1:]
        differences.append(float((engine_logps - trainer_logps).abs().max()))
        if row == 3:  # the greedy one
            assert torch.equal(trainer_logits.argmax(-1), torch.tensor(completion))
    assert max(differences) <= 1e-5, differences


@pytest.mark.parametrize("num_iterations, save_interval, checkpoint", [(1, 2, "step_4"), (2, 3, "step_3")])
def test_sigkill_then_resume_is_bitwise(chat_model, tmp_path, num_iterations, save_interval, checkpoint):
    """Killed at step 4 and resumed from the last checkpoint; with num_iterations 2 that checkpoint (step 3) falls
    inside a rollout batch's two steps, so the batch and its old log-probs must come back from it."""
    config = write_config(tmp_path, max_steps=5, save_interval=save_interval, eval_interval=3,
                          num_iterations=num_iterations)
    reference = run_cli(grpo_args(chat_model, config, tmp_path / "reference"), code=KILL_AT_STEP,
                        env={"KILL_AT": "-1"})
    assert reference.returncode == 0, reference.stderr
    killed = run_cli(grpo_args(chat_model, config, tmp_path / "resumed"), code=KILL_AT_STEP, env={"KILL_AT": "4"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(grpo_args(chat_model, config, tmp_path / "resumed", "--resume", "auto"), code=KILL_AT_STEP,
                      env={"KILL_AT": "-1"})
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint in resumed.stderr
    run, ref = tmp_path / "resumed" / "grpo_lora", tmp_path / "reference" / "grpo_lora"
    assert train_losses(run) == train_losses(ref)
    rewards_of = lambda path: [(r["step"], r.get("train/reward"), r.get("val/reward"))  # noqa: E731
                               for r in read_metrics(path / "metrics.jsonl")]
    assert rewards_of(run) == rewards_of(ref)
    got, want = load_file(run / "final" / "adapter_model.safetensors"), load_file(ref / "final" /
                                                                                   "adapter_model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("overrides, message", [
    ({"rewards": {"bleu": 1.0}}, "unknown reward bleu"),
    ({"micro_batch_size": 3, "grad_accumulation": 1}, "must be a multiple of num_generations"),
    ({"max_completion_length": 127}, "exceeds the model's context"),
    ({"distributed": "fsdp2"}, "distributed ddp"),
    ({"method": "full", "name": "grpo_lora"}, "run name 'grpo_lora' says lora but method is full"),
])
def test_bad_input_is_one_line_exit_2(chat_model, tmp_path, capsys, overrides, message):
    config = write_config(tmp_path, **{"rewards": {"exact_match": 1.0}, **overrides})
    assert main(grpo_args(chat_model, config, tmp_path / "out")) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error


def test_a_pretrained_checkpoint_is_refused(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "base", None)
    assert main(grpo_args(model, write_config(tmp_path, rewards={"exact_match": 1.0}), tmp_path / "out")) == 2
    assert "GRPO starts from an SFT or DPO model" in capsys.readouterr().err


def test_a_policy_of_another_world_is_refused(chat_model, tmp_path, capsys):
    """The policy records the world it was trained on (lineage.json); RL prompts of another world are refused, as SFT
    and DPO data of another world are."""
    import shutil

    from lumi.formats.lineage import write_lineage

    policy = shutil.copytree(chat_model, tmp_path / "policy")  # the fixture is the module's: leave it as it is
    write_lineage(policy, {"0" * 64})
    config = write_config(tmp_path, rewards={"exact_match": 1.0})
    assert main(grpo_args(policy, config, tmp_path / "out")) == 2
    error = capsys.readouterr().err.strip()
    assert "the config's RL prompts: uses synthetic world" in error and "comes from world 000000000000" in error
    assert len(error.splitlines()) == 1, error
