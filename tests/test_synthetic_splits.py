"""The synthetic world's three splits through the stages: training reads train facts, choosing reads validation
facts, and nothing before an evaluation reads a held-out question (issue: demo figures that hold on any seed)."""

from __future__ import annotations

import json

import pytest
from eval_helpers import write_tokenizer

from lumi.core.config import CONFIG_DIR, load_config
from lumi.data.preference import PreferenceCorpusConfig, build_preference_corpus
from lumi.data.sft_corpus import SFTCorpusConfig, build_sft_corpus
from lumi.data.synthetic import SyntheticSourceConfig, SyntheticWorld
from lumi.eval.config import EvaluationConfig
from lumi.eval.synthetic_qa import qa_items

WORLD = {"type": "synthetic", "seed": 3, "people": 24, "places": 4}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def splits_read(monkeypatch) -> list[str]:
    """Every split whose facts or question wordings anything asks the world for, in order."""
    read: list[str] = []
    split_facts, questions = SyntheticWorld.split_facts, SyntheticWorld.questions

    def recording_split_facts(self, split):
        read.append(split)
        return split_facts(self, split)

    def recording_questions(self, relation, split):
        read.append(split)
        return questions(self, relation, split)

    monkeypatch.setattr(SyntheticWorld, "split_facts", recording_split_facts)
    monkeypatch.setattr(SyntheticWorld, "questions", recording_questions)
    return read


def prompts_of(directory, split: str) -> set[str]:
    """The user turns of an SFT (``messages``) or DPO (``prompt``) data dir's split."""
    records = map(json.loads, (directory / f"{split}.jsonl").read_text().splitlines())
    return {(record.get("messages") or record.get("prompt"))[0]["content"] for record in records}


def test_training_stages_read_train_and_validation_facts_never_heldout_questions(tokenizer_dir, tmp_path,
                                                                                   splits_read):
    world = SyntheticSourceConfig(**WORLD).world()
    list(world.documents(300))  # stage 10: its quizzes ask train facts only
    sft = SFTCorpusConfig(sources=[{"type": "synthetic", "world": WORLD}], languages=None,
                          dedup={"near": {"enabled": False}})
    build_sft_corpus(sft, tokenizer_dir, tmp_path / "sft")
    dpo = PreferenceCorpusConfig(sources=[{"type": "synthetic", "world": WORLD}], seq_len=256)
    build_preference_corpus(dpo, tokenizer_dir, tmp_path / "dpo")
    assert "train" in splits_read and "validation" in splits_read
    assert "heldout" not in splits_read, "a training stage read held-out facts or wordings"
    splits_read.clear()
    qa_items(SyntheticSourceConfig(**WORLD), "heldout")  # the evaluation, and only it, asks them
    assert "heldout" in splits_read


def test_sft_and_dpo_val_splits_are_the_validation_facts_disjoint_from_train_and_heldout(tokenizer_dir, tmp_path):
    world = SyntheticSourceConfig(**WORLD).world()
    train, validation, heldout = ({world.statement(fact) for fact in world.split_facts(split)}
                                  for split in ("train", "validation", "heldout"))
    assert validation and not validation & train and not validation & heldout
    prompts = {split: {pair["prompt"] for pair in world.sft_pairs(split)} for split in ("train", "validation",
                                                                                         "heldout")}
    assert not prompts["validation"] & (prompts["train"] | prompts["heldout"])
    for val_fraction in (0.0, 0.5):  # the world's split, whatever the hash split's share
        sft = SFTCorpusConfig(sources=[{"type": "synthetic", "world": WORLD}], languages=None,
                              dedup={"near": {"enabled": False}}, val_fraction=val_fraction)
        build_sft_corpus(sft, tokenizer_dir, tmp_path / f"sft{val_fraction}")
        dpo = PreferenceCorpusConfig(sources=[{"type": "synthetic", "world": WORLD}], seq_len=256,
                                     val_fraction=val_fraction)
        build_preference_corpus(dpo, tokenizer_dir, tmp_path / f"dpo{val_fraction}")
        for out in (tmp_path / f"sft{val_fraction}", tmp_path / f"dpo{val_fraction}"):
            assert prompts_of(out, "train") == prompts["train"]
            assert prompts_of(out, "val") == prompts["validation"]


def test_demo_configs_choose_on_validation_and_report_heldout():
    """Stage 80/95's validation evaluation asks validation questions; the evaluations that report ask held-out
    ones; the SFT and DPO data take their val splits (early stopping, DPO's eval) from the world."""
    validation = load_config(EvaluationConfig, CONFIG_DIR / "evaluation" / "validation_demo.json")
    assert validation.synthetic_qa.split == "validation" and not validation.tasks and not validation.preference
    for name in ("demo.json", "sft_demo.json", "dpo_demo.json"):
        assert load_config(EvaluationConfig, CONFIG_DIR / "evaluation" / name).synthetic_qa.split == "heldout"
    for path, cls in ((CONFIG_DIR / "sft" / "datasets" / "demo.json", SFTCorpusConfig),
                      (CONFIG_DIR / "dpo" / "datasets" / "demo.json", PreferenceCorpusConfig)):
        assert load_config(cls, path).sources[0].type == "synthetic"
