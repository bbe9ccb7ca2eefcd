"""Fault injection in stages 60-100 (docs/RELIABILITY.md, issue #24): every reader of a model or adapter dir -- sft,
dpo, merge-lora, evaluate, serve/chat -- goes through the one verified way in (``lumi.loading``), so a damaged,
swapped or foreign artifact is refused in one line by each of them, and a derived copy is never reused blindly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import make_tiny_model_dir, write_tokenizer
from fault_helpers import flip_byte, one_error_line, truncate
from transformers import AutoModelForCausalLM

from lumi.cli import main
from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json
from lumi.data.chat import copy_chat_tokenizer
from lumi.formats.adapter import adapter_fingerprint
from lumi.formats.lineage import world_fingerprint
from lumi.formats.model_dir import write_checksums
from lumi.formats.tokenizer import check_tokenizer_integrity
from lumi.loading import DERIVED_RECORD, load_for_evaluation
from lumi.lora import save_adapter, wrap_lora
from lumi.serve.checkpoint import load_for_serving

SEQ_LEN = 128
WORLD = 'sources.0.world={"type": "synthetic", "people": 20, "places": 4}'


def make_adapter(base: Path, tokenizer_dir: Path, directory: Path, seed: int) -> Path:
    """A LoRA adapter of ``base`` with non-zero (seeded) B matrices, saved as stage 70 saves one."""
    torch.manual_seed(seed)
    adapter = wrap_lora(AutoModelForCausalLM.from_pretrained(base), 4, 8, 0.0, ["q_proj", "v_proj"])
    for name, param in adapter.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    save_adapter(adapter, tokenizer_dir, directory, base)
    return directory


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A chat model (random weights, the chat tokenizer as stage 70 writes it, checksums.json), stage-60 and -85 data
    from the synthetic world, and two different adapters of that model."""
    root = tmp_path_factory.mktemp("faults_finetune")
    tokenizer = write_tokenizer(root / "tokenizer")
    sft = make_tiny_model_dir(root / "sft", tokenizer, max_seq_len=SEQ_LEN, init_std=0.02)
    assert main(["dpo-corpus", "--config", "config/dpo/datasets/demo.json", "--tokenizer-dir", str(sft),
                 "--output-dir", str(root / "dpo_data"), "--seq-len", str(SEQ_LEN), "--set", WORLD]) == 0
    assert main(["sft-corpus", "--config", "config/sft/datasets/demo.json", "--tokenizer-dir", str(tokenizer),
                 "--output-dir", str(root / "sft_data"), "--seq-len", str(SEQ_LEN), "--set", WORLD]) == 0
    (sft / "tokenizer_meta.json").unlink()
    copy_chat_tokenizer(root / "dpo_data" / "tokenizer", sft)
    write_checksums(sft)
    chat_tokenizer = root / "dpo_data" / "tokenizer"
    return {"root": root, "tokenizer": tokenizer, "sft": sft, "dpo_data": root / "dpo_data",
            "sft_data": root / "sft_data",
            "adapter_a": make_adapter(sft, chat_tokenizer, root / "adapter_a", seed=1),
            "adapter_b": make_adapter(sft, chat_tokenizer, root / "adapter_b", seed=2)}


def copy_dir(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def write_config(tmp_path: Path, **overrides) -> Path:
    config = {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
              "max_steps": 1, "micro_batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "log_interval": 1,
              "eval_interval": 100, "save_interval": 100, "tensorboard": False, "seed": 7, **overrides}
    path = tmp_path / "train.json"
    atomic_write_json(path, config)
    return path


def dpo(workspace, tmp_path, model: Path, *extra: str, data: Path | None = None) -> int:
    return main(["dpo", "--config", str(write_config(tmp_path, eval_max_pairs=2)), "--model-path", str(model),
                 "--data-dir", str(data or workspace["dpo_data"]), "--output-dir", str(tmp_path / "dpo_out"), *extra])


def sft(workspace, tmp_path, model: Path, *extra: str, data: Path | None = None) -> int:
    return main(["sft", "--config", str(write_config(tmp_path, eval_max_rows=2)), "--model-path", str(model),
                 "--data-dir", str(data or workspace["sft_data"]), "--output-dir", str(tmp_path / "sft_out"), *extra])


def logits(model, workspace) -> torch.Tensor:
    ids = torch.arange(8, 40)[None]
    with torch.no_grad():
        return model(input_ids=ids).logits


# --- item 2: no silent wrong model ----------------------------------------------------------------------------------

def test_dpo_merges_again_when_sft_merged_came_from_another_adapter(workspace, tmp_path):
    assert dpo(workspace, tmp_path, workspace["adapter_a"]) == 0
    assert dpo(workspace, tmp_path, workspace["adapter_b"], "--force") == 0
    merged = tmp_path / "dpo_out" / "sft_merged"
    record = json.loads((merged / DERIVED_RECORD).read_text())
    assert record["adapter_sha256"] == adapter_fingerprint(workspace["adapter_b"])
    expected, _ = load_for_serving(workspace["adapter_b"], device="cpu")
    found = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert torch.allclose(logits(found, workspace), logits(expected, workspace), atol=1e-5)


@pytest.mark.parametrize("damage", [lambda m: flip_byte(m / "model.safetensors"),
                                    lambda m: truncate(m / "model.safetensors")], ids=["flipped", "truncated"])
def test_dpo_merges_again_over_a_damaged_merged_copy(workspace, tmp_path, caplog, damage):
    assert dpo(workspace, tmp_path, workspace["adapter_a"]) == 0
    damage(tmp_path / "dpo_out" / "sft_merged")
    with caplog.at_level("WARNING"):
        assert dpo(workspace, tmp_path, workspace["adapter_a"], "--force") == 0
    assert "sft_merged: damaged" in caplog.text and "merging" in caplog.text


def changed_base(workspace, tmp_path) -> Path:
    """An adapter whose recorded base was retrained (its weights changed) after the adapter was trained on it."""
    base = copy_dir(workspace["sft"], tmp_path / "base")
    adapter = make_adapter(base, workspace["dpo_data"] / "tokenizer", tmp_path / "adapter", seed=3)
    make_tiny_model_dir(tmp_path / "other", None, seed=5, max_seq_len=SEQ_LEN)
    (base / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    (base / "checksums.json").unlink()
    return adapter


def test_serve_and_chat_refuse_an_adapter_whose_base_changed(workspace, tmp_path):
    adapter = changed_base(workspace, tmp_path)
    with pytest.raises(LumiError, match="base model mismatch"):
        load_for_serving(adapter, device="cpu")  # what lumi serve and lumi chat load through


def reader_error(reader: str, workspace, tmp_path, path: Path, capsys) -> str:
    """The one line ``reader`` refuses ``path`` with (a CLI verb: its stderr; a library loader: its LumiError)."""
    if reader in ("serve", "evaluate"):
        load = load_for_serving if reader == "serve" else load_for_evaluation
        with pytest.raises(LumiError) as info:
            load(path, device="cpu")
        return str(info.value)
    if reader == "merge-lora":
        status = main(["merge-lora", "--adapter-path", str(path), "--output-dir", str(tmp_path / "merged")])
    elif reader == "sft":
        status = sft(workspace, tmp_path, path)
    else:
        status = dpo(workspace, tmp_path, path)
    assert status == 2
    return one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("reader", ["sft", "dpo", "serve", "evaluate"])
def test_a_flipped_byte_in_a_model_with_checksums_is_refused(workspace, tmp_path, capsys, reader):
    model = copy_dir(workspace["sft"], tmp_path / "model")
    flip_byte(model / "model.safetensors")
    line = reader_error(reader, workspace, tmp_path, model, capsys)
    assert "model.safetensors: damaged" in line and "checksums.json" in line, line


@pytest.mark.parametrize("reader", ["dpo", "merge-lora", "serve", "evaluate"])
def test_a_flipped_byte_in_an_adapter_with_checksums_is_refused(workspace, tmp_path, capsys, reader):
    adapter = copy_dir(workspace["adapter_a"], tmp_path / "adapter")
    write_checksums(adapter)  # as the trainer's checkpoint writes it
    flip_byte(adapter / "adapter_model.safetensors")
    line = reader_error(reader, workspace, tmp_path, adapter, capsys)
    assert "adapter_model.safetensors: damaged" in line, line


# --- item 6: fine-tuned checkpoints are checked like pretraining ones ---------------------------------------------

@pytest.mark.parametrize("method", ["lora", "full"])
def test_an_sft_checkpoint_carries_tokenizer_meta_and_evaluate_checks_it(workspace, tmp_path, capsys, method):
    """Stage 70 writes tokenizer_meta.json (hashes of the chat tokenizer files as written) into every checkpoint, as
    pretraining does; an edited tokenizer.json is then refused by the evaluator's loader even without checksums."""
    assert sft(workspace, tmp_path, workspace["sft"], "--set", f"method={method}", "--set", f"name=sft_{method}") == 0
    final = tmp_path / "sft_out" / f"sft_{method}" / "final"
    meta = json.loads((final / "tokenizer_meta.json").read_text())
    assert {"spm.model", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(meta["files"])
    check_tokenizer_integrity(final)  # the files as written match their record
    (final / "checksums.json").unlink(missing_ok=True)  # only tokenizer_meta.json can tell now
    (final / "tokenizer.json").write_text((final / "tokenizer.json").read_text().replace('"<unk>"', '"<UNK>"', 1))
    line = reader_error("evaluate", workspace, tmp_path, final, capsys)
    assert "tokenizer.json: sha256 differs from tokenizer_meta.json" in line, line


# --- item 5: one line, never a traceback ----------------------------------------------------------------------------

MODEL_DAMAGE = {
    "truncated-weights": (lambda m: truncate(m / "model.safetensors"), r"model could not be loaded \(SafetensorError"),
    "invalid-config": (lambda m: (m / "config.json").write_text("{ not json"), r"config.json: invalid JSON"),
    "deep-config": (lambda m: (m / "config.json").write_text("[" * 100_000 + "]" * 100_000),
                    r"config.json: JSON nested too deeply"),
    "wrong-type-config": (lambda m: (m / "config.json").write_text("[1, 2]"), r"config.json: expected a JSON object"),
}


@pytest.mark.parametrize("reader", ["sft", "dpo", "serve", "evaluate"])
@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGE))
def test_a_damaged_model_without_checksums_is_one_line(workspace, tmp_path, capsys, reader, damage):
    import re

    model = copy_dir(workspace["sft"], tmp_path / "model")
    (model / "checksums.json").unlink()  # nothing recorded: the loader itself must fail in one line
    apply, expected = MODEL_DAMAGE[damage]
    apply(model)
    line = reader_error(reader, workspace, tmp_path, model, capsys)
    assert re.search(expected, line), line


ADAPTER_DAMAGE = {
    "truncated-weights": (lambda a: truncate(a / "adapter_model.safetensors"), "adapter could not be loaded"),
    "invalid-adapter-config": (lambda a: (a / "adapter_config.json").write_text("{"), "adapter_config.json: invalid"),
    "invalid-record": (lambda a: (a / "lumi_adapter.json").write_text("[]"), "lumi_adapter.json: expected"),
}


@pytest.mark.parametrize("reader", ["dpo", "merge-lora", "serve", "evaluate"])
@pytest.mark.parametrize("damage", sorted(ADAPTER_DAMAGE))
def test_a_damaged_adapter_is_one_line(workspace, tmp_path, capsys, reader, damage):
    adapter = copy_dir(workspace["adapter_a"], tmp_path / "adapter")
    apply, expected = ADAPTER_DAMAGE[damage]
    apply(adapter)
    line = reader_error(reader, workspace, tmp_path, adapter, capsys)
    assert expected in line, line


# --- item 6 -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["same", "inside"])
def test_merge_lora_refuses_to_write_over_its_adapter(workspace, tmp_path, capsys, where):
    adapter = copy_dir(workspace["adapter_a"], tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in adapter.iterdir()}
    output = adapter if where == "same" else adapter / "merged"
    assert main(["merge-lora", "--adapter-path", str(adapter), "--output-dir", str(output), "--force"]) == 2
    assert "would destroy the adapter" in one_error_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == before


# --- item 5/6: damaged or silently wrong SFT and DPO data -----------------------------------------------------------

def rewrite_npz(path: Path, change) -> None:
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    change(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def set_item(array: np.ndarray, value: int) -> np.ndarray:
    array[0, 1] = value
    return array


PAIRS_DAMAGE = {
    "truncated": (lambda d: truncate(d / "train_pairs.npz"), "train_pairs.npz: damaged"),
    "missing-array": (lambda d: rewrite_npz(d / "train_pairs.npz", lambda a: a.pop("rejected_mask")),
                      "no rejected_mask array"),
    "id-over-vocab": (lambda d: rewrite_npz(d / "train_pairs.npz", lambda a: set_item(a["chosen_ids"], 10 ** 6)),
                      "outside the model's vocabulary"),
    "short-rejected-ids": (lambda d: rewrite_npz(d / "train_pairs.npz", lambda a: a.update(
        rejected_ids=a["rejected_ids"][:, :-3])), "arrays differ in shape"),
    "no-rejected-answer": (lambda d: rewrite_npz(d / "train_pairs.npz", lambda a: a["rejected_mask"].__setitem__(
        0, 0)), "pair 0 has no rejected answer token"),
    "missing-val": (lambda d: (d / "val_pairs.npz").unlink(), "val_pairs.npz: missing"),
}


def without_file_records(data: Path) -> Path:
    """``data`` as an older version wrote it: no size and sha256 of its arrays in the manifest, so the readers' own
    checks are what stands between damage and training."""
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["files"]
    atomic_write_json(data / "manifest.json", manifest)
    return data


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_a_flipped_byte_in_the_data_arrays_is_refused(workspace, tmp_path, capsys, stage):
    data = copy_dir(workspace[f"{stage}_data"], tmp_path / "data")
    name = "train_tokens.npy" if stage == "sft" else "train_pairs.npz"
    flip_byte(data / name, offset=(data / name).stat().st_size - 3)  # inside the ids: a same-size, loadable file
    assert (sft if stage == "sft" else dpo)(workspace, tmp_path, workspace["sft"], data=data) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{name}: damaged: its sha256 differs" in line and "manifest.json" in line, line


@pytest.mark.parametrize("damage", sorted(PAIRS_DAMAGE))
def test_damaged_dpo_data_is_one_line(workspace, tmp_path, capsys, damage):
    data = without_file_records(copy_dir(workspace["dpo_data"], tmp_path / "data"))
    apply, expected = PAIRS_DAMAGE[damage]
    apply(data)
    assert dpo(workspace, tmp_path, workspace["sft"], data=data) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line, line


def rewrite_npy(path: Path, change) -> None:
    array = np.load(path)
    with open(path, "wb") as handle:
        np.save(handle, change(array))


SFT_DATA_DAMAGE = {
    "truncated-tokens": (lambda d: truncate(d / "train_tokens.npy"), "train_tokens.npy: damaged"),
    "short-mask": (lambda d: rewrite_npy(d / "train_mask.npy", lambda m: m[:, :-5]), "train_mask.npy: damaged: shape"),
    "all-zero-mask": (lambda d: rewrite_npy(d / "train_mask.npy", np.zeros_like), "no target token"),
    "id-over-vocab": (lambda d: rewrite_npy(d / "train_tokens.npy", lambda t: set_item(t, 10 ** 6)),
                      "outside the model's vocabulary"),
    "missing-val": (lambda d: (d / "val_mask.npy").unlink(), "val_mask.npy: missing"),
}


@pytest.mark.parametrize("damage", sorted(SFT_DATA_DAMAGE))
def test_damaged_sft_data_is_one_line(workspace, tmp_path, capsys, damage):
    data = without_file_records(copy_dir(workspace["sft_data"], tmp_path / "data"))
    apply, expected = SFT_DATA_DAMAGE[damage]
    apply(data)
    assert sft(workspace, tmp_path, workspace["sft"], data=data) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line, line


def edit_tokenizer_json(directory: Path) -> None:
    path = directory / "tokenizer.json"
    path.write_text(path.read_text() + " ")


def test_stage_60_refuses_an_edited_tokenizer(workspace, tmp_path, capsys):
    tokenizer = copy_dir(workspace["tokenizer"], tmp_path / "tokenizer")
    edit_tokenizer_json(tokenizer)
    assert main(["sft-corpus", "--config", "config/sft/datasets/demo.json", "--tokenizer-dir", str(tokenizer),
                 "--output-dir", str(tmp_path / "sft_data"), "--seq-len", str(SEQ_LEN), "--set", WORLD]) == 2
    assert "tokenizer.json: sha256 differs from tokenizer_meta.json" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_stages_70_and_90_refuse_an_edited_chat_tokenizer_in_their_data(workspace, tmp_path, capsys, stage):
    data = copy_dir(workspace[f"{stage}_data"], tmp_path / "data")
    edit_tokenizer_json(data / "tokenizer")
    run = sft if stage == "sft" else dpo
    assert run(workspace, tmp_path, workspace["sft"], data=data) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "tokenizer.json: damaged: its sha256 differs" in line and "manifest.json" in line, line


# --- item 7: artifacts of different synthetic worlds are not combined ----------------------------------------------

def pretrained_on(model: Path, root: Path, world: dict) -> Path:
    """``model`` given the lineage a pretraining checkpoint records: pretrain_config.json -> a packed dir -> a corpus
    whose config names ``world``."""
    corpus, packed = root / "corpus", root / "packed"
    corpus.mkdir(parents=True)
    packed.mkdir()
    source = {"type": "synthetic", "name": "world", "documents": 100, **world}
    atomic_write_json(corpus / "manifest.json", {"format": "lumi-corpus/1", "config": {"sources": [source]}})
    atomic_write_json(packed / "final_manifest.json", {"corpus": {"dir": str(corpus)}})
    atomic_write_json(model / "pretrain_config.json", {"config": {"data_dirs": [str(packed)]}})
    return model


DATA_WORLD = {"seed": 0, "people": 20, "places": 4, "heldout_fraction": 0.2}  # WORLD, with its defaults


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_a_model_of_another_world_is_refused(workspace, tmp_path, capsys, stage):
    model = pretrained_on(copy_dir(workspace["sft"], tmp_path / "model"), tmp_path, {**DATA_WORLD, "seed": 1})
    (model / "checksums.json").unlink()  # the lineage file was added after the checksums were written
    run = sft if stage == "sft" else dpo
    assert run(workspace, tmp_path, model) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "uses synthetic world" in line and f"but {model} comes from world" in line, line


def test_a_model_of_the_same_world_is_accepted(workspace, tmp_path):
    model = pretrained_on(copy_dir(workspace["sft"], tmp_path / "model"), tmp_path, DATA_WORLD)
    (model / "checksums.json").unlink()
    assert dpo(workspace, tmp_path, model) == 0


def test_worlds_are_recorded_and_refused_after_the_data_was_moved(workspace, tmp_path, capsys):
    """Every manifest of data from the world, and every checkpoint (lineage.json), records the world's fingerprint:
    an SFT adapter whose SFT data dir was moved away still says its world, and DPO data of another world is refused
    in one line (before, its lineage was followed through the moved path and lost)."""
    world = world_fingerprint(DATA_WORLD)
    for data in ("sft_data", "dpo_data"):
        assert json.loads((workspace[data] / "manifest.json").read_text())["worlds"] == [world]
    data = copy_dir(workspace["sft_data"], tmp_path / "sft_data")
    assert sft(workspace, tmp_path, workspace["sft"], data=data) == 0
    adapter = tmp_path / "sft_out" / "lora" / "final"
    assert json.loads((adapter / "lineage.json").read_text()) == {"worlds": [world]}
    data.rename(tmp_path / "archived_sft_data")  # the adapter's sft_config.json now names a missing dir
    other = tmp_path / "other_world"
    assert main(["dpo-corpus", "--config", "config/dpo/datasets/demo.json", "--tokenizer-dir", str(workspace["sft"]),
                 "--output-dir", str(other), "--seq-len", str(SEQ_LEN),
                 "--set", 'sources.0.world={"type": "synthetic", "people": 20, "places": 4, "seed": 1}']) == 0
    capsys.readouterr()
    assert dpo(workspace, tmp_path, adapter, data=other) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "uses synthetic world" in line and "comes from world " + world[:12] in line, line
    assert dpo(workspace, tmp_path, adapter) == 0  # its own world's data is accepted
    assert json.loads((tmp_path / "dpo_out" / "sft_merged" / "lineage.json").read_text()) == {"worlds": [world]}


def test_corpus_and_packed_data_record_their_world(workspace, tmp_path, capsys):
    """Stage 10 records the world it generated, stage 30 the worlds of the corpus it packed: still known once the
    corpus is moved away (the packed manifest's corpus path then leads nowhere), and pretraining refuses to mix the
    packed data of two worlds."""
    from lumi.formats.lineage import artifact_worlds

    world = {**DATA_WORLD, "seed": 3}
    source = json.dumps({"type": "synthetic", "name": "world", "documents": 50, **world})
    assert main(["corpus", "--config", "config/demo/corpus.json", "--set", f"sources.0={source}",
                 "--output-dir", str(tmp_path / "corpus")]) == 0
    assert json.loads((tmp_path / "corpus" / "manifest.json").read_text())["worlds"] == [world_fingerprint(world)]
    assert main(["pack", "--config", "config/demo/packing.json", "--corpus-dir", str(tmp_path / "corpus"),
                 "--tokenizer-dir", str(workspace["tokenizer"]), "--seq-len", "32",
                 "--output-dir", str(tmp_path / "packed")]) == 0
    (tmp_path / "corpus").rename(tmp_path / "archived_corpus")
    assert artifact_worlds(tmp_path / "packed") == {world_fingerprint(world)}
    other = json.dumps({"type": "synthetic", "name": "world", "documents": 50, **world, "seed": 4})
    assert main(["corpus", "--config", "config/demo/corpus.json", "--set", f"sources.0={other}",
                 "--output-dir", str(tmp_path / "corpus4")]) == 0
    assert main(["pack", "--config", "config/demo/packing.json", "--corpus-dir", str(tmp_path / "corpus4"),
                 "--tokenizer-dir", str(workspace["tokenizer"]), "--seq-len", "32",
                 "--output-dir", str(tmp_path / "packed4")]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--config", "config/demo/pretrain.json", "--tokenizer-dir", str(workspace["tokenizer"]),
                 "--data-dirs", str(tmp_path / "packed"), str(tmp_path / "packed4"), "--max-steps", "1",
                 "--output-dir", str(tmp_path / "checkpoints")]) == 2
    assert "packed data of 2 different synthetic worlds" in one_error_line(capsys.readouterr().err)


# --- item 8: stage 60/85 hold their output's lock for the whole run -------------------------------------------------

@pytest.mark.parametrize("stage", ["sft-corpus", "dpo-corpus"])
def test_a_second_corpus_run_on_the_same_output_is_refused_before_reading(workspace, tmp_path, capsys, monkeypatch,
                                                                          stage):
    import lumi.data.preference
    import lumi.data.sft_corpus
    from lumi.core.files import output_lock

    module = lumi.data.sft_corpus if stage == "sft-corpus" else lumi.data.preference
    read = []
    monkeypatch.setattr(module, "collect", lambda *args, **kwargs: read.append(args) or ([], {}))
    config = "config/sft/datasets/demo.json" if stage == "sft-corpus" else "config/dpo/datasets/demo.json"
    with output_lock(tmp_path / "out"):  # what the first run holds while it reads and writes
        assert main([stage, "--config", config, "--tokenizer-dir", str(workspace["tokenizer"]), "--output-dir",
                     str(tmp_path / "out"), "--force", "--set", WORLD]) == 2
    assert "in use by pid" in one_error_line(capsys.readouterr().err)
    assert not read  # refused before reading any conversation


# --- item 5: evaluate --compare checks the earlier results before evaluating ----------------------------------------

GOOD_RESULTS = {"tasks": {"cloze": {"metrics": {"acc": {"value": 0.5, "stderr": 0.1}}, "num_items": 10}},
                "perplexity": {"val": {"loss": 2.0, "perplexity": 7.4, "bits_per_byte": 1.1, "tokens": 100}},
                "synthetic_qa": {"split": "heldout", "num_items": 5, "exact_match": {"value": 1, "stderr": None}}}


@pytest.mark.parametrize("path, value", [
    (("tasks", "cloze", "metrics", "acc", "value"), "0.5"),
    (("tasks", "cloze", "num_items"), None),
    (("perplexity", "val", "loss"), [2.0]),
    (("synthetic_qa", "exact_match"), 1.0),
])
def test_compare_refuses_a_wrong_typed_earlier_result_before_evaluating(tmp_path, path, value):
    import copy

    from lumi.eval.report import load_previous_results

    results = copy.deepcopy(GOOD_RESULTS)
    target = results
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    atomic_write_json(tmp_path / "evaluation_results.json", results)
    with pytest.raises(LumiError, match=r"evaluation_results.json: field '" + ".".join(path)):
        load_previous_results(tmp_path)
    atomic_write_json(tmp_path / "evaluation_results.json", GOOD_RESULTS)
    assert load_previous_results(tmp_path)["tasks"]  # the well-typed file passes


# --- item 6: a checkpoint's tokenizer is checked wherever it is read -------------------------------------------------

@pytest.mark.parametrize("reader", ["sft", "dpo", "serve", "evaluate"])
def test_an_edited_checkpoint_tokenizer_is_refused(workspace, tmp_path, capsys, reader):
    """An SFT checkpoint has no tokenizer_meta.json; its checksums.json covers the chat tokenizer files instead."""
    model = copy_dir(workspace["sft"], tmp_path / "model")
    edit_tokenizer_json(model)
    line = reader_error(reader, workspace, tmp_path, model, capsys)
    assert "tokenizer.json: damaged" in line and "checksums.json" in line, line
