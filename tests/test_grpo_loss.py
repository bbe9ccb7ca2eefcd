"""The GRPO loss (``lumi.lm.grpo``) against TRL's ``GRPOTrainer._compute_loss`` (the oracle): on the same prompts,
completions, advantages, old-policy and reference log-probs, the loss and every gradient equal TRL's within 1e-5 for
each normalisation (grpo, dapo, dr_grpo), with and without the KL term, with ratios that clip; the clip and KL
statistics equal TRL's logged ones; group advantages equal TRL's formula (its ``nanstd``)."""

from __future__ import annotations

import copy

import pytest
import torch
from eval_helpers import make_tiny_model_dir, write_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from lumi.core.special_tokens import BOS_ID
from lumi.lm.grpo import group_advantages, grpo_loss
from lumi.lm.preference import token_logps

PROMPT, COMPLETION, ROWS, GROUP = 6, 9, 8, 4
EPSILON_LOW, EPSILON_HIGH = 0.2, 0.28  # asymmetric, as DAPO's clip-higher


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_loss")
    model_dir = make_tiny_model_dir(root / "model", write_tokenizer(root / "tokenizer"), init_std=0.02)
    torch.manual_seed(0)
    prompt_ids = torch.randint(10, 500, (ROWS, PROMPT))
    prompt_ids[:, 0] = BOS_ID
    completion_ids = torch.randint(10, 500, (ROWS, COMPLETION))
    lengths = torch.tensor([9, 3, 7, 1, 9, 5, 8, 2])  # completions of different lengths, right-padded
    completion_mask = (torch.arange(COMPLETION)[None] < lengths[:, None]).long()
    completion_ids = completion_ids * completion_mask
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.25])
    advantages, _ = group_advantages(rewards, GROUP)
    return {"model_dir": model_dir, "prompt_ids": prompt_ids, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": advantages}


def load(model_dir, noise_seed=None, scale=0.0):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if noise_seed is not None:
        generator = torch.Generator().manual_seed(noise_seed)
        for param in model.parameters():
            param.data.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


def completion_logps(model, workspace):
    """Per-token log-probs of the completion tokens: our one-shift forward over prompt + completion."""
    ids = torch.cat([workspace["prompt_ids"], workspace["completion_ids"]], dim=1)
    return token_logps(model, ids)[:, PROMPT - 1:]


def trl_trainer(tmp_path, model, tokenizer, loss_type, beta):
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path / "trl"), loss_type=loss_type, beta=beta, epsilon=EPSILON_LOW,
                      epsilon_high=EPSILON_HIGH, num_generations=GROUP, per_device_train_batch_size=ROWS,
                      max_completion_length=COMPLETION, report_to=[], use_cpu=True, bf16=False,
                      gradient_checkpointing=False)
    dataset = datasets.Dataset.from_list([{"prompt": "Hi"}] * ROWS)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=dataset, processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # one micro-batch per step, as ours here
    return trainer


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_loss_and_gradients_equal_trl(workspace, tmp_path, loss_type, beta):
    policy = load(workspace["model_dir"], noise_seed=1, scale=0.01)
    with torch.no_grad():  # an old policy and a reference that differ from the policy, so ratios clip and KL > 0
        old_logps = completion_logps(load(workspace["model_dir"], noise_seed=2, scale=0.05), workspace)
        ref_logps = completion_logps(load(workspace["model_dir"]), workspace)
    tokenizer = AutoTokenizer.from_pretrained(workspace["model_dir"])
    trainer = trl_trainer(tmp_path, copy.deepcopy(policy), tokenizer, loss_type, beta)
    trainer.model.train()
    mask = workspace["completion_mask"]
    inputs = {"prompt_ids": workspace["prompt_ids"], "prompt_mask": torch.ones_like(workspace["prompt_ids"]),
              "completion_ids": workspace["completion_ids"], "completion_mask": mask,
              "advantages": workspace["advantages"], "old_per_token_logps": old_logps,
              "ref_per_token_logps": ref_logps, "num_items_in_batch": mask.sum()}
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_loss.backward()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    policy.train()
    terms = grpo_loss(completion_logps(policy, workspace), old_logps, workspace["advantages"], mask, loss_type,
                      EPSILON_LOW, EPSILON_HIGH, beta, ref_logps, max_completion_length=COMPLETION)
    loss = terms["loss"] / terms["count"]
    loss.backward()
    assert abs(loss.item() - trl_loss.item()) <= 1e-5, (loss.item(), trl_loss.item())
    assert terms["tokens"].item() == mask.sum().item()
    clip_fraction = (terms["clipped"] / terms["tokens"]).item()
    assert 0 < clip_fraction < 1 and abs(clip_fraction - logged["clip_ratio/region_mean"]) <= 1e-6
    if beta:
        assert abs((terms["kl"] / terms["tokens"]).item() - logged["kl"]) <= 1e-6 and terms["kl"] > 0
    theirs = dict(trainer.model.named_parameters())
    for name, param in policy.named_parameters():
        assert torch.allclose(param.grad, theirs[name].grad, atol=1e-5, rtol=1e-4), name
    assert any(p.grad.abs().max() > 1e-6 for p in policy.parameters())


def test_ratio_one_gives_the_plain_policy_gradient(workspace):
    """With old = the policy's own detached log-probs (one update per rollout batch, as TRL and stage 97), no token
    clips and the gradient is that of -A x log-prob (per-token mean)."""
    policy = load(workspace["model_dir"], noise_seed=1, scale=0.01)
    mask = workspace["completion_mask"]
    logps = completion_logps(policy, workspace)
    terms = grpo_loss(logps, logps.detach(), workspace["advantages"], mask, "dapo")
    assert terms["clipped"].item() == 0
    surrogate = -(workspace["advantages"][:, None] * logps * mask).sum() / mask.sum()
    grads = torch.autograd.grad(terms["loss"] / terms["count"], list(policy.parameters()), retain_graph=True)
    expected = torch.autograd.grad(surrogate, list(policy.parameters()))
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads, expected))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl_formula(scale):
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0, 1.0, 0.25])
    advantages, zero_signal = group_advantages(rewards, GROUP, scale)
    grouped = rewards.view(-1, GROUP)
    expected = rewards - grouped.mean(1).repeat_interleave(GROUP)
    if scale == "group":
        expected = expected / (nanstd(grouped, dim=1).repeat_interleave(GROUP) + 1e-4)
    elif scale == "batch":
        expected = expected / (nanstd(rewards) + 1e-4)
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert zero_signal.tolist() == [False, True, False]  # the all-1 group carries no signal
    assert (advantages[GROUP:2 * GROUP] == 0).all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="loss type"):
        grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2), "ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2), "dr_grpo")
    with pytest.raises(ValueError, match="whole groups"):
        group_advantages(torch.zeros(5), GROUP)
