"""Which synthetic world an artifact comes from, read from what its writers already record, so a stage that combines
artifacts of different worlds (a base model pretrained on one, SFT or DPO data of another) is refused in one line.

A world is named by ``world_fingerprint``: the sha256 of the settings that generate it (seed, people, places,
held-out share). Every artifact that derives from a world records the fingerprints itself, under ``worlds``: the
corpus, packed, SFT and DPO data manifests, and ``lineage.json`` in every checkpoint, adapter and merged model the
trainer or merge-lora writes. What an artifact records is what it comes from, wherever it was moved since. Artifacts
written before that record nothing; their worlds are those of the configs their manifests record, followed back
through the paths they record: a data dir's manifest config; a checkpoint's ``pretrain_config.json`` (its packed
data dirs -> their corpus manifests), ``sft_config.json`` / ``dpo_config.json`` (its data and its starting model);
an adapter's recorded base; a derived merged copy's adapter. What cannot be followed there (a moved dir, a foreign
model) contributes no world, and an artifact of no synthetic world is never refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, read_json

WORLD_KEYS = ("seed", "people", "places", "heldout_fraction")
_CONFIG_FILES = {"pretrain_config.json": ("data_dirs",), "sft_config.json": ("data_dir", "base_model"),
                 "dpo_config.json": ("data_dir", "model_path")}
_MANIFESTS = ("manifest.json", "final_manifest.json")
LINEAGE_FILE = "lineage.json"  # a model dir's record: {"worlds": [...]}
WORLDS_KEY = "worlds"


def world_fingerprint(settings: dict[str, Any]) -> str:
    """The identity of a synthetic world: sha256 over its generating settings."""
    return hashlib.sha256(json.dumps({key: settings.get(key) for key in WORLD_KEYS},
                                     sort_keys=True).encode()).hexdigest()


def worlds_in_config(config: Any) -> set[str]:
    """Fingerprints of every synthetic world a resolved config names (any object carrying all of ``WORLD_KEYS``)."""
    found: set[str] = set()
    if isinstance(config, dict):
        if all(key in config for key in WORLD_KEYS):
            found.add(world_fingerprint(config))
        for value in config.values():
            found |= worlds_in_config(value)
    elif isinstance(config, list):
        for value in config:
            found |= worlds_in_config(value)
    return found


def _json(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except LumiError:
        return None


def recorded_worlds(directory: Path) -> set[str] | None:
    """The worlds ``directory`` records itself (a manifest's or ``lineage.json``'s ``worlds``); None when it records
    none (written before worlds were recorded, or not by lumi)."""
    recorded = None
    for name in (*_MANIFESTS, LINEAGE_FILE):
        data = _json(directory / name)
        worlds = data.get(WORLDS_KEY) if isinstance(data, dict) else None
        if isinstance(worlds, list) and all(isinstance(world, str) for world in worlds):
            recorded = (recorded or set()) | set(worlds)
    return recorded


def write_lineage(directory: Path, worlds: set[str]) -> None:
    """``lineage.json`` of a model dir: the worlds it derives from (none: no file), carried wherever it is moved."""
    if worlds:
        atomic_write_json(directory / LINEAGE_FILE, {WORLDS_KEY: sorted(worlds)})


def copy_lineage(source: Path, directory: Path) -> None:
    """A model dir derived from ``source`` (a merged copy of an adapter) records the worlds ``source`` comes from."""
    write_lineage(directory, artifact_worlds(source))


def artifact_worlds(directory: str | Path, _seen: frozenset[Path] = frozenset()) -> set[str]:
    """The worlds ``directory`` (a data dir, a corpus, a checkpoint, an adapter, a merged model) comes from: what it
    records, else what the paths its records name lead to."""
    directory = Path(directory).absolute()
    if directory in _seen or not directory.is_dir():
        return set()
    recorded = recorded_worlds(directory)
    if recorded is not None:
        return recorded
    seen = _seen | {directory}
    found: set[str] = set()
    for name in _MANIFESTS:
        manifest = _json(directory / name)
        if isinstance(manifest, dict):
            found |= worlds_in_config(manifest.get("config"))
            corpus = manifest.get("corpus")
            if isinstance(corpus, dict) and isinstance(corpus.get("dir"), str):
                found |= artifact_worlds(corpus["dir"], seen)
    for name, fields in _CONFIG_FILES.items():
        saved = _json(directory / name)
        config = saved.get("config") if isinstance(saved, dict) else None
        if not isinstance(config, dict):
            continue
        for field in fields:
            values = config.get(field)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, str):
                    found |= artifact_worlds(value, seen)
    for name, field in (("lumi_adapter.json", "base_model_path"), ("derived_from.json", "adapter_path")):
        record = _json(directory / name)
        if isinstance(record, dict) and isinstance(record.get(field), str):
            found |= artifact_worlds(record[field], seen)
    return found


def require_same_world(model_dir: str | Path, data_dir: str | Path, data_config: Any) -> None:
    """Refuse training or scoring ``model_dir`` on data built from another synthetic world than the model's."""
    data_worlds = worlds_in_config(data_config)
    model_worlds = artifact_worlds(model_dir)
    if data_worlds and model_worlds and not data_worlds & model_worlds:
        raise LumiError(f"{data_dir}: uses synthetic world {sorted(data_worlds)[0][:12]}…, but {model_dir} comes "
                        f"from world {sorted(model_worlds)[0][:12]}…; build the data (or point the config) at the "
                        "model's world (its corpus config), or use the model of this world")
