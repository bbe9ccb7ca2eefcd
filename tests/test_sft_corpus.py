"""Stage 60 (lumi sft-corpus): sources -> filters counted by reason -> seeded split by conversation -> packed rows
with the assistant-only loss mask, the chat tokenizer and the manifest; bad input is one line, exit 2, no output."""

from __future__ import annotations

import json

import pytest
from eval_helpers import write_tokenizer
from transformers import AutoTokenizer

from lumi.cli import main
from lumi.data.chat import get_template, encode_conversation
from lumi.data.sft_corpus import (HubSource, SFTCorpusConfig, build_sft_corpus, load_split, pack_best_fit,
                                  read_sft_manifest)
from lumi.core.files import atomic_write_jsonl
from lumi.core.special_tokens import PAD_ID


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def write(path, records):
    atomic_write_jsonl(path, records)
    return path


def test_alpaca_sample_end_to_end(samples_dir, tokenizer_dir, tmp_path):
    out = tmp_path / "sft"
    assert main(["sft-corpus", "--input", str(samples_dir / "alpaca_data_first200.json"), "--tokenizer-dir",
                 str(tokenizer_dir), "--output-dir", str(out), "--seq-len", "384", "--set", "languages=null"]) == 0
    manifest = read_sft_manifest(out)
    source = manifest["sources"]["alpaca_data_first200.json"]
    assert source["format"] == "alpaca" and source["read"] == 200
    assert source["kept"] + sum(source["dropped"].values()) == 200 and source["dropped"]["too_long"] > 0
    assert (out / "DATA_CARD.md").read_text().count("too_long") == 1
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    template = get_template("chatml")
    rows = 0
    for split in ("train", "val"):
        tokens, mask = load_split(out, split)
        conversations = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert tokens.shape[1] == 384 and mask.shape == tokens.shape
        assert not mask[tokens == PAD_ID].any()
        # every conversation's tokens are in the rows exactly once; targets are only what our encoder marks
        assert int(mask.sum()) == sum(sum(encode_conversation(tokenizer, c["messages"], template).loss_mask)
                                      for c in conversations)
        assert int((tokens != PAD_ID).sum()) == manifest["splits"][split]["tokens"]
        rows += len(tokens)
        ids = tokenizer.apply_chat_template(conversations[0]["messages"])["input_ids"]
        assert any(_contains(row.tolist(), ids) for row in tokens)
    assert manifest["splits"]["val"]["conversations"] > 0 and rows == sum(s["rows"] for s in manifest["splits"].values())


def _contains(row, ids):
    return any(row[i:i + len(ids)] == ids for i in range(len(row) - len(ids) + 1))


def test_filters_count_every_drop_by_reason(tokenizer_dir, tmp_path):
    records = [
        {"instruction": "Name a colour.", "output": "Blue."},
        {"instruction": "name a   COLOUR.", "output": "Red."},                          # exact duplicate prompt
        {"instruction": "Please name one colour that you like a lot today, friend.", "output": "Green."},
        {"instruction": "Please name one colour that you like a lot today, my friend.", "output": "Teal."},  # near
        {"instruction": "Say something.", "output": ""},                               # empty response
        {"instruction": "Write a long story.", "output": "word " * 400},               # too long
        {"instruction": 7, "output": "x"},                                             # wrong type
        {"output": "no instruction"},                                                  # missing field
    ]
    out = tmp_path / "sft"
    config = SFTCorpusConfig(sources=[{"type": "files", "name": "mine", "paths": [str(write(tmp_path / "a.jsonl",
                                                                                          records))]}],
                             seq_len=128, languages=None, val_fraction=0.0)
    manifest = build_sft_corpus(config, tokenizer_dir, out)
    source = manifest["sources"]["mine"]
    assert source["dropped"] == {"duplicate_prompt": 1, "near_duplicate_prompt": 1, "empty_turn": 1, "too_long": 1,
                                 "wrong_type": 1, "missing_field": 1}
    assert source["kept"] == 2 and source["read"] == 8
    assert "field 'instruction' is int" in source["dropped_examples"]["wrong_type"][0]


def test_oasst_language_filter_and_cut_at_turn(fixtures_dir, tokenizer_dir, tmp_path):
    path = str(fixtures_dir / "sft" / "oasst1_flat_schema.jsonl")
    config = SFTCorpusConfig(sources=[{"type": "files", "name": "oasst", "paths": [path]}], languages=["en"],
                             val_fraction=0.0, seq_len=160, overlong="cut_at_turn")
    manifest = build_sft_corpus(config, tokenizer_dir, tmp_path / "sft")
    source = manifest["sources"]["oasst"]
    assert source["dropped"] == {"language": 1, "no_assistant_turn": 1} and source["kept"] == 1
    assert source["cut_at_turn"] == 1  # the 4-turn English thread does not fit 160 tokens: its first exchange is kept
    tokens, mask = load_split(tmp_path / "sft", "train")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "sft" / "tokenizer")
    targets = tokenizer.decode(tokens[0][mask[0] == 1])
    assert targets.startswith("Basil likes moist soil") and "Cacti" not in targets


def test_hub_path_through_datasets_on_local_files(fixtures_dir, tokenizer_dir, tmp_path):
    """The hub code path (datasets.load_dataset) with the json builder on the Dolly fixture."""
    source = HubSource(name="dolly", dataset="json", data_files=[str(fixtures_dir / "sft" / "dolly_schema.jsonl")])
    config = SFTCorpusConfig(sources=[source], languages=None, val_fraction=0.0)
    manifest = build_sft_corpus(config, tokenizer_dir, tmp_path / "sft")
    assert manifest["sources"]["dolly"]["format"] == "dolly"
    assert manifest["sources"]["dolly"]["dropped"] == {"empty_turn": 1} and manifest["sources"]["dolly"]["kept"] == 5


def test_split_is_seeded_and_by_conversation(tokenizer_dir, tmp_path):
    records = [{"prompt": f"Question number {i}?", "response": f"Answer {i}."} for i in range(200)]
    path = str(write(tmp_path / "pairs.jsonl", records))

    def val_ids(seed, name):
        config = SFTCorpusConfig(sources=[{"type": "files", "name": "p", "paths": [path]}], languages=None,
                                 val_fraction=0.2, seed=seed, dedup={"near": {"enabled": False}})
        build_sft_corpus(config, tokenizer_dir, tmp_path / name)
        return [json.loads(line)["id"] for line in (tmp_path / name / "val.jsonl").read_text().splitlines()]

    first, again, other = val_ids(0, "a"), val_ids(0, "b"), val_ids(1, "c")
    assert first == again and first != other and 20 < len(first) < 60


def test_best_fit_decreasing_packing():
    rows = pack_best_fit([5, 3, 4, 2, 6], seq_len=8)
    assert sorted(sum(([5, 3, 4, 2, 6][i] for i in row), 0) <= 8 for row in rows)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4] and len(rows) == 3


@pytest.mark.parametrize("extra, message", [
    (["--set", "template=llama3"], "unknown chat template 'llama3'"),
    (["--set", "seq_lenn=3"], "field 'seq_lenn': unknown key"),
])
def test_bad_config_is_one_line_exit_2_nothing_written(samples_dir, tokenizer_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "sft"
    code = main(["sft-corpus", "--input", str(samples_dir / "alpaca_data_first200.json"), "--tokenizer-dir",
                 str(tokenizer_dir), "--output-dir", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and not out.exists()


def test_undetectable_format_and_nothing_left(tokenizer_dir, tmp_path, capsys):
    odd = write(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    assert main(["sft-corpus", "--input", str(odd), "--tokenizer-dir", str(tokenizer_dir), "--output-dir",
                 str(tmp_path / "o1")]) == 2
    assert "odd.jsonl: cannot tell the conversation format (fields: answer, question)" in capsys.readouterr().err
    empty = write(tmp_path / "empty.jsonl", [{"instruction": "q", "output": " "}])
    assert main(["sft-corpus", "--input", str(empty), "--tokenizer-dir", str(tokenizer_dir), "--output-dir",
                 str(tmp_path / "o2"), "--set", "languages=null"]) == 2
    assert "no conversation left after filtering (dropped: {'empty_turn': 1})" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_synthetic_world_pairs_hold_only_train_and_validation_facts(tokenizer_dir, tmp_path):
    world_settings = {"type": "synthetic", "people": 20, "places": 4}
    config = SFTCorpusConfig(sources=[{"type": "synthetic", "world": world_settings}], languages=None,
                             dedup={"near": {"enabled": False}})
    manifest = build_sft_corpus(config, tokenizer_dir, tmp_path / "sft")
    world = config.sources[0].world.world()
    prompts = {json.loads(line)["messages"][0]["content"]
               for split in ("train", "val") for line in (tmp_path / "sft" / f"{split}.jsonl").read_text().splitlines()}
    assert prompts == {pair["prompt"] for split in ("train", "validation") for pair in world.sft_pairs(split)}
    assert not prompts & {pair["prompt"] for pair in world.sft_pairs("heldout")}
    assert manifest["sources"]["world"]["format"] == "pairs"


def test_shipped_sft_configs_validate_and_point_at_the_hub():
    from lumi.core.config import CONFIG_DIR, load_config
    from lumi.eval.config import EvaluationConfig
    from lumi.train.objectives.sft import SFTConfig

    datasets = sorted((CONFIG_DIR / "sft" / "datasets").glob("*.json"))
    assert {p.stem for p in datasets} >= {"alpaca", "dolly15k", "oasst1", "alpaca_dolly_oasst_instruct", "demo"}
    for path in datasets:
        config = load_config(SFTCorpusConfig, path)
        for source in config.sources:
            assert source.type in ("hub", "synthetic") and "/" in getattr(source, "dataset", "a/b")
    for path in sorted((CONFIG_DIR / "sft" / "training").glob("*.json")):
        load_config(SFTConfig, path)
    for name in ("demo.json", "sft_demo.json", "sft.json"):
        load_config(EvaluationConfig, CONFIG_DIR / "evaluation" / name)


def test_a_message_that_cannot_fit_is_cut_exactly_as_the_whole_encoding(tokenizer_dir):
    """encode_within leaves out the messages no fitting prefix can reach; what cut_at_turn keeps is the same as from
    the whole conversation's encoding."""
    from lumi.data.chat import chat_tokenizer, cut_at_turn, encode_within, longest_piece_chars

    template = get_template("chatml", None)
    tokenizer = chat_tokenizer(tokenizer_dir, template)
    longest = longest_piece_chars(tokenizer)
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "x" * (64 * longest + 1)}, {"role": "assistant", "content": "Red."}]
    partial, whole = encode_within(tokenizer, messages, template, 64, longest)
    assert not whole and partial is not None
    assert cut_at_turn(partial, 64) == cut_at_turn(encode_conversation(tokenizer, messages, template), 64)
    assert encode_within(tokenizer, messages[2:], template, 64, longest) == (None, False)
    assert encode_within(tokenizer, messages[:2], template, 64, longest)[1]


def test_a_5_mb_message_without_spaces_is_dropped_without_tokenizing_it(tokenizer_dir, tmp_path):
    """Issue #24 point 8: it peaked at ~2 GB RSS (the tokenizer's ids and offsets of millions of tokens); a message
    longer than seq_len tokens can ever hold is counted too_long from its length alone. The child reports its own
    peak (VmHWM) against a run without the long record, so the import cost is not counted."""
    import subprocess
    import sys

    child = ("import re, sys\nfrom lumi.cli import main\nstatus = main(sys.argv[1:])\n"
             "print('peak_kib', re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
             "sys.exit(status)")

    def peak_mib(records, name):
        command = [sys.executable, "-c", child, "sft-corpus", "--input", str(write(tmp_path / f"{name}.jsonl",
                                                                                   records)), "--tokenizer-dir", str(tokenizer_dir), "--output-dir", str(tmp_path / name), "--seq-len", "128",
                   "--set", "languages=null", "--set", "val_fraction=0.0"]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return int(done.stdout.split("peak_kib")[-1]) / 1024

    short = [{"instruction": f"Name colour {i}.", "output": "Blue."} for i in range(4)]
    baseline = peak_mib(short, "short")
    long_run = peak_mib(short + [{"instruction": "Spell it.", "output": "x" * (5 << 20)}], "long")
    assert long_run - baseline < 300, f"{long_run:.0f} MiB peak against {baseline:.0f} MiB without the long record"
    [source] = read_sft_manifest(tmp_path / "long")["sources"].values()
    assert source["dropped"] == {"too_long": 1}
    assert "characters > seq_len 128" in source["dropped_examples"]["too_long"][0]
