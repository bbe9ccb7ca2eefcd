"""Stage 40: data mixing, schedules, the training loop, checkpoints, exact resume and the failure paths."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lumi.cli import main
from lumi.core.special_tokens import BOS_ID, EOS_ID, PAD_ID
from lumi.data.packed_stream import BatchStream, MixedRowSampler
from lumi.eval.perplexity import evaluate_packed_split
from lumi.formats.checkpoint import checkpoint_step
from lumi.formats.metrics import read_metrics
from lumi.formats.packed import load_packed_split, unigram_entropy
from lumi.model import ArchitectureConfig, build_model, load_architecture, parameter_counts
from lumi.data.packing import PackingConfig, pack_corpus
from lumi.train.objectives.pretrain import PretrainConfig
from lumi.train.optim import build_optimizer, build_scheduler, lr_at, muon_split, parameter_groups
from lumi.train.step import TrainStep
from lumi.train.trainer import Trainer
from eval_helpers import training_text, write_tokenizer
from fault_helpers import KILL_AT_STEP
from helpers import make_corpus_dir
from lumi.core.config import load_config
from lumi.formats.tokenizer import load_hf_tokenizer, load_tokenizer_meta
from packed_helpers import (function_documents, nano_architecture, random_documents, subprocess_env, train_losses,
                            write_packed_dir)

REPO_ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN = 64


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: intra-op threads only add synchronisation, which on a shared, oversubscribed CPU costs
    several times the compute (measured 4x on 2 busy cores). Subprocesses get OMP_NUM_THREADS=1 (run_cli)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    tokenizer = write_tokenizer(root / "tokenizer")
    vocab = load_tokenizer_meta(tokenizer)["vocab_size"]
    arch = root / "nano.json"
    arch.write_text(json.dumps(nano_architecture(vocab, SEQ_LEN, tie_embeddings=True)))
    return {
        "root": root, "tokenizer": tokenizer, "arch": arch,
        "successor": write_packed_dir(root / "successor", tokenizer, function_documents(200, SEQ_LEN - 2, vocab, 0),
                                      function_documents(16, SEQ_LEN - 2, vocab, 1), SEQ_LEN, vocab),
        "web": write_packed_dir(root / "web", tokenizer, random_documents(300, vocab, 2),
                                random_documents(40, vocab, 3), SEQ_LEN, vocab),
        "books": write_packed_dir(root / "books", tokenizer, random_documents(200, vocab, 4),
                                  random_documents(40, vocab, 5), SEQ_LEN, vocab),
    }


def write_config(workspace, directory: Path, **changes) -> Path:
    config = {"model": str(workspace["arch"]), "tokenizer_dir": str(workspace["tokenizer"]),
              "data_dirs": [str(workspace["web"])], "max_steps": 12, "micro_batch_size": 4, "grad_accumulation": 2,
              "lr": 0.005, "warmup_steps": 2, "log_interval": 1, "eval_interval": 5, "eval_max_rows": 8,
              "save_interval": 4, "keep_last_k": 2, "tensorboard": False, **changes}
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


# --- data mixing -------------------------------------------------------------------------------------------------

def test_sampler_realizes_the_mix_and_shuffles_each_source_per_epoch():
    sampler = MixedRowSampler([10, 7, 30], [0.5, 0.3, 0.2], seed=3)
    drawn = []
    for _ in range(40):
        drawn += sampler.next_rows(5)
        counts = Counter(source for source, _ in drawn)
        for source, weight in enumerate([0.5, 0.3, 0.2]):
            assert abs(counts[source] - weight * len(drawn)) <= 1
    first_epoch = [row for source, row in drawn if source == 0][:10]
    second_epoch = [row for source, row in drawn if source == 0][10:20]
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(10))  # each epoch visits every row once
    assert first_epoch != second_epoch and first_epoch != list(range(10))
    assert MixedRowSampler([10, 7, 30], [5, 3, 2], seed=3).next_rows(200) == drawn  # deterministic, weights normalised


def test_sampler_state_resumes_the_exact_stream():
    reference = MixedRowSampler([13, 5], [0.7, 0.3], seed=1)
    expected = reference.next_rows(50)
    first = MixedRowSampler([13, 5], [0.7, 0.3], seed=1)
    head = first.next_rows(23)
    resumed = MixedRowSampler([13, 5], [0.7, 0.3], seed=1)
    resumed.load_state_dict(first.state_dict())
    assert head + resumed.next_rows(27) == expected


def test_ranks_split_the_global_batch_without_overlap():
    rows = np.arange(40 * 4).reshape(40, 4)

    class Split:
        def __init__(self):
            self.rows = rows

    class Source:
        train = Split()

    def batches(rank: int, world: int, micro: int, accum: int) -> list[list[int]]:
        stream = BatchStream([Source()], MixedRowSampler([40], [1.0], seed=0), micro, accum, rank, world)
        return [b[:, 0].tolist() for _ in range(3) for b in stream.next_step()]

    single = [row for batch in batches(0, 1, 2, 4) for row in batch]
    ranks = [batches(rank, 2, 2, 2) for rank in range(2)]
    per_step = [sorted(r for rank in ranks for batch in rank[2 * s:2 * s + 2] for r in batch) for s in range(3)]
    assert per_step == [sorted(single[8 * s:8 * s + 8]) for s in range(3)]  # same global batches, any world size


# --- optimizer ---------------------------------------------------------------------------------------------------

def schedule_config(schedule: str) -> PretrainConfig:
    return PretrainConfig(model="micro", max_steps=100, micro_batch_size=1, lr=1.0, min_lr=0.1, warmup_steps=10,
                          schedule=schedule, wsd_decay_fraction=0.2)


def test_lr_schedules_warm_up_then_follow_their_shape():
    for schedule in ("cosine", "wsd", "constant"):
        config = schedule_config(schedule)
        lrs = [lr_at(step, config, 100) for step in range(100)]
        assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
        assert max(lrs) == pytest.approx(1.0)
    cosine = [lr_at(step, schedule_config("cosine"), 100) for step in range(100)]
    assert cosine[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(cosine[9:], cosine[10:]))
    assert cosine[9 + 45] == pytest.approx(0.55, abs=0.02)  # halfway down the cosine
    wsd = [lr_at(step, schedule_config("wsd"), 100) for step in range(100)]
    assert wsd[10:80] == [1.0] * 70 and wsd[-1] == pytest.approx(0.1) and wsd[80] < 1.0
    assert [lr_at(step, schedule_config("constant"), 100) for step in range(10, 100)] == [1.0] * 90


def test_no_weight_decay_on_norms_and_embeddings():
    for tied in (True, False):
        model = build_model(ArchitectureConfig(**nano_architecture(300, SEQ_LEN, tie_embeddings=tied)))
        decay, no_decay = parameter_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        decayed = {names[id(p)] for p in decay["params"]}
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert not any("norm" in n or "embed_tokens" in n for n in decayed)
        assert ("lm_head.weight" in decayed) == (not tied)
        assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_parameters()
        groups_all = parameter_groups(model, 0.1, decay_all=True)
        assert [g["weight_decay"] for g in groups_all] == [0.1, 0.1]  # litgpt's: every parameter decayed
        assert [len(g["params"]) for g in groups_all] == [len(decay["params"]), len(no_decay["params"])]


def test_muon_takes_the_hidden_matrices_and_adamw_embeddings_head_and_norms():
    for tied in (True, False):
        model = build_model(ArchitectureConfig(**nano_architecture(300, SEQ_LEN, tie_embeddings=tied)))
        names = {id(p): n for n, p in model.named_parameters()}
        (muon,), adamw = muon_split(model, 0.1)
        to_muon = {names[id(p)] for p in muon["params"]}
        to_adamw = {names[id(p)]: group["weight_decay"] for group in adamw for p in group["params"]}
        assert to_muon == {n for n, p in model.named_parameters() if n.endswith("_proj.weight")} and to_muon
        assert all(model.get_parameter(n).ndim == 2 for n in to_muon) and muon["weight_decay"] == 0.1
        assert "model.embed_tokens.weight" in to_adamw and to_adamw["model.embed_tokens.weight"] == 0.0
        assert ("lm_head.weight" in to_adamw) == (not tied) and to_adamw.get("lm_head.weight", 0.1) == 0.1
        assert all(decay == 0.0 for n, decay in to_adamw.items() if "norm" in n)
        assert sum(model.get_parameter(n).numel() for n in [*to_muon, *to_adamw]) == model.num_parameters()


def test_every_optimizer_group_follows_the_schedule_from_its_own_peak_lr():
    model = build_model(ArchitectureConfig(**nano_architecture(300, SEQ_LEN, tie_embeddings=False)))
    config = schedule_config("wsd").model_copy(update={"lr": 0.5, "min_lr": 0.05, "optimizer": "muon",
                                                       "muon_lr": 0.02})
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, 100)
    peaks = [group["initial_lr"] for group in optimizer.param_groups]
    assert sorted(set(peaks)) == [0.02, 0.5] and peaks[0] == 0.5  # group 0, the logged lr, is AdamW's
    for step in range(100):
        factor = lr_at(step, config, 100) / config.lr
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([p * factor for p in peaks])
        assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.02 * factor)  # reaches Muon itself
        if step == 50:  # as a resume does: the schedule must still reach both optimizers after loading
            optimizer.load_state_dict(optimizer.state_dict())
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("changes, message", [
    (["optimizer=muon", "distributed=fsdp2"], "fsdp2 shards them"),
    (["optimizer=sgd"], "optimizer"),
    (["optimizer=muon", "muon_momentum=1.0"], "muon_momentum"),
    (["optimizer=muon", "muon_lr=0"], "muon_lr"),
])
def test_nonsense_optimizer_settings_are_refused_naming_the_field(workspace, tmp_path, capsys, changes, message):
    config = write_config(workspace, tmp_path)
    overrides = [arg for change in changes for arg in ("--set", change)]
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out"), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err
    assert not (tmp_path / "out").exists()


# --- training ----------------------------------------------------------------------------------------------------

def test_training_learns_a_deterministic_successor_and_saves_loadable_checkpoints(workspace, tmp_path):
    config = write_config(workspace, tmp_path, data_dirs=[str(workspace["successor"])], max_steps=100,
                          micro_batch_size=8, grad_accumulation=1, lr=0.01, warmup_steps=5, log_interval=10,
                          eval_interval=100, save_interval=20, keep_last_k=2, eval_max_rows=16)
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 0
    run_dir = tmp_path / "out" / "nano"
    records = read_metrics(run_dir / "metrics.jsonl")
    vocab = load_architecture(workspace["arch"]).vocab_size
    assert abs(records[0]["val/loss"] - math.log(vocab)) / math.log(vocab) < 0.02  # step 0: close to uniform
    # The first token of each document is one of 4 choices, everything after it is determined.
    floor = math.log(4) / (SEQ_LEN - 2)
    assert records[-1]["val/loss"] < floor + 0.1 and train_losses(run_dir)[-1][1] < floor + 0.1
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_60", "step_80"]  # keep_last_k=2
    assert checkpoint_step(run_dir / "final") == 100
    card = (run_dir / "final" / "README.md").read_text()  # the hub model card (lumi.formats.model_card)
    assert card.startswith("---\n") and "pretrained from scratch" in card
    assert f"| val/loss | {records[-1]['val/loss']:.4f} |" in card and '"max_steps": 100' in card

    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")  # plain transformers, no code of ours
    # The evaluator (stage 50) on the saved checkpoint reproduces the trainer's last val loss.
    evaluated = evaluate_packed_split(model, load_packed_split(workspace["successor"], "val"), max_rows=16)
    assert evaluated["loss"] == pytest.approx(records[-1]["val/loss"], abs=1e-4)
    start = function_documents(1, 12, vocab, seed=9)[0]
    prompt = torch.tensor([[BOS_ID, start[0]]])
    generated = model.generate(prompt, max_new_tokens=10, do_sample=False)[0, 2:].tolist()
    assert generated == start[1:11]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    # One layout of special ids: the checkpoint's tokenizer, model config and generation config agree with the data.
    ids = (BOS_ID, EOS_ID, PAD_ID)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == ids
    for model_config in (model.config, model.generation_config):
        assert (model_config.bos_token_id, model_config.eos_token_id, model_config.pad_token_id) == ids
    text = "Once upon a time, 42 cats."
    assert tokenizer(text).input_ids == load_hf_tokenizer(workspace["tokenizer"])(text).input_ids
    inputs = tokenizer(text, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert tokenizer.decode(output[0, : inputs.input_ids.shape[1]]) == text


def run_cli(*args: str, env_extra: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "lumi", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(env_extra))




@pytest.mark.parametrize("recipe", [{}, {"optimizer": "muon", "muon_lr": 0.01, "schedule": "wsd"}],
                         ids=["adamw", "muon"])
def test_sigkill_then_resume_reproduces_the_uninterrupted_run_bitwise(workspace, tmp_path, recipe):
    config = write_config(workspace, tmp_path, data_dirs=[str(workspace["web"]), str(workspace["books"])],
                          data_weights=[2.0, 1.0], max_steps=12, save_interval=4, **recipe)
    args = ["pretrain", "--config", str(config), "--output-dir"]
    reference = run_cli(*args, str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    killed = run_cli(*args, str(tmp_path / "resumed"), code=KILL_AT_STEP, env_extra={"KILL_AT": "9"})
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "resumed" / "nano"
    assert max(step for step, _ in train_losses(run_dir)) == 9  # logged past its last checkpoint (step 8)
    assert not (run_dir / "final").exists()
    resumed = run_cli(*args, str(tmp_path / "resumed"), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "step_8" in resumed.stderr

    expected = read_metrics(tmp_path / "reference" / "nano" / "metrics.jsonl")
    got = read_metrics(run_dir / "metrics.jsonl")
    assert train_losses(run_dir) == train_losses(tmp_path / "reference" / "nano")
    assert [r["step"] for r in got] == [r["step"] for r in expected]  # no duplicated steps after the resume
    assert [r.get("val/loss") for r in got] == [r.get("val/loss") for r in expected]
    final_reference = load_file(tmp_path / "reference" / "nano" / "final" / "model.safetensors")
    final_resumed = load_file(run_dir / "final" / "model.safetensors")
    assert all(torch.equal(final_reference[k], final_resumed[k]) for k in final_reference)


def test_sigterm_saves_a_checkpoint_and_exits(workspace, tmp_path):
    config = write_config(workspace, tmp_path, max_steps=100000, save_interval=100000)
    process = subprocess.Popen([sys.executable, "-m", "lumi", "pretrain", "--config", str(config), "--output-dir",
                                str(tmp_path / "out")], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=subprocess_env())
    run_dir = tmp_path / "out" / "nano"
    deadline = time.monotonic() + 120
    while not train_losses(run_dir) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stdout and "Traceback" not in stderr
    (checkpoint,) = run_dir.glob("step_*")
    assert checkpoint_step(checkpoint) == max(step for step, _ in train_losses(run_dir))


def test_sigint_finishes_the_step_and_saves(workspace, tmp_path, monkeypatch, capsys):
    original = Trainer.train_step

    def interrupted_step(self, batches):
        if self.step == 2:
            signal.raise_signal(signal.SIGINT)  # arrives mid-step, as Ctrl-C would
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    config = write_config(workspace, tmp_path)
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 128 + signal.SIGINT
    run_dir = tmp_path / "out" / "nano"
    assert checkpoint_step(run_dir / "step_3") == 3 and not (run_dir / "final").exists()
    assert "stopped by SIGINT after step 3" in capsys.readouterr().out


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(workspace, tmp_path, capsys,
                                                                               monkeypatch):
    # Config validation refuses an lr that would overflow (lr <= 1, finite), so the fault is injected: the weights
    # turn non-finite before step 4 (as an overflowing update would leave them).
    original = Trainer.train_step

    def poisoned_step(self, micro_batches):
        if self.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return original(self, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", poisoned_step)
    config = write_config(workspace, tmp_path, warmup_steps=0, save_interval=1, keep_last_k=1)
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    failed_step = int(error.split("step ")[1].split(":")[0])
    assert failed_step == 4 and "non-finite" in error and f"step_{failed_step - 1}" in error
    run_dir = tmp_path / "out" / "nano"
    assert [p.name for p in run_dir.glob("step_*")] == [f"step_{failed_step - 1}"]
    assert not (run_dir / "final").exists()


def test_data_packed_with_another_tokenizer_is_refused(workspace, tmp_path, capsys):
    other = write_tokenizer(tmp_path / "other-tokenizer", vocab_size=400)
    config = write_config(workspace, tmp_path, tokenizer_dir=str(other))
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert str(workspace["web"]) in error and "packed with tokenizer sha256" in error
    assert not (tmp_path / "out").exists()


def test_running_out_of_device_memory_says_what_to_lower(workspace, tmp_path, monkeypatch, capsys):
    def out_of_memory(self, micro_batches):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TrainStep, "step", out_of_memory)
    config = write_config(workspace, tmp_path, micro_batch_size=4)
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "step 1: CPU out of memory with micro_batch_size=4" in error
    for advice in ("grad_accumulation", "activation_checkpointing=true", "seq_len", "fsdp2"):
        assert advice in error
    assert "Traceback" not in error


def test_flex_attention_on_cpu_is_refused_before_training(workspace, tmp_path, capsys):
    config = write_config(workspace, tmp_path, attn_implementation="flex_attention")
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    assert "'flex_attention' trains on GPUs only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_run_needs_resume_or_force_and_resume_checks_settings(workspace, tmp_path, capsys):
    config = write_config(workspace, tmp_path, max_steps=4, save_interval=2)
    command = ["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]
    assert main(command) == 0
    assert main(command) == 2 and "--resume auto" in capsys.readouterr().err
    assert main([*command, "--resume", "auto"]) == 0 and "nothing to do" in capsys.readouterr().out
    assert main([*command, "--resume", "auto", "--set", "lr=0.5"]) == 2
    assert "settings changed (lr)" in capsys.readouterr().err
    assert main([*command, "--resume", "auto", "--set", "optimizer=muon"]) == 2  # optimizer state would not fit
    assert "settings changed (optimizer)" in capsys.readouterr().err
    assert main([*command, "--force", "--set", "lr=0.5"]) == 0
    run_dir = tmp_path / "out" / "nano"
    assert json.loads((run_dir / "final" / "pretrain_config.json").read_text())["config"]["lr"] == 0.5
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["nano"]  # the replaced run is gone


def test_two_data_dirs_are_mixed_by_weight_and_evaluated_separately(workspace, tmp_path):
    config = write_config(workspace, tmp_path, max_steps=5, eval_interval=5)
    command = ["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out"),
               "--data-dirs", str(workspace["web"]), str(workspace["books"]), "--data-weights", "3", "1"]
    assert main(command) == 0
    last = read_metrics(tmp_path / "out" / "nano" / "metrics.jsonl")[-1]
    assert last["data/web/share"] == 0.75 and last["data/books/share"] == 0.25  # 40 rows drawn, exact split
    assert {"val/web/loss", "val/books/bpb", "val/loss", "val/bpb"} <= set(last)


def test_val_loss_is_reported_in_both_eval_modes_as_the_evaluator_scores_them(workspace, tmp_path):
    """The trainer's val/loss (each document alone) and val/loss_causal (whole rows) are the evaluator's two modes
    on the same rows of the final model; the web rows pack several documents, so the two differ."""
    config = write_config(workspace, tmp_path, max_steps=10, eval_interval=10)
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 0
    run_dir = tmp_path / "out" / "nano"
    last = [r for r in read_metrics(run_dir / "metrics.jsonl") if "val/loss" in r][-1]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    evaluated = evaluate_packed_split(model, load_packed_split(workspace["web"], "val"), max_rows=8)
    assert last["val/loss"] == pytest.approx(evaluated["loss"], abs=2e-5)
    assert last["val/loss_causal"] == pytest.approx(evaluated["causal"]["loss"], abs=2e-5)
    assert abs(last["val/loss_causal"] - last["val/loss"]) > 2e-4  # 10 steps in: ~7e-4 apart


def test_describe_prints_exact_counts(workspace, tmp_path, capsys):
    config = write_config(workspace, tmp_path, max_steps=None, max_tokens=10_000)
    assert main(["pretrain", "--config", str(config), "--describe"]) == 0
    out = capsys.readouterr().out
    counts = parameter_counts(load_architecture(workspace["arch"]))
    assert f"total {counts['total']:,}" in out and f"non-embedding {counts['non_embedding']:,}" in out
    assert "budget: 19 steps x 512 tokens" in out  # 10,000 tokens in whole steps of 4 x 2 rows x 64 tokens


def test_real_text_through_the_pipeline_beats_the_unigram_entropy(workspace, tmp_path):
    """Stage 10-30 outputs (synthetic-world text, the stage-20 tokenizer, stage-30 packing) train to a val loss
    below what any model ignoring context can reach: the unigram entropy of the training tokens."""
    corpus = make_corpus_dir(tmp_path / "corpus", training_text(400))
    packed = tmp_path / "packed"
    pack_corpus(corpus, workspace["tokenizer"], packed, PackingConfig(seq_len=SEQ_LEN, val_fraction=0.05,
                                                                      num_threads=1))
    train = load_packed_split(packed, "train")
    entropy = unigram_entropy(train)
    counts = np.bincount(np.asarray(train.rows).ravel())
    probabilities = counts[counts > 0] / counts.sum()
    assert entropy == pytest.approx(float(-(probabilities * np.log(probabilities)).sum()))
    unigram_bpb = entropy * train.num_tokens / (math.log(2) * train.bytes)
    config = write_config(workspace, tmp_path, data_dirs=[str(packed)], max_steps=200, micro_batch_size=8,
                          grad_accumulation=1, lr=0.01, log_interval=10, eval_interval=200, eval_max_rows=32)
    assert main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 0
    final = read_metrics(tmp_path / "out" / "nano" / "metrics.jsonl")[-1]
    assert final["val/loss"] < entropy - 1.0 and 0 < final["val/bpb"] < 0.8 * unigram_bpb


@pytest.mark.parametrize("path", [*sorted((REPO_ROOT / "config" / "pretrain" / "training").glob("*.json")),
                                  REPO_ROOT / "config" / "demo" / "pretrain.json"], ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    config = load_config(PretrainConfig, path)
    arch = load_architecture(config.model)
    assert config.micro_batch_size * config.grad_accumulation * arch.max_seq_len > 0


# --- the defaults a new user gets ---------------------------------------------------------------------------------

FRESH_MACHINE = """
import json, sys
from importlib import metadata
from importlib.machinery import PathFinder

# A fresh machine lacks every installed package that pyproject.toml does not bring: here its modules are not found
# and its distribution metadata is not listed, so availability probes (accelerate's of tensorboard, anyio's optional
# sniffio) answer as they would there, and a hard import of one fails as it would there.
declared = set(json.loads(sys.argv[1]))
normal = lambda name: name.lower().replace("_", "-")
missing = {module for module, dists in metadata.packages_distributions().items()
           if not {normal(d) for d in dists} & declared and module != "lumi"}


class FreshMachinePathFinder(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in missing else super().find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return (d for d in super().find_distributions(*args, **kwargs) if normal(d.metadata["Name"]) in declared)


sys.meta_path[:] = [FreshMachinePathFinder if finder is PathFinder else finder for finder in sys.meta_path]
from lumi.cli import main
sys.exit(main(sys.argv[2:]))
"""


def declared_distributions() -> set[str]:
    """Every distribution `make install` brings: pyproject's dependencies and its test extra, with their own."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    found = {"lumi-lab"}
    while pending:
        requirement = pending.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in found:
            continue
        found.add(name)
        for text in metadata.requires(requirement.name) or []:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                pending.append(sub)
    return found


def test_pretrain_with_default_settings_runs_with_only_declared_packages(workspace, tmp_path):
    """Only what a config must give is given; every other setting (TensorBoard on among them) is the default. It runs
    as a user runs it, through the CLI in a fresh process, where every installed package that pyproject.toml does not
    declare is unimportable: an undeclared one (tensorboard once) breaks `make demo` on a fresh machine, while this
    venv would hide it."""
    required = {name for name, field in PretrainConfig.model_fields.items() if field.is_required()}
    config = {"model": str(workspace["arch"]), "tokenizer_dir": str(workspace["tokenizer"]),
              "data_dirs": [str(workspace["web"])], "max_steps": 3, "micro_batch_size": 2, "lr": 0.001}
    assert required <= set(config) and PretrainConfig.model_fields["tensorboard"].default is True
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-c", FRESH_MACHINE, json.dumps(sorted(declared_distributions())),
                             "pretrain", "--config", str(path), "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "out" / "nano" / "tensorboard").glob("events.out.tfevents.*"))
