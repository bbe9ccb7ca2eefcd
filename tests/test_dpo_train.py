"""Stage 90 (lumi dpo): answer-only log-probs that do not depend on padding or packing, loss ln 2 at step 0, loss /
rewards / gradients equal to TRL's DPOTrainer (the oracle) for sigmoid, IPO and hinge with full weights and LoRA, exact
resume after SIGKILL, and bad input one line, exit 2."""

from __future__ import annotations

import copy
import json
import math
import signal
from pathlib import Path

import pytest
import torch
from eval_helpers import make_tiny_model_dir, write_tokenizer
from packed_helpers import train_losses
from safetensors.torch import load_file
from fault_helpers import KILL_AT_STEP
from test_sft_train import run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from lumi.cli import main
from lumi.core.files import atomic_write_json
from lumi.core.special_tokens import PAD_ID
from lumi.data.chat import copy_chat_tokenizer
from lumi.data.preference import load_pairs
from lumi.formats.metrics import read_metrics
from lumi.lm.preference import answer_logps, pair_logps, preference_losses
from lumi.lora import wrap_lora
from lumi.data.preference import pairs_batch

SEQ_LEN = 128


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny "SFT model" (random weights, the chat tokenizer files as stage 70 writes them) and DPO data built
    from the synthetic world's preference pairs with that model's tokenizer."""
    root = tmp_path_factory.mktemp("dpo")
    sft = make_tiny_model_dir(root / "sft", write_tokenizer(root / "tokenizer"), max_seq_len=SEQ_LEN, init_std=0.02)
    data = root / "data"
    assert main(["dpo-corpus", "--config", "config/dpo/datasets/demo.json", "--tokenizer-dir", str(sft),
                 "--output-dir", str(data), "--seq-len", str(SEQ_LEN), "--set",
                 'sources.0.world={"type": "synthetic", "people": 20, "places": 4}']) == 0
    (sft / "tokenizer_meta.json").unlink()  # as stage 70 writes it: the chat tokenizer files only
    copy_chat_tokenizer(data / "tokenizer", sft)
    return {"root": root, "sft": sft, "data": data, "train": load_pairs(data, "train")}


def make_chat_model_dir(directory, tokenizer_dir, data, max_seq_len=SEQ_LEN):
    """A tiny model dir laid out as stage 70 writes one: weights plus the chat tokenizer files of the data (no stage-20
    tokenizer_meta.json, whose hash is of the plain tokenizer.json)."""
    make_tiny_model_dir(directory, tokenizer_dir, max_seq_len=max_seq_len, init_std=0.02)
    (directory / "tokenizer_meta.json").unlink()
    copy_chat_tokenizer(data / "tokenizer", directory)
    return directory


def write_config(tmp_path, **overrides):
    config = {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
              "max_steps": 6, "micro_batch_size": 4, "grad_accumulation": 2, "lr": 1e-3, "warmup_steps": 1,
              "log_interval": 1, "eval_interval": 3, "save_interval": 100, "eval_max_pairs": 8, "tensorboard": False,
              "seed": 7, **overrides}
    path = tmp_path / "dpo.json"
    atomic_write_json(path, config)
    return path


def dpo_args(workspace, config, output, *extra):
    return ["dpo", "--config", str(config), "--model-path", str(workspace["sft"]), "--data-dir",
            str(workspace["data"]), "--output-dir", str(output), *extra]


def sft_model(workspace):
    return AutoModelForCausalLM.from_pretrained(workspace["sft"], dtype=torch.float32).eval()


# --- log-probs

def test_answer_logps_alone_padded_and_packed_agree(workspace):
    model = sft_model(workspace)
    batch = pairs_batch(workspace["train"], range(4))
    ids, mask = batch["chosen_ids"], batch["chosen_mask"]
    lengths = (ids != PAD_ID).sum(dim=1).tolist()
    with torch.no_grad():
        padded = answer_logps(model, ids, mask)
        alone = torch.stack([answer_logps(model, ids[i:i + 1, :n], mask[i:i + 1, :n])[0]
                             for i, n in enumerate(lengths)])
        row = torch.cat([ids[i, :n] for i, n in enumerate(lengths)])[None]
        row_mask = torch.cat([mask[i, :n] for i, n in enumerate(lengths)])[None]
        segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
        packed = answer_logps(model, row, row_mask, segments, len(lengths))
        # the answer only: the same sum from the full-sequence log-softmax over the masked targets
        logits = model(input_ids=ids[:1, :lengths[0]]).logits[0, :-1].log_softmax(-1)
        manual = sum(logits[t, ids[0, t + 1]] for t in range(lengths[0] - 1) if mask[0, t + 1])
    assert (mask[:, 0] == 0).all() and 0 < int(mask[0].sum()) < lengths[0] // 2  # the prompt is not scored
    # equal to a few fp32 ulps of the sums (|log-prob| ~ 100 here, where one ulp is 7.6e-6)
    ulps = 4 * torch.finfo(torch.float32).eps
    assert torch.allclose(padded, alone, atol=1e-5, rtol=ulps) and torch.allclose(packed, alone, atol=1e-5, rtol=ulps)
    assert abs(float(manual) - float(alone[0])) <= 1e-4


# --- TRL's DPOTrainer as the oracle

SFT_WEIGHT = 0.7


def _trl_trainer(tmp_path, model, ref_model, tokenizer, loss_type, beta, peft_config=None):
    """TRL's trainer for ``loss_type`` (or "sigmoid+sft": RPO, the NLL term at ``SFT_WEIGHT``)."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    losses = loss_type.split("+")
    weights = [1.0, SFT_WEIGHT] if "sft" in losses else None
    args = DPOConfig(output_dir=str(tmp_path / "trl"), loss_type=losses, loss_weights=weights, beta=beta, report_to=[],
                     use_cpu=True,
                     per_device_train_batch_size=4, max_length=SEQ_LEN, bf16=False,
                     gradient_checkpointing=False)  # fp32, as ours on the CPU
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}],
                                           "chosen": [{"role": "assistant", "content": "Hello."}],
                                           "rejected": [{"role": "assistant", "content": "Go."}]}])
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "sigmoid+sft"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_loss_rewards_and_gradients_equal_trl(workspace, tmp_path, loss_type, method):
    """The same batch of 4 pairs (our tokens and answer masks as TRL's input_ids / completion_mask), a policy that
    differs from its reference: TRL's loss, mean rewards, reward accuracy and every gradient are ours. With the RPO
    NLL term one pair: TRL averages it over the batch's chosen tokens, ours per pair, the same for one pair."""
    beta = 0.2
    reference = sft_model(workspace)
    tokenizer = AutoTokenizer.from_pretrained(workspace["data"] / "tokenizer")
    torch.manual_seed(3)
    if method == "lora":
        from peft import LoraConfig

        # TRL adds a fresh adapter (its reference: adapters disabled); ours gets the same adapter weights after both
        # are moved off their zero init.
        trainer = _trl_trainer(tmp_path, sft_model(workspace), None, tokenizer, loss_type, beta, LoraConfig(
            task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.05)
        ours_model = wrap_lora(sft_model(workspace), 4, 8, 0.0, ["q_proj", "v_proj"])
        ours_model.load_state_dict(trainer.model.state_dict())
    else:
        ours_model = sft_model(workspace)
        for param in ours_model.parameters():
            param.data.add_(torch.randn_like(param) * 0.01)
        trainer = _trl_trainer(tmp_path, copy.deepcopy(ours_model), copy.deepcopy(reference), tokenizer, loss_type,
                               beta)
    batch = pairs_batch(workspace["train"], range(1 if "sft" in loss_type else 4))
    ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
    inputs = {"input_ids": ids, "attention_mask": (ids != PAD_ID).long(),
              "completion_mask": torch.cat([batch["chosen_mask"], batch["rejected_mask"]])}
    trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    trl_loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train" if trainer.model.training else "eval"].items()}

    policy_c, policy_r = pair_logps(ours_model, batch)
    with torch.no_grad():
        if method == "lora":
            with ours_model.disable_adapter():
                ref_c, ref_r = pair_logps(ours_model, batch)
        else:
            ref_c, ref_r = pair_logps(reference, batch)
    terms = preference_losses(policy_c, policy_r, ref_c, ref_r, loss_type.split("+")[0], beta, 0.0,
                              batch["chosen_mask"].sum(1), batch["rejected_mask"].sum(1),
                              SFT_WEIGHT if "sft" in loss_type else 0.0)
    loss = terms["loss"].mean()
    loss.backward()
    assert abs(loss.item() - trl_loss.item()) <= 1e-5
    assert abs(terms["chosen_reward"].mean().item() - metrics["rewards/chosen"]) <= 1e-5
    assert abs(terms["rejected_reward"].mean().item() - metrics["rewards/rejected"]) <= 1e-5
    assert abs((terms["chosen_reward"] > terms["rejected_reward"]).float().mean().item()
               - metrics["rewards/accuracies"]) <= 1e-6
    assert abs(policy_c.mean().item() - metrics["logps/chosen"]) <= 1e-4
    theirs = dict(trainer.model.named_parameters())
    compared = 0
    for name, param in ours_model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and theirs[name].grad is not None, name
            assert torch.allclose(param.grad, theirs[name].grad, atol=1e-5, rtol=1e-4), name
            compared += 1
    assert compared > 0 and any(p.grad.abs().max() > 1e-6 for p in ours_model.parameters() if p.requires_grad)


# --- training runs

@pytest.fixture(scope="module")
def lora_run(workspace, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lora_run")
    assert main(dpo_args(workspace, write_config(tmp_path), tmp_path / "out")) == 0
    return tmp_path / "out" / "dpo_lora"


def test_loss_at_step_0_is_ln2_and_rewards_are_logged(lora_run):
    metrics = read_metrics(lora_run / "metrics.jsonl")
    first_val = next(r for r in metrics if "val/loss" in r)
    first_train = next(r for r in metrics if "train/loss" in r)
    assert first_val["step"] == 0 and abs(first_val["val/loss"] - math.log(2)) <= 1e-4
    assert abs(first_train["train/loss"] - math.log(2)) <= 1e-4  # step 1's loss: the policy is still the reference
    assert first_val["val/rewards/margins"] == 0.0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy"):
        assert all(f"train/{key}" in r for r in metrics if "train/loss" in r)
        assert len([r for r in metrics if f"val/{key}" in r]) == 3  # steps 0, 3, 6
    assert (lora_run / "final" / "adapter_config.json").is_file()


def test_evaluate_dpo_matches_the_trainer_and_compares_with_sft(workspace, lora_run, tmp_path):
    """Stage 95: the held-out rewards of the final adapter (reference: the SFT base it records) equal the trainer's
    last val metrics (same pairs, same math); answers are generated for held-out prompts; --compare takes the SFT
    model's results."""
    # the world of the DPO data (workspace): evaluate refuses a model of another world
    qa = {"world": {"type": "synthetic", "people": 20, "places": 4}, "max_items": 3, "max_new_tokens": 4}
    sft_config, dpo_config = tmp_path / "sft_eval.json", tmp_path / "dpo_eval.json"
    atomic_write_json(sft_config, {"batch_size": 4, "synthetic_qa": qa})
    atomic_write_json(dpo_config, {"batch_size": 4, "synthetic_qa": qa, "preference": [{
        "name": "val", "dpo_dir": str(workspace["data"]), "beta": 0.1, "max_pairs": 8, "generate": 2,
        "max_new_tokens": 4}]})
    assert main(["evaluate", "--config", str(sft_config), "--model-path", str(workspace["sft"]), "--output-dir",
                 str(tmp_path / "sft")]) == 0
    assert main(["evaluate", "--config", str(dpo_config), "--model-path", str(lora_run / "final"), "--output-dir",
                 str(tmp_path / "dpo"), "--compare", str(tmp_path / "sft")]) == 0
    results = json.loads((tmp_path / "dpo" / "evaluation_results.json").read_text())
    ours = results["preference"]["val"]
    trainer = [r for r in read_metrics(lora_run / "metrics.jsonl") if "val/loss" in r][-1]
    assert ours["pairs"] == 8 and Path(ours["reference"]).resolve() == workspace["sft"].resolve()
    assert abs(ours["reward_accuracy"] - trainer["val/rewards/accuracy"]) <= 1e-6
    assert abs(ours["reward_margin"] - trainer["val/rewards/margins"]) <= 1e-5
    compared = {row["metric"] for row in results["comparison"]["rows"] if row["section"] == "synthetic_qa"}
    assert compared == {"exact_match", "refusal_rate"}  # correct answers and refusals, before and after DPO
    samples = [json.loads(l) for l in (tmp_path / "dpo" / "samples" / "preference_val.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and sum("generated" in s for s in samples) == 2
    assert "Preference pairs" in (tmp_path / "dpo" / "report.md").read_text()


def test_held_out_answers_equal_model_generate(workspace):
    """Stage 95's answers come from the shared engine (all prompts batched) and equal greedy `model.generate` run one
    prompt at a time on the same chat-template ids."""
    from lumi.data.chat import generation_eos_ids
    from lumi.eval.preference import held_out_answers

    model, tokenizer = sft_model(workspace), AutoTokenizer.from_pretrained(workspace["sft"])
    rows = [json.loads(line) for line in (workspace["data"] / "val.jsonl").read_text().splitlines()[:5]]
    prompts = [row["prompt"] for row in rows]
    expected = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                do_sample=False, eos_token_id=generation_eos_ids(), pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip())
    assert held_out_answers(model, tokenizer, prompts, max_new_tokens=6, max_batch=2) == expected


def test_precomputed_reference_equals_frozen_copy(workspace, tmp_path):
    runs = {}
    for precompute in (False, True):
        config = write_config(tmp_path / str(precompute), method="full", max_steps=2, lr=1e-4,
                              precompute_reference=precompute)
        assert main(dpo_args(workspace, config, tmp_path / str(precompute) / "out")) == 0
        runs[precompute] = read_metrics(tmp_path / str(precompute) / "out" / "dpo_full" / "metrics.jsonl")
    for a, b in zip(runs[False], runs[True]):
        for key in ("train/loss", "val/loss", "val/rewards/margins"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-5, key


@pytest.mark.parametrize("method, weights", [("lora", "adapter_model.safetensors"), ("full", "model.safetensors")])
def test_sigkill_then_resume_is_bitwise(workspace, tmp_path, method, weights):
    config = write_config(tmp_path, method=method, max_steps=6, save_interval=2, eval_interval=3,
                          precompute_reference=method == "full")
    reference = run_cli(dpo_args(workspace, config, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    killed = run_cli(dpo_args(workspace, config, tmp_path / "resumed"), code=KILL_AT_STEP, env={"KILL_AT": "5"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(dpo_args(workspace, config, tmp_path / "resumed", "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert "step_4" in resumed.stderr
    run, ref = tmp_path / "resumed" / f"dpo_{method}", tmp_path / "reference" / f"dpo_{method}"
    assert train_losses(run) == train_losses(ref)
    assert [r.get("val/rewards/margins") for r in read_metrics(run / "metrics.jsonl")] == \
        [r.get("val/rewards/margins") for r in read_metrics(ref / "metrics.jsonl")]
    got, want = load_file(run / "final" / weights), load_file(ref / "final" / weights)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


# --- bad input

def test_bad_input_is_one_line_exit_2(workspace, tmp_path, capsys):
    config = write_config(tmp_path)
    no_template = make_tiny_model_dir(tmp_path / "pretrained", workspace["root"] / "tokenizer", max_seq_len=SEQ_LEN)
    short_context = make_chat_model_dir(tmp_path / "short", workspace["root"] / "tokenizer", workspace["data"], 64)
    cases = [(["--model-path", str(no_template)], "no chat template (chat_template.jinja)"),
             (["--model-path", str(short_context)], "exceed the model's context of 64"),
             (["--set", "loss=kto"], "field 'loss'"),
             (["--set", "beta=0"], "field 'beta'")]
    for extra, message in cases:
        args = dpo_args(workspace, config, tmp_path / "bad")
        if extra[0] == "--model-path":
            args[args.index("--model-path") + 1] = extra[1]
        else:
            args += extra
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad" / "dpo_lora" / "final").exists()


def test_label_smoothing_is_conservative_dpo():
    margin = torch.tensor([-2.0, 0.0, 3.0])
    zeros = torch.zeros(3)
    smoothed = preference_losses(margin, zeros, zeros, zeros, "sigmoid", 0.5, 0.2)["loss"]
    z = 0.5 * margin
    want = -0.8 * torch.nn.functional.logsigmoid(z) - 0.2 * torch.nn.functional.logsigmoid(-z)
    assert torch.allclose(smoothed, want) and abs(smoothed[1].item() - math.log(2)) <= 1e-6


def test_an_sft_adapter_dir_is_merged_once_and_used(workspace, tmp_path):
    """--model-path a stage-70 LoRA adapter: merged into <output-dir>/sft_merged (base + adapter), which is the
    policy's start and the reference."""
    from lumi.lora import save_adapter

    base = make_chat_model_dir(tmp_path / "base", workspace["root"] / "tokenizer", workspace["data"])
    adapter = wrap_lora(AutoModelForCausalLM.from_pretrained(base), 4, 8, 0.0, ["q_proj", "v_proj"])
    for name, param in adapter.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    save_adapter(adapter, workspace["data"] / "tokenizer", tmp_path / "adapter", base)
    config = write_config(tmp_path, max_steps=1, eval_interval=100)
    args = dpo_args(workspace, config, tmp_path / "out")
    args[args.index("--model-path") + 1] = str(tmp_path / "adapter")
    assert main(args) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "sft_merged")
    with torch.no_grad():
        ids = torch.tensor([workspace["train"]["chosen_ids"][0][:20].tolist()])
        assert torch.allclose(merged(input_ids=ids).logits, adapter.eval()(input_ids=ids).logits, atol=1e-5)
    record = json.loads((tmp_path / "out" / "dpo_lora" / "final" / "lumi_adapter.json").read_text())
    assert Path(record["base_model_path"]) == (tmp_path / "out" / "sft_merged").resolve()
