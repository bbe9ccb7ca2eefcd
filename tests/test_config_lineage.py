"""Issue #24 item 7: a config's ``{"from": ...}`` reference resolves against the file that names it (its directory or
the nearest one above that holds it), so an edited copy of the config tree reads its own world everywhere -- SFT data,
held-out questions and cloze items alike -- instead of silently mixing in the shipped one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lumi.core.config import CONFIG_DIR, load_config
from lumi.data.sft_corpus import SFTCorpusConfig
from lumi.eval.config import EvaluationConfig

EDITED_SEED = 12345


def edited_copy(tmp_path: Path) -> Path:
    """The demo configs copied to ``tmp_path/cfg`` with the world's seed changed in the copy's corpus config."""
    copy = tmp_path / "cfg"
    for name in ("demo/corpus.json", "sft/datasets/demo.json", "evaluation/sft_demo.json"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CONFIG_DIR / name, copy / name)
    corpus = json.loads((copy / "demo/corpus.json").read_text())
    assert corpus["sources"][0]["seed"] != EDITED_SEED
    corpus["sources"][0]["seed"] = EDITED_SEED
    (copy / "demo/corpus.json").write_text(json.dumps(corpus))
    return copy


def test_an_edited_copy_of_the_configs_reads_its_own_world_everywhere(tmp_path, monkeypatch):
    copy = edited_copy(tmp_path)
    monkeypatch.chdir(tmp_path)  # neither the shipped tree nor the copy is the current directory's config/
    sft = load_config(SFTCorpusConfig, copy / "sft/datasets/demo.json")
    evaluation = load_config(EvaluationConfig, copy / "evaluation/sft_demo.json")
    assert sft.sources[0].world.seed == EDITED_SEED
    assert evaluation.synthetic_qa.world.seed == EDITED_SEED
    cloze = [task for task in evaluation.tasks if task.task == "synthetic_cloze"]
    assert cloze and all(task.source.world.seed == EDITED_SEED for task in cloze)


def test_the_shipped_configs_still_read_the_shipped_world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sft = load_config(SFTCorpusConfig, CONFIG_DIR / "sft/datasets/demo.json")
    shipped = json.loads((CONFIG_DIR / "demo/corpus.json").read_text())["sources"][0]["seed"]
    assert sft.sources[0].world.seed == shipped
