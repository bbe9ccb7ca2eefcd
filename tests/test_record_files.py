"""Your own SFT/DPO files: one reader for every JSON-lines read (only \\n and \\r\\n end a line, a BOM is not data, a
bad line is counted with its file:line and cause), each --input file read by its own detected reader (gzip included),
and a file that yields nothing fails the stage in one line naming it and the format tried."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
from eval_helpers import write_tokenizer

from lumi.cli import main
from lumi.core.errors import LumiError
from lumi.data.preference import read_dpo_manifest
from lumi.data.sft_corpus import read_sft_manifest
from lumi.formats.records import BadRecord, read_json_lines, read_records

ALPACA = "alpaca_data_first200.json"
OASST = "oasst_export_trees_en100_first30.jsonl"
HH = "hh_rlhf_harmless_base_test_first300.jsonl.gz"
SHAREGPT = "sharegpt_preference_llamafactory_first100.json"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def alpaca_line(index: int, output: str = "an answer") -> str:
    return json.dumps({"instruction": f"question {index}", "input": "", "output": output}, ensure_ascii=False)


def test_line_reader_faults(tmp_path):
    """U+2028 inside a string stays in its record; a BOM does not cost the first record; CRLF ends lines; a torn
    line comes back as a BadRecord naming file:line and the cause; gzip is read the same."""
    text = "\ufeff" + "\r\n".join([alpaca_line(0), alpaca_line(1, "one\u2028two\u0085three"), '{"instruction": "torn',
                                    "", alpaca_line(3)]) + "\r\n"
    plain = tmp_path / "faults.jsonl"
    plain.write_text(text, encoding="utf-8")
    zipped = tmp_path / "faults.jsonl.gz"
    zipped.write_bytes(gzip.compress(text.encode("utf-8")))
    for path in (plain, zipped):
        records = read_records(path, "SFT data file")
        assert len(records) == 4 and records[0]["instruction"] == "question 0"
        assert records[1]["output"] == "one\u2028two\u0085three"
        assert records[2] == BadRecord(f"{path.name}:3", records[2].cause) and "invalid JSON" in records[2].cause
        assert records[3]["instruction"] == "question 3"
    with pytest.raises(LumiError, match=r"faults.jsonl:3: invalid JSON"):
        read_json_lines(plain, "DPO data split")


def test_bad_lines_are_counted_by_file_and_line(tokenizer_dir, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\ufeff" + "\n".join([alpaca_line(0), alpaca_line(1, "a\u2028b"), "{torn", alpaca_line(3)])
                    + "\n", encoding="utf-8")
    out = tmp_path / "sft"
    assert main(["sft-corpus", "--input", str(path), "--tokenizer-dir", str(tokenizer_dir), "--output-dir", str(out),
                 "--set", "languages=null", "--set", "dedup.near.enabled=false"]) == 0
    source = read_sft_manifest(out)["sources"]["mine.jsonl"]
    assert source["read"] == 4 and source["kept"] == 3 and source["dropped"] == {"invalid_json": 1}
    assert source["dropped_examples"]["invalid_json"][0].startswith("mine.jsonl:3: invalid JSON")


def test_sft_two_formats_each_read_by_its_reader(samples_dir, tokenizer_dir, tmp_path):
    """Alpaca (a JSON array) and OpenAssistant export trees (JSON lines, also gzipped): every record of each file
    is read in its own format, none dropped as a field the other format lacks."""
    oasst_gz = tmp_path / (OASST + ".gz")
    oasst_gz.write_bytes(gzip.compress((samples_dir / OASST).read_bytes()))
    out = tmp_path / "sft"
    assert main(["sft-corpus", "--input", str(samples_dir / ALPACA), str(samples_dir / OASST), str(oasst_gz),
                 "--tokenizer-dir", str(tokenizer_dir), "--output-dir", str(out), "--seq-len", "2048",
                 "--set", "languages=null"]) == 0
    sources = read_sft_manifest(out)["sources"]
    assert {name: s["format"] for name, s in sources.items()} == {ALPACA: "alpaca", OASST: "oasst",
                                                                   oasst_gz.name: "oasst"}
    assert sources[ALPACA]["read"] == 200 and sources[OASST]["read"] == 30
    for source in sources.values():
        assert "missing_field" not in source["dropped"] and "invalid_json" not in source["dropped"]
    assert sources[OASST]["kept"] > 0
    assert sources[oasst_gz.name]["dropped"] == {"duplicate_prompt": 30}  # the same trees, gzipped


def test_dpo_two_formats_gzip_included(samples_dir, tokenizer_dir, tmp_path):
    out = tmp_path / "dpo"
    assert main(["dpo-corpus", "--input", str(samples_dir / HH), str(samples_dir / SHAREGPT), "--tokenizer-dir",
                 str(tokenizer_dir), "--output-dir", str(out), "--seq-len", "1024"]) == 0
    sources = read_dpo_manifest(out)["sources"]
    assert sources[HH]["format"] == "hh" and sources[HH]["read"] == 300 and sources[HH]["kept"] > 0
    assert sources[SHAREGPT]["format"] == "sharegpt" and sources[SHAREGPT]["read"] == 100
    assert sources[SHAREGPT]["kept"] > 0


def test_files_source_in_a_config_reads_gzip(samples_dir, tokenizer_dir, tmp_path):
    config = tmp_path / "dpo.json"
    config.write_text(json.dumps({"sources": [{"type": "files", "name": "hh", "paths": [str(samples_dir / HH)]}],
                                  "seq_len": 1024}))
    out = tmp_path / "dpo"
    assert main(["dpo-corpus", "--config", str(config), "--tokenizer-dir", str(tokenizer_dir), "--output-dir",
                 str(out)]) == 0
    assert read_dpo_manifest(out)["sources"]["hh"]["read"] == 300


def test_a_file_that_yields_nothing_fails_naming_it(samples_dir, tokenizer_dir, tmp_path, capsys):
    oasst = tmp_path / OASST
    shutil.copy(samples_dir / OASST, oasst)
    assert main(["sft-corpus", "--input", str(samples_dir / ALPACA), str(oasst), "--format", "alpaca",
                 "--tokenizer-dir", str(tokenizer_dir), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{oasst}: no conversation read as format 'alpaca'" in err, err
    assert "missing_field" in err and not (tmp_path / "out").exists()


def test_length_drops_say_their_share_and_the_fix(samples_dir, tokenizer_dir, tmp_path, caplog):
    out = tmp_path / "sft"
    with caplog.at_level("WARNING"):
        assert main(["sft-corpus", "--input", str(samples_dir / OASST), "--tokenizer-dir", str(tokenizer_dir),
                     "--output-dir", str(out), "--seq-len", "256", "--set", "languages=null"]) == 0
    source = read_sft_manifest(out)["sources"][OASST]
    dropped = source["dropped"]["too_long"]
    share = f"{dropped} of 30 ({dropped / 30:.0%}) dropped as longer than seq_len 256 tokens"
    assert any(share in record.message and "overlong=cut_at_turn" in record.message for record in caplog.records)
    assert share in (out / "DATA_CARD.md").read_text()


def test_evaluator_reads_a_split_with_raw_line_separators(tmp_path):
    """A val.jsonl edited by hand (json.dumps(ensure_ascii=False) writes U+2028 raw) reads back whole."""
    path = tmp_path / "val.jsonl"
    rows = [{"id": "a", "prompt": [{"role": "user", "content": "x\u2028y"}], "chosen": "c\u2029", "rejected": "r"},
            {"id": "b", "prompt": [], "chosen": "c", "rejected": "r\x0c"}]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    assert read_json_lines(path, "DPO data split") == rows


@pytest.mark.parametrize("stage, what", [("sft-corpus", "SFT data file"), ("dpo-corpus", "DPO data file")])
def test_unreadable_inputs_name_the_stage_file(tokenizer_dir, tmp_path, capsys, stage, what):
    bad_gzip = tmp_path / "latin1.jsonl.gz"
    bad_gzip.write_bytes(gzip.compress('{"instruction": "caf\xe9"}\n'.encode("latin-1")))
    for path, message in ((tmp_path / "absent.jsonl", f"{what} not found"),
                          (bad_gzip, f"{what} is not UTF-8 text")):
        assert main([stage, "--input", str(path), "--tokenizer-dir", str(tokenizer_dir), "--output-dir",
                     str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{path}: {message}" in err, err
