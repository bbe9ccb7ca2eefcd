"""Stage 85 (lumi dpo-corpus): one reader per preference format on real records (HH-RLHF, ShareGPT preference,
stack-exchange-paired samples; orca_dpo_pairs and UltraFeedback schema fixtures), the answer-only mask through the SFT
chat template, the length policy, dedup, the seeded split, and bad records dropped and counted by reason."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from eval_helpers import write_tokenizer
from transformers import AutoTokenizer

from lumi.cli import main
from lumi.core.files import atomic_write_jsonl
from lumi.core.special_tokens import IM_START_ID, PAD_ID
from lumi.data.preference import (PREFERENCE_READERS, PreferenceCorpusConfig, build_preference_corpus,
                                  detect_preference_format, load_pairs, read_dpo_manifest)
from lumi.data.readers.base import ReadStats

HH_SAMPLE = "hh_rlhf_harmless_base_test_first300.jsonl.gz"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def build(tokenizer_dir, tmp_path, records=None, paths=None, name="out", **config):
    if records is not None:
        paths = [tmp_path / f"{name}.jsonl"]
        atomic_write_jsonl(paths[0], records)
    sources = [{"type": "files", "name": "input", "paths": [str(p) for p in paths]}]
    out = tmp_path / name
    manifest = build_preference_corpus(PreferenceCorpusConfig(sources=sources, **config), tokenizer_dir, out)
    return manifest, out


def split_rows(out, split="train"):
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def hh_transcript(turns):
    return "".join(f"\n\n{'Human' if role == 'user' else 'Assistant'}: {text}" for role, text in turns)


def test_hh_sample_through_the_hub_path_splits_transcripts(samples_dir, tokenizer_dir, tmp_path):
    """The gzipped HH sample through the record-file reader (gunzipped, JSON lines): every kept pair's prompt and
    answers rebuild the original transcripts; the mask marks only the final answer, as apply_chat_template's
    assistant mask does for that turn."""
    out = tmp_path / "hh"
    assert main(["dpo-corpus", "--input", str(samples_dir / HH_SAMPLE), "--tokenizer-dir", str(tokenizer_dir),
                 "--output-dir", str(out), "--seq-len", "384", "--set", "overlong=drop"]) == 0
    manifest = read_dpo_manifest(out)
    source = manifest["sources"][HH_SAMPLE]
    assert source["format"] == "hh" and source["read"] == 300
    assert source["kept"] + sum(source["dropped"].values()) == 300 and source["dropped"]["too_long"] > 0
    originals = [json.loads(line) for line in gzip.open(samples_dir / HH_SAMPLE, "rt")]
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    multi_turn = 0
    for split in ("train", "val"):
        rows, arrays = split_rows(out, split), load_pairs(out, split)
        assert len(rows) == len(arrays["chosen_ids"]) == manifest["splits"][split]["pairs"]
        for row, ids, mask in zip(rows, arrays["chosen_ids"], arrays["chosen_mask"]):
            original = originals[int(row["id"].split(":")[1])]
            prompt = hh_transcript([(m["role"], m["content"]) for m in row["prompt"]])
            assert original["chosen"].startswith(prompt) and original["rejected"].startswith(prompt)
            assert original["chosen"].rstrip().endswith(row["chosen"]) and row["prompt"][-1]["role"] == "user"
            multi_turn += len(row["prompt"]) > 1
            theirs = tokenizer.apply_chat_template([*row["prompt"], {"role": "assistant", "content": row["chosen"]}],
                                                   return_dict=True, return_assistant_tokens_mask=True)
            length = len(theirs["input_ids"])
            assert ids[:length].tolist() == theirs["input_ids"] and (ids[length:] == PAD_ID).all()
            last_turn = length - 1 - theirs["input_ids"][::-1].index(IM_START_ID)
            want = [m if i > last_turn else 0 for i, m in enumerate(theirs["assistant_masks"])]
            assert mask[:length].tolist() == want and not mask[length:].any() and sum(want) > 0
    assert multi_turn > 0  # earlier assistant turns were context, not targets


def test_sharegpt_and_stack_exchange_samples(samples_dir, tokenizer_dir, tmp_path):
    for sample, fmt, count in (("sharegpt_preference_llamafactory_first100.json", "sharegpt", 100),
                               ("stack_exchange_paired_tiny_torchtune.json", "stack_exchange", 25)):
        records = json.loads((samples_dir / sample).read_text())
        assert detect_preference_format(records[0]) == fmt
        stats = ReadStats()
        pairs = list(PREFERENCE_READERS[fmt](records, stats))
        assert stats.read == count and len(pairs) == count
        assert all(p.prompt[-1]["role"] == "user" and p.chosen and p.rejected for p in pairs)
        if fmt == "stack_exchange":
            assert [p.chosen for p in pairs] == [r["response_j"] for r in records]
        else:
            assert [p.rejected for p in pairs] == [r["rejected"]["value"] for r in records]
        manifest, out = build(tokenizer_dir, tmp_path, paths=[samples_dir / sample], name=fmt, seq_len=2048,
                              val_fraction=0.0)
        assert manifest["sources"]["input"]["format"] == fmt and manifest["splits"]["train"]["pairs"] > 0


def test_orca_and_ultrafeedback_fixtures(fixtures_dir, tokenizer_dir, tmp_path):
    manifest, out = build(tokenizer_dir, tmp_path, paths=[fixtures_dir / "dpo" / "orca_dpo_pairs.jsonl"],
                          name="orca", val_fraction=0.0)
    source = manifest["sources"]["input"]
    assert source["format"] == "orca" and source["kept"] == 3 and source["dropped"] == {"identical_answers": 1}
    rows = split_rows(out)
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]  # empty system: none
    assert rows[1]["prompt"][0]["role"] == "system"
    manifest, out = build(tokenizer_dir, tmp_path, paths=[fixtures_dir / "dpo" / "ultrafeedback_binarized.jsonl"],
                          name="uf", val_fraction=0.0)
    source = manifest["sources"]["input"]
    assert source["format"] == "ultrafeedback" and source["kept"] == 3
    assert source["dropped"] == {"no_shared_prefix": 1}
    assert split_rows(out)[2]["chosen"] == "A spider has eight legs."


def test_bad_records_are_dropped_and_counted(tokenizer_dir, tmp_path):
    records = [
        {"prompt": "Which town is Ann from?", "chosen": "Ann is from Ely.", "rejected": "Ann is from Bly."},
        {"prompt": "Which town is Ann from?", "chosen": "Ann is from Ely.", "rejected": "Ann is from Bly."},
        {"prompt": "Same?", "chosen": "Yes  it is.", "rejected": "Yes it is."},
        {"prompt": "Empty?", "chosen": "", "rejected": "No."},
        {"prompt": "Missing?", "chosen": "Yes."},
        {"prompt": "Typed?", "chosen": 3, "rejected": "No."},
        "not an object",
        {"prompt": "Long? " + "word " * 400, "chosen": "Yes.", "rejected": "No."},
    ]
    manifest, _ = build(tokenizer_dir, tmp_path, records=records, seq_len=64, val_fraction=0.0)
    source = manifest["sources"]["input"]
    assert source["kept"] == 1 and source["dropped"] == {
        "duplicate": 1, "identical_answers": 1, "empty_answer": 1, "missing_field": 1, "wrong_type": 1,
        "not_an_object": 1, "too_long": 1}
    hh = [{"chosen": hh_transcript([("user", "Hi"), ("assistant", "Hello")]),
           "rejected": hh_transcript([("user", "Hey"), ("assistant", "Go away")])},
          {"chosen": hh_transcript([("user", "Hi"), ("assistant", "Hello")]),
           "rejected": hh_transcript([("user", "Hi"), ("assistant", "Go away")])}]
    manifest, _ = build(tokenizer_dir, tmp_path, records=hh, name="hh", val_fraction=0.0)
    assert manifest["sources"]["input"]["dropped"] == {"no_shared_prefix": 1}


def test_length_policy_cuts_the_prompt_at_a_turn(tokenizer_dir, tmp_path):
    old = [("user", "An old question " + "about towns " * 20), ("assistant", "An old answer " + "yes " * 20)]
    record = {"chosen": hh_transcript([*old, ("user", "Where is Ely?"), ("assistant", "Ely is north.")]),
              "rejected": hh_transcript([*old, ("user", "Where is Ely?"), ("assistant", "No idea.")])}
    manifest, out = build(tokenizer_dir, tmp_path, records=[record], seq_len=96, val_fraction=0.0)
    assert manifest["sources"]["input"]["prompt_cut"] == 1
    row = split_rows(out)[0]
    assert row["prompt"] == [{"role": "user", "content": "Where is Ely?"}] and row["chosen"] == "Ely is north."
    manifest, _ = build(tokenizer_dir, tmp_path, records=[record, {"chosen": hh_transcript([("user", "ok?"), ("assistant", "a")]),
                                                      "rejected": hh_transcript([("user", "ok?"), ("assistant", "b")])}],
                        name="drop", seq_len=96, overlong="drop", val_fraction=0.0, dedup="off")
    assert manifest["sources"]["input"]["dropped"] == {"too_long": 1}


def test_split_is_seeded_and_hub_path_equals_file_path(tokenizer_dir, tmp_path):
    records = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "I cannot say."} for i in range(60)]
    first, out_a = build(tokenizer_dir, tmp_path, records=records, name="a", val_fraction=0.25, seed=3)
    again, out_b = build(tokenizer_dir, tmp_path, records=records[::-1], name="b", val_fraction=0.25, seed=3)
    assert 0 < first["splits"]["val"]["pairs"] < 60
    prompts = lambda out: sorted(r["prompt"][0]["content"] for r in split_rows(out, "val"))  # noqa: E731
    assert prompts(out_a) == prompts(out_b) and first["splits"] == again["splits"]  # by prompt, not record order
    other, out_c = build(tokenizer_dir, tmp_path, records=records, name="c", val_fraction=0.25, seed=4)
    assert prompts(out_c) != prompts(out_a)
    hub = build_preference_corpus(PreferenceCorpusConfig(sources=[{
        "type": "hub", "name": "input", "dataset": "json", "data_files": [str(tmp_path / "a.jsonl")]}],
        val_fraction=0.25, seed=3), tokenizer_dir, tmp_path / "hub")
    assert hub["sources"]["input"]["format"] == "pairs" and split_rows(tmp_path / "hub", "val") == split_rows(out_a,
                                                                                                             "val")
    for name in ("chosen_ids", "rejected_mask"):
        assert np.array_equal(load_pairs(tmp_path / "hub", "train")[name], load_pairs(out_a, "train")[name])


def test_unusable_input_is_one_line_exit_2(tokenizer_dir, tmp_path, capsys):
    unknown = tmp_path / "unknown.jsonl"
    atomic_write_jsonl(unknown, [{"text": "no preference fields"}])
    missing = tmp_path / "missing.jsonl"
    atomic_write_jsonl(missing, [{"question": "q", "chosen": "a"}])  # orca without rejected: every record dropped
    for path, message in ((unknown, "cannot tell the preference pair format"),
                          (missing, "missing.jsonl: no preference pair read as format 'orca'")):
        assert main(["dpo-corpus", "--input", str(path), "--tokenizer-dir", str(tokenizer_dir), "--output-dir",
                     str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_shipped_dpo_configs_validate_and_point_at_the_hub():
    from lumi.core.config import CONFIG_DIR, load_config
    from lumi.eval.config import EvaluationConfig
    from lumi.train.objectives.dpo import DPOConfig

    datasets = sorted((CONFIG_DIR / "dpo" / "datasets").glob("*.json"))
    assert {p.stem for p in datasets} >= {"hh_rlhf", "orca_dpo_pairs", "ultrafeedback_binarized",
                                          "stack_exchange_paired", "demo"}
    for path in datasets:
        config = load_config(PreferenceCorpusConfig, path)
        for source in config.sources:
            assert source.type in ("hub", "synthetic") and "/" in getattr(source, "dataset", "a/b")
            assert source.type == "synthetic" or source.format in PREFERENCE_READERS  # stated, not detected
    training = sorted((CONFIG_DIR / "dpo" / "training").glob("*.json"))
    assert {p.stem for p in training} >= {"lora_tiny", "full_tiny", "demo"}
    for path in training:
        load_config(DPOConfig, path)
    for name in ("dpo.json", "dpo_demo.json"):
        load_config(EvaluationConfig, CONFIG_DIR / "evaluation" / name)


def test_synthetic_pairs_keep_heldout_facts_out():
    from lumi.data.preference import PREFERENCE_RECORDS, SyntheticPreferenceSource
    from lumi.data.sft_corpus import source_parts

    source = SyntheticPreferenceSource(type="synthetic", world={"type": "synthetic", "people": 20, "places": 4})
    parts = source_parts(source, PREFERENCE_RECORDS)
    assert [split for _, _, split in parts] == ["train", "val"]
    pairs = [pair for _, load, _ in parts for pair in load()]
    heldout = {pair["prompt"] for pair in source.world.world().preference_pairs("heldout")}
    assert pairs and not {pair["prompt"] for pair in pairs} & heldout
    assert all(pair["chosen"] != pair["rejected"] for pair in pairs)


class LongestTextSeen:
    """The real chat tokenizer, recording the longest text it was asked to encode (what costs memory)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, **kwargs):
        self.longest = max(self.longest, *map(len, texts))
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_megabyte_old_turn_or_answer_is_never_tokenized(tokenizer_dir, tmp_path):
    """A prompt + answer whose text alone is more than seq_len tokens can hold is skipped before encoding: an old
    turn of 1 MB is cut off as before, a 1 MB answer is too_long as before, and neither reaches the tokenizer."""
    from lumi.data.chat import chat_tokenizer, get_template
    from lumi.data.preference import collect

    huge = "x" * (1 << 20)
    old = [("user", huge), ("assistant", "An old answer.")]
    records = [{"chosen": hh_transcript([*old, ("user", "Where is Ely?"), ("assistant", "Ely is north.")]),
                "rejected": hh_transcript([*old, ("user", "Where is Ely?"), ("assistant", "No idea.")])},
               {"chosen": hh_transcript([("user", "Spell it."), ("assistant", huge)]),
                "rejected": hh_transcript([("user", "Spell it."), ("assistant", "No.")])}]
    atomic_write_jsonl(tmp_path / "pairs.jsonl", records)
    source = {"type": "files", "name": "input", "paths": [str(tmp_path / "pairs.jsonl")]}
    config = PreferenceCorpusConfig(sources=[source], seq_len=96, val_fraction=0.0, dedup="off")
    tokenizer = LongestTextSeen(chat_tokenizer(tokenizer_dir, get_template(config.template, config.system_prompt)))
    kept, stats = collect(config, tokenizer)
    assert [c.pair.prompt for c in kept] == [[{"role": "user", "content": "Where is Ely?"}]] and kept[0].prompt_cut
    assert stats["input"]["read"].dropped == {"too_long": 1}
    assert tokenizer.longest < 10_000, tokenizer.longest
