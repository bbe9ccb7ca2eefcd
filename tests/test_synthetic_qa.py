"""Stage 80's synthetic-world QA: held-out facts asked with held-out wordings, joined to the cloze items by fact."""

from __future__ import annotations

import json

from lumi.data.synthetic import SyntheticSourceConfig
from lumi.eval.synthetic_qa import known_facts, normalize, qa_items
from lumi.eval.tasks.synthetic_cloze import TASK


def test_items_are_heldout_facts_with_heldout_wordings_joined_to_the_cloze():
    source = SyntheticSourceConfig(type="synthetic", people=20, places=4)
    world = source.world()
    items = qa_items(source)
    train_prompts = {pair["prompt"] for pair in world.sft_pairs("train")}
    heldout_pairs = world.sft_pairs("heldout")
    assert [item["prompt"] for item in items] == [pair["prompt"] for pair in heldout_pairs]
    assert [item["answer"] for item in items] == [pair["response"] for pair in heldout_pairs]
    assert not train_prompts & {item["prompt"] for item in items}
    cloze = [TASK.parse(record, index) for index, record in enumerate(world.cloze_items("heldout"))]
    by_id = {item.item_id: item for item in cloze}
    for item in items:  # the cloze item of the same fact: same relation, its context names the same subject
        subject = item["answer"].split(" ")[:2]
        assert " ".join(subject) in by_id[item["fact"]].requests[0][0]


def test_known_facts_come_from_the_cloze_samples(tmp_path):
    samples = tmp_path / "synthetic_cloze.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "owns/3", "acc": 1.0}, {"id": "likes/4",
                                                                                                "acc": 0.0}]))
    assert known_facts(samples) == {"owns/3"}
    assert normalize("  Ana  lives in Oakfield. ") == normalize("ana lives in oakfield.")
