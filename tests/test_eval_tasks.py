"""Benchmark readers: original release layouts, the hub code path (offline, through ``datasets``), lm-eval's prompt
formats, seeded subsampling, and refusals of bad input with messages that name the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import head_lines, write_jsonl

from lumi.core.config import CONFIG_DIR, load_config, validate_config
from lumi.core.errors import LumiError
from lumi.eval.config import EvaluationConfig
from lumi.eval.tasks import TASKS, TaskSource, get_task, subsample


def piqa_source(samples_dir: Path) -> TaskSource:
    return TaskSource(path=str(samples_dir / "piqa_dev_first300.jsonl"),
                      labels_path=str(samples_dir / "piqa_dev-labels_first300.lst"))


def test_boolq_original_layout_uses_lm_eval_prompt(samples_dir):
    items = get_task("boolq").load(TaskSource(path=str(samples_dir / "boolq_dev_first300.jsonl")))
    first = json.loads((samples_dir / "boolq_dev_first300.jsonl").read_text().splitlines()[0])
    assert len(items) == 300
    context = f"{first['passage']}\nQuestion: {first['question']}?\nAnswer:"
    assert items[0].requests == ((context, " no"), (context, " yes"))
    assert items[0].gold == int(first["answer"])
    assert sum(item.gold for item in items) == sum(json.loads(line)["answer"] for line in
                                                   (samples_dir / "boolq_dev_first300.jsonl").read_text().splitlines())


def test_piqa_joins_the_separate_labels_file(samples_dir):
    items = get_task("piqa").load(piqa_source(samples_dir))
    labels = [int(x) for x in (samples_dir / "piqa_dev-labels_first300.lst").read_text().split()]
    first = json.loads((samples_dir / "piqa_dev_first300.jsonl").read_text().splitlines()[0])
    assert [item.gold for item in items] == labels
    assert items[0].requests[1] == (f"Question: {first['goal']}\nAnswer:", " " + first["sol2"])
    assert items[0].choice_lengths == (len(first["sol1"]), len(first["sol2"]))  # acc_norm: characters, no space


def test_arc_original_layout_with_letter_and_digit_labels(samples_dir):
    records = [json.loads(line) for line in (samples_dir / "arc_easy_dev_first300.jsonl").read_text().splitlines()]
    items = get_task("arc_easy").load(TaskSource(path=str(samples_dir / "arc_easy_dev_first300.jsonl")))
    for record, item in zip(records, items):
        labels = [c["label"] for c in record["question"]["choices"]]
        assert item.gold == labels.index(record["answerKey"])
        assert len(item.requests) == len(labels)
    digit = next(i for i, r in enumerate(records) if r["answerKey"].isdigit())
    assert items[digit].requests[0][0] == f"Question: {records[digit]['question']['stem']}\nAnswer:"


def test_hub_code_path_reads_through_datasets_offline(tmp_path):
    """``source.dataset`` goes through ``datasets.load_dataset``; the packaged json builder needs no network and the
    hub layout of ARC (flat question, choices as lists) is understood."""
    hub_row = {"id": "x1", "question": "What do plants need?", "answerKey": "B",
               "choices": {"text": ["rocks", "light", "noise"], "label": ["A", "B", "C"]}}
    path = write_jsonl(tmp_path / "arc_hub.jsonl", [hub_row, {**hub_row, "id": "x2", "answerKey": "C"}])
    items = get_task("arc_challenge").load(TaskSource(dataset="json", data_files=str(path), split="train"))
    assert [item.gold for item in items] == [1, 2]
    assert items[0].requests[1] == ("Question: What do plants need?\nAnswer:", " light")


def test_hellaswag_preprocessing_matches_lm_eval(fixtures_dir):
    items = get_task("hellaswag").load(TaskSource(path=str(fixtures_dir / "eval" / "hellaswag_original_layout.jsonl")))
    assert items[0].requests[3] == ("Roof shingle removal: A man is sitting on a roof. He",
                                    " starts pulling up roofing on a roof.")
    # WikiHow artifacts: " [title]" -> ". ", other [tags] dropped, double spaces collapsed once (so the ending keeps
    # the space that stood after "[substeps]": lm-eval scores "  Mix ...", and so do we).
    assert items[1].requests[0] == ("Making a cake: How to bake a sponge cake. Preheat the oven. Then",
                                    "  Mix the flour and the sugar.")
    assert [item.gold for item in items] == [3, 0, 1]


def test_hellaswag_equals_lm_eval_own_preprocessing(fixtures_dir):
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    import datasets

    path = fixtures_dir / "eval" / "hellaswag_original_layout.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    theirs = utils.process_docs(datasets.Dataset.from_list([{**r, "label": str(r["label"])} for r in rows]))
    ours = get_task("hellaswag").load(TaskSource(path=str(path)))
    for doc, item in zip(theirs, ours):
        assert item.requests == tuple((doc["query"], " " + choice) for choice in doc["choices"])
        assert item.gold == doc["gold"]


def test_winogrande_partial_scoring_and_lambada_last_word(fixtures_dir):
    wino = get_task("winogrande").load(TaskSource(path=str(fixtures_dir / "eval" / "winogrande_original_layout.jsonl")))
    assert wino[1].requests == (("The trophy does not fit into the suitcase because the trophy", " is too small."),
                                ("The trophy does not fit into the suitcase because the suitcase", " is too small."))
    assert [item.gold for item in wino] == [0, 1, 1]
    lambada = get_task("lambada").load(TaskSource(path=str(fixtures_dir / "eval" / "lambada_original_layout.jsonl")))
    assert lambada[1].requests == (("The children ran out into the garden to play in the", " snow"),)


def test_synthetic_cloze_items_come_from_the_world():
    source = TaskSource(world={"type": "synthetic", "seed": 3, "people": 20, "places": 6})
    items = get_task("synthetic_cloze").load(source)
    assert items and all(len(item.requests) == 4 for item in items)
    assert {item.group for item in items} >= {"lives_in", "works_as"}
    assert all(item.requests[item.gold][0] + item.requests[item.gold][1] + "." ==
               item.requests[0][0] + item.requests[item.gold][1] + "." for item in items)
    train = get_task("synthetic_cloze").load(source.model_copy(update={"split": "train"}))
    assert {i.requests[0][0] for i in train}.isdisjoint({i.requests[0][0] + "x" for i in items})
    assert len(train) > len(items)  # heldout is the smaller fraction


def test_subsample_is_seeded_and_keeps_file_order(samples_dir):
    items = get_task("boolq").load(TaskSource(path=str(samples_dir / "boolq_dev_first300.jsonl")))
    a, b, c = subsample(items, 25, seed=0), subsample(items, 25, seed=0), subsample(items, 25, seed=1)
    assert [i.item_id for i in a] == [i.item_id for i in b] != [i.item_id for i in c]
    assert [int(i.item_id) for i in a] == sorted(int(i.item_id) for i in a) and len(a) == 25
    assert subsample(items, None, 0) is items and subsample(items, 1000, 0) is items


# ----- bad input -------------------------------------------------------------------------------------------------

def test_missing_benchmark_file(tmp_path):
    with pytest.raises(LumiError, match="boolq.jsonl: benchmark file not found"):
        get_task("boolq").load(TaskSource(path=str(tmp_path / "boolq.jsonl")))


def test_malformed_json_line_names_file_and_line(tmp_path, samples_dir):
    path = head_lines(samples_dir / "boolq_dev_first300.jsonl", tmp_path / "boolq.jsonl", 3)
    path.write_text(path.read_text() + '{"question": "broken\n', encoding="utf-8")
    with pytest.raises(LumiError, match=r"boolq.jsonl:4: invalid JSON"):
        get_task("boolq").load(TaskSource(path=str(path)))


def test_record_in_the_wrong_format_names_the_example(tmp_path, samples_dir):
    path = write_jsonl(tmp_path / "arc.jsonl", [{"id": "a", "question": {"stem": "Q?", "choices": [
        {"text": "x", "label": "A"}, {"text": "y", "label": "B"}]}, "answerKey": "E"}])
    with pytest.raises(LumiError, match=r"task arc_easy: .*arc.jsonl: example 1 is not in the arc_easy format"):
        get_task("arc_easy").load(TaskSource(path=str(path)))
    with pytest.raises(LumiError, match="example 1 is not in the boolq format.*'answer' must be true/false"):
        get_task("boolq").load(TaskSource(path=str(write_jsonl(
            tmp_path / "b.jsonl", [{"question": "q", "passage": "p", "answer": "yes"}]))))


def test_piqa_labels_missing_or_mismatched(tmp_path, samples_dir):
    data = head_lines(samples_dir / "piqa_dev_first300.jsonl", tmp_path / "piqa.jsonl", 5)
    with pytest.raises(LumiError, match="set labels_path"):
        get_task("piqa").load(TaskSource(path=str(data)))
    labels = head_lines(samples_dir / "piqa_dev-labels_first300.lst", tmp_path / "labels.lst", 4)
    with pytest.raises(LumiError, match="4 labels for 5 examples"):
        get_task("piqa").load(TaskSource(path=str(data), labels_path=str(labels)))
    labels.write_text("0\n1\nmaybe\n1\n0\n")
    with pytest.raises(LumiError, match=r"labels.lst:3: expected a label 0 or 1"):
        get_task("piqa").load(TaskSource(path=str(data), labels_path=str(labels)))


def test_empty_and_non_utf8_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LumiError, match="holds no examples"):
        get_task("boolq").load(TaskSource(path=str(tmp_path / "empty.jsonl")))
    (tmp_path / "latin1.jsonl").write_bytes('{"question": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(LumiError, match="not UTF-8"):
        get_task("boolq").load(TaskSource(path=str(tmp_path / "latin1.jsonl")))


def test_unknown_task_and_unreachable_dataset(tmp_path):
    with pytest.raises(LumiError, match="unknown task 'mmlu'"):
        get_task("mmlu")
    with pytest.raises(LumiError, match=r"field 'tasks.0.task'.*unknown task 'mmlu' \(known: boolq, piqa"):
        validate_config(EvaluationConfig, {"tasks": [{"task": "mmlu"}]}, "eval.json")
    with pytest.raises(LumiError, match="field 'tasks.0.source'.*exactly one of path, dataset, world"):
        validate_config(EvaluationConfig, {"tasks": [{"task": "boolq", "source": {}}]}, "eval.json")
    with pytest.raises(LumiError, match="dataset json .*could not be loaded"):
        get_task("boolq").load(TaskSource(dataset="json", data_files=str(tmp_path / "none.jsonl"), split="train"))


def test_every_task_has_a_hub_default():
    for task in TASKS.values():
        assert (task.default_source.dataset is not None) != (task.name == "synthetic_cloze")


def test_the_world_is_named_by_the_corpus_config_it_was_trained_on(tmp_path):
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps({"sources": [{"type": "local", "name": "web", "paths": ["x.txt"]},
                                              {"type": "synthetic", "name": "world", "seed": 5, "people": 30}]}))
    world = TaskSource(world={"from": str(corpus), "places": 6}).world
    assert (world.seed, world.people, world.places) == (5, 30, 6)
    shipped = TaskSource(world={"from": "demo/corpus.json"}).world
    assert shipped.seed == json.loads((CONFIG_DIR / "demo" / "corpus.json").read_text())["sources"][0]["seed"]
    corpus.write_text(json.dumps({"sources": [{"type": "local", "name": "web", "paths": ["x.txt"]}]}))
    with pytest.raises(LumiError, match="exactly one synthetic source"):
        TaskSource(world={"from": str(corpus)})


# ----- the shipped defaults: the hub sets lm-eval scores, read by the same code on local copies -------------------

def write_hub_repo(directory: Path, config_name: str, split: str, rows: list[dict]) -> Path:
    """A local directory laid out as the task's hub dataset repository is (a README with the ``configs`` block, one
    parquet file per split), so ``datasets.load_dataset(directory, config_name, split=split)`` reads it exactly as
    it reads the hub repository once downloaded: the same call as the default, with a path instead of the id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (directory / config_name).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), directory / config_name / f"{split}-00000-of-00001.parquet")
    (directory / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config_name}\n  data_files:\n  - split: {split}\n"
        f"    path: {config_name}/{split}-*\n---\n")
    return directory


def hub_rows(task: str, samples_dir: Path) -> list[dict]:
    """The sample files re-laid in each hub dataset's schema (google/boolq, baber/piqa, allenai/ai2_arc)."""
    def records(name: str) -> list[dict]:
        return [json.loads(line) for line in (samples_dir / name).read_text().splitlines()[:40]]

    if task == "boolq":
        return records("boolq_dev_first300.jsonl")  # google/boolq keeps the original columns
    if task == "piqa":
        labels = (samples_dir / "piqa_dev-labels_first300.lst").read_text().split()
        return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(label)}
                for r, label in zip(records("piqa_dev_first300.jsonl"), labels)]
    return [{"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]}}
            for r in records("arc_easy_dev_first300.jsonl")]


ORIGINAL_LAYOUT = {"boolq": {"path": "boolq_dev_first300.jsonl"},
                   "piqa": {"path": "piqa_dev_first300.jsonl", "labels_path": "piqa_dev-labels_first300.lst"},
                   "arc_easy": {"path": "arc_easy_dev_first300.jsonl"}}


@pytest.mark.parametrize("name", sorted(ORIGINAL_LAYOUT))
def test_hub_default_source_reads_the_hub_layout_like_the_original_release(name, samples_dir, tmp_path, monkeypatch):
    """The shipped configs read BoolQ/PIQA/ARC from their hub ids (the full sets lm-eval scores: BoolQ and PIQA
    validation, ARC test). That path runs here on a local copy of the repository layout -- only the id is swapped
    for a path -- and gives the same items as the original release files."""
    task = get_task(name)
    default = task.default_source
    assert default.dataset in ("google/boolq", "baber/piqa", "allenai/ai2_arc")
    assert default.split == {"boolq": "validation", "piqa": "validation", "arc_easy": "test"}[name]
    import datasets

    # A fresh datasets cache: it keys a local repository by its name and file names, not by where it is.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    repo = write_hub_repo(tmp_path / "repo", default.dataset_config or "default", default.split,
                          hub_rows(name, samples_dir))
    from_hub_layout = task.load(default.model_copy(update={"dataset": str(repo)}))
    original = task.load(TaskSource(**{k: str(samples_dir / v) for k, v in ORIGINAL_LAYOUT[name].items()}))
    assert len(from_hub_layout) == 40
    assert [(i.requests, i.gold) for i in from_hub_layout] == [(i.requests, i.gold) for i in original[:40]]


def test_shipped_evaluation_configs_load_benchmarks_from_the_hub():
    for name in ("pretrain.json", "sft.json"):
        config = load_config(EvaluationConfig, CONFIG_DIR / "evaluation" / name)
        benchmarks = {t.task: t for t in config.tasks if t.task != "synthetic_cloze"}
        assert set(benchmarks) >= {"boolq", "piqa", "arc_easy"}
        assert all(t.source is None and t.max_samples is None for t in benchmarks.values())  # full hub sets


def test_no_shipped_config_points_outside_the_project():
    """Defaults work for a user outside this workplace: no shipped path reaches out of the repository."""
    def strings(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if not key.startswith("_"):
                    yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    for path in sorted(CONFIG_DIR.rglob("*.json")):
        for value in strings(json.loads(path.read_text())):
            assert not (value.startswith(("/", "~", "..")) or "shared/" in value), f"{path}: {value!r}"


@pytest.mark.parametrize("name, fix", [("boolq", '{"path": "FILE"}'),
                                       ("piqa", '{"path": "FILE", "labels_path": "FILE"}')])
def test_unreadable_hub_source_names_task_source_and_the_local_fix(name, fix):
    with pytest.raises(LumiError) as info:
        get_task(name).load(config_key="tasks.3.source")  # offline: HF_HUB_OFFLINE=1, nothing cached
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"task {name}: dataset {get_task(name).default_source.dataset} ")
    assert f"--set 'tasks.3.source={fix}'" in message
