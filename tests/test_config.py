"""Config validation: every kind of bad config gives one line naming the file, the field and the expectation."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import Field

from lumi.cli import main, normalize_flag_spelling
from lumi.core.config import ConfigModel, load_config
from lumi.core.errors import LumiError


class Inner(ConfigModel):
    size: int = Field(4, ge=1)


class Example(ConfigModel):
    name: str
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    inner: Inner = Inner()


def write(tmp_path, obj, raw=None):
    path = tmp_path / "example.json"
    path.write_text(raw if raw is not None else json.dumps(obj))
    return path


@pytest.mark.parametrize("obj, field, expected", [
    ({"name": "x", "colour": 1}, "colour", "unknown key"),
    ({"name": "x", "inner": {"sise": 2}}, "inner.sise", "unknown key"),
    ({"name": 3}, "name", "valid string"),
    ({"name": "x", "rate": "fast"}, "rate", "valid number"),
    ({}, "name", "missing required field"),
    ({"name": "x", "inner": {"size": 0}}, "inner.size", "greater than or equal to 1"),
    ({"name": "x", "mode": "c"}, "mode", "'a' or 'b'"),
])
def test_bad_config_names_file_field_and_expectation(tmp_path, obj, field, expected):
    path = write(tmp_path, obj)
    with pytest.raises(LumiError) as err:
        load_config(Example, path)
    message = str(err.value)
    assert str(path) in message and f"'{field}'" in message and expected in message
    assert "\n" not in message


def test_malformed_json_names_line_and_column(tmp_path):
    path = write(tmp_path, None, raw='{"name": "x",\n  "rate": }')
    with pytest.raises(LumiError, match=r"example\.json: invalid JSON at line 2 column"):
        load_config(Example, path)


def test_missing_config_file(tmp_path):
    with pytest.raises(LumiError, match="config file not found"):
        load_config(Example, tmp_path / "nope.json")


def test_comment_keys_are_ignored_at_every_level(tmp_path):
    path = write(tmp_path, {"_doc": "comment", "name": "x", "inner": {"_why": "because", "size": 2}})
    assert load_config(Example, path).inner.size == 2


def test_set_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, {"name": "x"})
    config = load_config(Example, path, ["inner.size=8", "rate=0.25", "name=plain string"])
    assert (config.inner.size, config.rate, config.name) == (8, 0.25, "plain string")
    with pytest.raises(LumiError, match=r"\(with --set\): field 'inner.size'"):
        load_config(Example, path, ["inner.size=0"])
    with pytest.raises(LumiError, match="unknown key"):
        load_config(Example, path, ["inner.colour=1"])
    with pytest.raises(LumiError, match="expected dotted.key=value"):
        load_config(Example, path, ["novalue"])


def test_set_indexes_into_lists(tmp_path):
    class WithList(ConfigModel):
        items: list[Inner]

    path = write(tmp_path, {"items": [{"size": 1}, {"size": 2}]})
    assert [i.size for i in load_config(WithList, path, ["items.1.size=5"]).items] == [1, 5]
    with pytest.raises(LumiError, match="'2' is not an index of a list of 2"):
        load_config(WithList, path, ["items.2.size=5"])


def test_flag_values_win_over_set(tmp_path):
    path = write(tmp_path, {"name": "x"})
    config = load_config(Example, path, ["rate=0.25"], {"rate": 0.75, "mode": None})
    assert config.rate == 0.75 and config.mode == "a"


def test_underscore_flag_spelling_is_accepted():
    assert normalize_flag_spelling(["pack", "--output_dir=a_b", "--set", "x_y=1", "--seq_len", "8"]) == \
        ["pack", "--output-dir=a_b", "--set", "x_y=1", "--seq-len", "8"]


def test_cli_reports_config_errors_with_exit_2(tmp_path, capsys):
    bad = write(tmp_path, {"sources": [], "colour": 1})
    code = main(["corpus", "--config", str(bad), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]
    assert not (tmp_path / "out").exists()
