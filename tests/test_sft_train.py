"""Stage 70 (lumi sft): the shared Trainer with the SFT objective. Packed conversations never see each other, the
targets and loss equal TRL's SFTTrainer (the oracle), LoRA checkpoints are PEFT adapter dirs, full ones
save_pretrained dirs, both resume bitwise after SIGKILL, and bad input is one line, exit 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_helpers import make_tiny_model_dir, write_tokenizer
from fault_helpers import KILL_AT_STEP
from packed_helpers import subprocess_env, train_losses
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lumi.cli import main
from lumi.core.files import atomic_write_json
from lumi.core.special_tokens import EOS_ID, IM_END_ID
from lumi.data.chat import encode_conversation, get_template, loss_targets
from lumi.data.sft_corpus import SFTCorpusConfig, build_sft_corpus, pack_rows
from lumi.formats.metrics import read_metrics
from lumi.lm.loss import position_ids_from_bos, summed_nats

REPO_ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN = 128


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, samples_dir):
    root = tmp_path_factory.mktemp("sft")
    tokenizer_dir = write_tokenizer(root / "tokenizer")
    base = make_tiny_model_dir(root / "base", tokenizer_dir, max_seq_len=SEQ_LEN, init_std=0.02)
    data = root / "data"
    config = SFTCorpusConfig(sources=[{"type": "files", "name": "alpaca",
                                       "paths": [str(samples_dir / "alpaca_data_first200.json")]}],
                             seq_len=SEQ_LEN, languages=None, val_fraction=0.1)
    build_sft_corpus(config, base, data)  # the tokenizer from the checkpoint dir, as --tokenizer-dir allows
    conversations = [json.loads(line)["messages"] for line in (data / "train.jsonl").read_text().splitlines()]
    return {"root": root, "tokenizer": tokenizer_dir, "base": base, "data": data, "conversations": conversations}


def write_config(workspace, tmp_path, **overrides) -> Path:
    config = {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
              "max_steps": 6, "micro_batch_size": 2, "grad_accumulation": 2, "lr": 1e-3, "warmup_steps": 1,
              "log_interval": 1, "eval_interval": 3, "save_interval": 100, "eval_max_rows": 4, "tensorboard": False,
              "seed": 7, **overrides}
    path = tmp_path / "sft.json"
    atomic_write_json(path, config)
    return path


def sft_args(workspace, config: Path, output: Path, *extra: str) -> list[str]:
    return ["sft", "--config", str(config), "--model-path", str(workspace["base"]), "--data-dir",
            str(workspace["data"]), "--output-dir", str(output), *extra]


# --- packing never lets conversations see each other

def test_packed_conversations_have_the_logits_they_have_alone(workspace):
    model = AutoModelForCausalLM.from_pretrained(workspace["base"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(workspace["data"] / "tokenizer")
    template = get_template("chatml")
    encoded = sorted((encode_conversation(tokenizer, c, template) for c in workspace["conversations"]),
                     key=lambda e: len(e.input_ids))[:3]  # three that fit one row together
    row = torch.tensor([[t for e in encoded for t in e.input_ids]])
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=position_ids_from_bos(row), attention_mask=None,
                       use_cache=False).logits[0]
        leaky = model(input_ids=row, position_ids=position_ids_from_bos(row), attention_mask=torch.ones_like(row),
                      use_cache=False).logits[0]
        offset, worst, leak = 0, 0.0, 0.0
        for e in encoded:
            alone = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
            worst = max(worst, (packed[offset:offset + len(e.input_ids)] - alone).abs().max().item())
            leak = max(leak, (leaky[offset:offset + len(e.input_ids)] - alone).abs().max().item())
            offset += len(e.input_ids)
    assert worst <= 1e-5
    assert leak > 1e-3  # the trap: an all-ones attention mask lets the later conversations attend to earlier ones


def test_targets_and_loss_equal_trl_sft_trainer(workspace, tmp_path):
    """TRL as the oracle: assistant_only_loss with bfd packing gives our targets and our loss."""
    import datasets
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(workspace["data"] / "tokenizer")
    template = get_template("chatml")
    conversations = workspace["conversations"][:24]
    model = AutoModelForCausalLM.from_pretrained(workspace["base"], dtype=torch.float32).eval()
    args = TRLConfig(output_dir=str(tmp_path / "trl"), assistant_only_loss=True, packing=True, packing_strategy="bfd",
                     max_length=SEQ_LEN, per_device_train_batch_size=len(conversations), report_to=[], use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_list([{"messages": c} for c in conversations]))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch).item()
    encoded = [encode_conversation(tokenizer, c, template) for c in conversations]
    tokens, mask = pack_rows(encoded, SEQ_LEN)
    ids, loss_mask = torch.from_numpy(tokens.astype("int64")), torch.from_numpy(mask.astype("int64"))
    targets = loss_targets(ids, loss_mask)
    assert int((targets != -100).sum()) == int((batch["labels"] != -100).sum())
    # the same target tokens, conversation by conversation, in TRL's rows
    trl_targets = sorted(batch["labels"][batch["labels"] != -100].tolist())
    assert trl_targets == sorted(targets[targets != -100].tolist())
    with torch.no_grad():
        ours = (summed_nats(model, ids, targets=targets) / (targets != -100).sum()).item()
    assert abs(ours - trl_loss) <= 1e-5


# --- training runs

@pytest.fixture(scope="module")
def lora_run(workspace, tmp_path_factory):
    """One short LoRA run (6 steps, val loss at 0, 3, 6) with --merge-adapters; returns its run dir."""
    tmp_path = tmp_path_factory.mktemp("lora_run")
    config = write_config(workspace, tmp_path)
    assert main(sft_args(workspace, config, tmp_path / "out", "--merge-adapters")) == 0
    return tmp_path / "out" / "lora"


def test_lora_run_writes_peft_adapters_and_merges(workspace, lora_run):
    final = lora_run / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(workspace["base"]), final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert GenerationConfig.from_pretrained(final).eos_token_id == [IM_END_ID, EOS_ID]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt")["input_ids"]
    assert model.generate(input_ids=ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]
    merged = lora_run / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "chat_template.jinja").is_file()
    metrics = read_metrics(lora_run / "metrics.jsonl")
    val = [r["val/loss"] for r in metrics if "val/loss" in r]
    assert len(val) == 3 and val[-1] < val[0]  # steps 0, 3, 6: the assistant loss falls


def test_evaluate_takes_an_adapter_or_a_merged_dir(workspace, lora_run, tmp_path):
    """Stage 80: the assistant-token val loss of the adapter dir equals the merged dir's and the trainer's last val
    loss (same rows, same targets); synthetic-world QA runs through the chat template."""
    config = tmp_path / "eval.json"
    atomic_write_json(config, {"batch_size": 2, "sft_loss": [{"name": "val", "sft_dir": str(workspace["data"]),
                                                              "max_rows": 4}],
                               "synthetic_qa": {"world": {"type": "synthetic", "people": 8, "places": 4},
                                                "max_items": 3, "max_new_tokens": 4}})
    losses = {}
    for name in ("final", "merged"):
        out = tmp_path / name
        assert main(["evaluate", "--config", str(config), "--model-path", str(lora_run / name), "--output-dir",
                     str(out)]) == 0
        results = json.loads((out / "evaluation_results.json").read_text())
        losses[name] = results["sft_loss"]["val"]["loss"]
        assert results["synthetic_qa"]["num_items"] == 3 and "Synthetic-world" in (out / "report.md").read_text()
    trainer_val = [r["val/loss"] for r in read_metrics(lora_run / "metrics.jsonl") if "val/loss" in r][-1]
    assert abs(losses["final"] - losses["merged"]) <= 1e-5 and abs(losses["final"] - trainer_val) <= 1e-5




def run_cli(args: list[str], code: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "lumi", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(env))


@pytest.mark.parametrize("method, weights", [("lora", "adapter_model.safetensors"), ("full", "model.safetensors")])
def test_sigkill_then_resume_is_bitwise(workspace, tmp_path, method, weights):
    config = write_config(workspace, tmp_path, method=method, max_steps=6, save_interval=2, eval_interval=3)
    reference = run_cli(sft_args(workspace, config, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    killed = run_cli(sft_args(workspace, config, tmp_path / "resumed"), code=KILL_AT_STEP, env={"KILL_AT": "5"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(sft_args(workspace, config, tmp_path / "resumed", "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert "step_4" in resumed.stderr
    run, ref = tmp_path / "resumed" / method, tmp_path / "reference" / method
    assert train_losses(run) == train_losses(ref)
    assert [r.get("val/loss") for r in read_metrics(run / "metrics.jsonl")] == \
        [r.get("val/loss") for r in read_metrics(ref / "metrics.jsonl")]
    got, want = load_file(run / "final" / weights), load_file(ref / "final" / weights)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_early_stop_keeps_the_best_evaluated_weights(workspace, tmp_path):
    """Full SFT at a learning rate that overshoots: the val loss stops improving, the run stops ``patience``
    evaluations after its best one, and final/ holds that evaluation's weights (the base's, if step 0 was best)."""
    patience = 2
    config = write_config(workspace, tmp_path, method="full", lr=0.05, warmup_steps=0, max_steps=12, eval_interval=1,
                          save_interval=1, keep_last_k=20, early_stop_patience=patience)
    assert main(sft_args(workspace, config, tmp_path / "out")) == 0
    run = tmp_path / "out" / "full"
    val = {r["step"]: r["val/loss"] for r in read_metrics(run / "metrics.jsonl") if "val/loss" in r}
    best = min(val, key=lambda step: (val[step], step))
    assert max(val) == best + patience < 12, val  # stopped early, right after the patience ran out
    kept = workspace["base"] if best == 0 else run / f"step_{best}"
    got, want = load_file(run / "final" / "model.safetensors"), load_file(kept / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


# --- bad input

def test_bad_input_is_one_line_exit_2(workspace, tmp_path, capsys):
    config = write_config(workspace, tmp_path)
    cases = [
        (["--model-path", str(workspace["root"] / "adapter_as_base")], "is a LoRA adapter dir, not a base model"),
        (["--set", 'lora.target_modules=["c_attn"]'], "target_modules ['c_attn'] are not in the model"),
        (["--set", "method=qlora"], "field 'method'"),
    ]
    adapter_dir = workspace["root"] / "adapter_as_base"
    adapter_dir.mkdir(exist_ok=True)
    (adapter_dir / "adapter_config.json").write_text("{}")
    for extra, message in cases:
        args = sft_args(workspace, config, tmp_path / "bad")
        if extra[0] == "--model-path":
            args[args.index("--model-path") + 1] = extra[1]
        else:
            args += extra
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "bad" / "lora" / "final").exists()
