"""RL data (stage 97): the reward registry's rewards, GSM8K's published schema read from the fixture, and the
synthetic world's RL prompts -- train facts and train wordings only, never a held-out fact or wording."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_synthetic import word_runs

from lumi.core.errors import LumiError
from lumi.data.readers import gsm8k
from lumi.data.readers.base import RecordError
from lumi.data.rewards import REWARDS, check_rewards, exact_match, final_number, gsm8k_answer, gsm8k_format, score
from lumi.data.rl_prompts import GSM8KQuestions, SyntheticQuestions, load_prompts
from lumi.data.synthetic import RELATIONS

FIXTURE = Path(__file__).parent / "fixtures" / "gsm8k_train.jsonl"
WORLD = {"type": "synthetic", "people": 40, "places": 8}


# --- rewards

def test_exact_match_ignores_case_and_whitespace_only():
    assert exact_match("  Mira Ashwood works as a BAKER.\n", "Mira Ashwood works as a baker.") == 1.0
    assert exact_match("Mira Ashwood works as a baker", "Mira Ashwood works as a baker.") == 0.0
    assert exact_match("I do not know.", "Mira Ashwood works as a baker.") == 0.0


@pytest.mark.parametrize(("completion", "expected"), [
    ("48 / 2 = 24, 48 + 24 = 72.\n#### 72", 1.0), ("#### 72.0", 1.0), ("####72", 1.0), ("#### 072", 1.0),
    ("The answer is 72.", 0.0),  # no final line: the format is part of the task
    ("#### 72\nand more text", 0.0), ("#### 73", 0.0), ("#### -72", 0.0), ("", 0.0)])
def test_gsm8k_answer_compares_the_final_numbers(completion, expected):
    assert gsm8k_answer(completion, "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == expected


def test_gsm8k_numbers_with_commas_signs_and_decimals():
    assert final_number("#### 3,600") == 3600 and final_number("#### -3") == -3 and final_number("#### 0.5") == 0.5
    assert gsm8k_answer("so 3600\n#### 3600", "#### 3,600") == 1.0
    assert gsm8k_format("#### 12", "#### 1") == gsm8k_format("x\n#### 1,000", "#### 1") == 1.0
    assert gsm8k_format("12", "#### 12") == 0.0 and gsm8k_format("#### twelve", "#### 12") == 0.0
    with pytest.raises(LumiError, match="no '#### N' final line"):
        gsm8k_answer("#### 1", "the reference forgot it")


def test_rewards_are_named_and_weighted():
    assert set(REWARDS) == {"exact_match", "gsm8k_answer", "gsm8k_format"}
    values = score("work\n#### 10", "#### 10", {"gsm8k_answer": 1.0, "gsm8k_format": 0.25})
    assert values == {"gsm8k_answer": 1.0, "gsm8k_format": 1.0, "reward": 1.25}
    assert score("#### 11", "#### 10", {"gsm8k_answer": 1.0, "gsm8k_format": 0.25})["reward"] == 0.25
    with pytest.raises(ValueError, match="unknown reward bleu"):
        check_rewards({"bleu": 1.0})


# --- readers

def test_gsm8k_fixture_follows_the_published_schema():
    source = GSM8KQuestions(type="gsm8k", dataset="json", subset=None, data_files=[str(FIXTURE)])
    prompts = load_prompts([source], val_fraction=0.0, seed=0)
    items = prompts["train"]
    assert len(items) == 4 and not prompts["val"]
    assert items[0]["prompt"].startswith("Natalia sold clips") and items[0]["reference"].endswith("#### 72")
    assert gsm8k_answer("#### 72", items[0]["reference"]) == 1.0
    assert gsm8k_answer("#### 3600", items[2]["reference"]) == 1.0  # "#### 3,600"


def test_gsm8k_bad_records_are_refused_with_a_reason(tmp_path):
    with pytest.raises(RecordError, match="'#### N' final line"):
        gsm8k.convert({"question": "How many?", "answer": "Twelve."}, 0)
    with pytest.raises(RecordError, match="no field 'answer'"):
        gsm8k.convert({"question": "How many?"}, 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "How many?", "answer": "Twelve."}\n')
    with pytest.raises(LumiError, match="no usable record of 1 .no_final_answer 1"):
        load_prompts([GSM8KQuestions(type="gsm8k", dataset="json", subset=None, data_files=[str(bad)])], 0.0, 0)


def test_synthetic_prompts_keep_heldout_facts_and_wordings_out():
    source = SyntheticQuestions(type="synthetic", world=WORLD)
    world = source.world.world()
    prompts = load_prompts([source], val_fraction=0.1, seed=0)
    items = prompts["train"] + prompts["val"]
    assert len(items) == len(world.sft_pairs("train")) and prompts["val"]
    heldout = world.sft_pairs("heldout")
    assert not {item["prompt"] for item in items} & {pair["prompt"] for pair in heldout}
    assert not {item["reference"] for item in items} & {world.statement(fact) for fact in world.split_facts("heldout")}
    heldout_runs = {run for name in RELATIONS for template in world.questions(name, "heldout")
                    for run in word_runs(template)}
    assert heldout_runs
    for item in items:
        assert not any(run in item["prompt"].lower() for run in heldout_runs), item["prompt"]
    # every reference is what stage 95 compares answers with: the canonical statement of a train fact
    train_statements = {world.statement(fact) for fact in world.split_facts("train")}
    assert {item["reference"] for item in items} <= train_statements


def test_shipped_rl_configs_load_and_name_hub_datasets():
    """config/rl/training/*.json validate; their GSM8K sources name the hub dataset (no machine path)."""
    from lumi.core.config import CONFIG_DIR, load_config
    from lumi.train.objectives.grpo import GRPOConfig

    paths = sorted((CONFIG_DIR / "rl" / "training").glob("*.json"))
    assert {p.stem for p in paths} >= {"demo", "gsm8k_lora_tiny"}
    for path in paths:
        config = load_config(GRPOConfig, path)
        for source in config.prompts:
            assert source.type == "synthetic" or (source.dataset == "openai/gsm8k" and source.data_files is None)
