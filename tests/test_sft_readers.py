"""One reader per instruction/chat format, each on real records (or, where no sample exists, a fixture in the
dataset's published schema)."""

from __future__ import annotations

import json

import pytest

from lumi.data.readers import READERS, ReadStats, detect


def read(fmt, records):
    stats = ReadStats()
    return list(READERS[fmt](records, stats)), stats


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_alpaca_keeps_the_input_in_the_user_turn(samples_dir):
    records = json.loads((samples_dir / "alpaca_data_first200.json").read_text())
    conversations, stats = read("alpaca", records)
    assert stats.read == 200 and len(conversations) == 200
    with_input = next(i for i, r in enumerate(records) if r["input"].strip())
    user, assistant = conversations[with_input].messages
    assert user == {"role": "user", "content": f"{records[with_input]['instruction']}\n\n{records[with_input]['input']}"}
    assert assistant["content"] == records[with_input]["output"]
    assert conversations[0].messages[0]["content"] == records[0]["instruction"]  # empty input: nothing appended


def test_dolly_keeps_the_context(fixtures_dir):
    records = lines(fixtures_dir / "sft" / "dolly_schema.jsonl")
    conversations, _ = read("dolly", records)
    assert conversations[0].messages[0]["content"] == f"{records[0]['instruction']}\n\n{records[0]['context']}"
    assert conversations[0].messages[1]["content"] == records[0]["response"]
    assert detect(records[0]) == "dolly"


def test_oasst_flat_messages_rebuild_the_best_ranked_thread(fixtures_dir):
    records = lines(fixtures_dir / "sft" / "oasst1_flat_schema.jsonl")
    conversations, stats = read("oasst", records)
    by_tree = {c.id: c for c in conversations}
    texts = {r["message_id"]: r["text"] for r in records}
    english = by_tree["oasst:t1"]
    assert [m["content"] for m in english.messages] == [texts[i] for i in ("m1", "m2", "m4", "m6")]
    assert [m["role"] for m in english.messages] == ["user", "assistant", "user", "assistant"]
    assert english.lang == "en" and by_tree["oasst:t2"].lang == "es"
    assert by_tree["oasst:t3"].messages == []  # a lone prompt: no assistant turn (dropped later, counted)
    assert stats.read == len(records) and detect(records[0]) == "oasst"


def test_oasst_export_trees_are_multi_turn_threads(samples_dir):
    records = lines(samples_dir / "oasst_export_trees_en100_first30.jsonl")
    conversations, stats = read("oasst", records)
    assert stats.read == 30 and len(conversations) == 30
    first = records[0]["prompt"]
    best = min((r for r in first["replies"] if not r["deleted"] and r["review_result"]), key=lambda r: r["rank"])
    assert conversations[0].messages[:2] == [{"role": "user", "content": first["text"]},
                                             {"role": "assistant", "content": best["text"]}]
    assert all(c.messages[-1]["role"] == "assistant" for c in conversations if c.messages)
    assert max(len(c.messages) for c in conversations) > 2


def test_sharegpt_preference_records_take_the_chosen_answer(samples_dir):
    records = json.loads((samples_dir / "sharegpt_preference_llamafactory_first100.json").read_text())
    conversations, _ = read("sharegpt", records)
    assert len(conversations) == 100 and detect(records[0]) == "sharegpt"
    assert conversations[0].messages[-1] == {"role": "assistant", "content": records[0]["chosen"]["value"]}
    assert conversations[0].messages[0]["content"] == records[0]["conversations"][0]["value"]


def test_messages_and_pairs():
    conversations, _ = read("messages", [{"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": "a"}]}])
    assert conversations[0].messages[1] == {"role": "assistant", "content": "a"}
    pairs, _ = read("pairs", [{"prompt": "Where does Ana live?", "response": "Ana lives in Oakfield."}])
    assert pairs[0].messages[0] == {"role": "user", "content": "Where does Ana live?"}


@pytest.mark.parametrize("fmt, record, reason", [
    ("alpaca", {"instruction": "x"}, "missing_field"),
    ("alpaca", {"instruction": "x", "output": 5}, "wrong_type"),
    ("dolly", "a line that is not an object", "not_an_object"),
    ("sharegpt", {"conversations": [{"from": "robot", "value": "x"}]}, "unknown_role"),
    ("messages", {"messages": [{"role": "user"}]}, "missing_field"),
    ("oasst", {"message_id": "a", "parent_id": 7, "text": "x", "role": "prompter"}, "wrong_type"),
])
def test_bad_records_are_skipped_and_counted_by_reason(fmt, record, reason):
    good = {"alpaca": {"instruction": "q", "output": "a"}, "dolly": {"instruction": "q", "response": "a"},
            "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "oasst": {"message_id": "r", "parent_id": None, "text": "q", "role": "prompter"}}[fmt]
    conversations, stats = read(fmt, [record, good])
    assert stats.dropped == {reason: 1} and len(conversations) == 1 and stats.read == 2
    assert stats.examples[reason][0].startswith("record 0: ")
