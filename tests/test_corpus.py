"""Stage 10 basics: readers for every local format, cleaning, exact dedup, the corpus dir format, the CLI."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lumi.cli import main
from lumi.core.errors import LumiError
from lumi.core.files import sha256_file
from lumi.corpus.clean import clean_text
from lumi.corpus.readers import read_file
from lumi.formats.corpus import iter_text_batches, read_manifest


def corpus_texts(path):
    return [t for batch in iter_text_batches(path) for t in batch]


def test_clean_keeps_paragraphs_and_indentation_but_not_noise():
    raw = "Title\r\n\r\n\r\n\r\n  indented  line\twith\t\tgaps   \x00\x07\nend\u00a0\u00a0here\n\n\n"
    assert clean_text(raw) == "Title\n\n  indented line\twith gaps\nend here"
    assert clean_text("e\u0301") == "\u00e9"  # NFC


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz", "docs.json", "docs.json.gz", "lines.json"])
def test_json_formats(tmp_path, name):
    records = [{"text": "first doc", "id": 1}, {"text": "second doc", "id": 2}]
    if name == "lines.json":
        data = "\n".join(json.dumps(r) for r in records).encode()
    elif ".jsonl" in name:
        data = "\n".join(json.dumps(r) for r in records).encode() + b"\n\n"
    else:
        data = json.dumps(records).encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert [t for _, t in read_file(path)] == ["first doc", "second doc"]


def test_parquet_and_missing_column(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["a", "b"]}), path)
    assert [t for _, t in read_file(path, text_column="content")] == ["a", "b"]
    with pytest.raises(LumiError, match="no column 'text'.*content"):
        list(read_file(path))


@pytest.mark.parametrize("split, expected", [
    ("file", ["one\ntwo\n\nthree\n<|endoftext|>\nfour\n"]),
    ("line", ["one", "two", "three", "<|endoftext|>", "four"]),
    ("paragraph", ["one\ntwo", "three\n<|endoftext|>\nfour\n"]),
    ("separator", ["one\ntwo\n\nthree\n", "\nfour\n"]),
])
def test_txt_splits(tmp_path, split, expected):
    path = tmp_path / "t.txt"
    path.write_text("one\ntwo\n\nthree\n<|endoftext|>\nfour\n")
    assert [t for _, t in read_file(path, txt_split=split)] == expected


def test_non_utf8_documents_are_skipped_and_counted(tmp_path):
    good = json.dumps({"text": "fine text"}).encode()
    bad = b'{"text": "broken \xff\xfe bytes"}'
    (tmp_path / "mixed.jsonl").write_bytes(good + b"\n" + bad + b"\n" + good.replace(b"fine", b"more"))
    (tmp_path / "mixed.txt").write_bytes(b"ok doc\n\nbad \xc3\x28 doc\n\nanother")
    out = tmp_path / "corpus"
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"sources": [
        {"type": "local", "name": "j", "paths": [str(tmp_path / "mixed.jsonl")]},
        {"type": "local", "name": "t", "paths": [str(tmp_path / "mixed.txt")], "txt_split": "paragraph"}]}))
    assert main(["corpus", "--config", str(config), "--output-dir", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest["sources"]["j"]["dropped"]["non_utf8"] == 1 and manifest["sources"]["j"]["kept"] == 2
    assert manifest["sources"]["t"]["dropped"]["non_utf8"] == 1 and manifest["sources"]["t"]["kept"] == 2
    assert sorted(corpus_texts(out)) == ["another", "fine text", "more text", "ok doc"]


def test_real_samples_into_one_corpus(tmp_path, samples_dir):
    """C4 (jsonl and gzipped JSON lines), Dolma, Gutenberg, tinyshakespeare, TinyStories, wiki text together."""
    s = samples_dir
    config = tmp_path / "real.json"
    config.write_text(json.dumps({"sources": [
        {"type": "local", "name": "c4", "paths": [str(s / "c4_demo_llamafactory_first150.jsonl"),
                                                  str(s / "c4_olmo_fixture_*.json.gz")]},
        {"type": "local", "name": "dolma", "paths": [str(s / "dolma_cc_en_head-0091.jsonl")]},
        {"type": "local", "name": "gutenberg", "paths": [str(s / "gutenberg_pg*.txt")], "txt_split": "file"},
        {"type": "local", "name": "shakespeare", "paths": [str(s / "tinyshakespeare_train90.txt")],
         "txt_split": "paragraph"},
        {"type": "local", "name": "tinystories", "paths": [str(s / "tinystories_sample_cs336.txt")],
         "txt_split": "separator"},
        {"type": "local", "name": "wiki", "paths": [str(s / "wiki_demo_llamafactory_first15.txt")],
         "txt_split": "line"},
        {"type": "local", "name": "shakespeare_again", "paths": [str(s / "tinyshakespeare_train90.txt")],
         "txt_split": "paragraph"},
    ], "shard_bytes": 500000}))
    out = tmp_path / "corpus"
    assert main(["corpus", "--config", str(config), "--output-dir", str(out)]) == 0
    manifest = read_manifest(out)
    src = manifest["sources"]
    assert src["c4"]["read"] == 170 and src["dolma"]["read"] == 10 and src["gutenberg"]["kept"] == 2
    assert src["tinystories"]["kept"] == 5 and src["wiki"]["kept"] == 15
    # The repeated source is removed entirely as exact duplicates, across sources.
    assert src["shakespeare_again"]["kept"] == 0
    assert src["shakespeare"]["exact_duplicates"] > 0  # repeated stage lines inside the play itself
    # Every paragraph of the repeat is an exact copy of one the first source read (kept, or itself a duplicate).
    assert src["shakespeare_again"]["exact_duplicates"] == \
        src["shakespeare"]["kept"] + src["shakespeare"]["exact_duplicates"] + src["shakespeare"]["near_duplicates"]
    assert len(manifest["shards"]) > 1
    for shard in manifest["shards"]:
        assert sha256_file(out / shard["file"]) == shard["sha256"]
    texts = corpus_texts(out)
    assert len(texts) == manifest["documents"] == sum(sh["documents"] for sh in manifest["shards"])
    assert sum(len(t.encode()) for t in texts) == manifest["bytes"]
    assert any("\n\n" in t for t in texts)  # paragraphs survive cleaning
    assert "Alice" in "".join(texts) and (out / "DATA_CARD.md").read_text().count("| shakespeare") == 2


def test_input_form_and_output_dir_protection(tmp_path, samples_dir, capsys):
    out = tmp_path / "corpus"
    sample = samples_dir / "tinystories_sample_cs336.txt"
    args = ["corpus", "--input", str(sample), "--txt-split", "separator", "--output-dir", str(out)]
    assert main(args) == 0
    before = sha256_file(out / "manifest.json")
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert sha256_file(out / "manifest.json") == before
    assert main(args + ["--force"]) == 0 and read_manifest(out)["documents"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no staging leftovers


def test_missing_input_and_empty_corpus_fail_cleanly(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["corpus", "--input", str(tmp_path / "absent.jsonl"), "--output-dir", str(out)]) == 2
    assert "absent.jsonl: input file not found" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "   \n\t "}) + "\n")
    assert main(["corpus", "--input", str(empty), "--output-dir", str(out)]) == 2
    assert "corpus is empty" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]
