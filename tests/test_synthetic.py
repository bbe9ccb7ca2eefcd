"""The synthetic world: deterministic, clean, and honest as an evaluation (validation and held-out wordings never seen
and disjoint, their facts always stated, cloze answers right)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from lumi.core.config import validate_config
from lumi.core.errors import LumiError
from lumi.corpus.clean import clean_text
from lumi.data.synthetic import (FOODS, JOBS, OBJECTS, RELATIONS, SPLITS, UNHELPFUL, Fact, SyntheticSourceConfig,
                                 SyntheticWorld)

SMALL = {"seed": 7, "num_people": 60, "num_places": 10}
SMALL_DOCUMENTS = 1500
SENTENCE_END = re.compile(r"(?<=[.?:])\s+")


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(**SMALL)


@pytest.fixture(scope="module")
def documents(world: SyntheticWorld) -> list[str]:
    return list(world.documents(SMALL_DOCUMENTS))


@pytest.fixture(scope="module")
def corpus(documents: list[str]) -> str:
    return "\n\n".join(documents)


def digest(world: SyntheticWorld, num_documents: int) -> str:
    """One hash over everything a world produces."""
    payload = {"facts": [vars(fact) for fact in world.facts], "documents": list(world.documents(num_documents)),
               **{f"{kind}_{split}": getattr(world, kind)(split) for split in SPLITS
                  for kind in ("sft_pairs", "preference_pairs", "cloze_items")}}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def test_same_seed_gives_identical_output_and_another_seed_differs(world):
    assert digest(SyntheticWorld.generate(**SMALL), 200) == digest(world, 200)
    other = SyntheticWorld.generate(**{**SMALL, "seed": 8})
    assert other.facts != world.facts
    assert list(other.documents(50)) != list(world.documents(50))
    assert list(world.documents(50, seed=99)) != list(world.documents(50)), "the document seed picks the stream"


def test_output_does_not_depend_on_the_string_hash_seed(world):
    code = ("from lumi.data.synthetic import SyntheticWorld; from tests.test_synthetic import SMALL, digest; "
            "print(digest(SyntheticWorld.generate(**SMALL), 200))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.stdout.strip() == digest(world, 200)


def test_documents_are_clean_text_with_paragraphs(documents):
    assert len(documents) == SMALL_DOCUMENTS
    for text in documents:
        assert text.strip() and clean_text(text) == text, text
        assert "{" not in text and "}" not in text, f"unfilled template: {text}"
        text.encode("utf-8")
    paragraph_counts = Counter(text.count("\n\n") + 1 for text in documents)
    assert len(paragraph_counts) >= 3, f"expected one- and multi-paragraph documents, got {paragraph_counts}"
    assert any(re.search(r"\d+ [-+×] \d+ = \d+", text) for text in documents), "no arithmetic documents"


def test_world_is_consistent(world):
    assert len(set(world.people)) == len(world.people) == SMALL["num_people"]
    assert len(set(world.towns)) == len(world.towns) == SMALL["num_places"]
    surnames = {person.split(" ")[1] for person in world.people}
    assert not surnames & set(world.towns), "a surname that is also a town would make facts ambiguous"
    objects: dict[str, dict[str, str]] = {}
    for fact in world.facts:
        assert fact.relation not in objects.setdefault(fact.subject, {}), f"two objects for one relation: {fact}"
        objects[fact.subject][fact.relation] = fact.object
    for person in world.people:
        facts = objects[person]
        assert facts["lives_in"] in world.towns and facts["works_as"] in JOBS
        assert facts["owns"] in OBJECTS and facts["likes"] in FOODS
        for relation in ("friend_of", "sibling_of"):
            assert objects[facts[relation]][relation] == person, f"{relation} must be symmetric"
        assert facts["friend_of"] != facts["sibling_of"]
        assert facts["sibling_of"].split(" ")[1] == person.split(" ")[1], "siblings share a surname"


def test_splits_partition_the_facts_and_cover_every_relation(world):
    train, validation, heldout = (world.split_facts(split) for split in ("train", "validation", "heldout"))
    assert sorted(train + validation + heldout) == sorted(world.facts)
    assert not set(train) & set(heldout) and not set(train) & set(validation) and not set(validation) & set(heldout)
    for facts in (validation, heldout):
        assert {fact.relation for fact in facts} == set(RELATIONS)
        for fact in facts:
            if RELATIONS[fact.relation].symmetric:
                assert Fact(fact.object, fact.relation, fact.subject) in facts, "a symmetric pair was split"
    assert len(heldout) > len(validation) > 0.05 * len(world.facts), "the default fractions are 0.2 and 0.1"
    with pytest.raises(LumiError, match="unknown split"):
        world.split_facts("test")


def test_adding_the_validation_split_kept_the_heldout_facts():
    """The held-out facts are the first units of the same shuffle as before validation existed: a larger
    validation share leaves them as they are, so the validation split takes its facts from training only."""
    small, large = (SyntheticWorld.generate(**SMALL, validation_fraction=fraction) for fraction in (0.05, 0.3))
    assert small.split_facts("heldout") == large.split_facts("heldout")
    assert set(small.split_facts("validation")) < set(large.split_facts("validation"))


def word_runs(template: str, length: int = 3) -> set[str]:
    """Every run of ``length`` words of a question template, lower-cased, not across the subject slot."""
    runs = set()
    for fragment in template.lower().split("{s}"):
        words = fragment.split()
        runs.update(" ".join(words[i:i + length]) for i in range(len(words) - length + 1))
    return runs


@pytest.mark.parametrize("split, other", [("heldout", "validation"), ("validation", "heldout")])
def test_evaluation_wordings_never_appear_in_the_corpus_in_training_or_in_the_other_split(world, corpus, split,
                                                                                           other):
    train_prompts = {pair["prompt"] for pair in world.sft_pairs("train")}
    asked = world.sft_pairs(split)
    assert asked
    for pair in asked:
        assert pair["prompt"] not in corpus and pair["prompt"] not in train_prompts, pair["prompt"]
    texts = corpus.lower(), *(template.lower() for name, relation in RELATIONS.items()
                              for template in relation.train_questions + relation.statements
                              + world.questions(name, other))
    for name, relation in RELATIONS.items():
        assert not set(world.questions(name, split)) & set(relation.train_questions + world.questions(name, other))
        for template in world.questions(name, split):
            assert word_runs(template), template
            for run in word_runs(template):
                assert not any(run in text for text in texts), f"{split} wording {run!r} occurs in other text"


def test_any_deal_of_the_evaluation_wordings_keeps_them_new_to_training_and_to_each_other():
    """No three-word run of an evaluation wording occurs in a train wording, a statement or another evaluation
    wording of any relation: whichever half a seed deals to validation, neither split's wordings overlap the other's
    or training's. (The corpus side is the test above, on one world's corpus; its quizzes use train wordings only.)"""
    evaluation = [(name, template) for name, relation in RELATIONS.items() for template in relation.evaluation_questions]
    training = [template.lower() for relation in RELATIONS.values()
                for template in relation.train_questions + relation.statements]
    for name, template in evaluation:
        others = training + [other.lower() for _, other in evaluation if other != template]
        for run in word_runs(template):
            assert not any(run in text for text in others), f"{name} wording {run!r} occurs in other text"


def test_the_seed_deals_each_relation_s_evaluation_wordings_half_to_validation_half_to_heldout():
    """Over seeds, every evaluation wording is sometimes a validation and sometimes a held-out wording (so the two
    splits are the same kind of test); a seed always deals the same way."""
    dealt = {seed: SyntheticWorld.generate(**{**SMALL, "seed": seed}) for seed in range(12)}
    seen = {split: set() for split in ("validation", "heldout")}
    for seed, world in dealt.items():
        assert world.questions("owns", "validation") == SyntheticWorld.generate(**{**SMALL, "seed": seed}).questions(
            "owns", "validation")
        for name, relation in RELATIONS.items():
            validation, heldout = world.questions(name, "validation"), world.questions(name, "heldout")
            assert len(validation) == len(heldout) == len(relation.evaluation_questions) // 2
            assert sorted(validation + heldout) == sorted(relation.evaluation_questions)
            assert world.questions(name, "train") == relation.train_questions
            seen["validation"].update(validation)
            seen["heldout"].update(heldout)
    every = {template for relation in RELATIONS.values() for template in relation.evaluation_questions}
    assert seen["validation"] == seen["heldout"] == every
    assert len({tuple(world.questions(name, "heldout") for name in RELATIONS) for world in dealt.values()}) > 6
    with pytest.raises(LumiError, match="unknown split"):
        dealt[0].questions("owns", "test")


def test_corpus_asks_only_train_facts_with_train_wordings(world, documents):
    """The quizzes (mixed training) answer train facts only: held-out facts are never in Q/A form before stage 80."""
    asked = [pair for text in documents for pair in re.findall(r"Question: (.*?[.?]) Answer: (.*)", text)]
    assert asked and len(asked) == sum(text.count("Question:") for text in documents)
    assert set(asked) <= {(pair["prompt"], pair["response"]) for pair in world.sft_pairs("train")}


@pytest.mark.parametrize("split", ["heldout", "validation"])
def test_evaluation_facts_are_stated_in_the_corpus_in_the_cloze_wording(world, corpus, split):
    for fact in world.split_facts(split):
        assert world.statement(fact) in corpus, f"never stated: {fact}"
    for item in world.cloze_items(split):
        assert f"{item['context']} {item['choices'][item['answer']]}" in corpus, item


def test_default_corpus_states_every_fact_several_times():
    config = SyntheticSourceConfig(type="synthetic")
    world = config.world()
    sentences = Counter(sentence for text in world.documents(config.documents)
                        for sentence in SENTENCE_END.split(text))
    rarest = min(world.facts, key=lambda fact: sentences[world.statement(fact)])
    assert sentences[world.statement(rarest)] >= 3, f"rarely stated: {rarest}"


def test_cloze_items_are_right_and_distractors_are_fair(world):
    categories = {"towns": set(world.towns), "jobs": set(JOBS), "objects": set(OBJECTS), "foods": set(FOODS),
                  "people": set(world.people)}
    first_names = {person.split(" ")[0] for person in world.people}
    for split in SPLITS:
        facts, items = world.split_facts(split), world.cloze_items(split)
        assert len(items) == len(facts)
        for fact, item in zip(facts, items):
            relation = RELATIONS[fact.relation]
            assert item["relation"] == fact.relation and item["context"].startswith(fact.subject)
            choices = item["choices"]
            assert len(choices) == 4 and len(set(choices)) == 4, item
            expected = fact.object.split(" ")[0] if relation.cloze_by_first_name else fact.object
            assert choices[item["answer"]] == expected, item
            allowed = first_names if relation.cloze_by_first_name else categories[relation.category]
            assert set(choices) <= allowed, item
            assert fact.subject.split(" ")[0] not in choices, "the subject itself is no fair distractor"
        assert len({item["answer"] for item in items}) == 4, "the right answer's position must vary"
    assert len(world.cloze_items("heldout", num_choices=6)[0]["choices"]) == 6


def test_sft_and_preference_pairs_state_true_facts_against_wrong_unhelpful_or_off_question_ones(world):
    fact_of = {world.statement(fact): fact for fact in world.facts}
    objects = [*world.towns, *JOBS, *OBJECTS, *FOODS, *world.people]
    kinds = Counter()
    for split in SPLITS:
        sft, preferences = world.sft_pairs(split), world.preference_pairs(split)
        split_statements = {world.statement(fact) for fact in world.split_facts(split)}
        assert [pair["prompt"] for pair in sft] == [pair["prompt"] for pair in preferences]
        for pair, preference in zip(sft, preferences):
            assert set(pair) == {"prompt", "response"} and set(preference) == {"prompt", "chosen", "rejected"}
            assert pair["response"] in split_statements and preference["chosen"] == pair["response"]
            fact, rejected = fact_of[pair["response"]], preference["rejected"]
            assert fact.subject in pair["prompt"], pair
            if rejected in UNHELPFUL:
                kinds["unhelpful"] += 1
            elif rejected == f"{fact.subject}.":
                kinds["incomplete"] += 1
            elif rejected in fact_of:  # true, but of another relation: answers another question
                assert fact_of[rejected].subject == fact.subject and fact_of[rejected].relation != fact.relation
                kinds["other_relation"] += 1
            else:
                wrong = {RELATIONS[fact.relation].statements[0].format(s=fact.subject, o=o) for o in objects}
                assert rejected in wrong - {preference["chosen"]}, preference
                kinds["wrong_object"] += 1
    assert kinds["wrong_object"] > kinds["other_relation"] > kinds["unhelpful"] > kinds["incomplete"] > 0, kinds


def test_config_validates_and_rebuilds_the_same_world(world):
    config = validate_config(SyntheticSourceConfig, {"type": "synthetic", "name": "world", "seed": 7,
                                                     "people": 60, "places": 10, "documents": 5}, "demo.json")
    assert config.world().facts == world.facts
    with pytest.raises(LumiError, match="demo.json: field 'people'"):
        validate_config(SyntheticSourceConfig, {"type": "synthetic", "people": 3}, "demo.json")
    with pytest.raises(LumiError, match="unknown key"):
        validate_config(SyntheticSourceConfig, {"type": "synthetic", "size": 3}, "demo.json")
    with pytest.raises(LumiError, match="places"):
        SyntheticWorld.generate(num_places=10_000)
    with pytest.raises(LumiError, match="validation_fraction"):
        SyntheticWorld.generate(heldout_fraction=0.5, validation_fraction=0.5)
