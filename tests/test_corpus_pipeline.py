"""Stage 10 end to end on the local datatrove executor: hub streaming (through load_dataset on local files),
budgets across workers, cross-source dedup, recovery, bad input, the manifest, --analyze-only, the mixes."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lumi.cli import main
from lumi.core.config import load_config, validate_config
from lumi.core.files import sha256_file
from lumi.corpus.config import CorpusConfig, HubSourceConfig
from lumi.corpus.steps import WriteShards
from lumi.formats.corpus import iter_text_batches, read_manifest
from lumi.corpus.build import build_corpus

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_corpus_data import (make_document, planted_sources, sentence_pool,  # noqa: E402
                               write_jsonl_sources)

FAST = {"dedup": {"near": {"enabled": False}}}  # near-dedup is tested where it matters; it only costs time here


@pytest.fixture(scope="module")
def pool(samples_dir) -> list[str]:
    return sentence_pool(samples_dir)


def hub_json(name: str, path: Path, **extra) -> dict:
    return {"type": "hub", "name": name, "dataset": "json", "data_files": [str(path)], "id_column": "id", **extra}


def write_docs(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": f"{path.stem}:{i}"}) + "\n" for i, t in enumerate(texts)))
    return path


def build(config: dict, out: Path, force: bool = False) -> dict:
    return build_corpus(validate_config(CorpusConfig, config, "test config"), out, force)


def ids(corpus: Path) -> set[str]:
    shards = read_manifest(corpus)["shards"]
    return {i for shard in shards for i in pq.read_table(corpus / shard["file"], columns=["id"])["id"].to_pylist()}


def test_hub_sources_stream_through_load_dataset(tmp_path, pool):
    rng = random.Random(1)
    jsonl = write_docs(tmp_path / "a.jsonl", [make_document(pool, rng, (3, 6)) for _ in range(30)])
    parquet = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": ["Parquet document number %d." % i for i in range(4)]}), parquet)
    config = {"sources": [hub_json("web", jsonl),
                          {"type": "hub", "name": "pq", "dataset": "parquet", "data_files": [str(parquet)],
                           "text_column": "body"}],
              "executor": {"tasks": 2}, **FAST}
    manifest = build(config, tmp_path / "corpus")
    assert manifest["sources"]["web"]["kept"] == 30 and manifest["sources"]["pq"]["kept"] == 4
    assert {f"a:{i}" for i in range(30)} <= ids(tmp_path / "corpus")  # ids from the id column, each read once
    assert "Parquet document number 3." in {t for b in iter_text_batches(tmp_path / "corpus") for t in b}


def test_budgets_hold_for_one_and_two_workers(tmp_path, pool):
    rng = random.Random(2)
    paths = {name: write_docs(tmp_path / f"{name}.jsonl", [make_document(pool, rng, (4, 10)) for _ in range(n)])
             for name, n in (("big", 400), ("small", 40), ("free", 30))}
    sources = [hub_json("big", paths["big"], budget_tokens=25_000, weight=0.7),
               hub_json("small", paths["small"], budget_tokens=50_000, weight=0.3),
               {"type": "local", "name": "free", "paths": [str(paths["free"])]}]
    realized = []
    for tasks in (1, 2):
        manifest = build({"sources": sources, "executor": {"tasks": tasks, "workers": tasks}, **FAST},
                         tmp_path / f"corpus{tasks}")
        big, small, free = (manifest["sources"][n] for n in ("big", "small", "free"))
        largest_doc = max(len(t.encode()) for t in paths["big"].read_text().splitlines()) / 4
        assert big["budget_met"] and big["budget_tokens"] - largest_doc <= big["estimated_tokens"] <= 25_000
        assert big["read_stopped_at_budget"] and big["read"] < 400 and big["over_budget"] > 0
        # A budget larger than the source: everything is kept, the shortfall is reported, the run ends.
        assert small["budget_met"] is False and small["kept"] == 40 and small["estimated_tokens"] < 50_000
        assert free["budget_tokens"] is None and free["kept"] == 30
        assert big["weight_share"] == 0.7
        realized.append(big["estimated_tokens"])
    assert abs(realized[0] - realized[1]) <= largest_doc
    assert "no: only" in (tmp_path / "corpus2" / "DATA_CARD.md").read_text()


def test_cross_source_dedup_removes_planted_copies(tmp_path, pool):
    sources, plants = planted_sources(pool, seed=3, distinct=240, exact=20, near=20)
    paths = write_jsonl_sources(sources, tmp_path / "in")
    manifest = build({"sources": [hub_json(n, p) for n, p in paths.items()]}, tmp_path / "corpus")
    kept = ids(tmp_path / "corpus")
    planted_ids = {i for _, original, copy in plants for i in (original, copy)}
    for kind in ("exact", "near"):
        survived = [p for p in plants if p[0] == kind and p[1] in kept and p[2] in kept]
        assert not survived, f"{kind} copies not removed: {survived}"
    distinct_removed = [i for n, texts in sources.items() for i in (f"{n}:{k}" for k in range(len(texts)))
                        if i not in kept and i not in planted_ids]
    assert len(distinct_removed) <= 1
    totals = {k: sum(s[k] for s in manifest["sources"].values()) for k in ("exact_duplicates", "near_duplicates")}
    assert totals == {"exact_duplicates": 20, "near_duplicates": 20}


def test_interrupted_build_resumes_and_matches_a_clean_build(tmp_path, pool, monkeypatch):
    rng = random.Random(4)
    path = write_docs(tmp_path / "docs.jsonl", [make_document(pool, rng, (3, 6)) for _ in range(60)])
    config = {"sources": [hub_json("docs", path)], "executor": {"tasks": 2}, "shard_bytes": 8192}
    clean = build(config, tmp_path / "clean")

    original_execute = WriteShards.execute
    calls: list[int] = []

    def failing_execute(self, rank, world_size):
        calls.append(rank)
        if rank == 1:
            raise RuntimeError("simulated crash in write task 1")
        return original_execute(self, rank, world_size)

    monkeypatch.setattr(WriteShards, "execute", failing_execute)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(config, out)
    assert not (out / "manifest.json").exists()  # an unfinished corpus has no manifest
    assert any(out.glob("shard_00000_*.parquet")) and (out / "_work").is_dir()

    calls.clear()
    monkeypatch.setattr(WriteShards, "execute", lambda self, rank, world_size: (
        calls.append(rank), original_execute(self, rank, world_size))[1])
    resumed = build(config, out)
    assert calls == [1]  # the finished write task was not run again
    assert [(s["file"], s["sha256"]) for s in resumed["shards"]] == [(s["file"], s["sha256"]) for s in clean["shards"]]
    assert resumed["sources"] == clean["sources"] and not (out / "_work").exists()
    for shard in resumed["shards"]:
        assert sha256_file(out / shard["file"]) == shard["sha256"]


def test_bad_input_gives_one_line_errors(tmp_path, capsys, pool):
    path = write_docs(tmp_path / "docs.jsonl", ["Short text.", "Another one."])
    pq.write_table(pa.table({"content": ["A parquet document."]}), tmp_path / "docs.parquet")
    cases = {
        "missing column": ({"sources": [hub_json("docs", path, text_column="body")]},
                           "dataset 'json' has no column 'body' (columns: id, text)"),
        "missing local column": ({"sources": [{"type": "local", "name": "l",
                                               "paths": [str(tmp_path / "docs.parquet")]}]},
                                 "docs.parquet: no column 'text' (columns: content)"),
        "offline hub": ({"sources": [{"type": "hub", "name": "c4", "dataset": "allenai/c4", "subset": "en"}]},
                        "dataset 'allenai/c4' (en) cannot be reached on the Hugging Face hub"),
        "all filtered": ({"sources": [hub_json("docs", path)], "filters": {"gopher": {"enabled": True}}},
                         "the corpus is empty: every document was filtered out"),
        "missing file": ({"sources": [{"type": "local", "name": "l", "paths": [str(tmp_path / "absent.jsonl")]}]},
                         "absent.jsonl: input file not found"),
    }
    for name, (config, message) in cases.items():
        config_path = tmp_path / f"{name.replace(' ', '_')}.json"
        config_path.write_text(json.dumps(config))
        out = tmp_path / "out"
        assert main(["corpus", "--config", str(config_path), "--output-dir", str(out)]) == 2, name
        err = capsys.readouterr().err  # the progress bar, then one error line
        assert [line for line in err.splitlines() if "error" in line.lower()] == [f"error: {message}"] \
            or (message in err.strip().splitlines()[-1] and "Traceback" not in err), (name, err)
        assert not out.exists(), name


def test_manifest_records_every_count_and_never_the_token(tmp_path, pool, monkeypatch):
    secret = "hf_test_secret_token_do_not_write"
    monkeypatch.setenv("HF_TOKEN", secret)
    rng = random.Random(5)
    path = write_docs(tmp_path / "docs.jsonl", [make_document(pool, rng, (6, 12)) for _ in range(20)]
                      + ["tiny", "Der Fluss fliesst durch die alte Stadt und die Leute gehen am Morgen auf den Markt, "
                         "um Brot und Obst zu kaufen, und am Abend spielen die Kinder am Brunnen mit ihren Hunden."])
    config = {"sources": [hub_json("docs", path)], "cleaning": {"min_chars": 10},
              "filters": {"language": {"enabled": True}, "gopher": {"enabled": True, "min_words": 5}}}
    manifest = build(config, tmp_path / "corpus")
    source = manifest["sources"]["docs"]
    assert source["read"] == 22 and source["kept"] == 20
    assert source["dropped"]["too_short"] == 1 and source["dropped"]["language_other"] == 1
    assert source["dropped"]["gopher_short_doc"] == 0 and "c4_lorem_ipsum" not in source["dropped"]
    assert manifest["dropped"]["language_other"] == 1
    for shard in manifest["shards"]:
        assert shard["estimated_tokens"] == round(shard["bytes"] / 4) and shard["documents"] > 0
    assert manifest["estimated_tokens"] == source["estimated_tokens"] and len(manifest["config_sha256"]) == 64
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == \
        sorted(["DATA_CARD.md", "manifest.json", "logs"] + [s["file"] for s in manifest["shards"]])
    for file in (tmp_path / "corpus").rglob("*"):
        assert not file.is_file() or secret.encode() not in file.read_bytes(), file


def test_analyze_only_estimates_without_writing(tmp_path, capsys, pool):
    rng = random.Random(6)
    path = write_docs(tmp_path / "docs.jsonl", [make_document(pool, rng, (4, 8)) for _ in range(50)])
    config = tmp_path / "mix.json"
    config.write_text(json.dumps({"sources": [
        {"type": "local", "name": "docs", "paths": [str(path)], "budget_tokens": 1000}],
        "analyze": {"sample_documents": 20}}))
    out = tmp_path / "out"
    assert main(["corpus", "--config", str(config), "--output-dir", str(out), "--analyze-only"]) == 0
    report = capsys.readouterr().out
    header, row = report.strip().splitlines()
    assert "documents_to_read_for_budget" in header and row.split()[:2] == ["docs", "20"]
    assert row.split()[-1] == "True" and not out.exists()


def test_pretrain_mixes_name_real_hub_datasets():
    expected = {"c4_english": ("allenai/c4", "en"), "wikipedia_en": ("wikimedia/wikipedia", "20231101.en"),
                "openwebtext": ("Skylion007/openwebtext", None), "gutenberg": ("manu/project_gutenberg", None),
                "fineweb_edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT")}
    root = Path(__file__).resolve().parent.parent / "config" / "pretrain" / "corpus"
    for mix in ("tokenizer_training_mix_50m.json", "tiny_23m_chinchilla.json"):
        config = load_config(CorpusConfig, root / mix)
        assert {s.name: (s.dataset, s.subset) for s in config.sources} == expected
        assert all(isinstance(s, HubSourceConfig) for s in config.sources)
        budgets = [config.budget_of(s) for s in config.sources]
        assert sum(budgets) == config.total_tokens
        assert budgets == [round(config.total_tokens * s.weight) for s in config.sources]
    assert load_config(CorpusConfig, root / "tiny_23m_chinchilla.json").total_tokens == 500_000_000


def test_cluster_executors_are_datatrove_executors(tmp_path):
    from datatrove.executor import SlurmPipelineExecutor

    from lumi.corpus.engine import make_executor, stage_steps

    config = validate_config(CorpusConfig, {
        "sources": [{"type": "local", "name": "x", "paths": ["x"]}],
        "executor": {"type": "slurm", "tasks": 64, "workers": 8, "slurm": {"partition": "cpu", "time": "02:00:00"}}},
        "test")
    previous = None
    for name, step, tasks in stage_steps(config, tmp_path):
        previous = make_executor(config, name, step, tasks, tmp_path / "logs" / name, depends=previous)
        assert isinstance(previous, SlurmPipelineExecutor) and previous.partition == "cpu"
    assert previous.depends.depends.depends.world_size == 64 and previous.world_size == 1


def test_synthetic_world_survives_near_dedup(tmp_path):
    config = {"sources": [{"type": "synthetic", "name": "world", "documents": 3000, "near_dedup": True}]}
    manifest = build(config, tmp_path / "corpus")
    world = manifest["sources"]["world"]
    assert world["near_duplicates"] <= 0.01 * world["read"] and world["kept"] >= 0.98 * world["read"]
